//! Running CNI plugins: ADD, CHECK and DEL of a network list (CNI spec 1.0).
//!
//! Each plugin of the list is executed in turn with the `CNI_*` environment
//! and its own configuration on stdin: the plugin object plus the list's
//! `name` and `cniVersion`, the previous plugin's result as `prevResult`,
//! and `runtimeConfig` holding only the capabilities the plugin declares
//! (`portMappings` for portmap). DEL runs the plugins in reverse with the
//! cached ADD result, and keeps going past a failing plugin so that a
//! broken plugin never blocks pod deletion; the first error is reported.

use super::cni_config::{find_plugin, NetworkConfigList};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Where the plugin binaries are, and how long one invocation may run
/// (`cni.bin_dirs`, `cni.plugin_timeout_seconds`): past it the plugin and
/// every process it started are killed.
#[derive(Debug, Clone, Copy)]
pub struct Plugins<'a> {
    pub dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin `{plugin}` not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("CNI network config {source_file}: {reason}")]
    BadConfig {
        source_file: PathBuf,
        reason: String,
    },
    #[error("CNI network config {source_file}: {source}")]
    ConfigJson {
        source_file: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot run CNI plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} failed (code {code}): {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: i64,
        message: String,
    },
    #[error("CNI plugin {plugin} {command} returned an unreadable result: {source}")]
    BadResult {
        plugin: String,
        command: &'static str,
        source: serde_json::Error,
    },
    #[error("CNI plugin {plugin} {command} did not finish within {seconds} s")]
    Timeout {
        plugin: String,
        command: &'static str,
        seconds: u64,
    },
}

/// The per-attachment parameters of a CNI call.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `K8S_POD_NAMESPACE`.
    pub args: Vec<(String, String)>,
    /// Capability arguments by capability name (`portMappings`, ...).
    pub capabilities: Map<String, Value>,
}

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
}

impl Command {
    /// Its `CNI_COMMAND`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Check => "CHECK",
            Self::Del => "DEL",
        }
    }
}

/// Adds the attachment to every plugin of `network`; returns the final result.
pub async fn add(
    network: &NetworkConfigList,
    plugins: Plugins<'_>,
    attachment: &Attachment,
) -> Result<Value, CniError> {
    let mut previous: Option<Value> = None;
    for plugin in plugin_objects(network)? {
        let result = invoke(
            network,
            &plugin,
            plugins,
            attachment,
            Command::Add,
            previous.as_ref(),
        )
        .await?;
        previous = Some(result);
    }
    previous.ok_or_else(|| CniError::BadConfig {
        source_file: network.source.clone(),
        reason: "no plugins".to_owned(),
    })
}

/// Checks the attachment against every plugin, given the cached ADD result.
pub async fn check(
    network: &NetworkConfigList,
    plugins: Plugins<'_>,
    attachment: &Attachment,
    cached: &Value,
) -> Result<(), CniError> {
    for plugin in plugin_objects(network)? {
        invoke(
            network,
            &plugin,
            plugins,
            attachment,
            Command::Check,
            Some(cached),
        )
        .await?;
    }
    Ok(())
}

/// Deletes the attachment from every plugin, in reverse order. Every plugin
/// runs even when one fails; the first failure is returned.
pub async fn del(
    network: &NetworkConfigList,
    plugins: Plugins<'_>,
    attachment: &Attachment,
    cached: Option<&Value>,
) -> Result<(), CniError> {
    let mut first_error = None;
    for plugin in plugin_objects(network)?.into_iter().rev() {
        if let Err(e) = invoke(network, &plugin, plugins, attachment, Command::Del, cached).await {
            tracing::warn!(error = %e, "CNI DEL failed; continuing with the other plugins");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The IP addresses of a CNI result (`ips[].address`, without the prefix).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// The plugin objects of a list, or the single plugin of a `.conf`.
fn plugin_objects(network: &NetworkConfigList) -> Result<Vec<Map<String, Value>>, CniError> {
    let bad = |reason: String| CniError::BadConfig {
        source_file: network.source.clone(),
        reason,
    };
    let document: Value =
        serde_json::from_slice(&network.bytes).map_err(|source| CniError::ConfigJson {
            source_file: network.source.clone(),
            source,
        })?;
    let objects = match document.get("plugins") {
        Some(Value::Array(plugins)) => plugins.clone(),
        Some(_) => return Err(bad("`plugins` is not a list".to_owned())),
        None => vec![document],
    };
    objects
        .into_iter()
        .map(|plugin| match plugin {
            Value::Object(map) => Ok(map),
            _ => Err(bad("a plugin is not an object".to_owned())),
        })
        .collect()
}

/// The configuration one plugin reads on stdin.
fn plugin_stdin(
    network: &NetworkConfigList,
    plugin: &Map<String, Value>,
    attachment: &Attachment,
    previous: Option<&Value>,
) -> Value {
    let mut config = plugin.clone();
    config.insert("name".to_owned(), Value::String(network.name.clone()));
    config.insert(
        "cniVersion".to_owned(),
        Value::String(network.cni_version.clone()),
    );
    if let Some(previous) = previous {
        config.insert("prevResult".to_owned(), previous.clone());
    }
    let declared = plugin.get("capabilities").and_then(Value::as_object);
    let runtime_config: Map<String, Value> = attachment
        .capabilities
        .iter()
        .filter(|(name, _)| {
            declared
                .and_then(|d| d.get(name.as_str()))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if !runtime_config.is_empty() {
        config.insert("runtimeConfig".to_owned(), Value::Object(runtime_config));
    }
    Value::Object(config)
}

async fn invoke(
    network: &NetworkConfigList,
    plugin: &Map<String, Value>,
    plugins: Plugins<'_>,
    attachment: &Attachment,
    command: Command,
    previous: Option<&Value>,
) -> Result<Value, CniError> {
    let plugin_type = plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let binary =
        find_plugin(&plugin_type, plugins.dirs).ok_or_else(|| CniError::PluginNotFound {
            plugin: plugin_type.clone(),
            dirs: join_paths(plugins.dirs),
        })?;
    let stdin = serde_json::to_vec(&plugin_stdin(network, plugin, attachment, previous))
        .expect("a JSON value always serialises");
    let cni_args = attachment
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(std::iter::once("IgnoreUnknown=1".to_owned()))
        .collect::<Vec<_>>()
        .join(";");
    let exec_error = |source| CniError::Exec {
        plugin: plugin_type.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", command.name())
        .env("CNI_CONTAINERID", &attachment.container_id)
        .env("CNI_NETNS", &attachment.netns)
        .env("CNI_IFNAME", &attachment.ifname)
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", join_paths(plugins.dirs).replace(", ", ":"))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so a plugin that hangs goes with whatever it
        // started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(exec_error)?;
    let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    let mut child_stdin = child.stdin.take().expect("stdin is piped");
    let run = async {
        child_stdin.write_all(&stdin).await.map_err(exec_error)?;
        drop(child_stdin);
        child.wait_with_output().await.map_err(exec_error)
    };
    let output = match tokio::time::timeout(plugins.timeout, run).await {
        Ok(output) => output?,
        Err(_) => {
            if let Some(group) = group {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            return Err(CniError::Timeout {
                plugin: plugin_type.clone(),
                command: command.name(),
                seconds: plugins.timeout.as_secs(),
            });
        }
    };
    let stdout = plugin_output(&plugin_type, command, &output)?;
    // ADD returns the new result; CHECK and DEL print nothing, and the
    // result passed along stays the cached one.
    Ok(match command {
        Command::Add => stdout,
        Command::Check | Command::Del => previous.cloned().unwrap_or(Value::Null),
    })
}

/// What a plugin run printed: its result (JSON, or `Null` for nothing),
/// or the error it reported (the spec's `code`, `msg` and `details`, else
/// its exit status and stderr). Public for the fuzz target `agent/fuzz`.
pub fn plugin_output(
    plugin: &str,
    command: Command,
    output: &std::process::Output,
) -> Result<Value, CniError> {
    let stdout: Value = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&output.stdout).map_err(|source| CniError::BadResult {
            plugin: plugin.to_owned(),
            command: command.name(),
            source,
        })?
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = match stdout["msg"].as_str() {
            Some(msg) => match stdout["details"].as_str() {
                Some(details) if !details.is_empty() => format!("{msg}: {details}"),
                _ => msg.to_owned(),
            },
            None => format!("{} {}", output.status, stderr.trim()),
        };
        return Err(CniError::Plugin {
            plugin: plugin.to_owned(),
            command: command.name(),
            code: stdout["code"].as_i64().unwrap_or(-1),
            message,
        });
    }
    Ok(stdout)
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The network berth runs first for every pod, to bring up `lo`.
pub fn loopback_network() -> NetworkConfigList {
    let bytes = br#"{"cniVersion":"1.0.0","name":"berth-loopback","type":"loopback"}"#.to_vec();
    NetworkConfigList {
        name: "berth-loopback".to_owned(),
        cni_version: "1.0.0".to_owned(),
        plugin_types: vec!["loopback".to_owned()],
        source: Path::new("(built in)").to_owned(),
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::super::netns::{self, NamespaceKind};
    use super::*;

    const BIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

    fn plugins() -> Plugins<'static> {
        static DIRS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
        Plugins {
            dirs: DIRS.get_or_init(|| BIN_DIRS.iter().map(PathBuf::from).collect()),
            timeout: Duration::from_secs(60),
        }
    }

    fn attachment(netns: &Path) -> Attachment {
        Attachment {
            container_id: format!("berth-unit-{}", std::process::id()),
            netns: netns.to_owned(),
            ifname: "eth0".to_owned(),
            args: vec![("K8S_POD_NAMESPACE".to_owned(), "default".to_owned())],
            capabilities: Map::new(),
        }
    }

    #[test]
    fn runtime_config_gets_only_declared_capabilities() {
        let network = NetworkConfigList {
            name: "n".to_owned(),
            cni_version: "1.0.0".to_owned(),
            plugin_types: vec!["portmap".to_owned()],
            source: PathBuf::from("x"),
            bytes: Vec::new(),
        };
        let mut attachment = attachment(Path::new("/x"));
        attachment.capabilities.insert(
            "portMappings".to_owned(),
            serde_json::json!([{"hostPort": 8080}]),
        );
        attachment
            .capabilities
            .insert("bandwidth".to_owned(), serde_json::json!({}));
        let plugin = serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let plugin = plugin.as_object().expect("object").clone();
        let stdin = plugin_stdin(
            &network,
            &plugin,
            &attachment,
            Some(&serde_json::json!({"ips": []})),
        );
        assert_eq!(stdin["name"], "n");
        assert_eq!(stdin["cniVersion"], "1.0.0");
        assert_eq!(stdin["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(stdin["runtimeConfig"].get("bandwidth").is_none());
        assert!(stdin["prevResult"]["ips"].is_array());
    }

    #[test]
    fn ips_are_read_from_results() {
        let result = serde_json::json!({"ips": [
            {"address": "10.88.0.5/16", "gateway": "10.88.0.1"},
            {"address": "fd00::5/64"}
        ]});
        let ips = result_ips(&result);
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0].to_string(), "10.88.0.5");
    }

    /// Real plugins in a namespace this test makes: loopback brings `lo` up
    /// and a bridge network (its own bridge, subnet and IPAM dir) gives an IP.
    #[tokio::test]
    async fn real_plugins_add_check_del() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns_path = dir.path().join("net");
        netns::create(NamespaceKind::Network, &ns_path).expect("netns");
        let bridge = format!("berthut{}", std::process::id() % 10000);
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("berth-unit-{}", std::process::id()),
            "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                         "ranges": [[{"subnet": "10.251.0.0/24"}]]}
            }]
        });
        let network = NetworkConfigList {
            name: conflist["name"].as_str().expect("name").to_owned(),
            cni_version: "1.0.0".to_owned(),
            plugin_types: vec!["bridge".to_owned()],
            source: dir.path().join("test.conflist"),
            bytes: serde_json::to_vec(&conflist).expect("json"),
        };
        let attachment = attachment(&ns_path);
        let lo = add(
            &loopback_network(),
            plugins(),
            &Attachment {
                ifname: "lo".to_owned(),
                ..attachment.clone()
            },
        )
        .await
        .expect("loopback ADD");
        assert!(lo.is_object());
        let result = add(&network, plugins(), &attachment)
            .await
            .expect("bridge ADD");
        let ips = result_ips(&result);
        assert_eq!(ips.len(), 1, "{result}");
        assert!(ips[0].to_string().starts_with("10.251.0."), "{ips:?}");
        check(&network, plugins(), &attachment, &result)
            .await
            .expect("CHECK");
        // The address really is on eth0 inside the namespace.
        let seen = netns::run_in_network_namespace(&ns_path, || {
            std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default()
        })
        .expect("inside");
        assert!(seen.contains(&ips[0].to_string()), "{seen}");
        del(&network, plugins(), &attachment, Some(&result))
            .await
            .expect("DEL");
        del(&network, plugins(), &attachment, Some(&result))
            .await
            .expect("DEL is idempotent");
        netns::remove(&ns_path).expect("remove netns");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &bridge])
            .status();
    }

    #[tokio::test]
    async fn failing_plugin_reports_its_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = br#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"not-a-subnet"}]]}}]}"#;
        let network = NetworkConfigList {
            name: "bad".to_owned(),
            cni_version: "1.0.0".to_owned(),
            plugin_types: vec!["bridge".to_owned()],
            source: dir.path().join("bad.conflist"),
            bytes: bytes.to_vec(),
        };
        let ns_path = dir.path().join("net");
        netns::create(NamespaceKind::Network, &ns_path).expect("netns");
        let err = add(&network, plugins(), &attachment(&ns_path))
            .await
            .expect_err("invalid subnet");
        assert!(
            matches!(err, CniError::Plugin { command: "ADD", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("bridge"), "{err}");
        netns::remove(&ns_path).expect("remove netns");
    }

    #[tokio::test]
    async fn missing_plugin_is_named() {
        let network = NetworkConfigList {
            name: "n".to_owned(),
            cni_version: "1.0.0".to_owned(),
            plugin_types: vec!["no-such-plugin".to_owned()],
            source: PathBuf::from("x"),
            bytes: br#"{"name":"n","type":"no-such-plugin"}"#.to_vec(),
        };
        let err = add(&network, plugins(), &attachment(Path::new("/x")))
            .await
            .expect_err("missing");
        assert!(err.to_string().contains("no-such-plugin"), "{err}");
    }
}
