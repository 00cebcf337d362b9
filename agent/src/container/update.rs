//! UpdateContainerResources, through the shim's `update`.
//!
//! New resources are translated as at create (`spec::linux_resources`,
//! without device rules, which `runc update` does not change), applied to
//! the container's cgroup by the runtime, then recorded so ContainerStatus
//! reports them. A container that is not running (or created) has no
//! cgroup to update.

use super::record::{ContainerError, ContainerState};
use super::spec::linux_resources;
use super::HostFacts;
use crate::runtime::Runtime;
use crate::{Error, Result};
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;
use std::sync::Arc;

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
    let client = state
        .containers
        .client_in(
            &record,
            &[ContainerState::Created, ContainerState::Running],
            "resources of an exited container cannot change",
        )
        .await?;
    let host = HostFacts::detect(&state.cgroup_layout).map_err(ContainerError::from)?;
    let mut oci =
        linux_resources(Some(&resources), Vec::new(), &host).map_err(ContainerError::from)?;
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
