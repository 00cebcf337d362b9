//! PodSandboxStats, ListPodSandboxStats and StreamPodSandboxStats: cached
//! samples as CRI `PodSandboxStats`, with the pod's containers inside.

use super::collector::{self, is_live, is_ready};
use super::container::{cpu_usage, memory_usage, translate};
use super::network::InterfaceStats;
use super::sample::{Entry, NetworkReading};
use super::StatsError;
use crate::container::ContainerRecord;
use crate::runtime::Runtime;
use crate::sandbox::network::IFNAME;
use crate::sandbox::SandboxRecord;
use crate::Result;
use berth_proto::cri::v1 as cri;
use std::sync::Arc;

/// The stats of pod `id` (an id or a unique prefix). A pod that is not
/// ready has only its attributes.
pub async fn stats(state: &Arc<Runtime>, id: &str) -> Result<cri::PodSandboxStats> {
    let record = state
        .sandboxes
        .find_created(id)?
        .ok_or_else(|| StatsError::PodNotFound(id.to_owned()))?;
    let mut all = answer(state, vec![record]).await;
    Ok(all.pop().expect("one pod asked, one answered"))
}

/// The stats of the ready pods that match `filter`, oldest first.
pub async fn list(
    state: &Arc<Runtime>,
    filter: Option<&cri::PodSandboxStatsFilter>,
) -> Vec<cri::PodSandboxStats> {
    let mut records: Vec<SandboxRecord> = state
        .sandboxes
        .list()
        .into_iter()
        .filter(is_ready)
        .filter(|r| filter.is_none_or(|f| matches(r, f)))
        .collect();
    records.sort_by_key(|r| r.created_at);
    answer(state, records).await
}

async fn answer(state: &Arc<Runtime>, pods: Vec<SandboxRecord>) -> Vec<cri::PodSandboxStats> {
    let ready: Vec<SandboxRecord> = pods.iter().filter(|p| is_ready(p)).cloned().collect();
    let members = |pod: &SandboxRecord| -> Vec<ContainerRecord> {
        let mut containers: Vec<ContainerRecord> = state
            .containers
            .in_sandbox(&pod.id)
            .into_iter()
            .filter(is_live)
            .collect();
        containers.sort_by_key(|c| c.created_at);
        containers
    };
    let containers: Vec<ContainerRecord> = ready.iter().flat_map(members).collect();
    collector::refresh(state, containers, ready).await;
    pods.iter()
        .map(|pod| {
            let (entry, containers) = if is_ready(pod) {
                (state.stats.pod(&pod.id), translate(state, &members(pod)))
            } else {
                (None, Vec::new())
            };
            to_cri(pod, entry.as_ref(), containers)
        })
        .collect()
}

/// True when the record passes every set field of `filter`; the id
/// matches as a prefix.
pub fn matches(record: &SandboxRecord, filter: &cri::PodSandboxStatsFilter) -> bool {
    record.id.starts_with(&filter.id)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| record.config.labels.get(k) == Some(v))
}

/// The CRI stats of a pod from what is known of it and its containers'
/// stats.
pub fn to_cri(
    record: &SandboxRecord,
    entry: Option<&Entry>,
    containers: Vec<cri::ContainerStats>,
) -> cri::PodSandboxStats {
    let reading = entry.and_then(|e| e.cgroup.as_ref());
    let nano_cores = entry.and_then(|e| e.nano_cores);
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: record.id.clone(),
            metadata: Some(record.metadata()),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: reading
                .and_then(|r| Some(cpu_usage(r.timestamp, r.stats.cpu.as_ref()?, nano_cores))),
            memory: reading.and_then(|r| Some(memory_usage(r.timestamp, r.stats.memory.as_ref()?))),
            network: entry.and_then(|e| e.network.as_ref()).map(network_usage),
            process: reading.and_then(|r| {
                Some(cri::ProcessUsage {
                    timestamp: r.timestamp,
                    process_count: Some(cri::UInt64Value {
                        value: r.stats.pids.as_ref()?.current,
                    }),
                })
            }),
            containers,
            io: None,
        }),
        windows: None,
    }
}

/// The pod's interfaces: `eth0` (where CNI attaches the pod) as the
/// default, the others but loopback after it.
fn network_usage(network: &NetworkReading) -> cri::NetworkUsage {
    let usage = |i: &InterfaceStats| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: Some(cri::UInt64Value { value: i.rx_bytes }),
        rx_errors: Some(cri::UInt64Value { value: i.rx_errors }),
        tx_bytes: Some(cri::UInt64Value { value: i.tx_bytes }),
        tx_errors: Some(cri::UInt64Value { value: i.tx_errors }),
    };
    cri::NetworkUsage {
        timestamp: network.timestamp,
        default_interface: network
            .interfaces
            .iter()
            .find(|i| i.name == IFNAME)
            .map(usage),
        interfaces: network
            .interfaces
            .iter()
            .filter(|i| i.name != IFNAME && i.name != "lo")
            .map(usage)
            .collect(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::sample::Reading;
    use super::*;
    use crate::cgroups::{CgroupStats, CpuStats, PidsStats};
    use crate::sandbox::{NamespacePaths, SandboxState, SANDBOX_RECORD_VERSION};

    pub(in crate::stats) fn record() -> SandboxRecord {
        SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: "p0d".into(),
            name: "web_ns_uid_0".into(),
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    ..Default::default()
                }),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            created_at: 1,
            dir: "/d".into(),
            namespaces: NamespacePaths::default(),
            init_pid: None,
            network: None,
            resources: Default::default(),
        }
    }

    fn interface(name: &str, rx: u64) -> InterfaceStats {
        InterfaceStats {
            name: name.into(),
            rx_bytes: rx,
            rx_errors: 1,
            tx_bytes: rx / 2,
            tx_errors: 2,
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_sample_becomes_cri_stats() {
        let entry = Entry {
            cgroup: Some(Reading {
                timestamp: 9,
                stats: CgroupStats {
                    cpu: Some(CpuStats {
                        usage_ns: 77,
                        ..Default::default()
                    }),
                    pids: Some(PidsStats {
                        current: 4,
                        limit: None,
                    }),
                    ..Default::default()
                },
            }),
            nano_cores: Some(5),
            network: Some(NetworkReading {
                timestamp: 8,
                interfaces: vec![
                    interface("lo", 10),
                    interface("eth0", 1000),
                    interface("net1", 30),
                ],
            }),
            ..Default::default()
        };
        let container = cri::ContainerStats::default();
        let stats = to_cri(&record(), Some(&entry), vec![container.clone()]);
        assert_eq!(stats.attributes.as_ref().expect("attributes").id, "p0d");
        let linux = stats.linux.expect("linux");
        let cpu = linux.cpu.expect("cpu");
        assert_eq!(
            (cpu.timestamp, cpu.usage_core_nano_seconds.map(|v| v.value)),
            (9, Some(77))
        );
        assert_eq!(cpu.usage_nano_cores.map(|v| v.value), Some(5));
        assert_eq!(linux.memory, None, "no memory controller");
        let process = linux.process.expect("process");
        assert_eq!(
            (process.timestamp, process.process_count.map(|v| v.value)),
            (9, Some(4))
        );
        let network = linux.network.expect("network");
        assert_eq!(network.timestamp, 8);
        let eth0 = network.default_interface.expect("eth0");
        assert_eq!(eth0.name, "eth0");
        assert_eq!(
            (eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors),
            (
                Some(cri::UInt64Value { value: 1000 }),
                Some(cri::UInt64Value { value: 1 }),
                Some(cri::UInt64Value { value: 500 }),
                Some(cri::UInt64Value { value: 2 })
            )
        );
        let others: Vec<&str> = network.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(others, vec!["net1"], "loopback is left out");
        assert_eq!(linux.containers, vec![container]);
    }

    #[test]
    fn filters_match_ids_and_labels() {
        let r = record();
        let filter = |id: &str, app: &str| cri::PodSandboxStatsFilter {
            id: id.into(),
            label_selector: [("app".to_owned(), app.to_owned())].into(),
        };
        assert!(matches(&r, &filter("p0", "web")));
        assert!(!matches(&r, &filter("x", "web")));
        assert!(!matches(&r, &filter("", "db")));
        assert!(matches(&r, &cri::PodSandboxStatsFilter::default()));
    }
}
