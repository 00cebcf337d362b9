//! What the collector keeps per container and pod: the latest reading of
//! its cgroup, the CPU rate between the last two collector ticks, the
//! writable layer's usage (containers) and the interfaces (pods).

use super::network::InterfaceStats;
use crate::cgroups::{CgroupStats, CpuStats, MemoryStats, PidsStats, SwapStats};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A reading of a cgroup's counters, stamped when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Nanoseconds since the epoch, taken just before the files were read.
    pub timestamp: i64,
    pub stats: CgroupStats,
}

/// Disk usage of a container's writable layer (its active snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerUsage {
    pub timestamp: i64,
    /// The mount point of the filesystem holding the snapshots.
    pub mountpoint: String,
    pub bytes: u64,
    pub inodes: u64,
}

/// A pod's interfaces, read in its network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkReading {
    pub timestamp: i64,
    pub interfaces: Vec<InterfaceStats>,
}

/// What is known of one container or pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The latest reading: the collector's, or a call's refresh.
    pub cgroup: Option<Reading>,
    /// CPU rate between the last two collector ticks, in nano-cores.
    pub nano_cores: Option<u64>,
    /// (timestamp, cumulative CPU ns) of the last collector tick.
    pub(super) last_tick: Option<(i64, u64)>,
    pub writable_layer: Option<LayerUsage>,
    pub network: Option<NetworkReading>,
}

impl Entry {
    /// Records a reading of a collector tick: it becomes the latest, and
    /// the rate is recomputed against the previous tick's.
    pub fn record_tick(&mut self, reading: Reading) {
        let cpu = reading
            .stats
            .cpu
            .as_ref()
            .map(|cpu| (reading.timestamp, cpu.usage_ns));
        self.nano_cores = match (self.last_tick, cpu) {
            (Some(previous), Some(current)) => nano_cores(previous, current),
            _ => None,
        };
        self.last_tick = cpu;
        self.cgroup = Some(reading);
    }

    /// Records a reading taken for a call: it becomes the latest; the rate
    /// stays the one over the collector's last period, so its window does
    /// not depend on when clients ask.
    pub fn record_refresh(&mut self, reading: Reading) {
        if self
            .cgroup
            .as_ref()
            .is_none_or(|known| known.timestamp < reading.timestamp)
        {
            self.cgroup = Some(reading);
        }
    }

    /// True when the latest reading is older than `max_age` at `now` (or
    /// there is none).
    pub fn is_stale(&self, now: i64, max_age: Duration) -> bool {
        self.cgroup
            .as_ref()
            .is_none_or(|reading| now.saturating_sub(reading.timestamp) > max_age.as_nanos() as i64)
    }
}

/// The average CPU rate between two (timestamp ns, cumulative CPU ns)
/// readings, in nano-cores (10^9 is one core busy all the time). `None`
/// when time did not advance, or the counter went back (a pod's summed
/// counter loses an exited container).
pub fn nano_cores(previous: (i64, u64), current: (i64, u64)) -> Option<u64> {
    let elapsed = current.0.checked_sub(previous.0).filter(|d| *d > 0)?;
    let used = current.1.checked_sub(previous.1)?;
    let rate = u128::from(used) * 1_000_000_000 / elapsed as u128;
    u64::try_from(rate).ok()
}

/// The counters of a pod without a cgroup of its own: the sums of its
/// containers'. Limits are left out (there is none for the pod as such),
/// and so are throttling and IO, which do not add up meaningfully.
pub fn sum(stats: &[&CgroupStats]) -> CgroupStats {
    let all = |f: &dyn Fn(&CgroupStats) -> Option<u64>| -> Option<u64> {
        stats.iter().map(|s| f(s)).sum::<Option<u64>>()
    };
    let cpus: Vec<&CpuStats> = stats.iter().filter_map(|s| s.cpu.as_ref()).collect();
    let cpu = (!cpus.is_empty()).then(|| CpuStats {
        usage_ns: cpus.iter().map(|c| c.usage_ns).sum(),
        user_ns: all(&|s| s.cpu.as_ref().and_then(|c| c.user_ns)),
        system_ns: all(&|s| s.cpu.as_ref().and_then(|c| c.system_ns)),
        throttling: None,
    });
    let memories: Vec<&MemoryStats> = stats.iter().filter_map(|s| s.memory.as_ref()).collect();
    let memory = (!memories.is_empty()).then(|| {
        let total = |f: fn(&MemoryStats) -> u64| memories.iter().map(|m| f(m)).sum();
        let swaps: Vec<&SwapStats> = memories.iter().filter_map(|m| m.swap.as_ref()).collect();
        MemoryStats {
            usage_bytes: total(|m| m.usage_bytes),
            working_set_bytes: total(|m| m.working_set_bytes),
            rss_bytes: total(|m| m.rss_bytes),
            page_faults: total(|m| m.page_faults),
            major_page_faults: total(|m| m.major_page_faults),
            limit_bytes: None,
            oom_events: None,
            oom_kills: total(|m| m.oom_kills),
            swap: (!swaps.is_empty()).then(|| SwapStats {
                usage_bytes: swaps.iter().map(|s| s.usage_bytes).sum(),
                limit_bytes: None,
            }),
            cache_bytes: total(|m| m.cache_bytes),
            mapped_file_bytes: total(|m| m.mapped_file_bytes),
            kernel_bytes: memories.iter().map(|m| m.kernel_bytes).sum(),
            max_usage_bytes: None,
            failcnt: None,
        }
    });
    let pids: Vec<&PidsStats> = stats.iter().filter_map(|s| s.pids.as_ref()).collect();
    let pids = (!pids.is_empty()).then(|| PidsStats {
        current: pids.iter().map(|p| p.current).sum(),
        limit: None,
    });
    CgroupStats {
        cpu,
        memory,
        pids,
        io: None,
    }
}

/// The collector's cache: one [`Entry`] per live container and per ready
/// pod, by id. Each map is locked only to copy entries in or out.
#[derive(Debug)]
pub struct StatsCache {
    /// The collector's period.
    pub period: Duration,
    pub(super) containers: Mutex<HashMap<String, Entry>>,
    pub(super) pods: Mutex<HashMap<String, Entry>>,
    /// The snapshotter's mount point, looked up once.
    pub(super) mountpoint: std::sync::OnceLock<String>,
}

impl StatsCache {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            containers: Mutex::default(),
            pods: Mutex::default(),
            mountpoint: std::sync::OnceLock::new(),
        }
    }

    /// What is known of container `id`.
    pub fn container(&self, id: &str) -> Option<Entry> {
        lock(&self.containers).get(id).cloned()
    }

    /// What is known of pod `id`.
    pub fn pod(&self, id: &str) -> Option<Entry> {
        lock(&self.pods).get(id).cloned()
    }
}

pub(super) fn lock(
    map: &Mutex<HashMap<String, Entry>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    map.lock()
        .expect("the stats cache is never left poisoned: no code panics holding it")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(timestamp: i64, cpu_ns: u64) -> Reading {
        Reading {
            timestamp,
            stats: CgroupStats {
                cpu: Some(CpuStats {
                    usage_ns: cpu_ns,
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn nano_cores_from_two_readings() {
        // 1.5 s of CPU in 2 s: three quarters of a core.
        assert_eq!(
            nano_cores((1_000_000_000, 0), (3_000_000_000, 1_500_000_000)),
            Some(750_000_000)
        );
        // Two cores busy for 500 ms.
        assert_eq!(
            nano_cores((0, 10), (500_000_000, 1_000_000_010)),
            Some(2_000_000_000)
        );
        assert_eq!(nano_cores((5, 0), (5, 100)), None, "no time passed");
        assert_eq!(nano_cores((5, 100), (4, 200)), None, "time went back");
        assert_eq!(
            nano_cores((0, 100), (10, 50)),
            None,
            "the counter went back"
        );
    }

    #[test]
    fn ticks_give_the_rate_and_refreshes_keep_it() {
        let mut entry = Entry::default();
        entry.record_tick(reading(1_000_000_000, 100));
        assert_eq!(entry.nano_cores, None, "one tick has no rate yet");
        entry.record_tick(reading(2_000_000_000, 400_000_100));
        assert_eq!(entry.nano_cores, Some(400_000_000));
        entry.record_refresh(reading(2_500_000_000, 900_000_100));
        assert_eq!(
            entry.cgroup.as_ref().map(|r| r.timestamp),
            Some(2_500_000_000)
        );
        assert_eq!(
            entry.nano_cores,
            Some(400_000_000),
            "the collector's window stays"
        );
        // An older refresh (finished after a newer tick) is dropped.
        entry.record_refresh(reading(2_200_000_000, 1));
        assert_eq!(
            entry.cgroup.as_ref().map(|r| r.timestamp),
            Some(2_500_000_000)
        );
        // The next tick measures against the last tick, not the refresh.
        entry.record_tick(reading(3_000_000_000, 1_000_000_100));
        assert_eq!(entry.nano_cores, Some(600_000_000));
        assert!(!entry.is_stale(3_500_000_000, Duration::from_secs(1)));
        assert!(entry.is_stale(4_500_000_000, Duration::from_secs(1)));
        assert!(Entry::default().is_stale(0, Duration::from_secs(1)));
    }

    #[test]
    fn a_pod_without_a_cgroup_sums_its_containers() {
        let container = |cpu: u64, memory: u64, pids: u64| CgroupStats {
            cpu: Some(CpuStats {
                usage_ns: cpu,
                user_ns: Some(cpu / 2),
                system_ns: None,
                throttling: None,
            }),
            memory: Some(MemoryStats {
                usage_bytes: memory,
                working_set_bytes: memory / 2,
                rss_bytes: memory / 4,
                page_faults: 10,
                major_page_faults: 1,
                limit_bytes: Some(1 << 30),
                oom_events: None,
                oom_kills: 0,
                swap: None,
                ..Default::default()
            }),
            pids: Some(PidsStats {
                current: pids,
                limit: Some(100),
            }),
            io: None,
        };
        let (a, b) = (container(100, 4096, 2), container(300, 8192, 3));
        let total = sum(&[&a, &b]);
        let cpu = total.cpu.expect("cpu");
        assert_eq!(
            (cpu.usage_ns, cpu.user_ns, cpu.system_ns),
            (400, Some(200), None)
        );
        let memory = total.memory.expect("memory");
        assert_eq!(
            (
                memory.usage_bytes,
                memory.working_set_bytes,
                memory.rss_bytes
            ),
            (12288, 6144, 3072)
        );
        assert_eq!((memory.page_faults, memory.major_page_faults), (20, 2));
        assert_eq!(
            memory.limit_bytes, None,
            "a pod without a cgroup has no limit"
        );
        assert_eq!(
            total.pids,
            Some(PidsStats {
                current: 5,
                limit: None
            })
        );
        assert_eq!(sum(&[]), CgroupStats::default());
    }
}
