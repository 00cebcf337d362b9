//! ContainerStats, ListContainerStats and StreamContainerStats: cached
//! samples as CRI `ContainerStats`.

use super::collector::{self, entries, is_live};
use super::sample::{Entry, LayerUsage};
use super::StatsError;
use crate::cgroups::{CpuStats, MemoryStats, SwapStats};
use crate::container::ContainerRecord;
use crate::runtime::Runtime;
use crate::Result;
use berth_proto::cri::v1 as cri;
use std::sync::Arc;

/// The stats of container `id` (an id or a unique prefix). An exited
/// container has only its attributes: its cgroup is gone.
pub async fn stats(state: &Arc<Runtime>, id: &str) -> Result<cri::ContainerStats> {
    let record = state
        .containers
        .find_created(id)?
        .ok_or_else(|| StatsError::ContainerNotFound(id.to_owned()))?;
    if !is_live(&record) {
        return Ok(to_cri(&record, None));
    }
    collector::refresh(state, vec![record.clone()], Vec::new()).await;
    let entry = state.stats.container(&record.id);
    Ok(to_cri(&record, entry.as_ref()))
}

/// The stats of the created and running containers that match `filter`,
/// oldest first.
pub async fn list(
    state: &Arc<Runtime>,
    filter: Option<&cri::ContainerStatsFilter>,
) -> Vec<cri::ContainerStats> {
    let mut records: Vec<ContainerRecord> = state
        .containers
        .list()
        .into_iter()
        .filter(is_live)
        .filter(|r| filter.is_none_or(|f| matches(r, f)))
        .collect();
    records.sort_by_key(|r| r.created_at);
    collector::refresh(state, records.clone(), Vec::new()).await;
    translate(state, &records)
}

/// The CRI stats of `records`, from the cache.
pub(super) fn translate(state: &Runtime, records: &[ContainerRecord]) -> Vec<cri::ContainerStats> {
    let known = entries(
        &state.stats.containers,
        records.iter().map(|r| r.id.clone()),
    );
    records
        .iter()
        .map(|r| to_cri(r, known.get(&r.id)))
        .collect()
}

/// True when the record passes every set field of `filter`; ids match as
/// prefixes, as in ListContainers.
pub fn matches(record: &ContainerRecord, filter: &cri::ContainerStatsFilter) -> bool {
    record.id.starts_with(&filter.id)
        && record.sandbox_id.starts_with(&filter.pod_sandbox_id)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| record.config.labels.get(k) == Some(v))
}

/// The CRI stats of a container from what is known of it.
pub fn to_cri(record: &ContainerRecord, entry: Option<&Entry>) -> cri::ContainerStats {
    let reading = entry.and_then(|e| e.cgroup.as_ref());
    let nano_cores = entry.and_then(|e| e.nano_cores);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(record.metadata()),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        }),
        cpu: reading.and_then(|r| Some(cpu_usage(r.timestamp, r.stats.cpu.as_ref()?, nano_cores))),
        memory: reading.and_then(|r| Some(memory_usage(r.timestamp, r.stats.memory.as_ref()?))),
        writable_layer: entry
            .and_then(|e| e.writable_layer.as_ref())
            .map(filesystem_usage),
        swap: reading.and_then(|r| {
            Some(swap_usage(
                r.timestamp,
                r.stats.memory.as_ref()?.swap.as_ref()?,
            ))
        }),
        io: None,
    }
}

fn value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// CPU as CRI reports it: cumulative core-nanoseconds, and the rate.
pub(super) fn cpu_usage(timestamp: i64, cpu: &CpuStats, nano_cores: Option<u64>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(cpu.usage_ns),
        usage_nano_cores: nano_cores.and_then(value),
        psi: None,
    }
}

/// Memory as CRI reports it; `available_bytes` only under a limit.
pub(super) fn memory_usage(timestamp: i64, memory: &MemoryStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp,
        working_set_bytes: value(memory.working_set_bytes),
        available_bytes: memory.available_bytes().and_then(value),
        usage_bytes: value(memory.usage_bytes),
        rss_bytes: value(memory.rss_bytes),
        page_faults: value(memory.page_faults),
        major_page_faults: value(memory.major_page_faults),
        psi: None,
    }
}

fn swap_usage(timestamp: i64, swap: &SwapStats) -> cri::SwapUsage {
    cri::SwapUsage {
        timestamp,
        swap_available_bytes: swap
            .limit_bytes
            .map(|limit| limit.saturating_sub(swap.usage_bytes))
            .and_then(value),
        swap_usage_bytes: value(swap.usage_bytes),
    }
}

fn filesystem_usage(layer: &LayerUsage) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: layer.timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: layer.mountpoint.clone(),
        }),
        used_bytes: value(layer.bytes),
        inodes_used: value(layer.inodes),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::sample::Reading;
    use super::*;
    use crate::cgroups::{CgroupStats, PidsStats};
    use crate::container::record::{ImageInfo, ProcessUser, CONTAINER_RECORD_VERSION};
    use crate::container::ContainerState;

    pub(in crate::stats) fn record() -> ContainerRecord {
        ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: "c0ffee".into(),
            sandbox_id: "pod1".into(),
            name: "web_pod_ns_uid_0".into(),
            config: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 2,
                }),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                annotations: [("note".to_owned(), "kept".to_owned())].into(),
                ..Default::default()
            },
            image: ImageInfo::default(),
            bundle: "/b".into(),
            log_path: String::new(),
            runtime: "runc".into(),
            shim: None,
            task_api: Default::default(),
            cgroup_path: "/berth/c0ffee".into(),
            stop_signal: "SIGTERM".into(),
            user: ProcessUser::default(),
            state: ContainerState::Running,
            created_at: 1,
            started_at: 2,
            finished_at: 0,
            pid: 42,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            resources: Default::default(),
        }
    }

    fn memory(limit: Option<u64>, swap: Option<SwapStats>) -> MemoryStats {
        MemoryStats {
            usage_bytes: 64 << 20,
            working_set_bytes: 60 << 20,
            rss_bytes: 50 << 20,
            page_faults: 1234,
            major_page_faults: 5,
            limit_bytes: limit,
            oom_events: None,
            oom_kills: 0,
            swap,
            ..Default::default()
        }
    }

    #[test]
    fn a_sample_becomes_cri_stats() {
        let entry = Entry {
            cgroup: Some(Reading {
                timestamp: 7_000,
                stats: CgroupStats {
                    cpu: Some(CpuStats {
                        usage_ns: 2_500_000_000,
                        ..Default::default()
                    }),
                    memory: Some(memory(
                        Some(128 << 20),
                        Some(SwapStats {
                            usage_bytes: 1 << 20,
                            limit_bytes: Some(16 << 20),
                        }),
                    )),
                    pids: Some(PidsStats {
                        current: 3,
                        limit: None,
                    }),
                    io: None,
                },
            }),
            nano_cores: Some(850_000_000),
            writable_layer: Some(LayerUsage {
                timestamp: 6_000,
                mountpoint: "/var/lib".into(),
                bytes: 40960,
                inodes: 7,
            }),
            ..Default::default()
        };
        let stats = to_cri(&record(), Some(&entry));
        let attributes = stats.attributes.expect("attributes");
        assert_eq!(attributes.id, "c0ffee");
        assert_eq!(attributes.metadata.expect("metadata").name, "web");
        assert_eq!(attributes.labels["app"], "web");
        assert_eq!(attributes.annotations["note"], "kept");
        let cpu = stats.cpu.expect("cpu");
        assert_eq!(cpu.timestamp, 7_000);
        assert_eq!(cpu.usage_core_nano_seconds, value(2_500_000_000));
        assert_eq!(cpu.usage_nano_cores, value(850_000_000));
        let memory = stats.memory.expect("memory");
        assert_eq!(memory.timestamp, 7_000);
        assert_eq!(memory.working_set_bytes, value(60 << 20));
        assert_eq!(
            memory.available_bytes,
            value(68 << 20),
            "limit − working set"
        );
        assert_eq!(memory.usage_bytes, value(64 << 20));
        assert_eq!(memory.rss_bytes, value(50 << 20));
        assert_eq!(memory.page_faults, value(1234));
        assert_eq!(memory.major_page_faults, value(5));
        let swap = stats.swap.expect("swap");
        assert_eq!(swap.swap_usage_bytes, value(1 << 20));
        assert_eq!(swap.swap_available_bytes, value(15 << 20));
        let layer = stats.writable_layer.expect("writable layer");
        assert_eq!(layer.timestamp, 6_000);
        assert_eq!(layer.fs_id.expect("fs id").mountpoint, "/var/lib");
        assert_eq!(
            (layer.used_bytes, layer.inodes_used),
            (value(40960), value(7))
        );
    }

    #[test]
    fn what_is_unknown_is_left_out() {
        let entry = Entry {
            cgroup: Some(Reading {
                timestamp: 1,
                stats: CgroupStats {
                    cpu: Some(CpuStats::default()),
                    memory: Some(memory(None, None)),
                    ..Default::default()
                },
            }),
            ..Default::default()
        };
        let stats = to_cri(&record(), Some(&entry));
        assert_eq!(
            stats.cpu.expect("cpu").usage_nano_cores,
            None,
            "one sample has no rate"
        );
        assert_eq!(
            stats.memory.expect("memory").available_bytes,
            None,
            "no limit"
        );
        assert_eq!(stats.swap, None, "swap not accounted");
        assert_eq!(stats.writable_layer, None);
        let bare = to_cri(&record(), None);
        assert!(bare.attributes.is_some());
        assert_eq!((bare.cpu, bare.memory), (None, None));
    }

    #[test]
    fn filters_match_ids_pods_and_labels() {
        let r = record();
        let filter = |id: &str, pod: &str, labels: &[(&str, &str)]| cri::ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        assert!(matches(&r, &filter("", "", &[])));
        assert!(matches(&r, &filter("c0f", "pod", &[("app", "web")])));
        assert!(!matches(&r, &filter("d", "", &[])));
        assert!(!matches(&r, &filter("", "pod2", &[])));
        assert!(!matches(&r, &filter("", "", &[("app", "db")])));
    }
}
