//! StopContainer: the stop signal (the CRI's, the image's STOPSIGNAL, or
//! SIGTERM), then SIGKILL to every process of the container once the
//! timeout passes; a timeout of 0 kills at once. Returns when the exit is
//! on record. Stopping a container that does not run, or does not exist,
//! succeeds (kubelet's idempotence). When the container exits by itself
//! meanwhile, its watcher may delete the task first; the shim then answers
//! "not found", which means the exit is already on record.

use super::exit::{self, Exit};
use super::record::{ContainerError, ContainerRecord, ContainerState};
use crate::failpoint;
use crate::runtime::Runtime;
use crate::store::objects::Locked;
use crate::Result;
use nix::sys::signal::Signal;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How long a container may take to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops container `id` (an id or a unique prefix) with a grace period of
/// `timeout` seconds.
pub async fn stop(state: &Arc<Runtime>, id: &str, timeout: i64) -> Result<()> {
    let Some(record) = state.containers.lock(id).await? else {
        return Ok(());
    };
    stop_locked(state, &record, timeout).await
}

/// Stops a locked container.
pub(super) async fn stop_locked(
    state: &Arc<Runtime>,
    record: &Locked<'_, ContainerRecord>,
    timeout: i64,
) -> Result<()> {
    if record.state != ContainerState::Running {
        return Ok(());
    }
    let id = record.id.as_str();
    let client = match state.containers.client(record).await {
        Ok(client) => client,
        Err(e) => {
            exit::shim_gone(state, id, &e.to_string()).await;
            return Ok(());
        }
    };
    if timeout > 0 {
        let signal = parse_signal(&record.stop_signal).unwrap_or(Signal::SIGTERM);
        match client.kill("", signal as u32, false).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) if e.is_unreachable() => {
                exit::shim_gone(state, id, &e.to_string()).await;
                return Ok(());
            }
            Err(e) => return Err(ContainerError::from(e).into()),
        }
        let grace = Duration::from_secs(timeout.unsigned_abs());
        match tokio::time::timeout(grace, client.wait("")).await {
            Ok(Ok(response)) => {
                exit::finish(state, id, Exit::from_wait(&response)).await;
                return Ok(());
            }
            Ok(Err(e)) if e.is_not_found() => return Ok(()),
            _ => {}
        }
    }
    match client.kill("", Signal::SIGKILL as u32, true).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) if e.is_unreachable() => {
            exit::shim_gone(state, id, &e.to_string()).await;
            return Ok(());
        }
        Err(e) => return Err(ContainerError::from(e).into()),
    }
    failpoint::hit("container-stop:after-kill");
    match tokio::time::timeout(KILL_TIMEOUT, client.wait("")).await {
        Ok(Ok(response)) => {
            failpoint::hit("container-stop:before-exit-record");
            exit::finish(state, id, Exit::from_wait(&response)).await;
            Ok(())
        }
        Ok(Err(e)) if e.is_not_found() => Ok(()),
        Ok(Err(e)) if e.is_unreachable() => {
            exit::shim_gone(state, id, &e.to_string()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(ContainerError::from(e).into()),
        Err(_) => Err(ContainerError::WrongState {
            id: id.to_owned(),
            state: "running",
            what: "it did not exit within 60 s of SIGKILL",
        }
        .into()),
    }
}

/// A signal by name (`SIGQUIT`, `QUIT`) or number (`3`).
pub fn parse_signal(text: &str) -> Option<Signal> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).ok();
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGQUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("quit"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("15"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGRTMIN+3"), None);
        assert_eq!(parse_signal("nonsense"), None);
    }
}
