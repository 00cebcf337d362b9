//! The streaming server: what `Exec`, `Attach` and `PortForward` answer
//! with, and what serves the URL they return.
//!
//! Layout: the three RPCs validate their request and store it under a
//! single-use token ([`tokens`]); the answer is the absolute URL
//! `http://<address>/<kind>/<token>` of berth's streaming server
//! ([`server`], plain HTTP/1.1 on `streaming.address`, loopback by
//! default: kubelet connects to it from the same node and proxies the API
//! server's stream). The client upgrades that request to one of the two
//! transports Kubernetes clients speak: WebSocket ([`websocket`]:
//! `v5.channel.k8s.io` and older channel protocols for exec and attach,
//! `v4.channel.k8s.io` port-forward framing) or SPDY/3.1. A transport
//! turns its frames into a [`CommandIo`] (exec, attach) or one byte stream
//! per forwarded connection (port-forward); [`exec`] and [`port_forward`]
//! do the work and know nothing of the transport (attach is not built yet:
//! its session reports so; `docs/architecture.md` has the design).
//!
//! Back-pressure: every stream is a bounded channel of [`CHUNK`]-sized
//! chunks, so a client that never reads stalls its own stream and the
//! process writing to it, never berthd's memory. Cleanup: when the client
//! goes away the session's work is dropped, and [`exec`]'s guard kills and
//! deletes the exec process and removes its FIFOs.

pub mod exec;
pub mod port_forward;
pub mod server;
pub mod spdy;
pub mod status;
pub mod tokens;
pub mod websocket;

use crate::runtime::Runtime;
use crate::Result;
use berth_proto::cri::v1 as cri;
use bytes::Bytes;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// The most bytes one chunk of a stream carries.
pub const CHUNK: usize = 32 * 1024;
/// Chunks buffered per stream direction.
pub const CHANNEL_CHUNKS: usize = 4;

/// A validated request waiting for its client.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl StreamRequest {
    /// The path segment of its URL.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Attach(_) => "attach",
            Self::PortForward(_) => "portforward",
        }
    }

    /// The session kind in metrics (one of [`crate::metrics::STREAMING_KINDS`]).
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Attach(_) => "attach",
            Self::PortForward(_) => "port_forward",
        }
    }
}

/// Why a streaming request failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error(transparent)]
    TooManyTokens(#[from] tokens::TooManyTokens),
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
    #[error("cannot serve streams on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl StreamingError {
    /// The class of this error.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            Self::TooManyTokens(_) => crate::ErrorKind::Unavailable,
            Self::SandboxNotReady(_) => crate::ErrorKind::FailedPrecondition,
            Self::Bind { .. } => crate::ErrorKind::Internal,
        }
    }
}

/// The streaming half of berthd that the RPCs talk to: the tokens and the
/// server's base URL.
#[derive(Debug)]
pub struct Streaming {
    tokens: tokens::Tokens,
    base_url: String,
}

impl Streaming {
    /// The streaming state of a server bound to `bound`. An unspecified
    /// address (`0.0.0.0`) is named by its loopback in URLs.
    pub fn new(bound: SocketAddr) -> Self {
        let mut shown = bound;
        if shown.ip().is_unspecified() {
            shown.set_ip(match bound {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Self {
            tokens: tokens::Tokens::default(),
            base_url: format!("http://{shown}"),
        }
    }

    /// Takes the request a token stands for (once).
    pub fn take(&self, token: &str) -> Option<StreamRequest> {
        self.tokens.take(token)
    }

    fn url_for(&self, request: StreamRequest) -> Result<String> {
        let kind = request.kind();
        let token = self.tokens.insert(request).map_err(StreamingError::from)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// CRI `Exec`: validates and answers the URL of the session.
    pub fn exec(&self, state: &Runtime, request: cri::ExecRequest) -> Result<cri::ExecResponse> {
        exec::validate(state, &request)?;
        let url = self.url_for(StreamRequest::Exec(request))?;
        Ok(cri::ExecResponse { url })
    }

    /// CRI `Attach`.
    pub fn attach(
        &self,
        state: &Runtime,
        request: cri::AttachRequest,
    ) -> Result<cri::AttachResponse> {
        crate::container::exec::running(state, &request.container_id)?;
        check_streams(request.stdin, request.stdout, request.stderr, request.tty)?;
        let url = self.url_for(StreamRequest::Attach(request))?;
        Ok(cri::AttachResponse { url })
    }

    /// CRI `PortForward`.
    pub fn port_forward(
        &self,
        state: &Runtime,
        request: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse> {
        port_forward::validate(state, &request)?;
        let url = self.url_for(StreamRequest::PortForward(request))?;
        Ok(cri::PortForwardResponse { url })
    }
}

/// At least one stream, and no stderr beside a terminal (a terminal has
/// one output).
pub fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<()> {
    if !(stdin || stdout || stderr) {
        return Err(crate::Error::invalid(
            "stdin",
            "one of stdin, stdout and stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(crate::Error::invalid(
            "stderr",
            "must not be set with tty: a terminal has one output stream",
        ));
    }
    Ok(())
}

/// Every value of header `name`, comma-separated lists split, in order.
pub fn header_list<B>(request: &http::Request<B>, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first subprotocol the client offers that is in `supported`
/// (kubelet's rule: the client's preference wins); a client that offers
/// none gets the oldest, the last of `supported`.
pub fn negotiate(offered: &[String], supported: &[&'static str]) -> Option<&'static str> {
    if offered.is_empty() {
        return supported.last().copied();
    }
    offered
        .iter()
        .find_map(|p| supported.iter().find(|s| **s == p.as_str()).copied())
}

/// A terminal size a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's streams of one exec or attach, as a transport delivers
/// them. Each is `None` when the client did not ask for it.
#[derive(Debug)]
pub struct CommandIo {
    /// The client's stdin; the channel closes at its EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Terminal resizes, for a session with a terminal.
    pub resize: mpsc::Receiver<TerminalSize>,
}

/// How a remote command ended, for the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code.
    Exited(i32),
    /// The command could not run, or the session failed.
    Failed(String),
}

/// The streaming server's metrics (see [`crate::metrics::Metrics::streaming`]).
#[derive(Debug, Clone)]
pub struct StreamingMetrics {
    pub sessions: prometheus::IntGaugeVec,
    pub bytes: prometheus::IntCounterVec,
}

/// One open session in [`StreamingMetrics::sessions`], until dropped.
#[derive(Debug)]
pub struct OpenSession(prometheus::IntGauge);

impl StreamingMetrics {
    /// Counts a session of `kind` as open.
    pub fn open(&self, kind: &str) -> OpenSession {
        let gauge = self.sessions.with_label_values(&[kind]);
        gauge.inc();
        OpenSession(gauge)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pin_project_lite::pin_project! {
    /// An upgraded connection that counts the bytes through it.
    #[derive(Debug)]
    pub struct Counted<T> {
        #[pin]
        io: T,
        read: prometheus::IntCounter,
        written: prometheus::IntCounter,
    }
}

impl<T> Counted<T> {
    pub fn new(io: T, metrics: &StreamingMetrics, kind: &str) -> Self {
        Self {
            io,
            read: metrics.bytes.with_label_values(&[kind, "in"]),
            written: metrics.bytes.with_label_values(&[kind, "out"]),
        }
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        this.read.inc_by((buf.filled().len() - before) as u64);
        polled
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            this.written.inc_by(*n as u64);
        }
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
