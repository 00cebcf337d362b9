//! The WebSocket transport (RFC 6455, through tokio-tungstenite).
//!
//! Remote commands (exec, attach) speak Kubernetes' channel protocols:
//! every binary message starts with its channel byte — 0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize (JSON `{"Width":W,"Height":H}`) — followed
//! by the data. `v5.channel.k8s.io` adds message `[255, channel]`, which
//! closes that channel (stdin's EOF); from `v4.channel.k8s.io` on the error
//! channel carries a `metav1.Status` as JSON ([`super::status`]), the older
//! `v3`/`v2`/`channel.k8s.io` carry an error's text. The protocol is the
//! first one the client offers that berth speaks (kubelet's rule).
//!
//! Port-forward speaks `v4.channel.k8s.io` port-forward framing: the
//! ports come as `?port=` query parameters, port `i` gets data channel
//! `2i` and error channel `2i+1`, and each channel's first server message
//! is the port, two bytes little-endian; one connection per port.
//!
//! Messages are capped at [`MAX_MESSAGE`]; the reader stops reading while
//! the process's stdin is full, so the client's TCP window, not berthd's
//! memory, holds what it sends ahead.

use super::{status, CommandIo, Outcome, TerminalSize, CHANNEL_CHUNKS};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// The remote-command protocols, newest first.
pub const COMMAND_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Whether `request` asks for a WebSocket upgrade.
pub fn is_upgrade<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The protocols the client offers, in its order.
pub fn offered<B>(request: &http::Request<B>) -> Vec<String> {
    super::header_list(request, http::header::SEC_WEBSOCKET_PROTOCOL.as_str())
}

/// The `101 Switching Protocols` answer to `request`, or why it is no
/// WebSocket handshake.
pub fn accept_response<B>(
    request: &http::Request<B>,
    protocol: &str,
    offered: &[String],
) -> Result<http::Response<()>, &'static str> {
    let key = request
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .ok_or("missing Sec-WebSocket-Key")?;
    let mut response = http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(
            http::header::SEC_WEBSOCKET_ACCEPT,
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        );
    if !offered.is_empty() {
        response = response.header(http::header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response.body(()).map_err(|_| "bad response header")
}

/// The WebSocket over an upgraded connection.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> WebSocketStream<S> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// Which streams a remote command has.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Serves one remote command over `ws` with `protocol`: `run` gets the
/// client's streams; its outcome goes on the error channel. A client that
/// leaves first drops `run`'s future.
pub async fn serve_command<S, F, Fut>(
    ws: WebSocketStream<S>,
    protocol: &str,
    streams: Streams,
    run: F,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(CommandIo) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let (mut sink, source) = ws.split();
    let channel = |wanted: bool| {
        if wanted {
            let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        }
    };
    let (stdin_tx, stdin_rx) = channel(streams.stdin);
    let (stdout_tx, stdout_rx) = channel(streams.stdout);
    let (stderr_tx, stderr_rx) = channel(streams.stderr && !streams.tty);
    let (resize_tx, resize_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let io = CommandIo {
        stdin: stdin_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize_rx,
    };
    let closes = protocol == COMMAND_PROTOCOLS[0];
    let reader = read_command(source, stdin_tx, resize_tx, closes);
    tokio::pin!(reader);
    let outcome = {
        let work = async {
            let (outcome, written) =
                tokio::join!(run(io), write_output(&mut sink, stdout_rx, stderr_rx));
            written.map(|()| outcome)
        };
        tokio::select! {
            done = work => done,
            () = &mut reader => return,
        }
    };
    let Ok(outcome) = outcome else { return };
    let message = if protocol.starts_with("v4.") || protocol.starts_with("v5.") {
        Some(status::status_json(&outcome))
    } else {
        status::status_text(&outcome)
    };
    if let Some(message) = message {
        if sink.send(frame(ERROR, &message)).await.is_err() {
            return;
        }
    }
    close(&mut sink).await;
}

/// Ends the session with a normal closure (1000), which clients read as
/// the streams' EOF; a close without a code (1005) is an error to them.
async fn close<S>(sink: &mut S)
where
    S: futures_util::Sink<Message> + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    let _ = sink.close().await;
}

/// Serves a `v4.channel.k8s.io` port-forward: one connection to each of
/// `ports` in the sandbox, until every one ended or the client left.
pub async fn serve_port_forward<S>(
    ws: WebSocketStream<S>,
    state: std::sync::Arc<crate::runtime::Runtime>,
    sandbox_id: String,
    ports: Vec<u16>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_stream::wrappers::ReceiverStream;
    use tokio_stream::StreamMap;
    let (mut sink, mut source) = ws.split();
    for (i, port) in ports.iter().enumerate() {
        let channel = (2 * i) as u8;
        for ch in [channel, channel + 1] {
            if sink.send(frame(ch, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
    }
    let mut to_pod = Vec::new();
    let mut from_pod = StreamMap::new();
    let mut forwards = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let (err_tx, err_rx) = mpsc::channel::<Bytes>(1);
        to_pod.push(in_tx);
        from_pod.insert((2 * i) as u8, ReceiverStream::new(out_rx));
        from_pod.insert((2 * i + 1) as u8, ReceiverStream::new(err_rx));
        let state = state.clone();
        let sandbox_id = sandbox_id.clone();
        let port = *port;
        forwards.push(async move {
            match super::port_forward::dial(&state, &sandbox_id, port).await {
                Ok(stream) => super::port_forward::forward(stream, in_rx, out_tx).await,
                Err(e) => {
                    let _ = err_tx.send(Bytes::from(e)).await;
                }
            }
        });
    }
    let work = async {
        let write = async {
            while let Some((channel, chunk)) = from_pod.next().await {
                sink.send(frame(channel, &chunk)).await?;
            }
            Ok::<_, tokio_tungstenite::tungstenite::Error>(())
        };
        let (_, written) = tokio::join!(futures_util::future::join_all(forwards), write);
        written
    };
    let read = async {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => return,
                _ => continue,
            };
            let Some(&channel) = data.first() else {
                continue;
            };
            if channel % 2 == 0 && data.len() > 1 {
                if let Some(tx) = to_pod.get(usize::from(channel / 2)) {
                    let _ = tx.send(data.slice(1..)).await;
                }
            }
        }
    };
    let written = tokio::select! {
        written = work => written,
        () = read => return,
    };
    if written.is_ok() {
        close(&mut sink).await;
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

/// Sends the command's output until both streams end.
async fn write_output<S>(
    sink: &mut S,
    mut stdout: Option<mpsc::Receiver<Bytes>>,
    mut stderr: Option<mpsc::Receiver<Bytes>>,
) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    loop {
        let (channel, chunk) = tokio::select! {
            Some(chunk) = recv(&mut stdout) => (STDOUT, chunk),
            Some(chunk) = recv(&mut stderr) => (STDERR, chunk),
            else => return Ok(()),
        };
        sink.send(frame(channel, &chunk)).await?;
    }
}

/// Reads the client's messages until it closes the connection.
async fn read_command<S>(
    mut source: S,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    resize: mpsc::Sender<TerminalSize>,
    closes: bool,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = source.next().await {
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => return,
            _ => continue,
        };
        let Some(&channel) = data.first() else {
            continue;
        };
        match channel {
            STDIN => {
                if let Some(tx) = &stdin {
                    if data.len() > 1 && tx.send(data.slice(1..)).await.is_err() {
                        stdin = None;
                    }
                }
            }
            RESIZE => {
                let sizes = serde_json::Deserializer::from_slice(&data[1..]).into_iter();
                for size in sizes {
                    match size {
                        Ok(size) => {
                            let _ = resize.try_send(size);
                        }
                        Err(_) => break,
                    }
                }
            }
            CLOSE if closes && data.get(1) == Some(&STDIN) => stdin = None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::negotiate;

    #[test]
    fn the_clients_first_supported_protocol_wins() {
        let offer = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(
                &offer(&["v5.channel.k8s.io", "v4.channel.k8s.io"]),
                &COMMAND_PROTOCOLS
            ),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            negotiate(
                &offer(&["base64.channel.k8s.io", "v4.channel.k8s.io"]),
                &COMMAND_PROTOCOLS
            ),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(negotiate(&offer(&["chat"]), &COMMAND_PROTOCOLS), None);
        assert_eq!(negotiate(&[], &COMMAND_PROTOCOLS), Some("channel.k8s.io"));
    }
}
