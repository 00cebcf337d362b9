//! ReopenContainerLog: kubelet rotated a container's CRI log file and
//! asks for it to be reopened. berth's shim reopens it when its `update`
//! carries [`REOPEN_LOG_ANNOTATION`], before it answers; an external shim's
//! output goes through berth's logging binary, which reopens on SIGUSR1
//! and then counts the reopen in its reopened file. Either way the call
//! returns once the new file takes the output: kubelet compresses the
//! rotated file next, and a line written there afterwards would be lost.
//! The call does not take the container's lock: it changes no record.

use super::record::{ContainerError, ContainerRecord, ContainerState};
use crate::runtime::Runtime;
use crate::Result;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The shim annotation that reopens the container's log (see
/// `shim/src/task.rs`).
pub const REOPEN_LOG_ANNOTATION: &str = "io.berth.shim.reopen-log";

/// How long the logging binary may take to reopen the log.
const LOGGER_REOPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the agent looks for the logging binary's acknowledgement.
const LOGGER_REOPEN_POLL: Duration = Duration::from_millis(2);

/// Makes the shim reopen the container's CRI log file (after kubelet
/// rotated it).
pub async fn reopen_log(state: &Arc<Runtime>, id: &str) -> Result<()> {
    let record = state
        .containers
        .find_created(id)?
        .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
    let client = state
        .containers
        .client_in(
            &record,
            &[ContainerState::Running],
            "only a running container writes its log",
        )
        .await?;
    if record.shim.is_some() {
        // An external shim's output goes through berth's logging binary.
        return reopen_through_logger(&record).await;
    }
    client
        .update(
            None,
            HashMap::from([(REOPEN_LOG_ANNOTATION.to_owned(), "true".to_owned())]),
        )
        .await
        .map_err(ContainerError::from)?;
    Ok(())
}

/// Has the logging binary of an external shim's container reopen the log,
/// and waits until it has.
async fn reopen_through_logger(record: &ContainerRecord) -> Result<()> {
    let reopened_file = record.bundle.join(crate::shim_client::LOGGER_REOPENED_FILE);
    let before = reopens(&reopened_file)?;
    let pid = logger_pid(record)?;
    let Some(cmdline) = logger_cmdline(pid) else {
        return Err(logger_gone(record));
    };
    signal(record, pid)?;
    if !cmdline.contains(crate::shim_client::LOGGER_REOPENED_ARG) {
        // Started by an older berthd: it does not acknowledge.
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + LOGGER_REOPEN_TIMEOUT;
    while reopens(&reopened_file)? <= before {
        if logger_cmdline(pid).is_none() {
            return Err(logger_gone(record));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ContainerError::LogNotReopened {
                id: record.id.clone(),
                seconds: LOGGER_REOPEN_TIMEOUT.as_secs(),
            }
            .into());
        }
        tokio::time::sleep(LOGGER_REOPEN_POLL).await;
    }
    Ok(())
}

/// How many reopens the logging binary has acknowledged (none before the
/// first writes its file).
fn reopens(path: &Path) -> Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .trim()
            .parse()
            .map_err(|e| ContainerError::io(path, std::io::Error::other(e)))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ContainerError::io(path, e).into()),
    }
}

fn logger_gone(record: &ContainerRecord) -> crate::Error {
    ContainerError::WrongState {
        id: record.id.clone(),
        state: "running",
        what: "its logging process is gone",
    }
    .into()
}

/// The PID of the logging binary of an external shim's container.
fn logger_pid(record: &ContainerRecord) -> Result<i32> {
    let pid_file = record.bundle.join(crate::shim_client::LOGGER_PID_FILE);
    let pid = std::fs::read_to_string(&pid_file)
        .map_err(|e| ContainerError::io(&pid_file, e))?
        .trim()
        .parse::<i32>()
        .map_err(|e| ContainerError::io(&pid_file, std::io::Error::other(e)))?;
    Ok(pid)
}

/// The command line of process `pid` if it is a logging binary (the PID
/// file may outlive it, and the PID be reused).
fn logger_cmdline(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
    cmdline.contains("log-cri").then_some(cmdline)
}

/// Asks the logging binary `pid` to reopen the log (SIGUSR1).
fn signal(record: &ContainerRecord, pid: i32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .map_err(|e| ContainerError::io(&record.bundle, e.into()))?;
    Ok(())
}
