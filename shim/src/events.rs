//! Publishing task events (`/tasks/exit`, …) to the agent.
//!
//! The address is containerd's convention: the `TTRPC_ADDRESS` environment
//! variable of the shim (a socket path, or a `unix://` URL) serving
//! containerd's `containerd.services.events.ttrpc.v1.Events/Forward`. Each
//! event goes in an `Envelope` (namespace, topic, timestamp, the event as
//! an `Any` named by its protobuf type, e.g. `containerd.events.TaskExit`).
//!
//! Events leave in order, from one queue of [`QUEUE_LEN`]: a failed
//! forward is retried (reconnecting) [`ATTEMPTS`] times before the event is
//! dropped, and a full queue drops new events. Without an address, or if
//! nothing answers there when the shim starts, events are dropped: `wait`
//! and `exit.json` stay the authoritative record of exits. [`Publisher::close`]
//! flushes the queue before the shim exits.

use std::sync::Mutex;
use std::time::Duration;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{self, Message};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::process::timestamp;

const QUEUE_LEN: usize = 1024;
const ATTEMPTS: u32 = 5;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Where task events go, if anywhere.
#[derive(Debug)]
pub struct Publisher {
    namespace: String,
    queue: Mutex<Option<mpsc::Sender<Envelope>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// A publisher that drops every event.
    pub fn none(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            queue: Mutex::new(None),
            worker: Mutex::new(None),
        }
    }

    /// Connects to `address` if it is set; never fails.
    pub async fn connect(address: Option<&str>, namespace: &str) -> Self {
        let Some(address) = address.filter(|a| !a.is_empty()) else {
            tracing::info!("no TTRPC_ADDRESS: task events are not published");
            return Self::none(namespace);
        };
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        let client = match Client::connect(&address).await {
            Ok(client) => EventsClient::new(client),
            Err(e) => {
                tracing::warn!(address, "events are not published: cannot connect: {e}");
                return Self::none(namespace);
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let worker = tokio::spawn(forward_all(address, client, rx));
        Self {
            namespace: namespace.to_string(),
            queue: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Queues `event` under `topic`.
    pub async fn publish(&self, topic: &str, event: impl Message) {
        let Some(queue) = self.queue.lock().expect("queue lock poisoned").clone() else {
            return;
        };
        let any = match to_any(EVENTS_PACKAGE, &event) {
            Ok(any) => any,
            Err(e) => {
                tracing::warn!(topic, "cannot encode event: {e}");
                return;
            }
        };
        let envelope = Envelope {
            timestamp: Some(timestamp(std::time::SystemTime::now())).into(),
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
            event: Some(any).into(),
            ..Default::default()
        };
        if queue.try_send(envelope).is_err() {
            tracing::warn!(topic, "event queue full: event dropped");
        }
    }

    /// Sends what is queued, waiting at most `limit`, and stops.
    pub async fn close(&self, limit: Duration) {
        self.queue.lock().expect("queue lock poisoned").take();
        let worker = self.worker.lock().expect("worker lock poisoned").take();
        if let Some(worker) = worker {
            if tokio::time::timeout(limit, worker).await.is_err() {
                tracing::warn!("events still queued after {limit:?}: dropped");
            }
        }
    }
}

/// The protobuf package of containerd's task events.
pub const EVENTS_PACKAGE: &str = "containerd.events";

/// Packs `message` as containerd does: `type_url` is the bare protobuf
/// name (`containerd.events.TaskExit`), without a `type.googleapis.com/`
/// prefix. The name is built from `package` and `Message::NAME` rather than
/// read from the message descriptor: reflection would link protobuf's
/// descriptor machinery into the shim and build descriptors on the heap.
pub fn to_any<M: Message>(package: &str, message: &M) -> Result<Any, protobuf::Error> {
    Ok(Any {
        type_url: format!("{package}.{}", M::NAME),
        value: message.write_to_bytes()?,
        ..Default::default()
    })
}

async fn forward_all(address: String, mut client: EventsClient, mut rx: mpsc::Receiver<Envelope>) {
    while let Some(envelope) = rx.recv().await {
        let topic = envelope.topic.clone();
        let req = ForwardRequest {
            envelope: Some(envelope).into(),
            ..Default::default()
        };
        let mut attempt = 1;
        loop {
            let ctx = ttrpc::context::with_timeout(
                i64::try_from(FORWARD_TIMEOUT.as_nanos()).expect("timeout fits in i64"),
            );
            match client.forward(ctx, &req).await {
                Ok(_) => break,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(topic, attempt, "forward failed, retrying: {e}");
                    tokio::time::sleep(RETRY_DELAY * attempt).await;
                    if let Ok(c) = Client::connect(&address).await {
                        client = EventsClient::new(c);
                    }
                    attempt += 1;
                }
                Err(e) => {
                    tracing::warn!(topic, "event dropped after {ATTEMPTS} attempts: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::cgroups::metrics::Metrics;
    use containerd_shim_protos::events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart,
    };
    use containerd_shim_protos::protobuf::MessageFull;

    use super::*;

    #[test]
    fn packs_events_under_their_protobuf_name() {
        let exit = TaskExit {
            id: "c1".into(),
            pid: 7,
            exit_status: 137,
            ..Default::default()
        };
        let any = to_any(EVENTS_PACKAGE, &exit).expect("encode");
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        assert_eq!(
            TaskExit::parse_from_bytes(&any.value).expect("decode"),
            exit
        );

        fn full_name<M: MessageFull>(package: &str) -> (String, String) {
            let any = to_any(package, &M::default()).expect("encode");
            (any.type_url, M::descriptor().full_name().to_string())
        }
        for (built, want) in [
            full_name::<TaskCreate>(EVENTS_PACKAGE),
            full_name::<TaskStart>(EVENTS_PACKAGE),
            full_name::<TaskExit>(EVENTS_PACKAGE),
            full_name::<TaskDelete>(EVENTS_PACKAGE),
            full_name::<TaskExecAdded>(EVENTS_PACKAGE),
            full_name::<TaskExecStarted>(EVENTS_PACKAGE),
            full_name::<Metrics>(crate::stats::METRICS_PACKAGE),
        ] {
            assert_eq!(built, want);
        }
    }
}
