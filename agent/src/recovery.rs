//! Start-up recovery: make memory, the store and the host agree again
//! after berthd stopped, crashed or the node rebooted.
//!
//! Assumptions (what the rest of berthd guarantees so this can work):
//!
//! - Every create path writes its record before it makes anything (state
//!   `Creating`), and deletes the record only after everything is gone. So
//!   every kernel object berth made is reachable from a record, and a
//!   `Creating` record marks work a crash interrupted.
//! - Every teardown step is idempotent and tolerates objects that are
//!   already gone (a reboot empties the state dir, which is volatile, while
//!   the store under the root dir survives).
//! - Sandboxes hold no process but the optional PID init; their namespaces
//!   are bind mounts. A Ready sandbox whose namespace mounts or init are
//!   gone (reboot, or someone killed the init) can never run a container
//!   again, so it is stopped: its network is detached (freeing its IP,
//!   whose reservation lives on persistent disk) and it becomes NotReady,
//!   which tells kubelet to make a new one.
//! - Containers belong to their shims, which outlive berthd: a shim that
//!   still answers (at the address it wrote into the bundle) keeps its
//!   container, and berthd starts watching it again (`wait` returns at once
//!   for a container that exited meanwhile). A shim that does not answer
//!   died: its `delete` action kills what is left of the container and
//!   reports the exit it persisted (`exit.json`), or 137; the container is
//!   recorded as exited with that code.
//! - A `Creating` container is removed whatever step the crash stopped:
//!   its shim (if one answers or left an address), then what the OCI
//!   runtime still has of it under berth's runtime root (`delete --force`:
//!   a `runc init` that a shim's interrupted `create` left waiting on its
//!   exec fifo) and anything left in its cgroup, whose path the record
//!   holds before the shim is launched; then mounts, snapshot, bundle,
//!   record and name ([`container::teardown::remove`]).
//! - StopPodSandbox records the sandbox `NotReady` before it releases
//!   anything and marks the network detached after CNI DEL; a `NotReady`
//!   sandbox that still has its network attached, a namespace pinned or
//!   its init running was being stopped by a crash, and the stop is
//!   finished (every release step is idempotent).
//! - A container is recorded `Running` only after its shim started it; if
//!   berthd died in between, the shim's state says so and the record is
//!   brought up to date.
//!
//! Recovery runs before the CRI socket serves, one object at a time, and
//! logs what it could not repair instead of failing start-up: the objects
//! stay in their state and the next start tries again.

use crate::container::{self, ContainerState};
use crate::network::netns;
use crate::runtime::Runtime;
use crate::sandbox::{pid_init, teardown, SandboxRecord, SandboxState};
use containerd_shim_protos::types::task::Status as TaskStatus;
use std::sync::Arc;

/// Recovers every container, then every sandbox of the store.
pub async fn recover(state: &Arc<Runtime>) {
    recover_containers(state).await;
    recover_sandboxes(state).await;
}

async fn recover_containers(state: &Arc<Runtime>) {
    for record in state.containers.list() {
        let id = record.id.as_str();
        match record.state {
            ContainerState::Creating => {
                tracing::info!(
                    id,
                    "rolling back a container whose creation was interrupted"
                );
                if let Err(e) = container::teardown::remove(state, &record).await {
                    tracing::warn!(id, error = %e, "cannot roll back an interrupted container");
                }
            }
            ContainerState::Created | ContainerState::Running => {
                match state.containers.client(&record).await {
                    Ok(client) => {
                        if record.state == ContainerState::Created {
                            if let Ok(task) = client.state("").await {
                                if task.status.enum_value() == Ok(TaskStatus::RUNNING) {
                                    mark_running(state, id, task.pid).await;
                                }
                            }
                        }
                        container::exit::watch(state, id);
                    }
                    Err(e) => {
                        container::exit::shim_gone(
                            state,
                            id,
                            &format!("it did not answer when berthd started: {e}"),
                        )
                        .await
                    }
                }
            }
            ContainerState::Exited => {
                // berthd may have died between recording the exit and
                // letting the shim go.
                container::teardown::release_exited(state, &record).await;
            }
        }
    }
    remove_orphan_bundles(state).await;
}

async fn mark_running(state: &Arc<Runtime>, id: &str, pid: u32) {
    let key = id.to_owned();
    let now = crate::sandbox::now_nanos();
    let updated = state
        .write(move |s| {
            s.containers
                .update(&s.store, &key, |r| r.mark_running(pid, now))
        })
        .await;
    if let Err(e) = updated {
        tracing::warn!(id, error = %e, "cannot record that a container runs");
    }
}

/// Bundles without a record (the store was replaced): a live shim is shut
/// down, a dead one cleaned up, mounts released, the directory removed.
async fn remove_orphan_bundles(state: &Arc<Runtime>) {
    let parent = state.config.state.join("containers");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if state.containers.get(&id).is_some() {
            continue;
        }
        let bundle = entry.path();
        tracing::info!(bundle = %bundle.display(), "removing a container bundle without a record");
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            match crate::shim_client::ShimClient::connect_probing(&id, address.trim()).await {
                Ok(client) => {
                    let _ = client
                        .kill("", nix::sys::signal::Signal::SIGKILL as u32, true)
                        .await;
                    let _ = client.wait("").await;
                    let _ = client.delete("").await;
                    let _ = client.shutdown(true).await;
                }
                Err(_) => {
                    // Without a record the handler is unknown: berth's own
                    // shim cleans up (`runc delete`, unmount).
                    if let Ok(shim) = crate::shim_client::Shim::new(None) {
                        let settings = &state.containers.shim;
                        let _ =
                            crate::shim_client::cleanup_dead(settings, &shim, &id, &bundle).await;
                    }
                }
            }
        }
        teardown::unmount_all_under(&bundle).await;
        if let Err(e) = teardown::remove_dir(&bundle).await {
            tracing::warn!(bundle = %bundle.display(), error = %e, "cannot remove an orphan bundle");
        }
    }
}

async fn recover_sandboxes(state: &Arc<Runtime>) {
    for record in state.sandboxes.list() {
        match record.state {
            SandboxState::Creating => {
                tracing::info!(id = %record.id, "rolling back a sandbox whose creation was interrupted");
                remove_sandbox(state, &record).await;
            }
            SandboxState::Ready if !sandbox_alive(&record) => {
                tracing::info!(id = %record.id, "the sandbox lost its namespaces or init: stopping it");
                if let Err(e) = crate::sandbox::stop::stop(state, &record.id).await {
                    tracing::warn!(id = %record.id, error = %e, "cannot stop a dead sandbox");
                }
            }
            SandboxState::NotReady if !sandbox_released(&record) => {
                tracing::info!(id = %record.id, "finishing the interrupted stop of a sandbox");
                if let Err(e) = crate::sandbox::stop::stop(state, &record.id).await {
                    tracing::warn!(id = %record.id, error = %e, "cannot finish stopping a sandbox");
                }
            }
            SandboxState::Ready | SandboxState::NotReady => {}
        }
    }
    remove_orphan_dirs(state).await;
}

/// True when every namespace of a Ready sandbox is still pinned and its
/// init (if any) runs.
pub fn sandbox_alive(record: &SandboxRecord) -> bool {
    let ns = &record.namespaces;
    let pinned = [&ns.net, &ns.ipc, &ns.uts, &ns.pid]
        .into_iter()
        .flatten()
        .all(|path| netns::is_pinned(path));
    pinned && record.init_pid.is_none_or(pid_init::is_berth_init)
}

/// True when a NotReady sandbox holds nothing any more: its network is
/// detached, no namespace is pinned and its init is gone. A stop that a
/// crash interrupted leaves one that is NotReady but still holds some.
fn sandbox_released(record: &SandboxRecord) -> bool {
    let ns = &record.namespaces;
    let unpinned = [&ns.net, &ns.ipc, &ns.uts, &ns.pid]
        .into_iter()
        .flatten()
        .all(|path| !netns::is_pinned(path));
    unpinned
        && record.network.as_ref().is_none_or(|n| n.detached)
        && record
            .init_pid
            .is_none_or(|pid| !pid_init::is_berth_init(pid))
}

async fn remove_sandbox(state: &Arc<Runtime>, record: &SandboxRecord) {
    if let Err(e) = teardown::discard(state, record).await {
        tracing::warn!(id = %record.id, error = %e, "cannot remove an interrupted sandbox");
    }
}

/// Sandbox directories without a record (the store was replaced): their
/// mounts are released and the directories removed.
async fn remove_orphan_dirs(state: &Arc<Runtime>) {
    let parent = state.config.state.join("sandboxes");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if state.sandboxes.get(&id).is_some() {
            continue;
        }
        let dir = entry.path();
        tracing::info!(dir = %dir.display(), "removing a sandbox dir without a record");
        teardown::unmount_all_under(&dir).await;
        if let Err(e) = teardown::remove_dir(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an orphan sandbox dir");
        }
    }
}
