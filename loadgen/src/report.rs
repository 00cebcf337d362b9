//! The report of a run: a text table for people, JSON for hack/bench.

use crate::pod::CONTAINERS;
use crate::stats::{Percentiles, Samples};
use std::fmt;
use std::time::Duration;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The endpoint driven.
    pub endpoint: String,
    /// `runtime_name runtime_version` from the runtime's Version answer.
    pub runtime: String,
    /// Pod lifecycles asked for.
    pub pods: usize,
    /// Pod lifecycles at once.
    pub concurrency: usize,
    /// List/Status tasks.
    pub hammer: usize,
    /// From the first RunPodSandbox to the end of the last lifecycle.
    pub wall: Duration,
    /// Every latency and error recorded.
    pub samples: Samples,
}

impl Report {
    /// Errors of the run (failed calls, wrong answers, leftovers).
    pub fn errors(&self) -> usize {
        self.samples.error_count
    }

    /// Pod lifecycles that finished without an error, per second of the run.
    pub fn throughput(&self) -> f64 {
        self.samples.pods.len() as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Every figure, and each whole pod's latency in ms (`pod_ms_samples`),
    /// as one JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let percentiles = |samples: &[Duration]| match Percentiles::of(samples) {
            Some(p) => serde_json::json!({
                "n": p.n, "p50": p.p50, "p90": p.p90, "p99": p.p99, "max": p.max,
            }),
            None => serde_json::json!({ "n": 0 }),
        };
        let rpcs: serde_json::Map<String, serde_json::Value> = self
            .samples
            .rpcs
            .iter()
            .map(|(method, samples)| ((*method).to_owned(), percentiles(samples)))
            .collect();
        serde_json::json!({
            "endpoint": self.endpoint,
            "runtime": self.runtime,
            "pods": self.pods,
            "containers_per_pod": CONTAINERS.len(),
            "concurrency": self.concurrency,
            "hammer_tasks": self.hammer,
            "wall_s": self.wall.as_secs_f64(),
            "completed_pods": self.samples.pods.len(),
            "pods_per_s": self.throughput(),
            "errors": self.errors(),
            "error_messages": self.samples.errors,
            "status_of_removed_objects": self.samples.gone,
            "pod_ms": percentiles(&self.samples.pods),
            "pod_ms_samples": self
                .samples
                .pods
                .iter()
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
            "rpc_ms": rpcs,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "berth-load: {} pods ({} containers each) at concurrency {}, {} List/Status task(s), \
             against {} ({})",
            self.pods,
            CONTAINERS.len(),
            self.concurrency,
            self.hammer,
            self.runtime,
            self.endpoint
        )?;
        writeln!(
            f,
            "{} of {} pods completed in {:.2} s: {:.2} pods/s; {} error(s)",
            self.samples.pods.len(),
            self.pods,
            self.wall.as_secs_f64(),
            self.throughput(),
            self.errors()
        )?;
        writeln!(
            f,
            "{:<18} {:>7} {:>10} {:>10} {:>10} {:>10}",
            "latency (ms)", "n", "p50", "p90", "p99", "max"
        )?;
        let rows = std::iter::once(("whole pod", &self.samples.pods))
            .chain(self.samples.rpcs.iter().map(|(m, s)| (*m, s)));
        for (name, samples) in rows {
            if let Some(p) = Percentiles::of(samples) {
                writeln!(
                    f,
                    "{name:<18} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                    p.n, p.p50, p.p90, p.p99, p.max
                )?;
            }
        }
        if self.samples.gone > 0 {
            writeln!(
                f,
                "{} status call(s) raced the removal of their object (NotFound, expected)",
                self.samples.gone
            )?;
        }
        for message in &self.samples.errors {
            writeln!(f, "error: {message}")?;
        }
        if self.errors() > self.samples.errors.len() {
            writeln!(
                f,
                "... and {} more error(s)",
                self.errors() - self.samples.errors.len()
            )?;
        }
        Ok(())
    }
}
