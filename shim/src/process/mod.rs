//! The container's processes: its init ([`init`]) and execs ([`exec`]).
//!
//! Lifecycle: created (the runtime made it; for an exec, only registered)
//! → running → stopped. A process becomes stopped once the reaper reports
//! its pid; then its output is drained, the init's exit is persisted
//! (`exit.json`), `TaskExit` is queued for publishing and waiters are
//! woken, in that order.

pub mod exec;
pub mod init;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC;
use tokio::sync::watch;

use crate::bundle::{self, ExitRecord};
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::io::{Io, StdioSpec};
use crate::reaper::Exits;

/// How long an exit waits for the process's output to be copied.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).expect("nanos < 1e9"),
        ..Default::default()
    }
}

#[derive(Debug)]
struct State {
    pid: u32,
    status: Status,
}

/// One process and what the shim knows of it.
#[derive(Debug)]
pub struct Process {
    pub container_id: String,
    /// Empty for the init.
    pub exec_id: String,
    pub stdio: StdioSpec,
    /// Where the init's exit is persisted; `None` for execs.
    exit_file: Option<PathBuf>,
    state: Mutex<State>,
    io: Mutex<Option<Arc<Io>>>,
    exit: watch::Sender<Option<Exit>>,
    exit_claimed: AtomicBool,
    /// Held while the process is started and its start event published,
    /// so that `TaskExit` never precedes `TaskStart`/`TaskExecStarted`.
    pub start_gate: tokio::sync::Mutex<()>,
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioSpec,
        exit_file: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            exit_file,
            state: Mutex::new(State {
                pid: 0,
                status: Status::Created,
            }),
            io: Mutex::new(None),
            exit: watch::channel(None).0,
            exit_claimed: AtomicBool::new(false),
            start_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// The exec id, or the container id for the init (as containerd's
    /// `TaskExit.id`).
    pub fn id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn pid(&self) -> u32 {
        self.state.lock().expect("state lock poisoned").pid
    }

    pub fn status(&self) -> Status {
        self.state.lock().expect("state lock poisoned").status
    }

    fn set_pid(&self, pid: u32) {
        self.state.lock().expect("state lock poisoned").pid = pid;
    }

    /// Marks the process running unless it already stopped.
    fn set_running(&self) {
        let mut state = self.state.lock().expect("state lock poisoned");
        if state.status == Status::Created {
            state.status = Status::Running;
        }
    }

    pub fn io(&self) -> Option<Arc<Io>> {
        self.io.lock().expect("io lock poisoned").clone()
    }

    fn set_io(&self, io: Io) {
        *self.io.lock().expect("io lock poisoned") = Some(Arc::new(io));
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits until the process exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in self");
        exit.expect("waited for Some")
    }

    /// Handles the exit of this process (see the module doc). Only the
    /// first report counts.
    pub async fn exited(self: Arc<Self>, code: i32, publisher: Arc<Publisher>) {
        if self.exit_claimed.swap(true, Ordering::SeqCst) {
            return;
        }
        let at = SystemTime::now();
        let status = u32::try_from(code).unwrap_or(255);
        if let Some(io) = self.io() {
            io.wait_output(OUTPUT_DRAIN_LIMIT).await;
        }
        let pid = self.pid();
        if let Some(path) = self.exit_file.clone() {
            let record = ExitRecord::new(&self.container_id, pid, status, at);
            let written = tokio::task::spawn_blocking(move || bundle::write_json(&path, &record))
                .await
                .expect("exit record writer does not panic");
            if let Err(e) = written {
                tracing::error!("cannot persist the exit: {e}");
            }
        }
        let exit = Exit { status, at };
        // After the start event; before waking waiters, so that it precedes
        // the events of whatever they do next (TaskDelete).
        drop(self.start_gate.lock().await);
        publisher
            .publish(
                TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: self.container_id.clone(),
                    id: self.id().to_string(),
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(exit.timestamp()),
                    ..Default::default()
                },
            )
            .await;
        self.state.lock().expect("state lock poisoned").status = Status::Stopped;
        self.exit.send_replace(Some(exit));
        tracing::info!(id = self.id(), pid, status, "process exited");
    }
}

/// The pids of live processes, for the exit dispatcher.
#[derive(Debug, Default, Clone)]
pub struct Registry(Arc<Mutex<HashMap<i32, Arc<Process>>>>);

impl Registry {
    /// Records that `process` has `pid`. `exits` is the subscription taken
    /// before the runtime spawned it: an exit it already saw is handled
    /// now, since the dispatcher did not know the pid yet.
    pub fn register(
        &self,
        pid: u32,
        process: &Arc<Process>,
        exits: &mut Exits,
        publisher: &Arc<Publisher>,
    ) {
        process.set_pid(pid);
        let raw = i32::try_from(pid).expect("pids fit in i32");
        self.0
            .lock()
            .expect("registry lock poisoned")
            .insert(raw, process.clone());
        if let Some(code) = exits.take(raw) {
            self.remove(raw);
            tokio::spawn(process.clone().exited(code, publisher.clone()));
        }
    }

    pub fn remove(&self, pid: i32) -> Option<Arc<Process>> {
        self.0.lock().expect("registry lock poisoned").remove(&pid)
    }
}

/// Reads a pid file the runtime wrote.
pub fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.trim().parse().map_err(|_| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a pid: {text:?}"),
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_exit_wins_and_is_persisted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let exit_file = dir.path().join(bundle::EXIT);
        let p = Process::new("c1", "", StdioSpec::default(), Some(exit_file.clone()));
        p.set_pid(42);
        p.set_running();
        assert_eq!(p.status(), Status::Running);
        let publisher = Arc::new(Publisher::none("ns"));
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait().await }
        });
        p.clone().exited(3, publisher.clone()).await;
        p.clone().exited(9, publisher).await;
        let exit = waiter.await.expect("waiter");
        assert_eq!(exit.status, 3);
        assert_eq!(p.exit(), Some(exit));
        assert_eq!(p.status(), Status::Stopped);
        p.set_running();
        assert_eq!(p.status(), Status::Stopped, "an exit is final");
        let record: ExitRecord = bundle::read_json(&exit_file)
            .expect("read")
            .expect("persisted");
        assert_eq!(
            (record.id.as_str(), record.pid, record.exit_status),
            ("c1", 42, 3)
        );
    }

    #[test]
    fn converts_timestamps() {
        let t = timestamp(SystemTime::UNIX_EPOCH + Duration::new(5, 6));
        assert_eq!((t.seconds, t.nanos), (5, 6));
    }
}
