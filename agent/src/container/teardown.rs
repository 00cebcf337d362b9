//! Releasing what a container holds, the one place that does: its task
//! and shim ([`release_exited`] once it exited, [`release_shim`] whatever
//! its state, [`cleanup_dead_shim`] after its shim died), and with
//! [`remove`] also its rootfs mount, snapshot and bundle, its record and
//! name. Shared by the exit watchers, StopContainer, RemoveContainer, the
//! rollback of a failed CreateContainer and recovery; every step tolerates
//! what is already gone.

use super::image_volume;
use super::record::{ContainerRecord, ContainerState};
use crate::failpoint;
use crate::runtime::Runtime;
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// How long a killed container may take to be reaped before its task is
/// deleted anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long the OCI runtime's `delete --force` may take.
const RUNTIME_DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// Removes the container of `record` entirely.
pub async fn remove(state: &Arc<Runtime>, record: &ContainerRecord) -> Result<()> {
    release_shim(state, record).await;
    if record.state == ContainerState::Creating {
        release_runtime_leftovers(state, record).await;
    }
    failpoint::hit("container-remove:after-shim-gone");
    let blocking_state = state.clone();
    let id = record.id.clone();
    let bundle = record.bundle.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        // What cannot be unmounted stays, and removing the bundle fails then.
        let _ = berth_mount::detach_recursive(&bundle);
        failpoint::hit("container-remove:after-unmount");
        let snapshotter = blocking_state.images.snapshotter();
        let volumes = snapshotter
            .list()
            .map_err(super::ContainerError::from)?
            .into_iter()
            .filter(|info| image_volume::is_volume_of(&info.key, &id))
            .map(|info| info.key);
        for key in volumes.chain([id.clone()]) {
            match snapshotter.remove(&key) {
                Ok(()) | Err(berth_snapshotter::Error::NotFound { .. }) => {}
                Err(e) => return Err(super::ContainerError::from(e).into()),
            }
        }
        match std::fs::remove_dir_all(&bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(super::ContainerError::io(&bundle, e).into()),
        }
        failpoint::hit("container-remove:before-record-delete");
        blocking_state
            .containers
            .delete(&blocking_state.store, &id)
            .map_err(Error::from)
    })
    .await
    .expect("container teardown does not panic")?;
    state.containers.release_name(record);
    Ok(())
}

/// Makes sure no process and no shim of the container is left: kills and
/// deletes the task and shuts the shim down, or cleans up after a shim that
/// died.
pub async fn release_shim(state: &Arc<Runtime>, record: &ContainerRecord) {
    let id = record.id.as_str();
    match state.containers.client(record).await {
        Ok(client) => {
            if record.state != ContainerState::Exited {
                let _ = client
                    .kill("", nix::sys::signal::Signal::SIGKILL as u32, true)
                    .await;
                let _ = tokio::time::timeout(KILL_WAIT, client.wait("")).await;
            }
            match client.delete("").await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_unreachable() => {}
                Err(e) => tracing::warn!(id, error = %e, "cannot delete the task"),
            }
            let _ = client.shutdown(true).await;
        }
        Err(_) if record.state != ContainerState::Exited && record.address_file().exists() => {
            if let Err(e) = cleanup_dead_shim(state, record).await {
                tracing::warn!(id, error = %e, "cannot clean up after a dead shim");
            }
        }
        Err(_) => {}
    }
    state.containers.forget_client(id);
}

/// After an interrupted create the shim may not know the runtime's
/// container: berthd died while the shim's `create` ran, and the shim gave
/// the call up while `runc create` went on, leaving `runc init` waiting on
/// its exec fifo in the container's cgroup. The runtime deletes what it
/// recorded (`delete --force` under berth's runtime root: it kills `runc
/// init` and removes the cgroup and its state); whatever is left in the
/// container's cgroup (a create killed before the runtime wrote its state)
/// is killed and the cgroup removed.
async fn release_runtime_leftovers(state: &Arc<Runtime>, record: &ContainerRecord) {
    let id = record.id.as_str();
    let runtime_root = &state.containers.shim.runtime_root;
    let deleted = tokio::time::timeout(
        RUNTIME_DELETE_TIMEOUT,
        tokio::process::Command::new(&record.runtime)
            .arg("--root")
            .arg(runtime_root)
            .args(["delete", "--force", id])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match deleted {
        Ok(Ok(output)) if output.status.success() => {
            tracing::info!(
                id,
                "deleted the runtime's container of an interrupted create"
            );
        }
        // The usual case: the shim deleted it, or it was never made.
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(id, runtime = %record.runtime.display(), error = %e, "cannot run the OCI runtime")
        }
        Err(_) => tracing::warn!(id, "the OCI runtime's delete --force did not finish"),
    }
    if record.cgroup_path.is_empty() {
        // The create died before it chose a cgroup: nothing ran.
        return;
    }
    let blocking_state = state.clone();
    let cgroup_path = record.cgroup_path.clone();
    let removed = tokio::task::spawn_blocking(move || {
        crate::cgroups::kill_and_remove(&blocking_state.cgroup_layout, &cgroup_path)
    })
    .await
    .expect("removing a cgroup does not panic");
    if let Err(e) = removed {
        tracing::warn!(id, error = %e, "cannot remove the cgroup of an interrupted create");
    }
}

/// Lets the shim of an exited container go: deletes the task (the shim
/// unmounts the rootfs and the runtime removes its state and cgroup) and
/// tells the shim to exit.
pub async fn release_exited(state: &Runtime, record: &ContainerRecord) {
    let id = record.id.as_str();
    if let Ok(client) = state.containers.client(record).await {
        match client.delete("").await {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_unreachable() => {}
            Err(e) => tracing::warn!(id, error = %e, "cannot delete an exited task"),
        }
        let _ = client.shutdown(false).await;
    }
    state.containers.forget_client(id);
}

/// Runs the `delete` action of the container's (dead) shim.
pub async fn cleanup_dead_shim(
    state: &Runtime,
    record: &ContainerRecord,
) -> Result<containerd_shim_protos::api::DeleteResponse, crate::shim_client::ShimError> {
    let shim = record.shim()?;
    crate::shim_client::cleanup_dead(&state.containers.shim, &shim, &record.id, &record.bundle)
        .await
}
