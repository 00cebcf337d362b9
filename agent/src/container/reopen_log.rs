//! ReopenContainerLog: kubelet rotated a container's CRI log file and
//! asks for it to be reopened. berth's shim reopens it when its `update`
//! carries [`REOPEN_LOG_ANNOTATION`]; an external shim's output goes
//! through berth's logging binary, which reopens on SIGUSR1. The call
//! does not take the container's lock: it changes no record.

use super::record::{ContainerError, ContainerRecord, ContainerState};
use crate::runtime::Runtime;
use crate::Result;
use std::collections::HashMap;
use std::sync::Arc;

/// The shim annotation that reopens the container's log (see
/// `shim/src/task.rs`).
pub const REOPEN_LOG_ANNOTATION: &str = "io.berth.shim.reopen-log";

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
        return signal_logger(&record);
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

/// Asks the logging binary of an external shim's container to reopen the
/// log (SIGUSR1), after checking that its PID file still names it.
fn signal_logger(record: &ContainerRecord) -> Result<()> {
    let pid_file = record.bundle.join(crate::shim_client::LOGGER_PID_FILE);
    let pid = std::fs::read_to_string(&pid_file)
        .map_err(|e| ContainerError::io(&pid_file, e))?
        .trim()
        .parse::<i32>()
        .map_err(|e| ContainerError::io(&pid_file, std::io::Error::other(e)))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("log-cri") {
        return Err(ContainerError::WrongState {
            id: record.id.clone(),
            state: "running",
            what: "its logging process is gone",
        }
        .into());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .map_err(|e| ContainerError::io(&pid_file, e.into()))?;
    Ok(())
}
