//! UpdateContainerResources and ReopenContainerLog, both through the
//! shim's `update`.
//!
//! New resources are translated as at create (`spec::linux_resources`,
//! without device rules, which `runc update` does not change), applied to
//! the container's cgroup by the runtime, then recorded so ContainerStatus
//! reports them. A container that is not running (or created) has no
//! cgroup to update.

use super::record::{state_name, ContainerError, ContainerRecord, ContainerState};
use super::spec::linux_resources;
use super::HostFacts;
use crate::runtime::Runtime;
use crate::shim_client::ShimClient;
use crate::{Error, Result};
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;
use std::sync::Arc;

/// The shim annotation that reopens the container's log (see
/// `shim/src/task.rs`).
pub const REOPEN_LOG_ANNOTATION: &str = "io.berth.shim.reopen-log";

/// Applies new resources to a created or running container.
pub async fn update_resources(
    state: &Arc<Runtime>,
    request: cri::UpdateContainerResourcesRequest,
) -> Result<()> {
    let resources = request
        .linux
        .ok_or_else(|| Error::invalid("linux", "is required on Linux"))?;
    let record = state
        .containers
        .lock_created(&request.container_id)
        .await?
        .ok_or_else(|| ContainerError::NotFound(request.container_id.clone()))?;
    let client = live_client(
        state,
        &record,
        &[ContainerState::Created, ContainerState::Running],
        "resources of an exited container cannot change",
    )
    .await?;
    let host = HostFacts::detect(&state.cgroup_layout).map_err(ContainerError::from)?;
    let mut oci = linux_resources(Some(&resources), Vec::new(), &host);
    oci.set_devices(None);
    let json = serde_json::to_vec(&oci).expect("OCI resources always serialise");
    client
        .update(Some(json), HashMap::new())
        .await
        .map_err(ContainerError::from)?;
    let id = record.id.clone();
    state
        .write(move |s| {
            s.containers
                .update(&s.store, &id, |r| r.resources = resources)
        })
        .await
        .map_err(Error::from)?;
    Ok(())
}

/// Makes the shim reopen the container's CRI log file (after kubelet
/// rotated it).
pub async fn reopen_log(state: &Arc<Runtime>, id: &str) -> Result<()> {
    let record = find(state, id)?;
    let client = live_client(
        state,
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

fn find(state: &Runtime, id: &str) -> Result<ContainerRecord> {
    Ok(state
        .containers
        .find_created(id)?
        .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?)
}

async fn live_client(
    state: &Runtime,
    record: &ContainerRecord,
    allowed: &[ContainerState],
    what: &'static str,
) -> Result<ShimClient> {
    if !allowed.contains(&record.state) {
        return Err(ContainerError::WrongState {
            id: record.id.clone(),
            state: state_name(record.state),
            what,
        }
        .into());
    }
    Ok(state
        .containers
        .client(record)
        .await
        .map_err(ContainerError::from)?)
}
