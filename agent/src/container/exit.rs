//! Learning that a container ended, and recording it.
//!
//! Each created container has a watcher task that calls the shim's `wait`.
//! When it returns, [`finish`] records the exit once (code, time, reason:
//! `Completed`, `Error`, or `OOMKilled` when the container's cgroup counts
//! an OOM kill), then releases the exited task
//! ([`teardown::release_exited`]): an exited container costs no process.
//! When the connection to the shim breaks instead, the shim died:
//! [`shim_gone`] runs the shim's `delete` action, which kills what is left
//! of the container and reports the exit status the shim had persisted
//! (`exit.json`), or 137 when it had none.
//!
//! Every end of a container (these two, and StartContainer's `StartError`)
//! is recorded by [`record`]: the first end recorded stays, so the watcher,
//! StopContainer and RemoveContainer may all report the same exit.

use super::record::ContainerState;
use super::teardown;
use crate::cgroups::oom_killed;
use crate::runtime::Runtime;
use crate::store::StoreError;
use containerd_shim_protos::api::WaitResponse;
use std::sync::Arc;

/// How a container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal that killed it.
    pub status: u32,
    /// Nanoseconds since the epoch.
    pub at: i64,
}

impl Exit {
    pub fn from_wait(response: &WaitResponse) -> Self {
        let at = response
            .exited_at
            .as_ref()
            .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
            .filter(|at| *at > 0)
            .unwrap_or_else(crate::sandbox::now_nanos);
        Self {
            status: response.exit_status,
            at,
        }
    }
}

/// Starts the watcher of container `id`.
pub fn watch(state: &Arc<Runtime>, id: &str) {
    let watched = state.clone();
    let state = state.clone();
    let id = id.to_owned();
    watched.containers.spawn_watcher(async move {
        let Some(record) = state.containers.get(&id) else {
            return;
        };
        let client = match state.containers.client(&record).await {
            Ok(client) => client,
            Err(e) => return shim_gone(&state, &id, &e.to_string()).await,
        };
        match client.wait("").await {
            Ok(response) => finish(&state, &id, Exit::from_wait(&response)).await,
            Err(e) if e.is_unreachable() => shim_gone(&state, &id, &e.to_string()).await,
            // The task was deleted under us: whoever did it recorded the exit.
            Err(e) => tracing::debug!(id = %id, error = %e, "wait ended without an exit"),
        }
    });
}

/// The reason ContainerStatus gives for an exit.
pub fn reason(status: u32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if status == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// Records the exit of container `id` (unless one is recorded), then
/// releases its task and shim. The watcher and StopContainer both see the
/// same exit: only the call that records it logs it and releases the shim
/// (a second `delete` would write to a shim that is exiting).
pub async fn finish(state: &Arc<Runtime>, id: &str, exit: Exit) {
    let Some(record) = state.containers.get(id) else {
        return;
    };
    if record.state != ContainerState::Exited {
        let oom = oom_killed(&state.cgroup_layout, &record.cgroup_path);
        let ending = Ending {
            exit_code: exit.status as i32,
            at: exit.at,
            reason: reason(exit.status, oom).to_owned(),
            message: String::new(),
            announce: true,
        };
        match self::record(state, id, ending).await {
            Ok(true) => tracing::info!(id, status = exit.status, oom, "container exited"),
            // Another call recorded it, and releases the shim.
            Ok(false) => return,
            Err(e) => tracing::error!(id, error = %e, "cannot record a container's exit"),
        }
    }
    teardown::release_exited(state, &record).await;
}

/// Handles a shim that died: its container is killed and removed from the
/// runtime by the shim's `delete` action, and the exit recorded.
pub async fn shim_gone(state: &Arc<Runtime>, id: &str, why: &str) {
    state.containers.forget_client(id);
    let Some(record) = state.containers.get(id) else {
        return;
    };
    if record.state == ContainerState::Exited {
        return;
    }
    let (status, persisted, note) = match teardown::cleanup_dead_shim(state, &record).await {
        Ok(response) => (response.exit_status, response.pid != 0, String::new()),
        Err(e) => (137, false, format!("; cleanup failed: {e}")),
    };
    let (reason, message) = if persisted {
        let oom = oom_killed(&state.cgroup_layout, &record.cgroup_path);
        (
            self::reason(status, oom).to_owned(),
            format!("the container's shim died after the container exited ({why})"),
        )
    } else {
        (
            "Unknown".to_owned(),
            format!("the container's shim died ({why}); berth killed the container{note}"),
        )
    };
    tracing::warn!(id, status, %message, "container shim is gone");
    let ending = Ending {
        exit_code: status as i32,
        at: crate::sandbox::now_nanos(),
        reason,
        message,
        announce: true,
    };
    if let Err(e) = self::record(state, id, ending).await {
        tracing::error!(id, error = %e, "cannot record a container's exit");
    }
}

/// How a container ended, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub exit_code: i32,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// ContainerStatus's reason (`Completed`, `Error`, `OOMKilled`,
    /// `Unknown`, `StartError`) and message.
    pub reason: String,
    pub message: String,
    /// Whether subscribers hear of it (ContainerStoppedEvent).
    pub announce: bool,
}

impl Ending {
    /// The runtime could not start the container (exit code 128). Not
    /// announced: the container never ran, and StartContainer's caller
    /// learns of it from the error.
    pub fn start_error(at: i64, message: String) -> Self {
        Self {
            exit_code: 128,
            at,
            reason: "StartError".to_owned(),
            message,
            announce: false,
        }
    }
}

/// Records how container `id` ended, the one place that does: the record
/// is marked exited and written, and the end announced. The first end
/// recorded stays; returns whether this call recorded it.
pub async fn record(state: &Arc<Runtime>, id: &str, ending: Ending) -> Result<bool, StoreError> {
    let key = id.to_owned();
    let announce = ending.announce;
    let recorded = state
        .write(move |s| {
            let mut first = false;
            let updated = s.containers.update(&s.store, &key, |r| {
                first = r.state != ContainerState::Exited;
                r.mark_exited(ending.exit_code, ending.at, ending.reason, ending.message);
            })?;
            Ok::<_, StoreError>(updated.filter(|_| first))
        })
        .await?;
    if let (Some(record), true) = (&recorded, announce) {
        let stopped = berth_proto::cri::v1::ContainerEventType::ContainerStoppedEvent;
        state.publish_container(id, &record.sandbox_id, stopped);
    }
    Ok(recorded.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(reason(0, false), "Completed");
        assert_eq!(reason(1, false), "Error");
        assert_eq!(reason(137, true), "OOMKilled");
    }
}
