//! Learning that a container exited, and what follows.
//!
//! Each created container has a watcher task that calls the shim's `wait`.
//! When it returns, [`finish`] records the exit once (code, time, reason:
//! `Completed`, `Error`, or `OOMKilled` when the container's cgroup counts
//! an OOM kill), then deletes the task (the shim unmounts the rootfs and
//! the runtime removes its state and cgroup) and tells the shim to exit:
//! an exited container costs no process. When the connection to the shim
//! breaks instead, the shim died: [`shim_gone`] runs the shim's `delete`
//! action, which kills what is left of the container and reports the exit
//! status the shim had persisted (`exit.json`), or 137 when it had none.
//!
//! StopContainer and RemoveContainer call [`finish`] too, so that the exit
//! is on record when they return; recording is idempotent.

use super::record::{ContainerRecord, ContainerState};
use crate::cgroups::oom_killed;
use crate::server::AgentState;
use crate::shim_client;
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
pub fn watch(state: &Arc<AgentState>, id: &str) {
    let watched = state.clone();
    let state = state.clone();
    let id = id.to_owned();
    watched.containers.spawn_watcher(async move {
        let Some(record) = state.containers.records.get(&id) else {
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
/// deletes its task and lets its shim exit.
pub async fn finish(state: &Arc<AgentState>, id: &str, exit: Exit) {
    let Some(record) = state.containers.records.get(id) else {
        return;
    };
    if record.state != ContainerState::Exited {
        let oom = oom_killed(&state.cgroup_layout, &record.cgroup_path);
        let key = id.to_owned();
        let updated = state
            .write(move |s| {
                s.containers.records.update(&s.store, &key, |r| {
                    let reason = reason(exit.status, oom).to_owned();
                    r.mark_exited(exit.status as i32, exit.at, reason, String::new());
                })
            })
            .await;
        match updated {
            Ok(_) => {
                tracing::info!(id, status = exit.status, oom, "container exited");
                let stopped = berth_proto::cri::v1::ContainerEventType::ContainerStoppedEvent;
                state
                    .events
                    .publish_container(state, id, &record.sandbox_id, stopped);
            }
            Err(e) => tracing::error!(id, error = %e, "cannot record a container's exit"),
        }
    }
    if let Ok(client) = state.containers.client(&record).await {
        match client.delete("").await {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_unreachable() => {}
            Err(e) => tracing::warn!(id, error = %e, "cannot delete an exited task"),
        }
        let _ = client.shutdown(false).await;
    }
    state.containers.forget_client(id);
}

/// Handles a shim that died: its container is killed and removed from the
/// runtime by the shim's `delete` action, and the exit recorded.
pub async fn shim_gone(state: &Arc<AgentState>, id: &str, why: &str) {
    state.containers.forget_client(id);
    let Some(record) = state.containers.records.get(id) else {
        return;
    };
    if record.state == ContainerState::Exited {
        return;
    }
    let (status, persisted, note) = match cleanup_dead_shim(state, &record).await {
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
    let key = id.to_owned();
    let now = crate::sandbox::now_nanos();
    let updated = state
        .write(move |s| {
            s.containers.records.update(&s.store, &key, |r| {
                r.mark_exited(status as i32, now, reason, message);
            })
        })
        .await;
    match updated {
        Ok(_) => {
            let stopped = berth_proto::cri::v1::ContainerEventType::ContainerStoppedEvent;
            state
                .events
                .publish_container(state, id, &record.sandbox_id, stopped);
        }
        Err(e) => tracing::error!(id, error = %e, "cannot record a container's exit"),
    }
}

/// Runs the `delete` action of the container's (dead) shim.
pub async fn cleanup_dead_shim(
    state: &AgentState,
    record: &ContainerRecord,
) -> Result<containerd_shim_protos::api::DeleteResponse, crate::shim_client::ShimError> {
    let shim = record.shim()?;
    shim_client::cleanup_dead(&state.containers.shim, &shim, &record.id, &record.bundle).await
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
