//! RemoveContainer: kill it if it runs, then remove its task, shim,
//! snapshot, bundle, record and name. Removing an unknown container
//! succeeds, as kubelet expects.

use super::record::ContainerState;
use super::{stop, teardown};
use crate::server::AgentState;
use crate::Result;
use std::sync::Arc;

/// Removes container `id` (an id or a unique prefix).
pub async fn remove(state: &Arc<AgentState>, id: &str) -> Result<()> {
    let Some(found) = state.containers.records.find(id)? else {
        return Ok(());
    };
    let _lock = state.containers.locks.lock(&found.id).await;
    let Some(record) = state.containers.records.get(&found.id) else {
        return Ok(());
    };
    if record.state == ContainerState::Running {
        stop::stop_locked(state, &record, 0).await?;
    }
    let record = state.containers.records.get(&found.id).unwrap_or(record);
    teardown::remove(state, &record).await?;
    tracing::info!(id = %record.id, "container removed");
    let deleted = berth_proto::cri::v1::ContainerEventType::ContainerDeletedEvent;
    state
        .events
        .publish_container(state, &record.id, &record.sandbox_id, deleted);
    Ok(())
}
