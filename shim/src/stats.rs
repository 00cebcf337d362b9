//! Container statistics as containerd's cgroup v1 `Metrics`
//! (`io.containerd.cgroups.v1.Metrics`, packed in `StatsResponse.stats`).
//!
//! The numbers come from one `runtime events --stats` sample: CPU usage
//! (total, kernel, user, per CPU, in nanoseconds) and throttling, memory
//! usage / limit / max / failcnt, swap and kernel memory, the main
//! `memory.stat` counters (rss, cache, mapped_file, active/inactive file,
//! page faults and their `total_` forms: the kubelet's working set is
//! `usage - total_inactive_file`) and pids. Block IO, hugetlb and network
//! are left empty. This machine runs cgroup v1; on cgroup v2 runc reports
//! v2 counters under the same names where they exist, and the v1-only
//! ones stay zero. crun has no `events` command, so stats need runc.

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim_protos::protobuf::MessageField;

use crate::oci_runtime::{self, Stats};

/// The protobuf package of [`Metrics`].
pub const METRICS_PACKAGE: &str = "io.containerd.cgroups.v1";

pub fn to_metrics(s: &Stats) -> Metrics {
    let raw = |key: &str| s.memory.raw.get(key).copied().unwrap_or(0);
    let entry = |e: &oci_runtime::MemoryEntry| MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    };
    Metrics {
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: s.cpu.usage.total,
                kernel: s.cpu.usage.kernel,
                user: s.cpu.usage.user,
                per_cpu: s.cpu.usage.percpu.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(Throttle {
                periods: s.cpu.throttling.periods,
                throttled_periods: s.cpu.throttling.throttled_periods,
                throttled_time: s.cpu.throttling.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            cache: s.memory.cache,
            rss: raw("rss"),
            mapped_file: raw("mapped_file"),
            pg_fault: raw("pgfault"),
            pg_maj_fault: raw("pgmajfault"),
            inactive_file: raw("inactive_file"),
            active_file: raw("active_file"),
            total_cache: raw("total_cache"),
            total_rss: raw("total_rss"),
            total_mapped_file: raw("total_mapped_file"),
            total_pg_fault: raw("total_pgfault"),
            total_pg_maj_fault: raw("total_pgmajfault"),
            total_inactive_file: raw("total_inactive_file"),
            total_active_file: raw("total_active_file"),
            usage: MessageField::some(entry(&s.memory.usage)),
            swap: MessageField::some(entry(&s.memory.swap)),
            kernel: MessageField::some(entry(&s.memory.kernel)),
            ..Default::default()
        }),
        pids: MessageField::some(PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_runc_sample() {
        let stats: Stats = serde_json::from_str(
            r#"{"cpu":{"usage":{"total":11,"percpu":[5,6],"kernel":1,"user":10},"throttling":{"periods":3}},
                "memory":{"cache":4,"usage":{"limit":100,"usage":50,"max":60,"failcnt":1},
                          "raw":{"rss":9,"total_inactive_file":7,"total_pgfault":2}},
                "pids":{"current":2,"limit":10}}"#,
        )
        .expect("parse");
        let m = to_metrics(&stats);
        assert_eq!(m.cpu.usage.total, 11);
        assert_eq!(m.cpu.usage.per_cpu, vec![5, 6]);
        assert_eq!(m.cpu.throttling.periods, 3);
        assert_eq!(m.memory.usage.usage, 50);
        assert_eq!(m.memory.usage.limit, 100);
        assert_eq!((m.memory.cache, m.memory.rss), (4, 9));
        assert_eq!(m.memory.total_inactive_file, 7);
        assert_eq!(m.memory.total_pg_fault, 2);
        assert_eq!((m.pids.current, m.pids.limit), (2, 10));
    }
}
