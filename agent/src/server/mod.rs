//! The CRI gRPC layer: converts requests and delegates; no logic lives here.
//!
//! Layout: `runtime.rs` implements `RuntimeService`, `image.rs`
//! `ImageService`, `runtime_status.rs` the Version/Status/RuntimeConfig
//! calls. An RPC that berth does not implement yet answers `Unimplemented`,
//! never a fake success.

mod image;
mod runtime;
mod runtime_status;

use crate::runtime::Runtime;
use crate::streaming::Streaming;
use std::sync::Arc;

/// The CRI services, both backed by one [`Runtime`].
#[derive(Debug, Clone)]
pub struct CriService {
    state: Arc<Runtime>,
    /// The streaming server's tokens and URL, for Exec, Attach and
    /// PortForward.
    streaming: Arc<Streaming>,
}

impl CriService {
    pub fn new(state: Arc<Runtime>, streaming: Arc<Streaming>) -> Self {
        Self { state, streaming }
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
