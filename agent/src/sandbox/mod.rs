//! Pod sandboxes: the namespaces, network and files a pod's containers
//! share, without a pause container.
//!
//! Layout: [`run`] creates a sandbox, [`stop`] stops it (containers,
//! network, namespaces), [`remove`] removes it, [`status`] and [`list`]
//! answer the read calls. The pieces: [`files`] (hostname, hosts,
//! resolv.conf, /dev/shm), [`network`] (CNI attach and detach), [`sysctl`]
//! (pod sysctls in the pod's namespaces), [`pid_init`] (the process that
//! holds a shared PID namespace), [`teardown`] (releasing what a sandbox
//! holds, shared by stop, remove, rollback and recovery).
//!
//! On disk, each sandbox has a record in the store's `sandboxes` table
//! ([`SandboxRecord`], JSON, `version` 1) and a directory
//! `<state>/sandboxes/<id>/`:
//!
//! | file | what |
//! | --- | --- |
//! | `netns`, `ipcns`, `utsns` | the pod's namespaces, pinned by bind mounts (absent for the host's) |
//! | `pidns`, `init.pid` | the shared PID namespace and its [`pid_init`] process, for `NamespaceMode::POD` |
//! | `hostname`, `hosts`, `resolv.conf` | mounted into every container |
//! | `shm/` | the pod's `/dev/shm`, a sized tmpfs (absent with the host's IPC) |
//!
//! Lifecycle: a record is written as [`SandboxState::Creating`] before
//! anything is made, so a berthd killed half-way finds it at start-up and
//! undoes it; it becomes `Ready` after the last step and `NotReady` once
//! stopped. Creating records are invisible to the CRI. Stop releases every
//! kernel resource (network, namespaces, mounts, the init); remove deletes
//! the directory and the record.

pub mod files;
pub mod list;
pub mod network;
pub mod pid_init;
pub mod remove;
pub mod run;
pub mod status;
pub mod stop;
pub mod sysctl;
pub mod teardown;
pub mod update;

use crate::network::cni::CniError;
use crate::network::cni_config::CniConfigError;
use crate::network::netns::NamespaceError;
use crate::store::objects::{Object, ObjectTable};
use crate::store::records::Record;
use berth_proto::cri::v1 as cri;
use files::FilesError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The version of [`SandboxRecord`] this berth writes.
pub const SANDBOX_RECORD_VERSION: u32 = 1;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// `RunPodSandbox` is making it (or was, when berthd died).
    Creating,
    Ready,
    NotReady,
}

/// The pod's namespace files; `None` for a namespace shared with the host
/// (or, for PID, not shared by the pod at all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePaths {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: Option<PathBuf>,
}

/// The pod's CNI attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The network list as it was used for ADD (its JSON text), so DEL
    /// runs the same plugins even after the config directory changed.
    pub name: String,
    pub cni_version: String,
    pub plugin_types: Vec<String>,
    pub source: PathBuf,
    pub config: String,
    /// The ADD result; `None` until ADD succeeded.
    pub result: Option<serde_json::Value>,
    /// The pod's IPs from the result, primary first.
    pub ips: Vec<String>,
    /// DEL has run (or was given up with a forced cleanup).
    pub detached: bool,
    /// The node's pod CIDRs when the pod was made, given to plugins that
    /// declare the `ipRanges` capability (`network::pod_cidr`).
    #[serde(default)]
    pub pod_cidrs: Vec<String>,
}

/// A pod sandbox as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub version: u32,
    pub id: String,
    /// The reserved name, `<name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    #[serde(with = "crate::store::proto")]
    pub config: cri::PodSandboxConfig,
    /// The RuntimeClass handler as the client named it ("" for the default).
    pub runtime_handler: String,
    pub state: SandboxState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub dir: PathBuf,
    pub namespaces: NamespacePaths,
    /// The [`pid_init`] process holding `namespaces.pid`.
    pub init_pid: Option<u32>,
    /// `None` for a host-network pod.
    pub network: Option<NetworkRecord>,
    /// The last UpdatePodSandboxResources as kubelet sent it (id cleared);
    /// empty until the first.
    #[serde(default, with = "crate::store::proto")]
    pub resources: cri::UpdatePodSandboxResourcesRequest,
}

impl Record for SandboxRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for SandboxRecord {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_creating(&self) -> bool {
        self.state == SandboxState::Creating
    }
}

impl SandboxRecord {
    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub fn namespace_options(&self) -> cri::NamespaceOption {
        namespace_options(&self.config)
    }

    /// The state the CRI sees: a Ready sandbox whose PID init died (it
    /// cannot run a container any more) is reported NotReady, as containerd
    /// reports a sandbox whose pause container exited; kubelet then
    /// replaces the pod's sandbox.
    pub fn effective_state(&self) -> SandboxState {
        match (self.state, self.init_pid) {
            (SandboxState::Ready, Some(pid)) if !pid_init::is_berth_init(pid) => {
                SandboxState::NotReady
            }
            (state, _) => state,
        }
    }

    /// The pod's IPs while its network is up.
    pub fn ips(&self) -> &[String] {
        match &self.network {
            Some(n) if self.state == SandboxState::Ready && !n.detached => &n.ips,
            _ => &[],
        }
    }

    /// The files the pod gives its containers.
    pub fn file_paths(&self) -> files::PodFilePaths {
        files::PodFilePaths::under(&self.dir)
    }
}

/// The namespace options of a pod config (all `POD` when absent).
pub fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod sandbox {0} not found")]
    NotFound(String),
    #[error("the pod network is not ready: {0}")]
    NetworkNotReady(#[from] CniConfigError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("cannot set sysctl {name} ({path}): {source}")]
    Sysctl {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set the pod's hostname {hostname:?}: {source}")]
    Hostname {
        hostname: String,
        source: nix::Error,
    },
    #[error("pod init {binary}: {reason}")]
    Init { binary: PathBuf, reason: String },
    #[error("pod init {binary}: {what}: {source}")]
    InitIo {
        binary: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    RemoveDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("RunPodSandbox was abandoned by its client; the sandbox was rolled back")]
    Abandoned,
}

impl SandboxError {
    /// The class of this error.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::NetworkNotReady(_) => ErrorKind::FailedPrecondition,
            Self::Files(FilesError::Dns { .. }) => ErrorKind::InvalidArgument,
            Self::Abandoned => ErrorKind::Cancelled,
            Self::Cni(CniError::Timeout { .. }) => ErrorKind::DeadlineExceeded,
            Self::Namespace(_)
            | Self::Files(_)
            | Self::Cni(_)
            | Self::Sysctl { .. }
            | Self::Hostname { .. }
            | Self::Init { .. }
            | Self::InitIo { .. }
            | Self::CreateDir { .. }
            | Self::RemoveDir { .. } => ErrorKind::Internal,
        }
    }
}

/// The sandboxes of this berthd: records, names, one lock per pod.
pub type Sandboxes = ObjectTable<SandboxRecord>;

/// The directory of a sandbox under the state dir.
pub fn sandbox_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("sandboxes").join(id)
}

/// A new random object id: 64 hex digits, like containerd's.
pub fn random_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable on every Linux host");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_differ() {
        let a = random_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_id());
    }

    #[test]
    fn records_round_trip_as_json() {
        let record = SandboxRecord {
            version: SANDBOX_RECORD_VERSION,
            id: "abc".into(),
            name: "n_ns_uid_0".into(),
            config: cri::PodSandboxConfig {
                hostname: "h".into(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            created_at: 5,
            dir: "/run/berth/sandboxes/abc".into(),
            namespaces: NamespacePaths {
                net: Some("/run/berth/sandboxes/abc/netns".into()),
                ..Default::default()
            },
            init_pid: None,
            network: None,
            resources: Default::default(),
        };
        let json = serde_json::to_string(&record).expect("json");
        assert!(json.contains("\"state\":\"ready\""), "{json}");
        let back: SandboxRecord = serde_json::from_str(&json).expect("back");
        assert_eq!(back, record);
    }
}
