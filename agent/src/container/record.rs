//! Container records, their states, and the containers of one berthd.
//!
//! A container has a record in the store's `containers` table
//! ([`ContainerRecord`], JSON, `version` 1) and a bundle directory
//! `<state>/containers/<id>/`: `config.json` (the OCI spec) plus what the
//! shim keeps there (`address`, `options.json`, `exit.json`, `shim.log`,
//! `rootfs/` while the shim has it mounted). Its root filesystem is the
//! snapshot named by the container id.
//!
//! States: `Creating` (hidden from the CRI; a crash leaves it for recovery
//! to undo), `Created` (the shim runs and the runtime created the
//! container), `Running`, `Exited` (the exit is recorded; the task was
//! deleted and the shim told to exit).

use super::spec::SpecError;
use crate::shim_client::{ShimClient, ShimError, ShimSettings};
use crate::store::objects::{Object, ObjectTable};
use crate::store::records::Record;
use crate::store::{Store, StoreError, Table};
use berth_proto::cri::v1 as cri;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The version of [`ContainerRecord`] this berth writes.
pub const CONTAINER_RECORD_VERSION: u32 = 1;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Creating,
    Created,
    Running,
    Exited,
}

/// The image a container was made from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// As the client named it.
    pub name: String,
    /// The image ID (`sha256:…`).
    pub id: String,
    /// The first repo tag, if any: what ContainerStatus reports as image.
    pub repo_tag: Option<String>,
    /// The first repo digest, if any: ContainerStatus's image_ref.
    pub repo_digest: Option<String>,
}

/// The identity of the container's process, for ContainerStatus.user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// A container as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub sandbox_id: String,
    /// The reserved name, `<name>_<pod>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    #[serde(with = "crate::store::proto")]
    pub config: cri::ContainerConfig,
    pub image: ImageInfo,
    pub bundle: PathBuf,
    /// The CRI log file (`<log_directory>/<log_path>`), empty for none.
    pub log_path: String,
    /// The OCI runtime binary of the pod's handler.
    pub runtime: PathBuf,
    /// The external shim v2 binary of the pod's handler (`None`: berth's).
    #[serde(default)]
    pub shim: Option<PathBuf>,
    /// The task API its shim speaks.
    #[serde(default)]
    pub task_api: crate::shim_client::TaskApi,
    /// `linux.cgroupsPath` of the spec.
    pub cgroup_path: String,
    /// The signal StopContainer sends first (`SIGTERM`, `SIGQUIT`, `15`).
    pub stop_signal: String,
    pub user: ProcessUser,
    pub state: ContainerState,
    /// Nanoseconds since the epoch; 0 when it did not happen (yet).
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    /// The init's pid on the host (0 before create).
    pub pid: u32,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The resources as last set (create or UpdateContainerResources).
    #[serde(with = "crate::store::proto")]
    pub resources: cri::LinuxContainerResources,
}

impl Record for ContainerRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for ContainerRecord {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_creating(&self) -> bool {
        self.state == ContainerState::Creating
    }
}

impl ContainerRecord {
    /// Records the container's exit; the first exit recorded stays.
    pub fn mark_exited(&mut self, exit_code: i32, at: i64, reason: String, message: String) {
        if self.state != ContainerState::Exited {
            self.state = ContainerState::Exited;
            self.exit_code = exit_code;
            self.finished_at = at;
            self.reason = reason;
            self.message = message;
        }
    }

    /// Records that the created container runs as `pid` since `at`; a
    /// container that moved on meanwhile is left as it is.
    pub fn mark_running(&mut self, pid: u32, at: i64) {
        if self.state == ContainerState::Created {
            self.state = ContainerState::Running;
            self.started_at = at;
            self.pid = pid;
        }
    }

    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// The file the shim writes its address to.
    /// The shim binary that serves this container.
    pub fn shim(&self) -> Result<crate::shim_client::Shim, ShimError> {
        crate::shim_client::Shim::new(self.shim.as_deref())
    }

    pub fn address_file(&self) -> PathBuf {
        self.bundle.join("address")
    }
}

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    #[error("container {id} is {state}: {what}")]
    WrongState {
        id: String,
        state: &'static str,
        what: &'static str,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Snapshot(#[from] berth_snapshotter::Error),
    #[error(transparent)]
    Mount(#[from] berth_mount::Error),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ExecSync in {id} did not finish within {seconds} s; the process was killed")]
    ExecTimeout { id: String, seconds: i64 },
    #[error("the logging process of container {id} did not reopen its log within {seconds} s")]
    LogNotReopened { id: String, seconds: u64 },
    #[error("CreateContainer was abandoned by its client; the container was rolled back")]
    Abandoned,
}

impl ContainerError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::NotFound(_) | Self::ImageNotFound(_) => ErrorKind::NotFound,
            Self::SandboxNotReady(_) | Self::WrongState { .. } => ErrorKind::FailedPrecondition,
            Self::Spec(e) => e.kind(),
            Self::Shim(e) => e.kind(),
            Self::ExecTimeout { .. } | Self::LogNotReopened { .. } => ErrorKind::DeadlineExceeded,
            Self::Abandoned => ErrorKind::Cancelled,
            Self::Snapshot(_) | Self::Mount(_) | Self::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// The name of a state, for messages.
pub fn state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Creating => "being created",
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
    }
}

/// The containers of this berthd: the table of records, names and
/// per-container locks, plus what berthd keeps of their shims. It derefs to
/// the table, so containers are looked up and locked as sandboxes are.
#[derive(Debug)]
pub struct Containers {
    table: ObjectTable<ContainerRecord>,
    /// How shims are launched and where they keep their sockets.
    pub shim: ShimSettings,
    /// Connected task clients by container id (see [`Containers::client`]).
    clients: Mutex<HashMap<String, ShimClient>>,
    /// The exit watchers ([`super::exit::watch`]); ended at shutdown.
    watchers: Mutex<tokio::task::JoinSet<()>>,
}

impl Containers {
    /// Loads the records; names of created containers are reserved again.
    pub fn load(store: &Store, shim: ShimSettings) -> Result<Self, StoreError> {
        Ok(Self {
            table: ObjectTable::load(store, Table::Containers)?,
            shim,
            clients: Mutex::new(HashMap::new()),
            watchers: Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    /// Runs a watcher task; finished ones are reaped on the way.
    pub fn spawn_watcher(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut watchers = self
            .watchers
            .lock()
            .expect("watchers lock is never poisoned");
        while watchers.try_join_next().is_some() {}
        watchers.spawn(task);
    }

    /// Ends every watcher (at shutdown: the containers keep running under
    /// their shims, and the next berthd watches them again).
    pub async fn stop_watchers(&self) {
        let mut watchers = std::mem::take(
            &mut *self
                .watchers
                .lock()
                .expect("watchers lock is never poisoned"),
        );
        watchers.abort_all();
        while watchers.join_next().await.is_some() {}
    }

    /// The task client of a container in one of the `allowed` states;
    /// `WrongState`, saying `what`, in any other.
    pub async fn client_in(
        &self,
        record: &ContainerRecord,
        allowed: &[ContainerState],
        what: &'static str,
    ) -> Result<ShimClient, ContainerError> {
        if !allowed.contains(&record.state) {
            return Err(ContainerError::WrongState {
                id: record.id.clone(),
                state: state_name(record.state),
                what,
            });
        }
        Ok(self.client(record).await?)
    }

    /// The task client of a container's shim: cached, or connected through
    /// the address the shim wrote into the bundle.
    pub async fn client(&self, record: &ContainerRecord) -> Result<ShimClient, ShimError> {
        if let Some(client) = self
            .clients
            .lock()
            .expect("clients lock is never poisoned")
            .get(&record.id)
        {
            return Ok(client.clone());
        }
        let address = std::fs::read_to_string(record.address_file()).map_err(|source| {
            ShimError::Address {
                id: record.id.clone(),
                path: record.address_file(),
                source,
            }
        })?;
        let client = ShimClient::connect(&record.id, address.trim(), record.task_api).await?;
        self.clients
            .lock()
            .expect("clients lock is never poisoned")
            .insert(record.id.clone(), client.clone());
        Ok(client)
    }

    /// Drops the cached client of `id` (its shim is gone or going).
    pub fn forget_client(&self, id: &str) {
        self.clients
            .lock()
            .expect("clients lock is never poisoned")
            .remove(id);
    }

    /// The records of a sandbox's containers.
    pub fn in_sandbox(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.table
            .list()
            .into_iter()
            .filter(|r| r.sandbox_id == sandbox_id)
            .collect()
    }
}

impl std::ops::Deref for Containers {
    type Target = ObjectTable<ContainerRecord>;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// The bundle directory of a container under the state dir.
pub fn bundle_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("containers").join(id)
}
