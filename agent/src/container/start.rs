//! StartContainer: start a created container's init through its shim.
//! When the runtime cannot start it (say, the command does not exist), the
//! container is recorded as exited with reason `StartError` and the error
//! returned, as containerd does.

use super::exit;
use super::record::{state_name, ContainerError, ContainerState};
use crate::failpoint;
use crate::metrics::Phase;
use crate::runtime::Runtime;
use crate::sandbox::SandboxState;
use crate::{Error, Result};
use std::sync::Arc;

/// Starts container `id` (an id or a unique prefix).
#[tracing::instrument(level = "debug", name = "start_container", skip(state), fields(container_id = %id))]
pub async fn start(state: &Arc<Runtime>, id: &str) -> Result<()> {
    let record = state
        .containers
        .lock_created(id)
        .await?
        .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
    if record.state != ContainerState::Created {
        return Err(ContainerError::WrongState {
            id: record.id.clone(),
            state: state_name(record.state),
            what: "only a created container can be started",
        }
        .into());
    }
    let sandbox_ready = state
        .sandboxes
        .get(&record.sandbox_id)
        .is_some_and(|s| s.state == SandboxState::Ready);
    if !sandbox_ready {
        return Err(ContainerError::SandboxNotReady(record.sandbox_id.clone()).into());
    }
    let client = state
        .containers
        .client(&record)
        .await
        .map_err(ContainerError::from)?;
    failpoint::hit("container-start:before-shim-start");
    let started = state.metrics.timed(Phase::Start, client.start("")).await;
    failpoint::hit("container-start:after-shim-start");
    let key = record.id.clone();
    let now = crate::sandbox::now_nanos();
    let outcome = match &started {
        Ok(pid) => {
            let pid = *pid;
            state
                .write(move |s| {
                    s.containers
                        .update(&s.store, &key, |r| r.mark_running(pid, now))
                })
                .await
                .map(|_| ())
        }
        Err(e) => exit::record(state, &key, exit::Ending::start_error(now, e.to_string()))
            .await
            .map(|_| ()),
    };
    outcome.map_err(Error::from)?;
    match started {
        Ok(pid) => {
            tracing::info!(id = %record.id, pid, "container started");
            let started = berth_proto::cri::v1::ContainerEventType::ContainerStartedEvent;
            state.publish_container(&record.id, &record.sandbox_id, started);
            Ok(())
        }
        Err(e) => {
            exit::finish(
                state,
                &record.id,
                exit::Exit {
                    status: 128,
                    at: now,
                },
            )
            .await;
            Err(ContainerError::from(e).into())
        }
    }
}
