//! What the sandbox lifecycle asks of a pod's containers. Both take the
//! locked sandbox: while its lock is held no container of the pod is being
//! created.

use super::{remove, stop};
use crate::runtime::Runtime;
use crate::sandbox::SandboxRecord;
use crate::store::objects::Locked;
use crate::Result;
use std::sync::Arc;

/// Kills every running container of the sandbox (StopPodSandbox gives no
/// grace period, as in containerd: kubelet stops containers gracefully
/// before it stops the pod).
pub async fn stop_all_in_sandbox(
    state: &Arc<Runtime>,
    sandbox: &Locked<'_, SandboxRecord>,
) -> Result<()> {
    for record in state.containers.in_sandbox(&sandbox.id) {
        if let Some(record) = state.containers.lock(&record.id).await? {
            stop::stop_locked(state, &record, 0).await?;
        }
    }
    Ok(())
}

/// Removes every container of the sandbox.
pub async fn remove_all_in_sandbox(
    state: &Arc<Runtime>,
    sandbox: &Locked<'_, SandboxRecord>,
) -> Result<()> {
    for record in state.containers.in_sandbox(&sandbox.id) {
        remove::remove(state, &record.id).await?;
    }
    Ok(())
}
