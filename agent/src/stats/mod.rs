//! Container and pod stats for the CRI (what kubelet's summary API,
//! eviction and `kubectl top` read): a periodic collector and its cache.
//!
//! Layout: [`collector`] samples (the periodic rounds, and the refresh a
//! call asks for), `sample.rs` is what is kept per container and pod (the
//! [`StatsCache`]), [`container`] and [`pod`] answer the stats RPCs by
//! turning cached samples into CRI messages, [`cri_metrics`] answers the
//! CRI metrics RPCs from the same samples, `network.rs` reads a pod's
//! interfaces inside its network namespace.
//!
//! Where the numbers come from: cgroup counters through
//! [`crate::cgroups::Cgroup::stats`] (v1 and v2, either driver), the
//! writable layer from the snapshotter's usage of the container's active
//! snapshot, a pod's interfaces from `/proc/thread-self/net/dev` in its
//! namespace, its process count from `pids.current`. A pod with a cgroup
//! (`cgroup_parent`, kubelet always sets one) reports that cgroup; a pod
//! without one reports the sums of its containers'.
//!
//! `usage_nano_cores` is the CPU rate between the collector's last two
//! rounds, one period (`stats.collect_period_ms`, 5 s by default) apart:
//! kubelet's housekeeping asks every 10 s, so every answer holds a rate at
//! most half of that old. Cumulative counters are refreshed for a call when
//! older than [`collector::MAX_AGE`]; see [`collector`] for how a call
//! never waits on a slow container.

pub mod collector;
pub mod container;
pub mod cri_metrics;
mod network;
pub mod pod;
mod sample;

pub use network::{InterfaceStats, NetworkStatsError};
pub use sample::{nano_cores, Entry, LayerUsage, NetworkReading, Reading, StatsCache};

use crate::error::ErrorKind;

/// Why a stats call failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("container_id {0:?}: no such container")]
    ContainerNotFound(String),
    #[error("pod_sandbox_id {0:?}: no such pod sandbox")]
    PodNotFound(String),
}

impl StatsError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::ContainerNotFound(_) | Self::PodNotFound(_) => ErrorKind::NotFound,
        }
    }
}
