//! Port-forward sessions: connections to `localhost:<port>` in a pod's
//! network namespace (the host's for a `hostNetwork` pod).
//!
//! The socket is made and connected on a throw-away OS thread that joined
//! the pod's namespace ([`crate::network::netns`]); the connected socket
//! then lives in tokio like any other, since a socket keeps the namespace
//! it was made in. One session carries many connections (SPDY: one stream
//! pair per client connection); each is copied in [`CHUNK`]s through the
//! transport's bounded channels.

use super::{StreamingError, CHUNK};
use crate::runtime::Runtime;
use crate::sandbox::{SandboxError, SandboxState};
use crate::{Error, Result};
use berth_proto::cri::v1 as cri;
use bytes::{Bytes, BytesMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a connection to the pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a PortForward request: a ready sandbox and valid ports (the
/// ports a client then asks for come with its stream).
pub fn validate(state: &Runtime, request: &cri::PortForwardRequest) -> Result<()> {
    netns_of(state, &request.pod_sandbox_id)?;
    if let Some(port) = request.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Error::invalid(
            "port",
            format!("{port} is not a TCP port (1 to 65535)"),
        ));
    }
    Ok(())
}

/// The network namespace of a ready sandbox; `None` for the host's.
pub fn netns_of(state: &Runtime, sandbox_id: &str) -> Result<Option<PathBuf>> {
    if sandbox_id.is_empty() {
        return Err(Error::invalid("pod_sandbox_id", "must not be empty"));
    }
    let record = state
        .sandboxes
        .find_created(sandbox_id)?
        .ok_or_else(|| SandboxError::NotFound(sandbox_id.to_owned()))?;
    if record.effective_state() != SandboxState::Ready {
        return Err(StreamingError::SandboxNotReady(record.id).into());
    }
    Ok(record.namespaces.net)
}

/// Connects to `localhost:port` in the sandbox's network namespace: the
/// IPv4 loopback, else the IPv6 one.
pub async fn dial(
    state: &Runtime,
    sandbox_id: &str,
    port: u16,
) -> std::result::Result<TcpStream, String> {
    let netns = netns_of(state, sandbox_id).map_err(|e| e.to_string())?;
    let connect = move || -> std::io::Result<std::net::TcpStream> {
        let mut last = None;
        for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
            match std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, port), DIAL_TIMEOUT) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("two addresses were tried"))
    };
    let connected = tokio::task::spawn_blocking(move || match netns {
        Some(path) => crate::network::netns::run_in_network_namespace(&path, connect)
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        None => connect().map_err(|e| e.to_string()),
    })
    .await
    .map_err(|e| e.to_string())?;
    let stream = connected.map_err(|e| {
        format!("error forwarding port {port} to pod {sandbox_id}: failed to connect to localhost:{port} inside namespace: {e}")
    })?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    TcpStream::from_std(stream).map_err(|e| e.to_string())
}

/// Copies one connection both ways until the pod's side ends; the
/// client's EOF half-closes the connection to the pod.
pub async fn forward(
    stream: TcpStream,
    mut from_client: mpsc::Receiver<Bytes>,
    to_client: mpsc::Sender<Bytes>,
) {
    let (mut read, mut write) = stream.into_split();
    let inbound = async move {
        while let Some(chunk) = from_client.recv().await {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
        // Keep the write half (and so the connection) until the outbound
        // copy ends too.
        std::future::pending::<()>().await;
    };
    let outbound = async move {
        let mut buffer = BytesMut::new();
        loop {
            buffer.reserve(CHUNK);
            match read.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if to_client.send(buffer.split().freeze()).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}
