//! What a run measured: the latency of every call and of every whole pod,
//! and the errors, collected from many tasks at once.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Error messages kept verbatim; past this many only the count grows.
const KEPT_ERRORS: usize = 50;

/// Shared by every task of a run; each record is one short critical section.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    inner: Mutex<Samples>,
}

/// Everything recorded, once the run is over.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Latency of each call, by CRI method name.
    pub rpcs: BTreeMap<&'static str, Vec<Duration>>,
    /// Latency of each pod lifecycle that finished without an error.
    pub pods: Vec<Duration>,
    /// How many errors there were.
    pub error_count: usize,
    /// The first errors' messages.
    pub errors: Vec<String>,
    /// Status calls on an object the List before them returned and that a
    /// pod task removed in between (NotFound): expected, not an error.
    pub gone: u64,
}

impl Recorder {
    fn with(&self, f: impl FnOnce(&mut Samples)) {
        // A panic elsewhere cannot leave Samples half-updated: every change
        // below is a single push or increment.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner);
    }

    pub(crate) fn rpc(&self, method: &'static str, took: Duration) {
        self.with(|s| s.rpcs.entry(method).or_default().push(took));
    }

    pub(crate) fn pod(&self, took: Duration) {
        self.with(|s| s.pods.push(took));
    }

    pub(crate) fn error(&self, message: String) {
        self.with(|s| {
            s.error_count += 1;
            if s.errors.len() < KEPT_ERRORS {
                s.errors.push(message);
            }
        });
    }

    pub(crate) fn gone(&self) {
        self.with(|s| s.gone += 1);
    }

    pub(crate) fn take(&self) -> Samples {
        let mut taken = Samples::default();
        self.with(|s| taken = std::mem::take(s));
        taken
    }
}

/// Percentiles of a set of latencies, by nearest rank (so p99 of fewer than
/// 100 samples is the maximum), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// How many samples.
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Self {
            n: ms.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: ms[ms.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let p = Percentiles::of(&ms(&(1..=200).rev().collect::<Vec<_>>())).expect("samples");
        assert_eq!(
            (p.n, p.p50, p.p90, p.p99, p.max),
            (200, 100.0, 180.0, 198.0, 200.0)
        );
        let one = Percentiles::of(&ms(&[7])).expect("one sample");
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        let few = Percentiles::of(&ms(&[5, 1, 3])).expect("samples");
        assert_eq!((few.p50, few.p90, few.p99), (3.0, 5.0, 5.0));
        assert_eq!(Percentiles::of(&[]), None);
    }

    #[test]
    fn errors_are_all_counted_and_the_first_kept() {
        let recorder = Recorder::default();
        for i in 0..KEPT_ERRORS + 5 {
            recorder.error(format!("error {i}"));
        }
        recorder.gone();
        let samples = recorder.take();
        assert_eq!(samples.error_count, KEPT_ERRORS + 5);
        assert_eq!(samples.errors.len(), KEPT_ERRORS);
        assert_eq!(samples.errors[0], "error 0");
        assert_eq!(samples.gone, 1);
        assert_eq!(recorder.take().error_count, 0);
    }
}
