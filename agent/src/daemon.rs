//! The daemon's life: start-up checks, serving, and graceful shutdown.
//!
//! Start-up opens everything that can fail before the socket answers, so a
//! bad config, a corrupt store or a socket in use stops berthd with one
//! clear error and nothing half-started. Shutdown stops accepting calls,
//! lets in-flight calls finish, then removes the socket.

use crate::accept::UnixIncoming;
use crate::authority::LenientAuthority;
use crate::config::Config;
use crate::metrics::CriMetricsLayer;
use crate::runtime::Runtime;
use crate::server::CriService;
use crate::socket::CriSocket;
use crate::{Error, Result};
use berth_proto::cri::v1::image_service_server::ImageServiceServer;
use berth_proto::cri::v1::runtime_service_server::RuntimeServiceServer;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// The file in the state dir that names the bound metrics address.
pub const METRICS_ADDRESS_FILE: &str = "metrics-address";
/// The file in the state dir that names the bound streaming address.
pub const STREAMING_ADDRESS_FILE: &str = "streaming-address";

/// Runs berthd until `shutdown` resolves, without reloads.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let (_keep, reloads) = tokio::sync::mpsc::unbounded_channel();
    serve(config, shutdown, reloads).await
}

/// Runs berthd until `shutdown` resolves, applying each configuration
/// that arrives on `reloads` (re-read on SIGHUP, validated) as
/// [`crate::reload::apply`] does.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    mut reloads: tokio::sync::mpsc::UnboundedReceiver<Config>,
) -> Result<()> {
    raise_file_limit();
    report_node_checks(&config);
    for dir in [&config.root, &config.state] {
        create_private_dir(dir)?;
    }
    let state = Arc::new(Runtime::open(config).await?);
    let config = &state.config;
    let mut socket = CriSocket::bind(&config.socket_path())?;
    let listener = socket
        .listener()
        .map_err(|source| crate::socket::SocketError::Io {
            path: socket.path().to_owned(),
            source,
        })?;

    let metrics = state.metrics.clone();
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
            let objects = {
                let state = state.clone();
                Arc::new(move || state.object_counts())
            };
            Some(tokio::spawn(crate::metrics::serve(
                metrics_listener,
                metrics.clone(),
                objects,
                async move {
                    let _ = metrics_stopped.await;
                },
            )))
        }
        None => None,
    };

    let streaming_listener = crate::streaming::server::bind(config.streaming_address()).await?;
    let streaming_bound = streaming_listener.local_addr().map_err(|source| {
        crate::streaming::StreamingError::Bind {
            address: config.streaming_address(),
            source,
        }
    })?;
    let streaming_file = config.state.join(STREAMING_ADDRESS_FILE);
    std::fs::write(&streaming_file, format!("{streaming_bound}\n")).map_err(|source| {
        crate::streaming::StreamingError::Bind {
            address: streaming_bound,
            source,
        }
    })?;
    tracing::info!(address = %streaming_bound, "serving exec, attach and port-forward streams");
    let streaming = Arc::new(crate::streaming::Streaming::new(streaming_bound));

    let max_message_size = config.grpc.max_message_size;
    crate::recovery::recover(&state).await;
    let collector = crate::stats::collector::spawn(state.clone());
    let (stop_streaming, streaming_stopped) = tokio::sync::oneshot::channel::<()>();
    let streaming_task = tokio::spawn(crate::streaming::server::serve(
        streaming_listener,
        Arc::new(crate::streaming::server::Server {
            state: state.clone(),
            streaming: streaming.clone(),
            metrics: {
                let (sessions, bytes) = metrics.streaming();
                crate::streaming::StreamingMetrics { sessions, bytes }
            },
        }),
        async move {
            let _ = streaming_stopped.await;
        },
    ));
    let service = CriService::new(state.clone(), streaming);
    let reloader = {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(new) = reloads.recv().await {
                report_reload(&state, &new).await;
            }
        })
    };
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
        .serve_with_incoming_shutdown(lenient(UnixIncoming::new(listener, "CRI socket")), {
            let state = state.clone();
            // The socket is bound and recovery has run: calls are answered.
            crate::notify::tell_systemd("READY=1");
            async move {
                shutdown.await;
                crate::notify::tell_systemd("STOPPING=1");
                // Event streams never end by themselves; the graceful
                // shutdown waits for every open call.
                state.events.close();
            }
        })
        .await;

    collector.stop().await;
    // Awaited, so that its handle on the runtime (and the store) is gone
    // when this returns: an in-process restart opens the store again.
    reloader.abort();
    let _ = reloader.await;
    state.containers.stop_watchers().await;
    let _ = stop_streaming.send(());
    let _ = streaming_task.await;
    let _ = std::fs::remove_file(state.config.state.join(STREAMING_ADDRESS_FILE));
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
        let _ = std::fs::remove_file(state.config.state.join(METRICS_ADDRESS_FILE));
    }
    drop(socket);
    tracing::info!("berthd stopped");
    served.map_err(Error::from)
}

/// Runs `berthd doctor`'s checks and logs what is wrong. Nothing here
/// stops berthd: what it cannot serve shows in `Status` conditions.
fn report_node_checks(config: &Config) {
    for finding in crate::doctor::check_all(&crate::doctor::Host::real(), config) {
        match finding.severity {
            crate::doctor::Severity::Ok => {
                tracing::debug!(check = %finding.check, "{}", finding.message)
            }
            _ => {
                tracing::warn!(check = %finding.check, fix = %finding.fix, "node check: {}", finding.message)
            }
        }
    }
}

/// Applies a reloaded configuration and logs what it changed and what
/// waits for a restart.
async fn report_reload(state: &Runtime, new: &Config) {
    match crate::reload::apply(state, new).await {
        Ok(outcome) => {
            if !outcome.need_restart.is_empty() {
                tracing::warn!(
                    keys = ?outcome.need_restart,
                    "changed config keys take effect only when berthd restarts; they keep their running values"
                );
            }
            tracing::info!(applied = ?outcome.applied, "reloaded the configuration");
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot apply the reloaded configuration; keeping the running one")
        }
    }
}

/// Connections whose clients may send the socket path as `:authority`
/// (see `authority.rs`).
fn lenient(
    incoming: UnixIncoming,
) -> impl tokio_stream::Stream<Item = std::io::Result<LenientAuthority<tokio::net::UnixStream>>> {
    use tokio_stream::StreamExt;
    incoming.map(|accepted| accepted.map(LenientAuthority::new))
}

/// Creates `path` owner-only, or tightens it to 0700 when it exists
/// looser: everything of every container lives under the root and state
/// dirs (see [`berth_owner_only`]).
fn create_private_dir(path: &Path) -> Result<()> {
    berth_owner_only::create_dir_all(path).map_err(|source| Error::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// Raises the soft limit of open files to the hard one. berthd holds a few
/// descriptors per container and per connection; systemd's default soft
/// limit (1024) lets a local user's idle connections fill the table and
/// cut berthd off its own CRI socket.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    #[test]
    fn the_soft_file_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        // Just below the hard limit: other tests of this process go on.
        let low = hard.saturating_sub(1);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).expect("lower the soft limit");
        raise_file_limit();
        let raised = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("restore");
        assert_eq!(raised, (hard, hard));
    }

    #[test]
    fn root_and_state_dirs_are_made_owner_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().expect("tempdir");
        let fresh = tmp.path().join("var/lib/berth");
        create_private_dir(&fresh).expect("create");
        let loose = tmp.path().join("run-berth");
        std::fs::create_dir(&loose).expect("mkdir");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        create_private_dir(&loose).expect("tighten");
        for dir in [&fresh, &loose] {
            let mode = std::fs::metadata(dir).expect("stat").mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}
