//! The CRI gRPC layer: converts requests and delegates; no logic lives here.
//!
//! Layout: `runtime.rs` implements `RuntimeService`, `image.rs`
//! `ImageService`, `runtime_status.rs` the Version/Status/RuntimeConfig
//! calls. An RPC that berth does not implement yet answers `Unimplemented`,
//! never a fake success.

mod image;
mod runtime;
mod runtime_status;

use crate::cgroups::{CgroupDriver, CgroupLayout};
use crate::config::Config;
use crate::store::Store;
use std::sync::Arc;

/// What every handler may read: the daemon's configuration and resources.
#[derive(Debug)]
pub struct AgentState {
    pub config: Config,
    pub store: Store,
    pub cgroup_layout: CgroupLayout,
    pub cgroup_driver: CgroupDriver,
    pub images: Arc<berth_imageservice::Images>,
    /// Pod sandboxes: records, names, per-pod locks.
    pub sandboxes: crate::sandbox::Sandboxes,
    /// Containers: records, names, per-container locks, shim clients.
    pub containers: crate::container::Containers,
    /// Lifecycle events for GetContainerEvents.
    pub events: crate::events::Events,
}

impl AgentState {
    /// Runs `write` on the blocking pool: store commits fsync, and an async
    /// worker must not wait for the disk.
    pub async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        write: impl FnOnce(&AgentState) -> T + Send + 'static,
    ) -> T {
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || write(&state))
            .await
            .expect("store writes do not panic")
    }
}

/// The CRI services, both backed by one [`AgentState`].
#[derive(Debug, Clone)]
pub struct CriService {
    state: Arc<AgentState>,
}

impl CriService {
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }
}

/// A boxed stream for the server-streaming RPCs.
pub type ResponseStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// The status of an RPC berth does not implement yet.
fn unimplemented(method: &str) -> tonic::Status {
    crate::Error::Unimplemented {
        rpc: rpc_name(method),
    }
    .into()
}

/// The CRI name of a handler: `run_pod_sandbox` is `RunPodSandbox`.
fn rpc_name(method: &str) -> String {
    method
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Defines trait methods that answer [`unimplemented`].
///
/// `#[async_trait]` does not see into macro output, so this writes the
/// signature it would have produced.
macro_rules! unimplemented_rpcs {
    ($($method:ident($request:ty) -> $response:ty;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: tonic::Request<$request>,
            ) -> std::pin::Pin<Box<
                dyn std::future::Future<
                    Output = Result<tonic::Response<$response>, tonic::Status>,
                > + Send + 'async_trait,
            >>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { Err($crate::server::unimplemented(stringify!($method))) })
            }
        )*
    };
}
use unimplemented_rpcs;

#[cfg(test)]
mod tests {
    #[test]
    fn rpc_names() {
        assert_eq!(super::rpc_name("run_pod_sandbox"), "RunPodSandbox");
        assert_eq!(super::rpc_name("version"), "Version");
    }
}
