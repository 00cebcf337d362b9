//! CRI container events (GetContainerEvents, kubelet's evented PLEG).
//!
//! Every lifecycle change of a container, and of a pod sandbox (whose
//! events carry the sandbox's ID as the container ID, as containerd's do),
//! is broadcast to the subscribed streams with the current status of the
//! pod and of all its containers. An event always carries the pod's status:
//! kubelet reads the pod UID from it. A subscriber that falls behind by
//! more than [`CAPACITY`] events loses the oldest ones (kubelet then
//! relists); events are not kept for later subscribers.

use crate::container::record::ContainerState;
use crate::container::Containers;
use crate::sandbox::SandboxRecord;
use berth_proto::cri::v1 as cri;
use cri::ContainerEventType as Kind;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Events a subscriber may lag behind before it loses the oldest.
pub const CAPACITY: usize = 1024;

/// The broadcast of events.
#[derive(Debug)]
pub struct Events {
    /// `None` once closed at shutdown.
    sender: Mutex<Option<broadcast::Sender<cri::ContainerEventResponse>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: Mutex::new(Some(broadcast::channel(CAPACITY).0)),
        }
    }
}

impl Events {
    /// A receiver of the events from now on; after [`close`](Self::close)
    /// one that ends at once.
    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        match self.sender().as_ref() {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Ends every subscriber's stream (at shutdown).
    pub fn close(&self) {
        self.sender().take();
    }

    fn sender(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<cri::ContainerEventResponse>>> {
        self.sender.lock().expect("events lock is never poisoned")
    }

    /// Publishes `kind` for `id` (a container of `sandbox`, or the sandbox
    /// itself), with the statuses of `sandbox` and of its `containers` as
    /// they are now.
    pub fn publish(&self, id: &str, sandbox: &SandboxRecord, containers: &Containers, kind: Kind) {
        if self
            .sender()
            .as_ref()
            .is_none_or(|sender| sender.receiver_count() == 0)
        {
            return;
        }
        let containers_statuses = containers
            .in_sandbox(&sandbox.id)
            .iter()
            .filter(|c| c.state != ContainerState::Creating)
            .map(crate::container::status::to_cri_status)
            .collect();
        let event = cri::ContainerEventResponse {
            container_id: id.to_owned(),
            container_event_type: kind as i32,
            created_at: crate::sandbox::now_nanos(),
            pod_sandbox_status: Some(crate::sandbox::status::to_cri_status(sandbox)),
            containers_statuses,
        };
        if let Some(sender) = self.sender().as_ref() {
            // No subscriber left since the check: nobody to tell.
            let _ = sender.send(event);
        }
    }
}
