//! Finding the CNI network configuration, as libcni does.
//!
//! The network is the first loadable file, by name, among `*.conflist`,
//! `*.conf` and `*.json` in the configuration directory. A `.conflist` holds
//! `plugins`; a `.conf`/`.json` holds one plugin and is wrapped into a list.
//! The network is usable only when every plugin's binary is found in one of
//! the bin dirs.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A loaded network configuration list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    /// The plugin types, in order.
    pub plugin_types: Vec<String>,
    /// The file it was read from.
    pub source: PathBuf,
    /// The raw JSON, as the plugins will be given it.
    pub bytes: Vec<u8>,
}

/// Why no usable network configuration exists.
#[derive(Debug, thiserror::Error)]
pub enum CniConfigError {
    #[error("no network config found in {0}")]
    NoConfig(PathBuf),
    #[error("cannot read CNI config directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI plugin binary `{plugin}` of network `{network}` not found in {dirs}")]
    MissingPlugin {
        network: String,
        plugin: String,
        dirs: String,
    },
}

#[derive(Deserialize)]
struct RawList {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    name: String,
    plugins: Vec<RawPlugin>,
}

#[derive(Deserialize)]
struct RawSingle {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
}

#[derive(Deserialize)]
struct RawPlugin {
    #[serde(rename = "type")]
    plugin_type: String,
}

/// Loads the network berth would use, and checks its plugins exist.
pub fn load_network(
    conf_dir: &Path,
    bin_dirs: &[PathBuf],
) -> Result<NetworkConfigList, CniConfigError> {
    let network = first_network(conf_dir)?;
    for plugin in &network.plugin_types {
        if find_plugin(plugin, bin_dirs).is_none() {
            return Err(CniConfigError::MissingPlugin {
                network: network.name.clone(),
                plugin: plugin.clone(),
                dirs: bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(network)
}

/// The path of a plugin binary, searched in `bin_dirs` order.
pub fn find_plugin(plugin: &str, bin_dirs: &[PathBuf]) -> Option<PathBuf> {
    // A plugin type is a file name, never a path.
    if plugin.is_empty() || plugin.contains('/') {
        return None;
    }
    bin_dirs
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|path| path.is_file())
}

fn first_network(conf_dir: &Path) -> Result<NetworkConfigList, CniConfigError> {
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniConfigError::NoConfig(conf_dir.to_owned()))
        }
        Err(source) => {
            return Err(CniConfigError::ReadDir {
                dir: conf_dir.to_owned(),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    for file in files {
        match parse_network_file(&file) {
            Some(network) => return Ok(network),
            None => tracing::warn!(file = %file.display(), "skipping invalid CNI config file"),
        }
    }
    Err(CniConfigError::NoConfig(conf_dir.to_owned()))
}

fn parse_network_file(file: &Path) -> Option<NetworkConfigList> {
    let bytes = std::fs::read(file).ok()?;
    let is_list = file.extension().and_then(|e| e.to_str()) == Some("conflist");
    let (name, cni_version, plugin_types) = if is_list {
        let raw: RawList = serde_json::from_slice(&bytes).ok()?;
        let types = raw.plugins.into_iter().map(|p| p.plugin_type).collect();
        (raw.name, raw.cni_version, types)
    } else {
        let raw: RawSingle = serde_json::from_slice(&bytes).ok()?;
        (raw.name, raw.cni_version, vec![raw.plugin_type])
    };
    if name.is_empty() || plugin_types.is_empty() {
        return None;
    }
    Some(NetworkConfigList {
        name,
        cni_version,
        plugin_types,
        source: file.to_owned(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin_dir_with(plugins: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in plugins {
            std::fs::write(dir.path().join(p), b"").expect("plugin file");
        }
        dir
    }

    #[test]
    fn missing_dir_and_empty_dir_have_no_config() {
        let bins = bin_dir_with(&[]);
        let bin_dirs = [bins.path().to_owned()];
        let missing = Path::new("/nonexistent/net.d");
        assert!(matches!(
            load_network(missing, &bin_dirs),
            Err(CniConfigError::NoConfig(dir)) if dir == missing
        ));
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            load_network(empty.path(), &bin_dirs),
            Err(CniConfigError::NoConfig(_))
        ));
    }

    #[test]
    fn first_valid_file_by_name_wins() {
        let conf = tempfile::tempdir().expect("tempdir");
        std::fs::write(conf.path().join("05-broken.conflist"), b"{not json").expect("write");
        std::fs::write(conf.path().join("README"), b"ignored").expect("write");
        std::fs::write(
            conf.path().join("10-bridge.conflist"),
            br#"{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .expect("write");
        std::fs::write(
            conf.path().join("20-other.conf"),
            br#"{"cniVersion":"1.0.0","name":"net2","type":"bridge"}"#,
        )
        .expect("write");
        let bins = bin_dir_with(&["bridge", "portmap"]);
        let network = load_network(conf.path(), &[bins.path().to_owned()]).expect("network");
        assert_eq!(network.name, "net1");
        assert_eq!(network.plugin_types, vec!["bridge", "portmap"]);
        assert_eq!(network.cni_version, "1.0.0");
    }

    #[test]
    fn single_plugin_conf() {
        let conf = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            conf.path().join("99-lo.conf"),
            br#"{"cniVersion":"0.4.0","name":"lo","type":"loopback"}"#,
        )
        .expect("write");
        let bins = bin_dir_with(&["loopback"]);
        let network = load_network(conf.path(), &[bins.path().to_owned()]).expect("network");
        assert_eq!(network.plugin_types, vec!["loopback"]);
    }

    #[test]
    fn missing_plugin_binary_is_named() {
        let conf = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            conf.path().join("10.conflist"),
            br#"{"name":"n","plugins":[{"type":"bridge"},{"type":"tuning"}]}"#,
        )
        .expect("write");
        let first = bin_dir_with(&["bridge"]);
        let second = bin_dir_with(&[]);
        let err = load_network(
            conf.path(),
            &[first.path().to_owned(), second.path().to_owned()],
        )
        .expect_err("tuning is missing");
        assert!(err.to_string().contains("`tuning`"), "{err}");
    }

    #[test]
    fn plugin_type_cannot_be_a_path() {
        let bins = bin_dir_with(&["bridge"]);
        let dirs = [bins.path().to_owned()];
        assert!(find_plugin("bridge", &dirs).is_some());
        assert!(find_plugin("../bridge", &dirs).is_none());
        assert!(find_plugin("", &dirs).is_none());
    }
}
