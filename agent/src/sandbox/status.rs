//! PodSandboxStatus: the CRI view of a sandbox record.

use super::{SandboxError, SandboxRecord, SandboxState, Sandboxes};
use crate::Result;
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;

/// The status of sandbox `id` (an id or a unique prefix); `NotFound` for an
/// unknown one, or one still being created.
pub fn status(
    sandboxes: &Sandboxes,
    id: &str,
    verbose: bool,
) -> Result<cri::PodSandboxStatusResponse> {
    let record = sandboxes
        .find_created(id)?
        .ok_or_else(|| SandboxError::NotFound(id.to_owned()))?;
    let mut info = HashMap::new();
    if verbose {
        info.insert("info".to_owned(), verbose_info(&record).to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(to_cri_status(&record)),
        info,
        containers_statuses: Vec::new(),
        timestamp: super::now_nanos(),
    })
}

/// The CRI status of a record.
pub fn to_cri_status(record: &SandboxRecord) -> cri::PodSandboxStatus {
    let host_network = record.namespaces.net.is_none();
    let ips = record.ips();
    let network = (!host_network).then(|| cri::PodSandboxNetworkStatus {
        ip: ips.first().cloned().unwrap_or_default(),
        additional_ips: ips
            .iter()
            .skip(1)
            .map(|ip| cri::PodIp { ip: ip.clone() })
            .collect(),
    });
    cri::PodSandboxStatus {
        id: record.id.clone(),
        metadata: Some(record.metadata()),
        state: cri_state(record.effective_state()) as i32,
        created_at: record.created_at,
        network,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(record.namespace_options()),
            }),
        }),
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

/// The CRI state of a sandbox.
pub fn cri_state(state: SandboxState) -> cri::PodSandboxState {
    match state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::Creating | SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

/// What `crictl inspectp` shows under `info`.
fn verbose_info(record: &SandboxRecord) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "name": record.name,
        "state": record.state,
        "dir": record.dir,
        "namespaces": record.namespaces,
        "initPid": record.init_pid,
        "runtimeHandler": record.runtime_handler,
        "network": record.network.as_ref().map(|n| serde_json::json!({
            "name": n.name,
            "source": n.source,
            "detached": n.detached,
            "cniResult": n.result,
        })),
        "overhead": record.resources.overhead.as_ref().map(resources_json),
        "resources": record.resources.resources.as_ref().map(resources_json),
    })
}

/// CRI Linux resources as `crictl inspectp` shows them.
fn resources_json(resources: &cri::LinuxContainerResources) -> serde_json::Value {
    let hugepages: Vec<serde_json::Value> = resources
        .hugepage_limits
        .iter()
        .map(|h| serde_json::json!({"pageSize": h.page_size, "limit": h.limit}))
        .collect();
    serde_json::json!({
        "cpuPeriod": resources.cpu_period,
        "cpuQuota": resources.cpu_quota,
        "cpuShares": resources.cpu_shares,
        "memoryLimitInBytes": resources.memory_limit_in_bytes,
        "memorySwapLimitInBytes": resources.memory_swap_limit_in_bytes,
        "oomScoreAdj": resources.oom_score_adj,
        "cpusetCpus": resources.cpuset_cpus,
        "cpusetMems": resources.cpuset_mems,
        "hugepageLimits": hugepages,
        "unified": resources.unified,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{NamespacePaths, NetworkRecord, SANDBOX_RECORD_VERSION};
    use super::*;

    fn record(state: SandboxState, host_network: bool) -> SandboxRecord {
        SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: "abc".into(),
            name: "web_default_uid_1".into(),
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid".into(),
                    namespace: "default".into(),
                    attempt: 1,
                }),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                annotations: [("a".to_owned(), "b".to_owned())].into(),
                ..Default::default()
            },
            runtime_handler: "runc".into(),
            state,
            created_at: 42,
            dir: "/run/berth/sandboxes/abc".into(),
            namespaces: NamespacePaths {
                net: (!host_network).then(|| "/run/berth/sandboxes/abc/netns".into()),
                ..Default::default()
            },
            init_pid: None,
            network: (!host_network).then(|| NetworkRecord {
                name: "n".into(),
                cni_version: "1.0.0".into(),
                plugin_types: vec!["bridge".into()],
                source: "x".into(),
                config: "{}".into(),
                result: None,
                ips: vec!["10.88.0.5".into(), "fd00::5".into()],
                detached: false,
                pod_cidrs: Vec::new(),
            }),
            resources: Default::default(),
        }
    }

    #[test]
    fn ready_pod_reports_its_ips() {
        let status = to_cri_status(&record(SandboxState::Ready, false));
        assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
        let network = status.network.expect("network");
        assert_eq!(network.ip, "10.88.0.5");
        assert_eq!(
            network.additional_ips,
            vec![cri::PodIp {
                ip: "fd00::5".into()
            }]
        );
        assert_eq!(status.created_at, 42);
        assert_eq!(status.labels["app"], "web");
        assert_eq!(status.annotations["a"], "b");
        assert_eq!(status.runtime_handler, "runc");
        assert_eq!(status.metadata.expect("metadata").attempt, 1);
    }

    #[test]
    fn stopped_or_host_network_pods_have_no_ip() {
        let status = to_cri_status(&record(SandboxState::NotReady, false));
        assert_eq!(status.state, cri::PodSandboxState::SandboxNotready as i32);
        assert_eq!(status.network.expect("network").ip, "");
        assert!(to_cri_status(&record(SandboxState::Ready, true))
            .network
            .is_none());
    }
}
