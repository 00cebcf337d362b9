//! UpdatePodSandboxResources: kubelet reports the pod-level resources
//! after it resized the pod's cgroup itself (in-place pod resize). Like
//! containerd, berth records them with the sandbox, shows them in the
//! verbose PodSandboxStatus, and keeps them across restarts; the pod's
//! cgroup stays kubelet's to write.

use super::SandboxError;
use crate::runtime::Runtime;
use crate::{Error, Result};
use berth_proto::cri::v1 as cri;
use std::sync::Arc;

/// Records the pod resources of `request`.
pub async fn update_resources(
    state: &Arc<Runtime>,
    mut request: cri::UpdatePodSandboxResourcesRequest,
) -> Result<()> {
    if request.pod_sandbox_id.is_empty() {
        return Err(Error::invalid("pod_sandbox_id", "is empty"));
    }
    let found = state
        .sandboxes
        .lock_created(&request.pod_sandbox_id)
        .await?
        .ok_or_else(|| SandboxError::NotFound(request.pod_sandbox_id.clone()))?;
    request.pod_sandbox_id.clear();
    let id = found.id.clone();
    state
        .write(move |s| s.sandboxes.update(&s.store, &id, |r| r.resources = request))
        .await
        .map_err(Error::from)?;
    tracing::info!(id = %found.id, "pod sandbox resources recorded");
    Ok(())
}
