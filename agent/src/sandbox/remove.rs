//! RemovePodSandbox: stop the sandbox if it runs, remove its containers,
//! its directory and its record, and release its name. Removing an unknown
//! sandbox succeeds, as kubelet expects.

use super::{stop, teardown};
use crate::failpoint;
use crate::runtime::Runtime;
use crate::Result;
use std::sync::Arc;

/// Removes the sandbox `id` (an id or a unique prefix).
pub async fn remove(state: &Arc<Runtime>, id: &str) -> Result<()> {
    let Some(mut record) = state.sandboxes.lock(id).await? else {
        return Ok(());
    };
    stop::stop_locked(state, &record).await?;
    record.refresh();
    crate::container::lifecycle::remove_all_in_sandbox(state, &record).await?;
    failpoint::hit("sandbox-remove:after-containers");
    // Release again: a sandbox stopped before a crash may have been
    // half-released; every step is idempotent.
    teardown::discard(state, &record).await?;
    state.sandboxes.release_name(&record);
    tracing::info!(id = %record.id, "pod sandbox removed");
    // The pod's records, clients and buffers are freed: give them back.
    tokio::task::spawn_blocking(crate::memory::release_free_heap);
    // The record is gone; the event carries its last status.
    let deleted = berth_proto::cri::v1::ContainerEventType::ContainerDeletedEvent;
    state.publish(&record.id, &record, deleted);
    Ok(())
}
