//! The daemon's life: start-up checks, serving, and graceful shutdown.
//!
//! Start-up opens everything that can fail before the socket answers, so a
//! bad config, a corrupt store or a socket in use stops berthd with one
//! clear error and nothing half-started. Shutdown stops accepting calls,
//! lets in-flight calls finish, then removes the socket.

use crate::config::Config;
use crate::metrics::{CriMetricsLayer, Metrics};
use crate::runtime::Runtime;
use crate::server::CriService;
use crate::socket::CriSocket;
use crate::{Error, Result};
use berth_proto::cri::v1::image_service_server::ImageServiceServer;
use berth_proto::cri::v1::runtime_service_server::RuntimeServiceServer;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio_stream::wrappers::UnixListenerStream;

/// The file in the state dir that names the bound metrics address.
pub const METRICS_ADDRESS_FILE: &str = "metrics-address";

/// Runs berthd until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    create_private_dir(&config.root, 0o700)?;
    create_private_dir(&config.state, 0o711)?;
    let runtime = Runtime::open(config).await?;
    let config = &runtime.config;
    let mut socket = CriSocket::bind(&config.socket_path())?;
    let listener = socket
        .listener()
        .map_err(|source| crate::socket::SocketError::Io {
            path: socket.path().to_owned(),
            source,
        })?;

    let metrics = Arc::new(Metrics::new());
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match config.metrics_address() {
        Some(address) => {
            let metrics_error = |source| Error::Metrics {
                address: address.to_string(),
                source,
            };
            let metrics_listener = crate::metrics::bind(address).await.map_err(metrics_error)?;
            let bound = metrics_listener.local_addr().map_err(metrics_error)?;
            let address_file = config.state.join(METRICS_ADDRESS_FILE);
            std::fs::write(&address_file, format!("{bound}\n")).map_err(metrics_error)?;
            tracing::info!(address = %bound, "serving metrics at /metrics");
            let metrics = metrics.clone();
            Some(tokio::spawn(crate::metrics::serve(
                metrics_listener,
                metrics,
                async move {
                    let _ = metrics_stopped.await;
                },
            )))
        }
        None => None,
    };

    let max_message_size = config.grpc.max_message_size;
    let state = Arc::new(runtime);
    crate::recovery::recover(&state).await;
    let service = CriService::new(state.clone());
    tracing::info!(
        socket = %socket.path().display(),
        version = env!("CARGO_PKG_VERSION"),
        cgroup_driver = ?state.cgroup_driver,
        "berthd is serving CRI"
    );
    let served = tonic::transport::Server::builder()
        .layer(CriMetricsLayer::new(metrics))
        .add_service(
            RuntimeServiceServer::new(service.clone())
                .max_decoding_message_size(max_message_size)
                .max_encoding_message_size(max_message_size),
        )
        .add_service(
            ImageServiceServer::new(service)
                .max_decoding_message_size(max_message_size)
                .max_encoding_message_size(max_message_size),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), {
            let state = state.clone();
            async move {
                shutdown.await;
                // Event streams never end by themselves; the graceful
                // shutdown waits for every open call.
                state.events.close();
            }
        })
        .await;

    state.containers.stop_watchers().await;
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
        let _ = std::fs::remove_file(state.config.state.join(METRICS_ADDRESS_FILE));
    }
    drop(socket);
    tracing::info!("berthd stopped");
    served.map_err(Error::from)
}

/// Creates `path` with `mode` when it does not exist; an existing directory
/// keeps its owner's choice of mode.
fn create_private_dir(path: &Path, mode: u32) -> Result<()> {
    let error = |source| Error::CreateDir {
        path: path.to_owned(),
        source,
    };
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)
}
