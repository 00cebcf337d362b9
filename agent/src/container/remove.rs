//! RemoveContainer: kill it if it runs, then remove its task, shim,
//! snapshot, bundle, record and name. Removing an unknown container
//! succeeds, as kubelet expects.

use super::record::ContainerState;
use super::{stop, teardown};
use crate::runtime::Runtime;
use crate::Result;
use std::sync::Arc;

/// Removes container `id` (an id or a unique prefix).
pub async fn remove(state: &Arc<Runtime>, id: &str) -> Result<()> {
    let Some(mut record) = state.containers.lock(id).await? else {
        return Ok(());
    };
    if record.state == ContainerState::Running {
        stop::stop_locked(state, &record, 0).await?;
    }
    record.refresh();
    teardown::remove(state, &record).await?;
    tracing::info!(id = %record.id, "container removed");
    let deleted = berth_proto::cri::v1::ContainerEventType::ContainerDeletedEvent;
    state.publish_container(&record.id, &record.sandbox_id, deleted);
    Ok(())
}
