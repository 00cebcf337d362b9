//! The SPDY/3.1 transport (the `berth-spdy` crate's connection), what
//! kubelet, `kubectl` through the API server, crictl's default transport
//! and critest speak.
//!
//! The client's `POST` carries `Upgrade: SPDY/3.1` and, in
//! `X-Stream-Protocol-Version`, the subprotocols it speaks; the first one
//! berth also speaks wins and is echoed in the `101` answer.
//!
//! Remote commands (`v4.channel.k8s.io`, and the older `v3`, `v2` and
//! `channel.k8s.io`): the client opens one stream per channel, named by its
//! `streamType` header — `error` first, then `stdin`, `stdout`, `stderr`
//! (not with a terminal) and, from v3 with a terminal, `resize` (JSON
//! `{"Width":W,"Height":H}` objects, one per line). The command starts once
//! the streams its request implies arrived (at most [`STREAM_WAIT`]). The
//! client's FIN on stdin is stdin's EOF (berthd's side of stdin stays open
//! until the command ended: client-go stops sending input once it closes);
//! berthd's FIN on stdout and stderr ends them; the error stream carries the outcome ([`super::status`]),
//! then berthd sends GOAWAY and waits (at most [`LINGER`]) for the client
//! to hang up, so nothing queued is cut off.
//!
//! Port-forward (`portforward.k8s.io`): each forwarded connection is a
//! pair of streams, `error` and `data`, with the same `requestID` and the
//! `port`; once both came, berthd connects to the port in the pod and
//! copies both ways, errors go as text on the error stream. A session
//! holds as many pairs as the client opens (up to the connection's stream
//! cap).

use super::{port_forward, status, CommandIo, Outcome, TerminalSize, CHANNEL_CHUNKS};
use crate::runtime::Runtime;
use berth_spdy::{Config, Connection, Headers, RecvStream, Stream};
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The remote-command protocols, newest first.
pub const COMMAND_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The header that offers and answers the subprotocol.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// How long the client may take to open a command's streams.
pub const STREAM_WAIT: Duration = Duration::from_secs(30);
/// How long berthd waits, after the last frame, for the client to hang up.
pub const LINGER: Duration = Duration::from_secs(5);

/// Whether `request` asks for a SPDY/3.1 upgrade.
pub fn is_upgrade<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(berth_spdy::UPGRADE))
}

/// The subprotocols the client offers, in its order.
pub fn offered<B>(request: &http::Request<B>) -> Vec<String> {
    super::header_list(request, PROTOCOL_HEADER)
}

/// The `101 Switching Protocols` answer.
pub fn accept_response(protocol: &str, offered: &[String]) -> http::Response<()> {
    let mut response = http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, berth_spdy::UPGRADE);
    if !offered.is_empty() {
        response = response.header(PROTOCOL_HEADER, protocol);
    }
    response.body(()).expect("static response parts are valid")
}

fn connection<T>(io: T) -> Connection
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    Connection::server(io, Config::default())
}

/// Waits for the client to close the connection, at most [`LINGER`];
/// streams it opens meanwhile are refused.
async fn linger(conn: &mut Connection) {
    let _ = conn.close().await;
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(mut stream) = conn.accept().await {
            let _ = stream.reset(berth_spdy::RstStatus::REFUSED_STREAM).await;
        }
    })
    .await;
}

/// The streams of one remote command, as they arrive.
#[derive(Debug, Default)]
struct CommandStreams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl CommandStreams {
    /// Files a stream the client opened (after replying); one of a type it
    /// already sent, or of an unknown type, is reset.
    async fn file(&mut self, mut stream: Stream) {
        let kind = stream
            .headers()
            .get("streamtype")
            .unwrap_or_default()
            .to_owned();
        let slot = match kind.as_str() {
            "error" => &mut self.error,
            "stdin" => &mut self.stdin,
            "stdout" => &mut self.stdout,
            "stderr" => &mut self.stderr,
            "resize" => &mut self.resize,
            _ => {
                let _ = stream.reset(berth_spdy::RstStatus::PROTOCOL_ERROR).await;
                return;
            }
        };
        // Every reply leaves berthd's side open, stdin's too: client-go
        // closes its stdin as soon as berthd's side of it ends, input it
        // has not sent yet included.
        if slot.is_some() || stream.reply(Headers::new(), false).await.is_err() {
            let _ = stream.reset(berth_spdy::RstStatus::PROTOCOL_ERROR).await;
            return;
        }
        *slot = Some(stream);
    }

    fn complete(&self, streams: super::websocket::Streams, resize: bool) -> bool {
        self.error.is_some()
            && (!streams.stdin || self.stdin.is_some())
            && (!streams.stdout || self.stdout.is_some())
            && (!streams.stderr || streams.tty || self.stderr.is_some())
            && (!resize || self.resize.is_some())
    }
}

/// Serves one remote command over an upgraded connection with `protocol`;
/// `run` gets the client's streams and its outcome goes on the error
/// stream. A client that leaves first drops `run`'s future.
pub async fn serve_command<T, F, Fut>(
    io: T,
    protocol: &str,
    streams: super::websocket::Streams,
    run: F,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
    F: FnOnce(CommandIo) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut conn = connection(io);
    let wants_resize =
        streams.tty && protocol != "v2.channel.k8s.io" && protocol != "channel.k8s.io";
    let mut got = CommandStreams::default();
    let arrived = tokio::time::timeout(STREAM_WAIT, async {
        while !got.complete(streams, wants_resize) {
            match conn.accept().await {
                Some(stream) => got.file(stream).await,
                None => return false,
            }
        }
        true
    })
    .await;
    if arrived != Ok(true) {
        tracing::debug!(protocol, "a remote command's streams did not all arrive");
        return;
    }
    let (stdin_tx, stdin_rx) = match got.stdin.is_some() {
        true => {
            let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let output = |stream: &Option<Stream>| match stream {
        Some(_) => {
            let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (stdout_tx, stdout_rx) = output(&got.stdout);
    let (stderr_tx, stderr_rx) = output(&got.stderr);
    let (resize_tx, resize_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let command_io = CommandIo {
        stdin: stdin_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize_rx,
    };
    let CommandStreams {
        mut error,
        stdin,
        mut stdout,
        mut stderr,
        resize,
    } = got;
    let (stdin_recv, mut stdin_send) = stdin.map(Stream::split).unzip();
    let (resize_recv, mut resize_send) = resize.map(Stream::split).unzip();
    let outcome = {
        let inputs = async {
            tokio::join!(
                pump_in(stdin_recv, stdin_tx),
                read_sizes(resize_recv, resize_tx)
            );
            std::future::pending::<()>().await
        };
        let work = async {
            let (outcome, (), ()) = tokio::join!(
                run(command_io),
                pump_out(stdout_rx, stdout.as_mut()),
                pump_out(stderr_rx, stderr.as_mut()),
            );
            outcome
        };
        let gone = async {
            while let Some(mut late) = conn.accept().await {
                let _ = late.reset(berth_spdy::RstStatus::REFUSED_STREAM).await;
            }
        };
        tokio::select! {
            outcome = work => outcome,
            () = inputs => return,
            () = gone => return,
        }
    };
    let message = if protocol == COMMAND_PROTOCOLS[0] {
        Some(status::status_json(&outcome))
    } else {
        status::status_text(&outcome)
    };
    for input in [stdin_send.as_mut(), resize_send.as_mut()]
        .into_iter()
        .flatten()
    {
        let _ = input.close().await;
    }
    if let Some(error) = error.as_mut() {
        if let Some(message) = message {
            let _ = error.write_all(&message).await;
        }
        let _ = error.close().await;
    }
    linger(&mut conn).await;
}

/// Copies a client stream into a channel until the client's FIN.
async fn pump_in(stream: Option<RecvStream>, tx: Option<mpsc::Sender<Bytes>>) {
    let (Some(mut stream), Some(tx)) = (stream, tx) else {
        return;
    };
    while let Ok(Some(chunk)) = stream.read_chunk().await {
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

/// Copies a channel to a stream, then finishes the stream.
async fn pump_out(rx: Option<mpsc::Receiver<Bytes>>, stream: Option<&mut Stream>) {
    let (Some(mut rx), Some(stream)) = (rx, stream) else {
        return;
    };
    while let Some(chunk) = rx.recv().await {
        if stream.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = stream.close().await;
}

/// Reads terminal sizes, one JSON object per line.
async fn read_sizes(stream: Option<RecvStream>, tx: mpsc::Sender<TerminalSize>) {
    let Some(mut stream) = stream else { return };
    let mut pending = Vec::new();
    while let Ok(Some(chunk)) = stream.read_chunk().await {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(size) = serde_json::from_slice::<TerminalSize>(&line) {
                let _ = tx.try_send(size);
            }
        }
        if pending.len() > 4096 {
            return;
        }
    }
}

/// One forwarded connection's streams, as they arrive.
#[derive(Debug, Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serves a port-forward session over an upgraded connection: every
/// stream pair the client opens is one connection to the pod.
pub async fn serve_port_forward<T>(io: T, state: Arc<Runtime>, sandbox_id: String)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = connection(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    while let Some(mut stream) = conn.accept().await {
        let headers = stream.headers();
        let kind = headers.get("streamtype").unwrap_or_default().to_owned();
        // Old clients send no requestID: a pair is then an error stream and
        // the data stream opened right after it.
        let request_id = match headers.get("requestid") {
            Some(id) => id.to_owned(),
            None if kind == "data" => stream.id().saturating_sub(2).to_string(),
            None => stream.id().to_string(),
        };
        if !matches!(kind.as_str(), "error" | "data")
            || stream.reply(Headers::new(), false).await.is_err()
        {
            let _ = stream.reset(berth_spdy::RstStatus::PROTOCOL_ERROR).await;
            continue;
        }
        tracing::debug!(kind, request_id, "port-forward stream");
        let pair = pairs.entry(request_id.clone()).or_default();
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            let _ = stream.reset(berth_spdy::RstStatus::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        // A pair starts once both halves came; a half waits for its partner.
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pairs.remove(&request_id)
            {
                forwards.spawn(forward_pair(state.clone(), sandbox_id.clone(), error, data));
            }
        }
        while forwards.try_join_next().is_some() {}
    }
    // The client hung up: every connection of the session ends with it
    // (the JoinSet aborts them as it drops).
}

/// Connects one stream pair to its port in the pod.
async fn forward_pair(state: Arc<Runtime>, sandbox_id: String, mut error: Stream, data: Stream) {
    let port = data
        .headers()
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let Some(port) = port else {
        let _ = error
            .write_all(b"the data stream names no valid port")
            .await;
        let _ = error.close().await;
        return;
    };
    let tcp = match port_forward::dial(&state, &sandbox_id, port).await {
        Ok(tcp) => tcp,
        Err(message) => {
            tracing::debug!(port, sandbox_id, "port-forward: {message}");
            let _ = error.write_all(message.as_bytes()).await;
            let _ = error.close().await;
            return;
        }
    };
    let (mut from_client, mut to_client) = data.split();
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let inbound = async {
        while let Ok(Some(chunk)) = from_client.read_chunk().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let outbound = async {
        let mut buffer = vec![0u8; super::CHUNK];
        loop {
            match from_pod.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.close().await;
    };
    tokio::pin!(inbound, outbound);
    tokio::select! {
        () = &mut inbound => outbound.await,
        () = &mut outbound => {
            let _ = tokio::time::timeout(LINGER, inbound).await;
        }
    }
    let _ = error.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_answers_echo_the_protocol() {
        let offered = vec!["v4.channel.k8s.io".to_owned()];
        let response = accept_response("v4.channel.k8s.io", &offered);
        assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[PROTOCOL_HEADER], "v4.channel.k8s.io");
        assert_eq!(response.headers()[http::header::UPGRADE], "SPDY/3.1");
        assert!(accept_response("channel.k8s.io", &[])
            .headers()
            .get(PROTOCOL_HEADER)
            .is_none());
    }
}
