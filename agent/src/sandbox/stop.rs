//! StopPodSandbox: stop every container of the pod, then release the
//! sandbox's network, namespaces, `/dev/shm` and init
//! ([`super::teardown::release`]); the record becomes `NotReady`. Stopping
//! an unknown or stopped sandbox succeeds, as kubelet expects.

use super::{teardown, SandboxRecord, SandboxState};
use crate::failpoint;
use crate::runtime::Runtime;
use crate::store::objects::Locked;
use crate::{Error, Result};
use std::sync::Arc;

/// Stops the sandbox `id` (an id or a unique prefix).
pub async fn stop(state: &Arc<Runtime>, id: &str) -> Result<()> {
    let Some(record) = state.sandboxes.lock(id).await? else {
        return Ok(());
    };
    stop_locked(state, &record).await
}

/// Stops a locked sandbox.
pub(super) async fn stop_locked(
    state: &Arc<Runtime>,
    record: &Locked<'_, SandboxRecord>,
) -> Result<()> {
    if record.state == SandboxState::Creating {
        // Only recovery sees these; it removes them instead.
        return Ok(());
    }
    crate::container::lifecycle::stop_all_in_sandbox(state, record).await?;
    failpoint::hit("sandbox-stop:after-containers");
    let id = record.id.clone();
    if record.state == SandboxState::Ready {
        // NotReady before anything is released: a crash part-way leaves a
        // pod that says it is stopped (never a Ready pod without its
        // network), and recovery finishes releasing it.
        let key = id.clone();
        state
            .write(move |s| {
                s.sandboxes
                    .update(&s.store, &key, |r| r.state = SandboxState::NotReady)
            })
            .await
            .map_err(Error::from)?;
    }
    teardown::release(state.config.cni.plugins(), record).await?;
    if record.state == SandboxState::NotReady && record.network.as_ref().is_none_or(|n| n.detached)
    {
        return Ok(());
    }
    state
        .write(move |s| {
            s.sandboxes.update(&s.store, &id, |r| {
                r.state = SandboxState::NotReady;
                if let Some(network) = r.network.as_mut() {
                    network.detached = true;
                }
            })
        })
        .await
        .map_err(Error::from)?;
    tracing::info!(id = %record.id, "pod sandbox stopped");
    if let Some(stopped) = state.sandboxes.get(&record.id) {
        let kind = berth_proto::cri::v1::ContainerEventType::ContainerStoppedEvent;
        state.publish(&stopped.id, &stopped, kind);
    }
    Ok(())
}
