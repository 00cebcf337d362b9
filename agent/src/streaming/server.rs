//! The streaming server: plain HTTP/1.1 on `streaming.address`, where each
//! URL that Exec, Attach or PortForward answered is upgraded to a session.
//!
//! Paths are `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`;
//! a token is taken on its first request ([`super::tokens`]), so an
//! unknown, used or expired one (or one of another kind) gets 404. The
//! request must then be a WebSocket upgrade (`Upgrade: websocket`) or a
//! SPDY/3.1 one; anything else gets 400.
//!
//! Like every listener of berthd it backs off on accept errors and caps its
//! connections ([`MAX_CONNECTIONS`], a session holds its slot until it
//! ends), and a connection must send its request head within
//! [`HEADER_READ_TIMEOUT`]: idle or slow connections cannot fill berthd's
//! file table and starve the CRI socket.

use super::websocket;
use super::{exec, spdy, CommandIo, Outcome, StreamRequest, Streaming, StreamingError};
use crate::accept::CappedTcpListener;
use crate::runtime::Runtime;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The most connections (sessions included) served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a connection may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server serves sessions with.
#[derive(Debug)]
pub struct Server {
    pub state: Arc<Runtime>,
    pub streaming: Arc<Streaming>,
    pub metrics: super::StreamingMetrics,
}

/// Binds the streaming address.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, StreamingError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StreamingError::Bind { address, source })
}

/// Serves sessions until `shutdown` resolves.
pub async fn serve(listener: TcpListener, server: Arc<Server>, shutdown: impl Future<Output = ()>) {
    let mut listener = CappedTcpListener::new(listener, "streaming server", MAX_CONNECTIONS);
    tokio::pin!(shutdown);
    loop {
        let (stream, slot) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let server = server.clone();
        let slot = Arc::new(slot);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = server.handle(request, slot.clone());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "streaming connection ended");
            }
        });
    }
}

type Response = http::Response<Full<Bytes>>;

fn answer(status: http::StatusCode, text: &str) -> Response {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(format!("{text}\n"))))
        .expect("static response parts are valid")
}

impl Server {
    fn handle(
        &self,
        mut request: http::Request<hyper::body::Incoming>,
        slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    ) -> Response {
        let path = request.uri().path().trim_start_matches('/');
        let Some((kind, token)) = path.split_once('/') else {
            return answer(http::StatusCode::NOT_FOUND, "not found");
        };
        let Some(stream_request) = self.streaming.take(token).filter(|r| r.kind() == kind) else {
            return answer(
                http::StatusCode::NOT_FOUND,
                "unknown or expired streaming token",
            );
        };
        let transport = if websocket::is_upgrade(&request) {
            Transport::WebSocket
        } else if spdy::is_upgrade(&request) {
            Transport::Spdy
        } else {
            return answer(
                http::StatusCode::BAD_REQUEST,
                "a streaming URL needs a WebSocket or SPDY/3.1 upgrade",
            );
        };
        let (offered, supported): (Vec<String>, &[&'static str]) =
            match (transport, &stream_request) {
                (Transport::WebSocket, StreamRequest::PortForward(_)) => (
                    websocket::offered(&request),
                    &[websocket::PORT_FORWARD_PROTOCOL],
                ),
                (Transport::WebSocket, _) => {
                    (websocket::offered(&request), &websocket::COMMAND_PROTOCOLS)
                }
                (Transport::Spdy, StreamRequest::PortForward(_)) => {
                    (spdy::offered(&request), &[spdy::PORT_FORWARD_PROTOCOL])
                }
                (Transport::Spdy, _) => (spdy::offered(&request), &spdy::COMMAND_PROTOCOLS),
            };
        let Some(protocol) = super::negotiate(&offered, supported) else {
            return answer(
                http::StatusCode::FORBIDDEN,
                &format!(
                    "none of the requested protocols {offered:?} is supported; berth speaks {supported:?}"
                ),
            );
        };
        let ports = match (transport, &stream_request) {
            (Transport::WebSocket, StreamRequest::PortForward(r)) => {
                match query_ports(request.uri().query(), &r.port) {
                    Ok(ports) => ports,
                    Err(e) => return answer(http::StatusCode::BAD_REQUEST, &e),
                }
            }
            _ => Vec::new(),
        };
        let response = match transport {
            Transport::WebSocket => {
                match websocket::accept_response(&request, protocol, &offered) {
                    Ok(response) => response,
                    Err(e) => return answer(http::StatusCode::BAD_REQUEST, e),
                }
            }
            Transport::Spdy => spdy::accept_response(protocol, &offered),
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let state = self.state.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let kind = stream_request.metric_kind();
            let upgraded = match upgrade.await {
                Ok(upgraded) => super::Counted::new(TokioIo::new(upgraded), &metrics, kind),
                Err(e) => {
                    tracing::debug!(error = %e, "streaming upgrade failed");
                    return;
                }
            };
            let _open = metrics.open(kind);
            tracing::debug!(kind, protocol, ?transport, "streaming session starts");
            match (transport, stream_request) {
                (Transport::WebSocket, StreamRequest::PortForward(r)) => {
                    let ws = websocket::server(upgraded).await;
                    websocket::serve_port_forward(ws, state, r.pod_sandbox_id, ports).await
                }
                (Transport::Spdy, StreamRequest::PortForward(r)) => {
                    spdy::serve_port_forward(upgraded, state, r.pod_sandbox_id).await
                }
                (transport, command) => {
                    let Some((streams, run)) = command_of(command, state) else {
                        return;
                    };
                    match transport {
                        Transport::WebSocket => {
                            let ws = websocket::server(upgraded).await;
                            websocket::serve_command(ws, protocol, streams, run).await
                        }
                        Transport::Spdy => {
                            spdy::serve_command(upgraded, protocol, streams, run).await
                        }
                    }
                }
            }
            tracing::debug!(kind, "streaming session ended");
        });
        response.map(|()| Full::default())
    }
}

/// The two transports of a streaming URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Spdy,
}

/// What a remote command runs: its streams and the work on them.
type CommandRun = Box<dyn FnOnce(CommandIo) -> BoxFuture<Outcome> + Send>;
type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

fn command_of(
    request: StreamRequest,
    state: Arc<Runtime>,
) -> Option<(websocket::Streams, CommandRun)> {
    Some(match request {
        StreamRequest::Exec(r) => (
            websocket::Streams {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            Box::new(move |io| Box::pin(exec::run(state, r, io))),
        ),
        StreamRequest::Attach(r) => (
            websocket::Streams {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            Box::new(move |_io| {
                Box::pin(async {
                    Outcome::Failed("attach is not implemented by berth yet".to_owned())
                })
            }),
        ),
        StreamRequest::PortForward(_) => return None,
    })
}

/// The ports of a WebSocket port-forward: every `port` query parameter
/// (each may list several, comma-separated), else the request's.
fn query_ports(query: Option<&str>, requested: &[i32]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        if key != "port" {
            continue;
        }
        for p in value.split(',') {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("query parameter port: {p:?} is not a TCP port")),
            }
        }
    }
    if ports.is_empty() {
        ports = requested
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
    }
    if ports.is_empty() {
        return Err("query parameter port is required".to_owned());
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query_or_the_request() {
        assert_eq!(
            query_ports(Some("port=80&port=81,82"), &[]),
            Ok(vec![80, 81, 82])
        );
        assert_eq!(query_ports(None, &[8080]), Ok(vec![8080]));
        assert!(query_ports(Some("port=0"), &[]).is_err());
        assert!(query_ports(Some("port=x"), &[80]).is_err());
        assert!(query_ports(None, &[]).is_err());
    }
}
