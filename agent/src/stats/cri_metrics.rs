//! ListMetricDescriptors, ListPodSandboxMetrics and
//! StreamPodSandboxMetrics: the collector's samples as cAdvisor-named
//! metrics, so kubelet can serve `/metrics/cadvisor` from the CRI
//! (`PodAndContainerStatsFromCRI`) instead of running cAdvisor.
//!
//! Every metric has cAdvisor's labels `container`, `id`, `image`, `name`,
//! `namespace`, `pod`, then its own (`interface`, `device`, ...). The
//! pod's network metrics are the pod's (`container` is `POD`, as cAdvisor
//! names a pod's sandbox); the others are per container. CRI carries
//! values as integers: the `_seconds` metrics are whole seconds.
//! `docs/metrics.md` lists them all.

use super::collector::{self, entries, is_live, is_ready};
use super::sample::Entry;
use crate::cgroups::Cgroup;
use crate::container::ContainerRecord;
use crate::runtime::Runtime;
use crate::sandbox::SandboxRecord;
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;
use std::sync::Arc;

use cri::MetricType::{Counter, Gauge};

/// The labels every metric starts with, cAdvisor's.
pub const BASE_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

/// One metric berth serves: name, help, type, its own labels.
#[derive(Debug)]
pub struct Descriptor {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: cri::MetricType,
    pub labels: &'static [&'static str],
}

const fn d(
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    labels: &'static [&'static str],
) -> Descriptor {
    Descriptor {
        name,
        help,
        kind,
        labels,
    }
}

const DEVICE: &[&str] = &["device"];
const INTERFACE: &[&str] = &["interface"];

/// Every metric, in the order of `docs/metrics.md`.
pub const DESCRIPTORS: &[Descriptor] = &[
    d(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        Counter,
        &[],
    ),
    d(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
        &[],
    ),
    d("container_memory_rss", "Size of RSS in bytes.", Gauge, &[]),
    d(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_swap",
        "Container swap usage in bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        Counter,
        &[],
    ),
    d(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        Counter,
        &["failure_type", "scope"],
    ),
    d(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        Counter,
        &[],
    ),
    d(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
        &[],
    ),
    d(
        "container_threads",
        "Number of threads running inside the container.",
        Gauge,
        &[],
    ),
    d(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        Gauge,
        &[],
    ),
    d(
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        Gauge,
        &[],
    ),
    d(
        "container_sockets",
        "Number of open sockets for the container.",
        Gauge,
        &[],
    ),
    d(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_inodes_total",
        "Number of Inodes.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_inodes_free",
        "Number of available Inodes.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read.",
        Counter,
        DEVICE,
    ),
    d(
        "container_fs_reads_total",
        "Cumulative count of reads completed.",
        Counter,
        DEVICE,
    ),
    d(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        Counter,
        DEVICE,
    ),
    d(
        "container_fs_writes_total",
        "Cumulative count of writes completed.",
        Counter,
        DEVICE,
    ),
    d(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        Counter,
        &["device", "major", "minor", "operation"],
    ),
    d(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        Counter,
        INTERFACE,
    ),
    d(
        "container_spec_cpu_period",
        "CPU period of the container.",
        Gauge,
        &[],
    ),
    d(
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        Gauge,
        &[],
    ),
    d(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        Gauge,
        &[],
    ),
    d(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Gauge,
        &[],
    ),
    d(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        Gauge,
        &[],
    ),
    d(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Gauge,
        &[],
    ),
    d(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        Gauge,
        &[],
    ),
];

/// The descriptors, as ListMetricDescriptors answers.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: BASE_LABELS
                .iter()
                .chain(d.labels)
                .map(|l| (*l).to_owned())
                .collect(),
        })
        .collect()
}

fn descriptor(name: &str) -> &'static Descriptor {
    DESCRIPTORS
        .iter()
        .find(|d| d.name == name)
        .expect("every metric berth emits has a descriptor")
}

/// What a container's processes hold, read from `/proc` for a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processes {
    pub count: u64,
    pub file_descriptors: u64,
    pub sockets: u64,
}

/// Counts the processes of `record`'s cgroup and their open files and
/// sockets. `None` when the cgroup is gone.
fn processes(state: &Runtime, record: &ContainerRecord) -> Option<Processes> {
    let cgroup = Cgroup::of_container(&state.cgroup_layout, &record.cgroup_path).ok()?;
    let pids = cgroup.processes().ok()?;
    let mut counted = Processes {
        count: pids.len() as u64,
        ..Processes::default()
    };
    for pid in pids {
        // A process that exits meanwhile holds nothing.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            counted.file_descriptors += 1;
            if std::fs::read_link(fd.path()).is_ok_and(|target| {
                target
                    .as_os_str()
                    .as_encoded_bytes()
                    .starts_with(b"socket:")
            }) {
                counted.sockets += 1;
            }
        }
    }
    Some(counted)
}

/// The metrics of every ready pod and its created and running containers.
pub async fn list(state: &Arc<Runtime>) -> Vec<cri::PodSandboxMetrics> {
    let mut pods: Vec<SandboxRecord> = state
        .sandboxes
        .list()
        .into_iter()
        .filter(is_ready)
        .collect();
    pods.sort_by_key(|p| p.created_at);
    let mut containers: Vec<ContainerRecord> = state
        .containers
        .list()
        .into_iter()
        .filter(is_live)
        .filter(|c| pods.iter().any(|p| p.id == c.sandbox_id))
        .collect();
    containers.sort_by_key(|c| c.created_at);
    collector::refresh(state, containers.clone(), pods.clone()).await;
    let blocking = state.clone();
    let records = containers.clone();
    let counted = tokio::time::timeout(
        collector::REFRESH_TIMEOUT,
        tokio::task::spawn_blocking(move || {
            records
                .iter()
                .filter_map(|r| Some((r.id.clone(), processes(&blocking, r)?)))
                .collect::<HashMap<String, Processes>>()
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let capacity = state.images.snapshotter().capacity().ok();
    let container_entries = entries(
        &state.stats.containers,
        containers.iter().map(|c| c.id.clone()),
    );
    let pod_entries = entries(&state.stats.pods, pods.iter().map(|p| p.id.clone()));
    pods.iter()
        .map(|pod| cri::PodSandboxMetrics {
            pod_sandbox_id: pod.id.clone(),
            metrics: pod_metrics(pod, pod_entries.get(&pod.id)),
            container_metrics: containers
                .iter()
                .filter(|c| c.sandbox_id == pod.id)
                .map(|c| cri::ContainerMetrics {
                    container_id: c.id.clone(),
                    metrics: container_metrics(
                        pod,
                        c,
                        container_entries.get(&c.id),
                        counted.get(&c.id).copied(),
                        capacity.as_ref(),
                    ),
                })
                .collect(),
        })
        .collect()
}

/// Builds metrics with one set of base label values.
struct Emitter {
    base: Vec<String>,
    timestamp: i64,
    out: Vec<cri::Metric>,
}

impl Emitter {
    fn emit(&mut self, name: &str, extra: &[&str], value: u64) {
        let descriptor = descriptor(name);
        debug_assert_eq!(descriptor.labels.len(), extra.len(), "{name}");
        self.out.push(cri::Metric {
            name: name.to_owned(),
            timestamp: self.timestamp,
            metric_type: descriptor.kind as i32,
            label_values: self
                .base
                .iter()
                .cloned()
                .chain(extra.iter().map(|v| (*v).to_owned()))
                .collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }
}

fn pod_labels(
    pod: &SandboxRecord,
    container: &str,
    id: &str,
    image: &str,
    name: &str,
) -> Vec<String> {
    let metadata = pod.metadata();
    vec![
        container.to_owned(),
        id.to_owned(),
        image.to_owned(),
        name.to_owned(),
        metadata.namespace,
        metadata.name,
    ]
}

const SECOND: u64 = 1_000_000_000;

/// The pod's own metrics: its interfaces (loopback left out).
pub fn pod_metrics(pod: &SandboxRecord, entry: Option<&Entry>) -> Vec<cri::Metric> {
    let Some(network) = entry.and_then(|e| e.network.as_ref()) else {
        return Vec::new();
    };
    let mut e = Emitter {
        base: pod_labels(pod, "POD", &pod.id, "", &pod.name),
        timestamp: network.timestamp,
        out: Vec::new(),
    };
    for i in network.interfaces.iter().filter(|i| i.name != "lo") {
        let name = [i.name.as_str()];
        e.emit("container_network_receive_bytes_total", &name, i.rx_bytes);
        e.emit(
            "container_network_receive_packets_total",
            &name,
            i.rx_packets,
        );
        e.emit(
            "container_network_receive_packets_dropped_total",
            &name,
            i.rx_dropped,
        );
        e.emit("container_network_receive_errors_total", &name, i.rx_errors);
        e.emit("container_network_transmit_bytes_total", &name, i.tx_bytes);
        e.emit(
            "container_network_transmit_packets_total",
            &name,
            i.tx_packets,
        );
        e.emit(
            "container_network_transmit_packets_dropped_total",
            &name,
            i.tx_dropped,
        );
        e.emit(
            "container_network_transmit_errors_total",
            &name,
            i.tx_errors,
        );
    }
    e.out
}

/// A container's metrics from what is known of it.
pub fn container_metrics(
    pod: &SandboxRecord,
    record: &ContainerRecord,
    entry: Option<&Entry>,
    processes: Option<Processes>,
    capacity: Option<&berth_snapshotter::Capacity>,
) -> Vec<cri::Metric> {
    let image = record
        .image
        .repo_tag
        .clone()
        .unwrap_or_else(|| record.image.name.clone());
    let reading = entry.and_then(|e| e.cgroup.as_ref());
    let mut e = Emitter {
        base: pod_labels(
            pod,
            &record.metadata().name,
            &record.id,
            &image,
            &record.name,
        ),
        timestamp: reading.map_or(0, |r| r.timestamp),
        out: Vec::new(),
    };
    let positive = |v: i64| u64::try_from(v).unwrap_or(0);
    let r = &record.resources;
    e.emit("container_spec_cpu_period", &[], positive(r.cpu_period));
    e.emit("container_spec_cpu_quota", &[], positive(r.cpu_quota));
    e.emit("container_spec_cpu_shares", &[], positive(r.cpu_shares));
    e.emit(
        "container_spec_memory_limit_bytes",
        &[],
        positive(r.memory_limit_in_bytes),
    );
    e.emit(
        "container_spec_memory_swap_limit_bytes",
        &[],
        positive(r.memory_swap_limit_in_bytes),
    );
    e.emit(
        "container_start_time_seconds",
        &[],
        positive(record.started_at) / SECOND,
    );
    if let Some(reading) = reading {
        e.emit(
            "container_last_seen",
            &[],
            positive(reading.timestamp) / SECOND,
        );
        let stats = &reading.stats;
        if let Some(cpu) = &stats.cpu {
            e.emit(
                "container_cpu_usage_seconds_total",
                &[],
                cpu.usage_ns / SECOND,
            );
            if let Some(user) = cpu.user_ns {
                e.emit("container_cpu_user_seconds_total", &[], user / SECOND);
            }
            if let Some(system) = cpu.system_ns {
                e.emit("container_cpu_system_seconds_total", &[], system / SECOND);
            }
            if let Some(t) = &cpu.throttling {
                e.emit("container_cpu_cfs_periods_total", &[], t.periods);
                e.emit(
                    "container_cpu_cfs_throttled_periods_total",
                    &[],
                    t.throttled_periods,
                );
                e.emit(
                    "container_cpu_cfs_throttled_seconds_total",
                    &[],
                    t.throttled_ns / SECOND,
                );
            }
        }
        if let Some(m) = &stats.memory {
            e.emit("container_memory_usage_bytes", &[], m.usage_bytes);
            e.emit(
                "container_memory_working_set_bytes",
                &[],
                m.working_set_bytes,
            );
            e.emit("container_memory_rss", &[], m.rss_bytes);
            e.emit("container_memory_cache", &[], m.cache_bytes);
            e.emit("container_memory_mapped_file", &[], m.mapped_file_bytes);
            e.emit(
                "container_memory_swap",
                &[],
                m.swap.as_ref().map_or(0, |s| s.usage_bytes),
            );
            if let Some(kernel) = m.kernel_bytes {
                e.emit("container_memory_kernel_usage", &[], kernel);
            }
            if let Some(max) = m.max_usage_bytes {
                e.emit("container_memory_max_usage_bytes", &[], max);
            }
            if let Some(failcnt) = m.failcnt {
                e.emit("container_memory_failcnt", &[], failcnt);
            }
            // The counters include descendants; a container has none of its
            // own, so both scopes are the same numbers.
            for scope in ["container", "hierarchy"] {
                e.emit(
                    "container_memory_failures_total",
                    &["pgfault", scope],
                    m.page_faults,
                );
                e.emit(
                    "container_memory_failures_total",
                    &["pgmajfault", scope],
                    m.major_page_faults,
                );
            }
            e.emit(
                "container_oom_events_total",
                &[],
                m.oom_events.unwrap_or(m.oom_kills),
            );
        }
        if let Some(p) = &stats.pids {
            e.emit("container_threads", &[], p.current);
            e.emit("container_threads_max", &[], p.limit.unwrap_or(0));
        }
        for device in stats.io.iter().flatten() {
            let name = format!("{}:{}", device.major, device.minor);
            let (major, minor) = (device.major.to_string(), device.minor.to_string());
            let dev = [name.as_str()];
            e.emit("container_fs_reads_bytes_total", &dev, device.read_bytes);
            e.emit("container_fs_reads_total", &dev, device.read_ops);
            e.emit("container_fs_writes_bytes_total", &dev, device.write_bytes);
            e.emit("container_fs_writes_total", &dev, device.write_ops);
            for (operation, bytes) in [("Read", device.read_bytes), ("Write", device.write_bytes)] {
                e.emit(
                    "container_blkio_device_usage_total",
                    &[&name, &major, &minor, operation],
                    bytes,
                );
            }
        }
    }
    if let Some(p) = processes {
        e.emit("container_processes", &[], p.count);
        e.emit("container_file_descriptors", &[], p.file_descriptors);
        e.emit("container_sockets", &[], p.sockets);
    }
    if let Some(layer) = entry.and_then(|e| e.writable_layer.as_ref()) {
        let dev = [layer.mountpoint.as_str()];
        e.emit("container_fs_usage_bytes", &dev, layer.bytes);
        if let Some(c) = capacity {
            e.emit("container_fs_limit_bytes", &dev, c.total_bytes);
            e.emit("container_fs_inodes_total", &dev, c.total_inodes);
            e.emit("container_fs_inodes_free", &dev, c.free_inodes);
        }
    }
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_with_help_and_labels() {
        let all = descriptors();
        let mut names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "unique names");
        for d in &all {
            assert!(
                !d.help.is_empty() && d.label_keys.len() >= BASE_LABELS.len(),
                "{d:?}"
            );
            assert!(
                d.name.starts_with("container_"),
                "cAdvisor's names: {}",
                d.name
            );
        }
        let network = all
            .iter()
            .find(|d| d.name == "container_network_receive_bytes_total")
            .expect("network");
        assert_eq!(
            network.label_keys.last().map(String::as_str),
            Some("interface")
        );
    }

    #[test]
    fn samples_become_metrics_with_their_descriptors_labels() {
        use super::super::network::InterfaceStats;
        use super::super::sample::{LayerUsage, NetworkReading, Reading};
        use crate::cgroups::{CgroupStats, CpuStats, MemoryStats, PidsStats};
        let pod = super::super::pod::tests::record();
        let mut record = super::super::container::tests::record();
        record.image.repo_tag = Some("docker.io/library/busybox:1".into());
        record.started_at = 5_000_000_000;
        record.resources.cpu_shares = 512;
        record.resources.memory_limit_in_bytes = 1 << 20;
        let entry = Entry {
            cgroup: Some(Reading {
                timestamp: 9_000_000_000,
                stats: CgroupStats {
                    cpu: Some(CpuStats {
                        usage_ns: 2_500_000_000,
                        ..Default::default()
                    }),
                    memory: Some(MemoryStats {
                        working_set_bytes: 4096,
                        ..Default::default()
                    }),
                    pids: Some(PidsStats {
                        current: 3,
                        limit: None,
                    }),
                    io: None,
                },
            }),
            writable_layer: Some(LayerUsage {
                timestamp: 8,
                mountpoint: "/".into(),
                bytes: 100,
                inodes: 2,
            }),
            network: Some(NetworkReading {
                timestamp: 7,
                interfaces: vec![
                    InterfaceStats {
                        name: "lo".into(),
                        ..Default::default()
                    },
                    InterfaceStats {
                        name: "eth0".into(),
                        rx_bytes: 77,
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        let metrics = container_metrics(
            &pod,
            &record,
            Some(&entry),
            Some(Processes::default()),
            None,
        );
        let keys: HashMap<String, usize> = descriptors()
            .into_iter()
            .map(|d| (d.name, d.label_keys.len()))
            .collect();
        let value = |metrics: &[cri::Metric], name: &str| {
            metrics
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.value.as_ref())
                .map(|v| v.value)
        };
        for m in &metrics {
            assert_eq!(Some(&m.label_values.len()), keys.get(&m.name), "{m:?}");
        }
        assert_eq!(
            metrics[0].label_values[..6],
            [
                "web",
                "c0ffee",
                "docker.io/library/busybox:1",
                "web_pod_ns_uid_0",
                "",
                "web"
            ]
        );
        assert_eq!(
            value(&metrics, "container_cpu_usage_seconds_total"),
            Some(2),
            "whole seconds"
        );
        assert_eq!(
            value(&metrics, "container_memory_working_set_bytes"),
            Some(4096)
        );
        assert_eq!(value(&metrics, "container_threads"), Some(3));
        assert_eq!(
            value(&metrics, "container_threads_max"),
            Some(0),
            "unlimited"
        );
        assert_eq!(value(&metrics, "container_spec_cpu_shares"), Some(512));
        assert_eq!(
            value(&metrics, "container_spec_memory_limit_bytes"),
            Some(1 << 20)
        );
        assert_eq!(value(&metrics, "container_start_time_seconds"), Some(5));
        assert_eq!(value(&metrics, "container_last_seen"), Some(9));
        assert_eq!(value(&metrics, "container_fs_usage_bytes"), Some(100));
        assert_eq!(
            value(&metrics, "container_fs_limit_bytes"),
            None,
            "capacity unknown"
        );
        let pod_metrics = pod_metrics(&pod, Some(&entry));
        assert_eq!(
            pod_metrics.len(),
            8,
            "eth0's eight counters, loopback left out"
        );
        assert_eq!(
            value(&pod_metrics, "container_network_receive_bytes_total"),
            Some(77)
        );
        assert_eq!(pod_metrics[0].label_values[0], "POD");
        assert_eq!(pod_metrics[0].label_values[6], "eth0");
    }
}
