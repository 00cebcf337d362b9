//! Talking to a container's shim (`containerd-shim-berth-v2`, `shim/`).
//!
//! Layout: [`launch`] runs the shim's `start` action, which leaves a shim
//! server running outside berthd's process tree and writes its address to
//! `<bundle>/address`; [`ShimClient`] is a ttrpc task client on that
//! address; [`cleanup_dead`] runs the `delete` action for a shim that died.
//!
//! A RuntimeClass handler may name another shim v2 binary instead (say
//! Debian's `containerd-shim-runc-v2`, see [`Shim`]): it is launched and
//! spoken to the same way; its container output goes to berth's shim run
//! as a containerd logging binary (`binary://…?log-cri=…`), which writes the
//! CRI log, since such shims write only raw `file://` logs.
//!
//! Every shim of one berthd gets the same namespace ([`NAMESPACE`]), the
//! CRI socket as `-address` and `$BERTH_SHIM_SOCKET_DIR=<state>/s`, so two
//! berthds on one host (tests) never share a shim socket; its OCI runtime
//! keeps state under `<state>/runc`.

use crate::error::ErrorKind;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options;
use containerd_shim_protos::shim_async::Client;
use containerd_shim_protos::ttrpc;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod task_api;

pub use task_api::TaskApi;
use task_api::TaskClient;

/// The shim namespace of berth's containers.
pub const NAMESPACE: &str = "berth";
/// The environment variable naming the shim socket directory.
pub const SOCKET_DIR_ENV: &str = "BERTH_SHIM_SOCKET_DIR";
/// The environment variable giving berth's shim its runtime command
/// timeout, in seconds (the shim's `oci_runtime::TIMEOUT_ENV`).
pub const RUNTIME_TIMEOUT_ENV: &str = "BERTH_SHIM_RUNTIME_TIMEOUT";
/// How long an ordinary task call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a shim could not be launched or answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("the shim binary {0} is not installed beside berthd or on PATH")]
    NotInstalled(&'static str),
    #[error("the handler's shim {} is not an executable on PATH", .0.display())]
    HandlerShimMissing(PathBuf),
    #[error("cannot launch the shim of {id}: {reason}")]
    Launch { id: String, reason: String },
    /// The shim binary could not be run for its `action` (`start`,
    /// `delete`).
    #[error("cannot launch the shim of {id}: cannot run {} {action}: {source}", .binary.display())]
    Run {
        id: String,
        binary: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("cannot launch the shim of {id}: delete printed no DeleteResponse: {source}")]
    DeleteReply {
        id: String,
        source: containerd_shim_protos::protobuf::Error,
    },
    /// The shim's address file (written by its `start`) is unreadable.
    #[error("cannot find the shim of {id}: {}: {source}", .path.display())]
    Address {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to the shim of {id} at {address}: {source}")]
    Connect {
        id: String,
        address: String,
        source: ttrpc::Error,
    },
    /// The shim answered with an error status.
    #[error("shim {rpc} of {id}: {message}")]
    Status {
        rpc: &'static str,
        id: String,
        code: ttrpc::Code,
        message: String,
    },
    /// The connection failed (the shim died or went away).
    #[error("shim {rpc} of {id}: {source}")]
    Transport {
        rpc: &'static str,
        id: String,
        source: ttrpc::Error,
    },
}

impl ShimError {
    /// The class of the shim's answer.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Status { code, .. } => match code {
                ttrpc::Code::NOT_FOUND => ErrorKind::NotFound,
                ttrpc::Code::INVALID_ARGUMENT => ErrorKind::InvalidArgument,
                ttrpc::Code::ALREADY_EXISTS => ErrorKind::AlreadyExists,
                ttrpc::Code::FAILED_PRECONDITION => ErrorKind::FailedPrecondition,
                ttrpc::Code::DEADLINE_EXCEEDED => ErrorKind::DeadlineExceeded,
                ttrpc::Code::UNAVAILABLE => ErrorKind::Unavailable,
                ttrpc::Code::UNIMPLEMENTED => ErrorKind::Unimplemented,
                _ => ErrorKind::Internal,
            },
            Self::NotInstalled(_)
            | Self::Launch { .. }
            | Self::Run { .. }
            | Self::DeleteReply { .. } => ErrorKind::Internal,
            Self::HandlerShimMissing(_) => ErrorKind::FailedPrecondition,
            Self::Address { .. } | Self::Connect { .. } | Self::Transport { .. } => {
                ErrorKind::Unavailable
            }
        }
    }

    /// True when the shim said the task or process does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: ttrpc::Code::NOT_FOUND,
                ..
            }
        )
    }

    /// True when the shim could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Address { .. } | Self::Connect { .. } | Self::Transport { .. }
        )
    }
}

/// Where and how berthd's shims run.
#[derive(Debug, Clone)]
pub struct ShimSettings {
    /// berthd's CRI socket: the shims' `-address`.
    pub agent_socket: PathBuf,
    /// `<state>/s`.
    pub socket_dir: PathBuf,
    /// `<state>/runc`: the OCI runtime's `--root`.
    pub runtime_root: PathBuf,
    /// How long berth's shim lets one OCI runtime command run
    /// (`runtime.command_timeout_seconds`).
    pub runtime_timeout: Duration,
    /// Where launched shims run: outside berthd's own cgroup.
    pub cgroup: crate::cgroups::ShimCgroup,
}

/// The shim binary serving a container: berth's own, or the external shim
/// v2 binary its RuntimeClass handler names.
#[derive(Debug, Clone)]
pub struct Shim {
    binary: PathBuf,
    external: bool,
}

impl Shim {
    /// The shim of a container whose handler names `external` (`None`:
    /// berth's shim).
    pub fn new(external: Option<&Path>) -> Result<Self, ShimError> {
        match external {
            None => Ok(Self {
                binary: berth_shim()?,
                external: false,
            }),
            Some(name) => Ok(Self {
                binary: crate::binaries::find_program(name)
                    .ok_or_else(|| ShimError::HandlerShimMissing(name.to_owned()))?,
                external: true,
            }),
        }
    }

    /// The stdout/stderr URI of a container logging to `log_path`.
    pub fn log_uri(&self, log_path: &str, bundle: &Path) -> Result<String, ShimError> {
        if !self.external {
            return Ok(format!("file://{log_path}"));
        }
        let logger = berth_shim()?;
        let pid_file = bundle.join(LOGGER_PID_FILE);
        let reopened_file = bundle.join(LOGGER_REOPENED_FILE);
        Ok(format!(
            "binary://{}?log-cri={}&pid-file={}&{LOGGER_REOPENED_ARG}={}",
            percent_encode(&logger.display().to_string()),
            percent_encode(log_path),
            percent_encode(&pid_file.display().to_string()),
            percent_encode(&reopened_file.display().to_string()),
        ))
    }

    /// True for a shim berth did not write.
    pub fn is_external(&self) -> bool {
        self.external
    }
}

/// The file in a bundle where the logging binary of an external shim's
/// container writes its PID (ReopenContainerLog signals it).
pub const LOGGER_PID_FILE: &str = "logger.pid";

/// The file in a bundle where that logging binary counts the reopens it
/// has done (ReopenContainerLog waits for the count to grow), and the
/// logger argument naming it (see `shim/src/io/logger.rs`).
pub const LOGGER_REOPENED_FILE: &str = "logger.reopened";
pub const LOGGER_REOPENED_ARG: &str = "reopened-file";

/// containerd's shims write their log, and once a reader opened it their
/// stderr (panics included), to the FIFO `log` in the bundle; berthd reads
/// it into its own log, as containerd does.
fn forward_shim_log(id: &str, bundle: &Path) {
    let fifo = bundle.join("log");
    if let Err(e) = nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU) {
        tracing::warn!(id, error = %e, "cannot make the shim's log FIFO");
        return;
    }
    let receiver = match tokio::net::unix::pipe::OpenOptions::new().open_receiver(&fifo) {
        Ok(receiver) => receiver,
        Err(e) => {
            tracing::warn!(id, error = %e, "cannot open the shim's log FIFO");
            return;
        }
    };
    let id = id.to_owned();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(receiver).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Without containerd's event service the shim's event posts
            // fail; berth follows its containers with `wait` instead.
            if line.contains("msg=\"post event\"") || line.contains("msg=\"forward event\"") {
                tracing::debug!(id, "shim: {line}");
            } else {
                tracing::info!(id, "shim: {line}");
            }
        }
    });
}

fn berth_shim() -> Result<PathBuf, ShimError> {
    crate::binaries::find(crate::binaries::SHIM)
        .ok_or(ShimError::NotInstalled(crate::binaries::SHIM))
}

/// Percent-encodes everything but unreserved characters and `/`, for a
/// URI that Go's `net/url` decodes.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs the shim's `start` action for the container `id` with bundle
/// `bundle`; returns the shim's ttrpc address and task API.
pub async fn launch(
    settings: &ShimSettings,
    shim: &Shim,
    id: &str,
    bundle: &Path,
) -> Result<StartReply, ShimError> {
    let binary = &shim.binary;
    if shim.external {
        forward_shim_log(id, bundle);
    }
    let mut command = shim_command(shim, settings, id, bundle, "start");
    settings.cgroup.apply(&mut command);
    let output = command.output().await.map_err(|source| ShimError::Run {
        id: id.to_owned(),
        binary: binary.clone(),
        action: "start",
        source,
    })?;
    if !output.status.success() {
        return Err(ShimError::Launch {
            id: id.to_owned(),
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    parse_start_reply(&output.stdout).ok_or_else(|| ShimError::Launch {
        id: id.to_owned(),
        reason: format!(
            "unreadable start reply {:?}",
            String::from_utf8_lossy(&output.stdout)
        ),
    })
}

/// What a shim's `start` action answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReply {
    pub address: String,
    pub task_api: TaskApi,
}

/// containerd 2.x's start reply
/// (`{"version":3,"address":"unix://…","protocol":"ttrpc"}`, the version
/// naming the task API), or the bare address containerd 1.x shims print
/// (task API v2).
pub fn parse_start_reply(stdout: &[u8]) -> Option<StartReply> {
    let text = String::from_utf8_lossy(stdout);
    let text = text.trim();
    if let Ok(reply) = serde_json::from_str::<serde_json::Value>(text) {
        if reply["protocol"].as_str().is_some_and(|p| p != "ttrpc") {
            return None;
        }
        let task_api = match reply["version"].as_u64() {
            Some(2) => TaskApi::V2,
            Some(3) => TaskApi::V3,
            _ => return None,
        };
        return reply["address"].as_str().map(|address| StartReply {
            address: address.to_owned(),
            task_api,
        });
    }
    text.starts_with("unix://").then(|| StartReply {
        address: text.to_owned(),
        task_api: TaskApi::V2,
    })
}

/// Runs the shim's `delete` action for a shim that died: the runtime's
/// container is deleted, the rootfs unmounted, the dead socket removed.
/// Returns the shim's `DeleteResponse`: the exit it had persisted, or pid
/// 0 and status 137 when it had none.
pub async fn cleanup_dead(
    settings: &ShimSettings,
    shim: &Shim,
    id: &str,
    bundle: &Path,
) -> Result<api::DeleteResponse, ShimError> {
    let binary = &shim.binary;
    let output = shim_command(shim, settings, id, bundle, "delete")
        .output()
        .await
        .map_err(|source| ShimError::Run {
            id: id.to_owned(),
            binary: binary.clone(),
            action: "delete",
            source,
        })?;
    if !output.status.success() {
        return Err(ShimError::Launch {
            id: id.to_owned(),
            reason: format!(
                "delete: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let response = api::DeleteResponse::parse_from_bytes(&output.stdout).map_err(|source| {
        ShimError::DeleteReply {
            id: id.to_owned(),
            source,
        }
    })?;
    Ok(response)
}

fn shim_command(
    shim: &Shim,
    settings: &ShimSettings,
    id: &str,
    bundle: &Path,
    action: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&shim.binary);
    command
        .args(["-namespace", NAMESPACE, "-id", id, "-address"])
        .arg(&settings.agent_socket);
    if shim.external {
        // containerd's shims publish task events through this binary;
        // berth follows its containers with `wait` and needs none.
        if let Some(discard) = crate::binaries::find_program(Path::new("true")) {
            command.arg("-publish-binary").arg(discard);
        }
    }
    command
        .arg("-bundle")
        .arg(bundle)
        .arg(action)
        .current_dir(bundle)
        .env(SOCKET_DIR_ENV, &settings.socket_dir)
        .env(
            RUNTIME_TIMEOUT_ENV,
            settings.runtime_timeout.as_secs().to_string(),
        )
        .env_remove("TTRPC_ADDRESS")
        .stdin(std::process::Stdio::null());
    command
}

/// The task options that choose the OCI runtime.
pub fn runtime_options(settings: &ShimSettings, binary: &Path, systemd_cgroup: bool) -> Any {
    let options = Options {
        binary_name: binary.display().to_string(),
        root: settings.runtime_root.display().to_string(),
        systemd_cgroup,
        ..Default::default()
    };
    Any {
        type_url: "containerd.runc.v1.Options".to_owned(),
        value: options
            .write_to_bytes()
            .expect("runc options always encode"),
        ..Default::default()
    }
}

/// The stdio of an exec process, as the task API names it: FIFO paths
/// (empty for none) and whether it gets a terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A connected task client for one container.
#[derive(Clone)]
pub struct ShimClient {
    id: String,
    task: TaskClient,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimClient").field("id", &self.id).finish()
    }
}

fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.map_or(0, |t| t.as_nanos() as i64))
}

impl ShimClient {
    /// Connects to the shim of container `id` at `address`, which speaks
    /// `task_api`.
    pub async fn connect(id: &str, address: &str, task_api: TaskApi) -> Result<Self, ShimError> {
        let client = Client::connect(address)
            .await
            .map_err(|source| ShimError::Connect {
                id: id.to_owned(),
                address: address.to_owned(),
                source,
            })?;
        Ok(Self {
            id: id.to_owned(),
            task: TaskClient::new(client, task_api),
        })
    }

    /// Connects to a shim whose task API is unknown (a bundle found
    /// without its record): v3, else v2.
    pub async fn connect_probing(id: &str, address: &str) -> Result<Self, ShimError> {
        let mut last = None;
        for task_api in [TaskApi::V3, TaskApi::V2] {
            let client = Self::connect(id, address, task_api).await?;
            match client.connect_info().await {
                Err(e) => last = Some(e),
                Ok(_) => return Ok(client),
            }
        }
        Err(last.expect("two attempts were made"))
    }

    fn error(&self, rpc: &'static str, e: ttrpc::Error) -> ShimError {
        match e {
            ttrpc::Error::RpcStatus(status) => ShimError::Status {
                rpc,
                id: self.id.clone(),
                code: status.code(),
                message: status.message().to_owned(),
            },
            source => ShimError::Transport {
                rpc,
                id: self.id.clone(),
                source,
            },
        }
    }

    /// The shim's own pid (and the container's, if created).
    pub async fn connect_info(&self) -> Result<api::ConnectResponse, ShimError> {
        let request = api::ConnectRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.task
            .connect(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map_err(|e| self.error("connect", e))
    }

    pub async fn create(&self, request: api::CreateTaskRequest) -> Result<u32, ShimError> {
        self.task
            .create(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map(|r| r.pid)
            .map_err(|e| self.error("create", e))
    }

    /// Starts the init (`exec_id` empty) or an exec; returns its pid.
    pub async fn start(&self, exec_id: &str) -> Result<u32, ShimError> {
        let request = api::StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .start(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map(|r| r.pid)
            .map_err(|e| self.error("start", e))
    }

    pub async fn state(&self, exec_id: &str) -> Result<api::StateResponse, ShimError> {
        let request = api::StateRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .state(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map_err(|e| self.error("state", e))
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), ShimError> {
        let request = api::KillRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        self.task
            .kill(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map(drop)
            .map_err(|e| self.error("kill", e))
    }

    /// Waits for the init or an exec to exit, without a deadline; returns
    /// the exit status and time.
    pub async fn wait(&self, exec_id: &str) -> Result<api::WaitResponse, ShimError> {
        let request = api::WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .wait(ctx(None), &request)
            .await
            .map_err(|e| self.error("wait", e))
    }

    pub async fn delete(&self, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let request = api::DeleteRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.task
            .delete(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map_err(|e| self.error("delete", e))
    }

    /// Registers an exec process (`spec`: the OCI process as JSON) with
    /// the stdio ends in `stdio`.
    pub async fn exec(
        &self,
        exec_id: &str,
        spec: Vec<u8>,
        stdio: &ExecStdio,
    ) -> Result<(), ShimError> {
        let request = api::ExecProcessRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            terminal: stdio.terminal,
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".to_owned(),
                value: spec,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.task
            .exec(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map(drop)
            .map_err(|e| self.error("exec", e))
    }

    /// Sets the terminal size of the init (`exec_id` empty) or an exec.
    pub async fn resize_pty(
        &self,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError> {
        let request = api::ResizePtyRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        };
        self.task
            .resize_pty(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map(drop)
            .map_err(|e| self.error("resize_pty", e))
    }

    /// Updates resources (OCI `LinuxResources` JSON) or, with `annotations`,
    /// asks for other updates such as reopening the log.
    pub async fn update(
        &self,
        resources: Option<Vec<u8>>,
        annotations: std::collections::HashMap<String, String>,
    ) -> Result<(), ShimError> {
        let request = api::UpdateTaskRequest {
            id: self.id.clone(),
            resources: resources
                .map(|value| Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .to_owned(),
                    value,
                    ..Default::default()
                })
                .into(),
            annotations,
            ..Default::default()
        };
        self.task
            .update(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map(drop)
            .map_err(|e| self.error("update", e))
    }

    /// Asks the shim to exit (`now`: even with its container not deleted).
    pub async fn shutdown(&self, now: bool) -> Result<(), ShimError> {
        let request = api::ShutdownRequest {
            id: self.id.clone(),
            now,
            ..Default::default()
        };
        self.task
            .shutdown(ctx(Some(CALL_TIMEOUT)), &request)
            .await
            .map(drop)
            .map_err(|e| self.error("shutdown", e))
    }
}

/// The snapshot mounts as the shim takes them.
pub fn rootfs_mounts(mounts: &[berth_mount::Mount]) -> Vec<api::Mount> {
    mounts
        .iter()
        .map(|m| api::Mount {
            type_: m.fs_type.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_shims_log_through_berths_logging_binary() {
        let bundle = Path::new("/run/berth/containers/c1");
        let own = Shim::new(None).expect("berth's shim is built beside the tests");
        assert_eq!(
            own.log_uri("/var/log/pods/a b/c.log", bundle).expect("uri"),
            "file:///var/log/pods/a b/c.log"
        );
        let external = Shim::new(Some(Path::new("sh"))).expect("sh");
        assert!(external.is_external());
        let uri = external
            .log_uri("/var/log/pods/a b/c&d.log", bundle)
            .expect("uri");
        assert!(uri.starts_with("binary:///"), "{uri}");
        assert!(
            uri.ends_with(
                "containerd-shim-berth-v2?log-cri=/var/log/pods/a%20b/c%26d.log\
                 &pid-file=/run/berth/containers/c1/logger.pid\
                 &reopened-file=/run/berth/containers/c1/logger.reopened"
            ),
            "{uri}"
        );
        let missing = Shim::new(Some(Path::new("berth-no-such-shim"))).expect_err("missing");
        assert_eq!(missing.kind(), ErrorKind::FailedPrecondition);
    }

    #[test]
    fn start_replies() {
        assert_eq!(
            parse_start_reply(
                br#"{"version":3,"address":"unix:///run/berth/s/ab","protocol":"ttrpc"}"#
            ),
            Some(StartReply {
                address: "unix:///run/berth/s/ab".to_owned(),
                task_api: TaskApi::V3
            })
        );
        assert_eq!(
            parse_start_reply(b"unix:///run/x\n"),
            Some(StartReply {
                address: "unix:///run/x".to_owned(),
                task_api: TaskApi::V2
            })
        );
        assert_eq!(
            parse_start_reply(br#"{"version":7,"address":"x","protocol":"ttrpc"}"#),
            None
        );
        assert_eq!(
            parse_start_reply(br#"{"version":3,"address":"x","protocol":"grpc"}"#),
            None
        );
        assert_eq!(parse_start_reply(b"garbage"), None);
    }

    #[test]
    fn status_codes_map_to_kinds() {
        let error = |code| ShimError::Status {
            rpc: "kill",
            id: "c".into(),
            code,
            message: "m".into(),
        };
        assert_eq!(error(ttrpc::Code::NOT_FOUND).kind(), ErrorKind::NotFound);
        assert!(error(ttrpc::Code::NOT_FOUND).is_not_found());
        assert_eq!(
            error(ttrpc::Code::FAILED_PRECONDITION).kind(),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(error(ttrpc::Code::UNKNOWN).kind(), ErrorKind::Internal);
    }
}
