//! RemovePodSandbox: stop the sandbox if it runs, remove its containers,
//! its directory and its record, and release its name. Removing an unknown
//! sandbox succeeds, as kubelet expects.

use super::{stop, teardown};
use crate::server::AgentState;
use crate::Result;
use std::sync::Arc;

/// Removes the sandbox `id` (an id or a unique prefix).
pub async fn remove(state: &Arc<AgentState>, id: &str) -> Result<()> {
    let Some(found) = state.sandboxes.records.find(id)? else {
        return Ok(());
    };
    let _lock = state.sandboxes.locks.lock(&found.id).await;
    let Some(record) = state.sandboxes.records.get(&found.id) else {
        return Ok(());
    };
    stop::stop_locked(state, record.clone()).await?;
    let record = state.sandboxes.records.get(&found.id).unwrap_or(record);
    crate::container::lifecycle::remove_all_in_sandbox(state, &record.id).await?;
    // Release again: a sandbox stopped before a crash may have been
    // half-released; every step is idempotent.
    teardown::discard(state, &record).await?;
    state.sandboxes.names.release(&record.name, &record.id);
    tracing::info!(id = %record.id, "pod sandbox removed");
    // The pod's records, clients and buffers are freed: give them back.
    tokio::task::spawn_blocking(crate::memory::release_free_heap);
    // The record is gone; the event carries its last status.
    let deleted = berth_proto::cri::v1::ContainerEventType::ContainerDeletedEvent;
    state.events.publish(state, &record.id, &record, deleted);
    Ok(())
}
