//! A pod's CNI attachment: ADD when the sandbox runs, DEL when it stops.
//!
//! berth runs the `loopback` plugin itself (for `lo`), then the configured
//! network on `eth0`, with the `CNI_ARGS` kubelet's runtimes pass
//! (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`,
//! `K8S_POD_UID`) and the `portMappings` capability from the pod's port
//! mappings that have a host port, and the `ipRanges` capability from the
//! node's pod CIDRs (see [`crate::network::pod_cidr`]).
//!
//! DEL uses the network list and ADD result cached in the sandbox record,
//! so it runs the plugins that made the attachment even after the config
//! directory changed. A DEL that keeps failing (a broken or removed
//! plugin) is retried [`DEL_ATTEMPTS`] times, each bounded by
//! [`DEL_TIMEOUT`] (or `cni.plugin_timeout_seconds` when shorter); then berth gives up and cleans up by force: removing
//! the network namespace (which happens next anyway) destroys the pod's
//! interfaces, and `host-local` address reservations held by the pod are
//! deleted, so a dead plugin never blocks pod deletion nor leaks the pod's
//! IP. What a broken plugin made elsewhere (e.g. iptables rules of
//! portmap) is reported in the log.

use super::{NetworkRecord, SandboxRecord};
use crate::network::cni::{self, Attachment, CniError, Plugins};
use crate::network::cni_config::NetworkConfigList;
use crate::network::pod_cidr;
use berth_proto::cri::v1 as cri;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// The pod's interface.
pub const IFNAME: &str = "eth0";
/// How many times DEL is tried before the forced cleanup.
pub const DEL_ATTEMPTS: u32 = 3;
/// How long one DEL of the whole network list may take.
pub const DEL_TIMEOUT: Duration = Duration::from_secs(20);
/// Where host-local keeps reservations when its config names no `dataDir`.
const HOST_LOCAL_DATA_DIR: &str = "/var/lib/cni/networks";

/// The record of a network before ADD.
pub fn network_record(list: &NetworkConfigList, pod_cidrs: Vec<String>) -> NetworkRecord {
    NetworkRecord {
        name: list.name.clone(),
        cni_version: list.cni_version.clone(),
        plugin_types: list.plugin_types.clone(),
        source: list.source.clone(),
        config: String::from_utf8_lossy(&list.bytes).into_owned(),
        result: None,
        ips: Vec::new(),
        detached: false,
        pod_cidrs,
    }
}

fn config_list(network: &NetworkRecord) -> NetworkConfigList {
    NetworkConfigList {
        name: network.name.clone(),
        cni_version: network.cni_version.clone(),
        plugin_types: network.plugin_types.clone(),
        source: network.source.clone(),
        bytes: network.config.clone().into_bytes(),
    }
}

/// The CNI parameters of the pod's attachment on `ifname`.
pub fn attachment(sandbox: &SandboxRecord, netns: &Path, ifname: &str) -> Attachment {
    let meta = sandbox.metadata();
    let mut capabilities = Map::new();
    let mappings = port_mappings(&sandbox.config);
    if !mappings.is_empty() {
        capabilities.insert("portMappings".to_owned(), Value::Array(mappings));
    }
    if let Some(network) = sandbox.network.as_ref().filter(|n| !n.pod_cidrs.is_empty()) {
        capabilities.insert(
            pod_cidr::CAPABILITY.to_owned(),
            pod_cidr::ip_ranges(&network.pod_cidrs),
        );
    }
    Attachment {
        container_id: sandbox.id.clone(),
        netns: netns.to_owned(),
        ifname: ifname.to_owned(),
        args: vec![
            ("K8S_POD_NAMESPACE".to_owned(), meta.namespace),
            ("K8S_POD_NAME".to_owned(), meta.name),
            ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), sandbox.id.clone()),
            ("K8S_POD_UID".to_owned(), meta.uid),
        ],
        capabilities,
    }
}

/// The `portMappings` capability: mappings with a host port, as the
/// portmap plugin reads them.
pub fn port_mappings(config: &cri::PodSandboxConfig) -> Vec<Value> {
    config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = cri::Protocol::try_from(p.protocol)
                .unwrap_or(cri::Protocol::Tcp)
                .as_str_name()
                .to_ascii_lowercase();
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
                "hostIP": p.host_ip,
            })
        })
        .collect()
}

/// Runs ADD for `lo` and the pod network; returns the network's result and
/// the pod's IPs (IPv4 first, as containerd chooses the primary one).
pub async fn attach(
    sandbox: &SandboxRecord,
    netns: &Path,
    network: &NetworkRecord,
    plugins: Plugins<'_>,
) -> Result<(Value, Vec<String>), CniError> {
    cni::add(
        &cni::loopback_network(),
        plugins,
        &attachment(sandbox, netns, "lo"),
    )
    .await?;
    let result = cni::add(
        &config_list(network),
        plugins,
        &attachment(sandbox, netns, IFNAME),
    )
    .await?;
    let mut ips = cni::result_ips(&result);
    ips.sort_by_key(|ip| !ip.is_ipv4());
    Ok((result, ips.iter().map(IpAddr::to_string).collect()))
}

/// Runs DEL for the pod network (with retries, then by force) and for `lo`.
/// Never fails: what could not be undone is logged.
pub async fn detach(sandbox: &SandboxRecord, netns: &Path, plugins: Plugins<'_>) {
    let Some(network) = &sandbox.network else {
        return;
    };
    let list = config_list(network);
    let pod = attachment(sandbox, netns, IFNAME);
    let attempt_timeout = DEL_TIMEOUT.min(plugins.timeout);
    let mut last_error = None;
    for attempt in 1..=DEL_ATTEMPTS {
        let outcome = tokio::time::timeout(
            attempt_timeout,
            cni::del(&list, plugins, &pod, network.result.as_ref()),
        )
        .await;
        match outcome {
            Ok(Ok(())) => {
                last_error = None;
                break;
            }
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => {
                last_error = Some(format!(
                    "CNI DEL did not finish within {} s",
                    attempt_timeout.as_secs()
                ))
            }
        }
        if attempt < DEL_ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(200 * 5u64.pow(attempt - 1))).await;
        }
    }
    if let Some(error) = last_error {
        let released = release_host_local(network, &sandbox.id);
        tracing::warn!(
            sandbox = %sandbox.id,
            network = %network.name,
            %error,
            released_addresses = ?released,
            "CNI DEL failed {DEL_ATTEMPTS} times; cleaned up by force: the pod's interfaces go \
             with its network namespace and its host-local addresses were released; anything \
             else the plugins made (e.g. portmap's iptables rules) may remain"
        );
    }
    // `lo` disappears with the namespace; DEL only tells the plugin.
    if let Err(e) = cni::del(
        &cni::loopback_network(),
        plugins,
        &attachment(sandbox, netns, "lo"),
        None,
    )
    .await
    {
        tracing::debug!(sandbox = %sandbox.id, error = %e, "loopback DEL failed");
    }
}

/// Deletes the host-local reservations of `container_id` in every
/// host-local IPAM of the network; returns the addresses released.
fn release_host_local(network: &NetworkRecord, container_id: &str) -> Vec<String> {
    let Ok(document) = serde_json::from_str::<Value>(&network.config) else {
        return Vec::new();
    };
    let plugins = match document.get("plugins") {
        Some(Value::Array(plugins)) => plugins.clone(),
        _ => vec![document],
    };
    let mut released = Vec::new();
    for plugin in plugins {
        let ipam = &plugin["ipam"];
        if ipam["type"] != "host-local" {
            continue;
        }
        let data_dir = ipam["dataDir"].as_str().unwrap_or(HOST_LOCAL_DATA_DIR);
        let dir = Path::new(data_dir).join(&network.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_err() {
                continue;
            }
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if owner.lines().next().map(str::trim) == Some(container_id)
                && std::fs::remove_file(entry.path()).is_ok()
            {
                released.push(name);
            }
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_with_host_ports_only() {
        let config = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
                cri::PortMapping {
                    protocol: cri::Protocol::Sctp as i32,
                    container_port: 9,
                    host_port: 9009,
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            port_mappings(&config),
            vec![
                json!({"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}),
                json!({"hostPort": 9009, "containerPort": 9, "protocol": "sctp", "hostIP": ""}),
            ]
        );
    }

    #[test]
    fn pod_cidrs_of_the_record_are_the_ip_ranges_capability() {
        let list = NetworkConfigList {
            name: "net1".into(),
            cni_version: "1.0.0".into(),
            plugin_types: vec!["bridge".into()],
            source: "x".into(),
            bytes: b"{}".to_vec(),
        };
        let mut sandbox = super::super::SandboxRecord {
            version: super::super::SANDBOX_RECORD_VERSION,
            id: "abc".into(),
            name: "web_default_uid_0".into(),
            config: cri::PodSandboxConfig::default(),
            runtime_handler: String::new(),
            state: super::super::SandboxState::Creating,
            created_at: 0,
            dir: "/x".into(),
            namespaces: Default::default(),
            init_pid: None,
            network: Some(network_record(&list, Vec::new())),
            resources: Default::default(),
        };
        let without = attachment(&sandbox, Path::new("/x/netns"), IFNAME);
        assert!(!without.capabilities.contains_key(pod_cidr::CAPABILITY));
        sandbox.network = Some(network_record(&list, vec!["10.1.0.0/24".into()]));
        let with = attachment(&sandbox, Path::new("/x/netns"), IFNAME);
        assert_eq!(
            with.capabilities[pod_cidr::CAPABILITY],
            json!([[{"subnet": "10.1.0.0/24"}]])
        );
    }

    #[test]
    fn forced_cleanup_releases_only_the_pods_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = json!({
            "cniVersion": "1.0.0", "name": "net1",
            "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "dataDir": dir.path()}}]
        });
        let network = NetworkRecord {
            name: "net1".into(),
            cni_version: "1.0.0".into(),
            plugin_types: vec!["bridge".into()],
            source: "x".into(),
            config: config.to_string(),
            result: None,
            ips: Vec::new(),
            detached: false,
            pod_cidrs: Vec::new(),
        };
        let data = dir.path().join("net1");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("10.1.0.2"), "pod-a\r\neth0").expect("write");
        std::fs::write(data.join("10.1.0.3"), "pod-b\r\neth0").expect("write");
        std::fs::write(data.join("last_reserved_ip.0"), "pod-a").expect("write");
        assert_eq!(release_host_local(&network, "pod-a"), vec!["10.1.0.2"]);
        assert!(!data.join("10.1.0.2").exists());
        assert!(data.join("10.1.0.3").exists());
        assert!(data.join("last_reserved_ip.0").exists());
    }
}
