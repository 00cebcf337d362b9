//! The container and its init process: create, start, kill, delete.
//!
//! `create` mounts `CreateTaskRequest.rootfs` on `<bundle>/rootfs` if the
//! request carries mounts (containerd's convention; an agent that mounts
//! the rootfs itself sends none), persists `options.json`, sets up IO and
//! runs `runtime create`. `delete` undoes all of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api::CreateTaskRequest;

use crate::bundle;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::io::{PendingIo, StdioSpec};
use crate::oci_runtime::{OciRuntime, ProcessIo};
use crate::options::RuntimeOptions;
use crate::process::{read_pid, Exit, Process, Registry, Status};
use crate::reaper::Exits;

/// How long `delete` of a never-started container waits for its init to die.
const DELETE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Init {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: OciRuntime,
    pub process: Arc<Process>,
    options: RuntimeOptions,
}

impl Init {
    pub async fn create(
        req: &CreateTaskRequest,
        namespace: &str,
        registry: &Registry,
        publisher: &Arc<Publisher>,
    ) -> Result<Self> {
        if req.id.is_empty() || req.id.contains('/') {
            return Err(Error::InvalidArgument(format!("container id {:?}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::InvalidArgument(
                "berth cannot restore checkpoints".to_string(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() || !bundle.join("config.json").is_file() {
            return Err(Error::InvalidArgument(format!(
                "bundle {:?} is not an absolute path to a directory with config.json",
                req.bundle
            )));
        }
        let mut options = RuntimeOptions::from_any(req.options.as_ref(), namespace)?;
        let runtime = OciRuntime::new(&options, &bundle)?;
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (pending, child_io) = PendingIo::prepare(&stdio)?;

        let rootfs = bundle.join("rootfs");
        if !req.rootfs.is_empty() {
            mount_all(req, &rootfs).await?;
            options.mounted_rootfs = true;
        }
        let init = Self {
            id: req.id.clone(),
            process: Process::new(&req.id, "", stdio, Some(bundle.join(bundle::EXIT))),
            bundle,
            runtime,
            options,
        };
        match init
            .run_create(pending, child_io, registry, publisher)
            .await
        {
            Ok(()) => Ok(init),
            Err(e) => {
                init.unmount_rootfs().await;
                Err(e)
            }
        }
    }

    async fn run_create(
        &self,
        pending: PendingIo,
        child_io: Option<crate::oci_runtime::ChildIo>,
        registry: &Registry,
        publisher: &Arc<Publisher>,
    ) -> Result<()> {
        let options = self.options.clone();
        let bundle = self.bundle.clone();
        tokio::task::spawn_blocking(move || options.write(&bundle))
            .await
            .expect("options writer does not panic")?;
        let pid_file = self.bundle.join(bundle::INIT_PID);
        let (io, console) = ProcessIo::new(child_io)?;
        let mut exits = Exits::subscribe();
        self.runtime
            .create(&self.id, &self.bundle, &pid_file, io)
            .await?;
        // The container exists now: any failure must remove it.
        let adopted = async {
            let master = match console {
                Some(socket) => Some(socket.receive().await?),
                None => None,
            };
            let pid = read_pid(&pid_file)?;
            self.process.set_io(pending.start(master)?);
            registry.register(pid, &self.process, &mut exits, publisher);
            Ok(())
        }
        .await;
        if adopted.is_err() {
            self.force_delete().await;
        }
        adopted
    }

    pub async fn start(&self) -> Result<u32> {
        match self.process.status() {
            Status::Created => {}
            Status::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is already started",
                    self.id
                )))
            }
            Status::Stopped => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} has exited",
                    self.id
                )))
            }
        }
        self.runtime.start(&self.id).await?;
        self.process.set_running();
        Ok(self.process.pid())
    }

    /// Signals the init, or with `all` every process of the container.
    pub async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        if self.process.status() == Status::Stopped && !all {
            return Err(Error::NotFound(format!(
                "container {}: process already finished",
                self.id
            )));
        }
        self.runtime
            .kill(&self.id, signal, all)
            .await
            .map_err(|e| match e {
                Error::Runtime { ref message, .. } if is_gone(message) => {
                    Error::NotFound(format!("container {}: process already finished", self.id))
                }
                e => e,
            })
    }

    /// Removes the container from the runtime, unmounts what `create`
    /// mounted and closes the IO. A running container must be killed
    /// first; a created one is killed here.
    pub async fn delete(&self) -> Result<(u32, Option<Exit>)> {
        match self.process.status() {
            Status::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is running: kill it before deleting",
                    self.id
                )))
            }
            Status::Created => {
                self.runtime.delete(&self.id, true).await?;
                let _ = tokio::time::timeout(DELETE_WAIT, self.process.wait()).await;
            }
            Status::Stopped => match self.runtime.delete(&self.id, true).await {
                Err(Error::Runtime { ref message, .. }) if is_gone(message) => {}
                other => other?,
            },
        }
        self.unmount_rootfs().await;
        if let Some(io) = self.process.io() {
            io.close();
        }
        let _ = std::fs::remove_file(self.bundle.join(bundle::INIT_PID));
        Ok((self.process.pid(), self.process.exit()))
    }

    async fn force_delete(&self) {
        if let Err(e) = self.runtime.delete(&self.id, true).await {
            tracing::warn!("cannot delete the half-created container: {e}");
        }
    }

    async fn unmount_rootfs(&self) {
        if !self.options.mounted_rootfs {
            return;
        }
        let rootfs = self.bundle.join("rootfs");
        let result = tokio::task::spawn_blocking(move || unmount(&rootfs))
            .await
            .expect("unmount does not panic");
        if let Err(e) = result {
            tracing::warn!("{e}");
        }
    }
}

async fn mount_all(req: &CreateTaskRequest, rootfs: &Path) -> Result<()> {
    match berth_owner_only::create_dir(rootfs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(rootfs, e)),
    }
    // The task API's mounts are containerd's, field for field.
    let mounts: Vec<berth_mount::Mount> = req
        .rootfs
        .iter()
        .map(|m| berth_mount::Mount {
            fs_type: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    let target = rootfs.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mounted = berth_mount::mount_all(&mounts, &target);
        if mounted.is_err() {
            let _ = berth_mount::unmount_recursive(&target);
        }
        Ok(mounted?)
    })
    .await
    .expect("mount does not panic")
}

/// Unmounts everything at and under `rootfs`.
pub fn unmount(rootfs: &Path) -> Result<()> {
    Ok(berth_mount::unmount_recursive(rootfs)?)
}

/// Whether a runtime error says the container or process is already gone.
fn is_gone(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "not running",
        "does not exist",
        "not found",
        "process already finished",
        "no such process",
    ]
    .iter()
    .any(|s| m.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_gone_processes() {
        let cases = [
            ("container not running", true),
            ("container \"c1\" does not exist", true),
            ("kill: no such process", true),
            ("open /x: permission denied", false),
        ];
        for (message, want) in cases {
            assert_eq!(is_gone(message), want, "{message}");
        }
    }
}
