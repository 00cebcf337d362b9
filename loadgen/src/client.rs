//! The CRI connection: one HTTP/2 connection on the runtime's unix socket,
//! shared by every task (as kubelet shares one), and the timing of calls.

use crate::stats::Recorder;
use crate::{Error, Result};
use berth_proto::cri::v1::image_service_client::ImageServiceClient;
use berth_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// Both CRI services on one channel; cheap to clone, one clone per task.
#[derive(Debug, Clone)]
pub(crate) struct Cri {
    pub(crate) runtime: RuntimeServiceClient<Channel>,
    pub(crate) image: ImageServiceClient<Channel>,
}

/// The socket of `unix:///path` or of a bare absolute path.
pub(crate) fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(Error::Endpoint {
            endpoint: endpoint.to_owned(),
        })
    }
}

/// Connects to `endpoint`; every call fails with DeadlineExceeded after
/// `timeout`.
pub(crate) async fn connect(endpoint: &str, timeout: Duration) -> Result<Cri> {
    let socket = socket_path(endpoint)?;
    let channel = Endpoint::from_static("http://cri.invalid")
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .map_err(|source| Error::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(Cri {
        runtime: RuntimeServiceClient::new(channel.clone()),
        image: ImageServiceClient::new(channel),
    })
}

/// Awaits one call and records its latency under `method`, failed or not.
pub(crate) async fn timed<T>(
    recorder: &Recorder,
    method: &'static str,
    call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> std::result::Result<T, tonic::Status> {
    let started = Instant::now();
    let outcome = call.await;
    recorder.rpc(method, started.elapsed());
    outcome.map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_urls_or_absolute_paths() {
        assert_eq!(
            socket_path("unix:///run/berth/berth.sock").expect("url"),
            PathBuf::from("/run/berth/berth.sock")
        );
        assert_eq!(
            socket_path("/run/x.sock").expect("path"),
            PathBuf::from("/run/x.sock")
        );
        for bad in ["unix://relative.sock", "tcp://127.0.0.1:1", "x.sock"] {
            assert!(socket_path(bad).is_err(), "{bad} was accepted");
        }
    }
}
