//! berthd's configuration: one TOML file, every key optional.
//!
//! The file is read at start-up and again on SIGHUP, which applies the
//! keys that can change safely (`crate::reload`). Unknown keys and bad values stop
//! start-up with a message that names the key; `docs/config.md` documents
//! every key with its default, and `berthd config default` prints them all.
//! Drop-in files, `<dir of the file>/config.d/*.toml`, are applied over it
//! in name order, tables merged key by key (a key set again replaces the
//! value, a table set again is merged); each file must be valid on its own,
//! so an error names the file and line that has it. Command-line flags
//! override the files (see `main.rs`); `berthd config dump` prints the
//! result.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where berthd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The directory of drop-in files beside the configuration file.
pub const DROP_IN_DIR: &str = "config.d";

/// The default configuration file with comments, as `berthd config default`
/// prints it. A test keeps it equal to [`Config::default`].
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config.default.toml");

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("cannot read config drop-in directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole configuration, as the file and the flags leave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: the metadata store, images, snapshots.
    pub root: PathBuf,
    /// Volatile state that a reboot may clear: the socket, runtime state.
    pub state: PathBuf,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub tracing: TracingConfig,
    pub streaming: StreamingConfig,
    pub cni: CniConfig,
    pub registry: RegistryConfig,
    pub image: ImageConfig,
    pub cgroup: CgroupConfig,
    pub stats: StatsConfig,
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// The CRI socket. Empty means `<state>/berth.sock`.
    pub socket: PathBuf,
    /// Largest message accepted or sent, in bytes.
    pub max_message_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the Prometheus endpoint; port 0 picks a free port, which
    /// berthd then writes to `<state>/metrics-address`.
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector that tracing spans are exported to
    /// (`http://host:port`); empty: no export. Needs the `otlp` feature.
    pub otlp_endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Address of the streaming server that the URLs of Exec, Attach and
    /// PortForward name; port 0 picks a free port, which berthd then writes
    /// to `<state>/streaming-address`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Network configurations (`*.conflist`, `*.conf`, `*.json`).
    pub conf_dir: PathBuf,
    /// Plugin binaries, searched in order.
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin invocation may run before it is killed.
    pub plugin_timeout_seconds: u64,
}

impl CniConfig {
    /// The plugins as [`crate::network::cni`] runs them.
    pub fn plugins(&self) -> crate::network::cni::Plugins<'_> {
        crate::network::cni::Plugins {
            dirs: &self.bin_dirs,
            timeout: std::time::Duration::from_secs(self.plugin_timeout_seconds),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// A directory of `<registry-host>/hosts.toml` files, containerd's format.
    pub config_path: PathBuf,
    /// Node-level credentials (Docker `config.json` format) for pulls that
    /// bring none; empty: none.
    pub auth_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Layers downloaded at once by one pull.
    pub max_concurrent_downloads: usize,
    /// A download that receives no byte for this many seconds fails.
    pub stall_timeout_seconds: u64,
    /// Images reported as pinned, which kubelet never garbage-collects.
    pub pinned_images: Vec<String>,
    /// Keep compressed layer blobs after unpacking them.
    pub keep_layer_blobs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriverSetting {
    /// systemd when systemd is the init system, cgroupfs otherwise.
    Auto,
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    pub driver: CgroupDriverSetting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// How often the stats collector samples every container and pod, in
    /// milliseconds; `usage_nano_cores` is the CPU rate over one period.
    pub collect_period_ms: u64,
}

/// The shortest collector period accepted.
pub const MIN_STATS_PERIOD_MS: u64 = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The handler used when a pod names no RuntimeClass handler.
    pub default_handler: String,
    /// RuntimeClass handlers by name.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// How long one OCI runtime command (create, start, kill, delete, ...)
    /// may run in berth's shim before the shim kills it.
    pub command_timeout_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The OCI runtime binary (name on PATH or absolute path).
    #[serde(default = "default_runtime_path")]
    pub runtime_path: PathBuf,
    /// An external containerd shim v2 binary that serves this handler's
    /// containers instead of berth's shim (name on PATH or absolute path),
    /// e.g. `containerd-shim-runc-v2`; it is given `runtime_path` as its
    /// runc-compatible binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<PathBuf>,
}

fn default_runtime_path() -> PathBuf {
    PathBuf::from("runc")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            grpc: GrpcConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
            streaming: StreamingConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            image: ImageConfig::default(),
            cgroup: CgroupConfig::default(),
            stats: StatsConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::new(),
            max_message_size: 16 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "127.0.0.1:9325".to_owned(),
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".to_owned(),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            plugin_timeout_seconds: 60,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from("/etc/berth/certs.d"),
            auth_file: PathBuf::new(),
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_concurrent_downloads: 3,
            stall_timeout_seconds: 60,
            pinned_images: Vec::new(),
            keep_layer_blobs: false,
        }
    }
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            driver: CgroupDriverSetting::Auto,
        }
    }
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            collect_period_ms: 5000,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let handler = |binary: &str| HandlerConfig {
            runtime_path: PathBuf::from(binary),
            shim: None,
        };
        Self {
            default_handler: "runc".to_owned(),
            handlers: BTreeMap::from([
                ("runc".to_owned(), handler("runc")),
                ("crun".to_owned(), handler("crun")),
            ]),
            command_timeout_seconds: 30,
        }
    }
}

/// Log levels `log.level` and `--log-level` accept.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl RegistryConfig {
    /// `auth_file`, unless empty.
    pub fn auth_file(&self) -> Option<PathBuf> {
        (!self.auth_file.as_os_str().is_empty()).then(|| self.auth_file.clone())
    }
}

impl Config {
    /// Reads `path`, then the drop-in files of [`Config::drop_ins`] over
    /// it. A missing file is an error only when `required`, so the default
    /// path may be absent while an explicit `--config` may not; drop-ins
    /// apply either way.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let mut merged = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_table(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => toml::Table::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        for drop_in in Self::drop_ins(path)? {
            let text = std::fs::read_to_string(&drop_in).map_err(|source| ConfigError::Read {
                path: drop_in.clone(),
                source,
            })?;
            merge_tables(&mut merged, Self::parse_table(&drop_in, &text)?);
        }
        let config: Self =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_owned(),
                    message: format!("with its drop-ins: {}", e.message().trim()),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// The drop-in files of the configuration file `path`:
    /// `<dir of path>/config.d/*.toml`, in name order. A missing directory
    /// has none.
    pub fn drop_ins(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
        let dir = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(DROP_IN_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ConfigError::ReadDir { path: dir, source }),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::ReadDir {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Parses one file as a table, after checking that it is a valid
    /// configuration on its own (so errors name this file and its line).
    fn parse_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        };
        toml::from_str::<Self>(text).map_err(parse_error)?;
        toml::from_str::<toml::Table>(text).map_err(parse_error)
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                message: format!(
                    "`{}` is not one of {}",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            });
        }
        for (key, path) in [("root", &self.root), ("state", &self.state)] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("`{}` must be an absolute path", path.display()),
                });
            }
        }
        if self.grpc.max_message_size < 4 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "grpc.max_message_size",
                message: "must be at least 4194304 (4 MiB, gRPC's default)".to_owned(),
            });
        }
        if self.metrics.enabled {
            self.metrics
                .address
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid {
                    key: "metrics.address",
                    message: format!("`{}`: {e}", self.metrics.address),
                })?;
        }
        crate::telemetry::check_endpoint(&self.tracing.otlp_endpoint).map_err(|message| {
            ConfigError::Invalid {
                key: "tracing.otlp_endpoint",
                message,
            }
        })?;
        self.streaming
            .address
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "streaming.address",
                message: format!("`{}`: {e}", self.streaming.address),
            })?;
        if self.image.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid {
                key: "image.max_concurrent_downloads",
                message: "must be at least 1".to_owned(),
            });
        }
        if self.image.stall_timeout_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "image.stall_timeout_seconds",
                message: "must be at least 1".to_owned(),
            });
        }
        if self.stats.collect_period_ms < MIN_STATS_PERIOD_MS {
            return Err(ConfigError::Invalid {
                key: "stats.collect_period_ms",
                message: format!("must be at least {MIN_STATS_PERIOD_MS}"),
            });
        }
        // The shim must give up on a runtime before berthd gives up on the
        // shim, or the shim's answer (and its cleanup) would be lost.
        let call = crate::shim_client::CALL_TIMEOUT.as_secs();
        if self.runtime.command_timeout_seconds == 0
            || self.runtime.command_timeout_seconds + 10 > call
        {
            return Err(ConfigError::Invalid {
                key: "runtime.command_timeout_seconds",
                message: format!(
                    "must be between 1 and {} (berthd waits {call} s for a shim call)",
                    call - 10
                ),
            });
        }
        if self.cni.plugin_timeout_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "cni.plugin_timeout_seconds",
                message: "must be at least 1".to_owned(),
            });
        }
        if self.cni.bin_dirs.is_empty() {
            return Err(ConfigError::Invalid {
                key: "cni.bin_dirs",
                message: "needs at least one directory".to_owned(),
            });
        }
        if !self
            .runtime
            .handlers
            .contains_key(&self.runtime.default_handler)
        {
            return Err(ConfigError::Invalid {
                key: "runtime.default_handler",
                message: format!(
                    "`{}` is not a configured handler in [runtime.handlers]",
                    self.runtime.default_handler
                ),
            });
        }
        Ok(())
    }

    /// The CRI socket path, defaulting to `<state>/berth.sock`.
    pub fn socket_path(&self) -> PathBuf {
        if self.grpc.socket.as_os_str().is_empty() {
            self.state.join("berth.sock")
        } else {
            self.grpc.socket.clone()
        }
    }

    /// The metrics address; valid after [`Config::validate`].
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        if !self.metrics.enabled {
            return None;
        }
        self.metrics.address.parse().ok()
    }

    /// The streaming server's address; valid after [`Config::validate`].
    pub fn streaming_address(&self) -> SocketAddr {
        self.streaming
            .address
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The configuration as a TOML document.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config is plain data and always serialises")
    }
}

/// Applies `over` to `base`: a table present in both is merged key by key,
/// any other value of `over` replaces the one of `base`.
pub fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge_tables(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// toml's errors span several lines with a source excerpt; start-up errors
/// are one line that names the line and the full key (`log.level`).
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return message;
    };
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_number = text[..span.start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|header| header.trim_matches(|c| c == '[' || c == ']').trim());
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim())
        .filter(|key| !key.is_empty() && !line.trim_start().starts_with('['));
    match (table, key) {
        (Some(table), Some(key)) => format!("line {line_number}: key `{table}.{key}`: {message}"),
        (None, Some(key)) => format!("line {line_number}: key `{key}`: {message}"),
        _ => format!("line {line_number}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").expect("empty config parses"), Config::default());
    }

    #[test]
    fn commented_default_file_is_the_default() {
        assert_eq!(
            parse(DEFAULT_CONFIG_TOML).expect("default file parses"),
            Config::default()
        );
    }

    #[test]
    fn default_file_round_trips() {
        let text = Config::default().to_toml();
        assert_eq!(parse(&text).expect("default parses"), Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let config = parse(
            "root = \"/tmp/r\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n[cni]\nbin_dirs = [\"/x\"]\n",
        )
        .expect("valid config");
        assert_eq!(config.root, PathBuf::from("/tmp/r"));
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.cni.bin_dirs, vec![PathBuf::from("/x")]);
        assert_eq!(config.state, PathBuf::from("/run/berth"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[log]\nlevle = \"debug\"\n").expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("key `log.levle`"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = parse("sockett = \"/x\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("sockett"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[log]\nlevel = \"loud\"\n", "log.level"),
            ("[log]\nformat = \"xml\"\n", "xml"),
            ("root = \"relative\"\n", "root"),
            ("[metrics]\naddress = \"nowhere\"\n", "metrics.address"),
            (
                "[streaming]\naddress = \"localhost\"\n",
                "streaming.address",
            ),
            ("[grpc]\nmax_message_size = 10\n", "grpc.max_message_size"),
            (
                "[runtime]\ndefault_handler = \"kata\"\n",
                "runtime.default_handler",
            ),
            ("[cgroup]\ndriver = 7\n", "cgroup.driver"),
            (
                "[image]\nmax_concurrent_downloads = 0\n",
                "image.max_concurrent_downloads",
            ),
            ("[cni]\nbin_dirs = 3\n", "cni.bin_dirs"),
            (
                "[stats]\ncollect_period_ms = 10\n",
                "stats.collect_period_ms",
            ),
            (
                "[cni]\nplugin_timeout_seconds = 0\n",
                "cni.plugin_timeout_seconds",
            ),
            (
                "[runtime]\ncommand_timeout_seconds = 0\n",
                "runtime.command_timeout_seconds",
            ),
            (
                "[runtime]\ncommand_timeout_seconds = 55\n",
                "runtime.command_timeout_seconds",
            ),
            (
                "[runtime.handlers.kata]\nruntime_pth = \"x\"\n",
                "runtime.handlers.kata.runtime_pth",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text:?} gave {err:?}, expected {key}");
        }
    }

    #[test]
    fn socket_defaults_into_state_dir() {
        let mut config = Config {
            state: PathBuf::from("/tmp/s"),
            ..Config::default()
        };
        assert_eq!(config.socket_path(), PathBuf::from("/tmp/s/berth.sock"));
        config.grpc.socket = PathBuf::from("/x.sock");
        assert_eq!(config.socket_path(), PathBuf::from("/x.sock"));
    }

    /// Writes `config.toml` and its drop-ins into a temp dir.
    fn write_config(main: Option<&str>, drop_ins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        if let Some(main) = main {
            std::fs::write(&path, main).expect("write config");
        }
        let drop_in_dir = dir.path().join(DROP_IN_DIR);
        std::fs::create_dir_all(&drop_in_dir).expect("mkdir config.d");
        for (name, text) in drop_ins {
            std::fs::write(drop_in_dir.join(name), text).expect("write drop-in");
        }
        (dir, path)
    }

    #[test]
    fn drop_ins_apply_in_name_order_and_merge_tables_key_by_key() {
        let (_dir, path) = write_config(
            Some("root = \"/a\"\n[log]\nlevel = \"warn\"\nformat = \"json\"\n[cni]\nbin_dirs = [\"/x\", \"/y\"]\n"),
            &[
                // Applied last although written first: name order.
                ("20-debug.toml", "[log]\nlevel = \"debug\"\n"),
                ("10-root.toml", "root = \"/b\"\n[log]\nlevel = \"error\"\n[cni]\nbin_dirs = [\"/z\"]\n"),
                ("30-ignored.conf", "this is not toml"),
                (
                    "40-kata.toml",
                    "[runtime.handlers.kata]\nruntime_path = \"/usr/bin/kata-runtime\"\n",
                ),
                (
                    "50-runc.toml",
                    "[runtime.handlers.runc]\nruntime_path = \"/usr/sbin/runc\"\n",
                ),
            ],
        );
        let config = Config::load(&path, true).expect("config loads");
        assert_eq!(config.root, PathBuf::from("/b"));
        assert_eq!(config.log.level, "debug");
        // Not set again by any drop-in: kept from the main file.
        assert_eq!(config.log.format, LogFormat::Json);
        // Arrays are values: replaced, not appended.
        assert_eq!(config.cni.bin_dirs, vec![PathBuf::from("/z")]);
        // Tables merge: both handlers, from two files.
        let handlers: Vec<_> = config.runtime.handlers.keys().map(String::as_str).collect();
        assert_eq!(handlers, ["kata", "runc"]);
        assert_eq!(
            config.runtime.handlers["runc"].runtime_path,
            PathBuf::from("/usr/sbin/runc")
        );
    }

    #[test]
    fn drop_ins_apply_without_a_main_file_unless_it_is_required() {
        let (_dir, path) = write_config(None, &[("10.toml", "[log]\nlevel = \"trace\"\n")]);
        assert_eq!(
            Config::load(&path, false).expect("loads").log.level,
            "trace"
        );
        assert!(matches!(
            Config::load(&path, true),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn a_bad_drop_in_is_named_with_its_line_and_key() {
        let (_dir, path) = write_config(
            Some("[log]\nlevel = \"warn\"\n"),
            &[("10-typo.toml", "\n[cni]\nconf_dri = \"/x\"\n")],
        );
        let err = Config::load(&path, true)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("10-typo.toml"), "{err}");
        assert!(err.contains("line 3: key `cni.conf_dri`"), "{err}");
        let (_dir, path) = write_config(None, &[("10.toml", "[log]\nlevel = \"loud\"\n")]);
        let err = Config::load(&path, false)
            .expect_err("bad level")
            .to_string();
        assert!(err.contains("log.level"), "{err}");
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        let missing = Path::new("/nonexistent/berth.toml");
        assert_eq!(
            Config::load(missing, false).expect("optional"),
            Config::default()
        );
        assert!(matches!(
            Config::load(missing, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
