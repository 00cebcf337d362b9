//! Serving gRPC clients that send the socket path as `:authority`.
//!
//! grpc core (grpc-python, grpc-java's netty) sends the unix socket's path
//! (`/run/berth/berth.sock`, or percent-encoded) as the HTTP/2 `:authority`
//! of a `unix:` target. That is no URI authority, and h2's server resets
//! such a stream with PROTOCOL_ERROR before tonic sees it
//! (hyperium/h2#487): the client reports INTERNAL. The authority means
//! nothing on a unix socket, so [`LenientAuthority`] sits between the
//! socket and the HTTP/2 server and, in each request's header block,
//! replaces an authority that is not a valid one with `localhost` (what
//! grpc-go and kubelet send).
//!
//! Only the client-to-server direction is rewritten. Each header block is
//! decoded with the client's HPACK state and encoded again with this
//! connection's own encoder, so both compression contexts stay in step;
//! all other frames pass through unchanged. Anything that is not HTTP/2 as
//! expected (no preface, a frame larger than the default maximum, an
//! interleaved header block) turns the rewriting off for the rest of the
//! connection and leaves the verdict to h2; a header block that does not
//! decode ends the connection, as HTTP/2's COMPRESSION_ERROR does.

use loona_hpack::{Decoder, Encoder};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The frame size limit h2 enforces unless configured otherwise (berthd
/// does not configure it); also the size of the frames written here.
const MAX_FRAME_SIZE: usize = 16_384;
/// The largest header block rewritten; a larger one passes through.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The authority given to requests whose own is not one.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// The HPACK table size h2 advertises (the protocol's default), which
/// bounds the client's table and is the size of this side's encoder's.
const HEADER_TABLE_SIZE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the connection preface.
    Preface,
    /// Reading frames and rewriting header blocks.
    Frames,
    /// Passing everything through.
    Passthrough,
}

/// A header block being collected across HEADERS and CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The 5 priority bytes of the HEADERS frame, if it had them.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, for when rewriting gives up.
    raw: Vec<u8>,
}

/// A server-side connection whose client's invalid `:authority` values
/// are replaced; see the module doc.
pub struct LenientAuthority<S> {
    inner: S,
    mode: Mode,
    /// Received, not yet processed.
    input: Vec<u8>,
    /// Processed, not yet read by the server.
    output: Vec<u8>,
    pending: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    eof: bool,
}

impl<S> std::fmt::Debug for LenientAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LenientAuthority")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S> LenientAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            mode: Mode::Preface,
            input: Vec::new(),
            output: Vec::new(),
            pending: None,
            decoder: {
                let mut decoder = Decoder::new();
                decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
                decoder
            },
            encoder: {
                let mut encoder = Encoder::new();
                encoder.set_max_table_size(HEADER_TABLE_SIZE);
                encoder
            },
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    if let Some(pending) = self.pending.take() {
                        self.output.extend_from_slice(&pending.raw);
                    }
                    self.output.append(&mut self.input);
                    return Ok(());
                }
                Mode::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        self.output.extend(self.input.drain(..n));
                        self.mode = Mode::Frames;
                    } else {
                        return Ok(());
                    }
                }
                Mode::Frames => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let length = usize::from(self.input[0]) << 16
                        | usize::from(self.input[1]) << 8
                        | usize::from(self.input[2]);
                    if length > MAX_FRAME_SIZE {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER_LEN + length {
                        return Ok(());
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + length).collect();
                    self.frame(frame)?;
                }
            }
        }
    }

    /// Handles one complete frame.
    fn frame(&mut self, frame: Vec<u8>) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match (kind, self.pending.as_mut()) {
            (TYPE_HEADERS, None) => {
                let Some((priority, fragment)) = headers_payload(flags, payload) else {
                    return self.give_up(frame);
                };
                let block = PendingBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame.clone(),
                };
                self.pending = Some(block);
            }
            (TYPE_CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
            }
            (_, None) => {
                self.output.extend_from_slice(&frame);
                return Ok(());
            }
            // A frame inside a header block: h2 answers that.
            (_, Some(_)) => return self.give_up(frame),
        }
        if flags & FLAG_END_HEADERS != 0 {
            let block = self.pending.take().expect("a block is pending");
            self.rewrite(block)?;
        } else if self
            .pending
            .as_ref()
            .is_some_and(|b| b.fragment.len() > MAX_HEADER_BLOCK)
        {
            self.mode = Mode::Passthrough;
        }
        Ok(())
    }

    /// Stops rewriting; `frame` and everything after it pass unchanged.
    fn give_up(&mut self, frame: Vec<u8>) -> io::Result<()> {
        if let Some(pending) = self.pending.take() {
            self.output.extend_from_slice(&pending.raw);
        }
        self.output.extend_from_slice(&frame);
        self.mode = Mode::Passthrough;
        Ok(())
    }

    /// Decodes a complete header block and writes it again, re-encoded.
    fn rewrite(&mut self, block: PendingBlock) -> io::Result<()> {
        let mut headers = self.decoder.decode(&block.fragment).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("HTTP/2 header block does not decode: {e:?}"),
            )
        })?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(&value[..]).is_err()
            {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(value),
                    "replacing a request's invalid :authority"
                );
                *value = REPLACEMENT_AUTHORITY.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = Vec::new();
        if let Some(priority) = block.priority {
            first.extend_from_slice(&priority);
        }
        let room = MAX_FRAME_SIZE - first.len();
        let (head, rest) = encoded.split_at(encoded.len().min(room));
        first.extend_from_slice(head);
        let mut chunks: Vec<&[u8]> = rest.chunks(MAX_FRAME_SIZE).collect();
        let last_is_first = chunks.is_empty();
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if last_is_first {
            flags |= FLAG_END_HEADERS;
        }
        write_frame(
            &mut self.output,
            TYPE_HEADERS,
            flags,
            block.stream_id,
            &first,
        );
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.drain(..).enumerate() {
            let flags = if i == last { FLAG_END_HEADERS } else { 0 };
            write_frame(
                &mut self.output,
                TYPE_CONTINUATION,
                flags,
                block.stream_id,
                chunk,
            );
        }
        Ok(())
    }
}

/// The priority bytes and the header block fragment of a HEADERS payload;
/// `None` when the padding or priority fields do not fit.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut payload = payload;
    let mut padding = 0;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        padding = usize::from(pad);
        payload = rest;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let bytes: [u8; 5] = payload.get(..5)?.try_into().ok()?;
        priority = Some(bytes);
        payload = &payload[5..];
    }
    let end = payload.len().checked_sub(padding)?;
    Some((priority, &payload[..end]))
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let length = u32::try_from(payload.len()).expect("frames are at most 16 KiB");
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A partial frame at the end: let h2 see it as it came.
                if let Some(pending) = this.pending.take() {
                    this.output.extend_from_slice(&pending.raw);
                }
                if this.input.is_empty() && this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.output.append(&mut this.input);
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    } else if this.mode == Mode::Passthrough && this.pending.is_none() {
                        this.output.extend_from_slice(read.filled());
                    } else {
                        this.input.extend_from_slice(read.filled());
                        this.process()?;
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for LenientAuthority<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client's bytes: preface, SETTINGS, one request whose header block
    /// is split over HEADERS (padded, with priority) and CONTINUATION.
    fn client_bytes(authority: &[u8]) -> Vec<u8> {
        let mut encoder = Encoder::new();
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ]);
        let mut out = PREFACE.to_vec();
        write_frame(&mut out, 0x4, 0, 0, &[]);
        let (a, b) = block.split_at(block.len() / 2);
        let mut first = vec![2u8]; // pad length
        first.extend_from_slice(&[0, 0, 0, 0, 16]);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0]);
        write_frame(
            &mut out,
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            1,
            &first,
        );
        write_frame(&mut out, TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b);
        write_frame(&mut out, 0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]);
        out
    }

    /// Reads frames after the preface: (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], id, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    async fn through(bytes: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Byte by byte: frames arrive cut anywhere.
            for b in bytes {
                client.write_all(&[b]).await.expect("write");
            }
        });
        let mut out = Vec::new();
        LenientAuthority::new(server)
            .read_to_end(&mut out)
            .await
            .expect("read");
        writer.await.expect("writer");
        out
    }

    #[tokio::test]
    async fn replaces_a_socket_path_and_keeps_everything_else() {
        for (authority, want) in [
            (&b"/run/berth/berth.sock"[..], &b"localhost"[..]),
            (b"%2Frun%2Fberth%2Fberth.sock", b"localhost"),
            (b"localhost", b"localhost"),
            (b"berth.invalid:80", b"berth.invalid:80"),
        ] {
            let out = through(client_bytes(authority)).await;
            let frames = frames(&out);
            assert_eq!(frames.len(), 3, "{frames:?}");
            assert_eq!(frames[0].0, 0x4, "settings unchanged");
            let (kind, flags, id, payload) = &frames[1];
            assert_eq!((*kind, *id), (TYPE_HEADERS, 1));
            assert_eq!(*flags, FLAG_PRIORITY | FLAG_END_HEADERS);
            assert_eq!(&payload[..5], &[0, 0, 0, 0, 16], "priority kept");
            let headers = Decoder::new().decode(&payload[5..]).expect("decodes");
            let got: Vec<_> = headers
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect();
            assert!(got.contains(&(&b":authority"[..], want)), "{got:?}");
            assert!(got.contains(&(&b":path"[..], &b"/runtime.v1.RuntimeService/Version"[..])));
            assert_eq!(got.len(), 5);
            assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, vec![0, 0, 0, 0, 0]));
        }
    }

    #[tokio::test]
    async fn what_is_not_http2_passes_unchanged() {
        let http1 = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n".to_vec();
        assert_eq!(through(http1.clone()).await, http1);
        let mut huge = PREFACE.to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1, 1, 2, 3]);
        assert_eq!(through(huge.clone()).await, huge);
    }

    #[tokio::test]
    async fn an_undecodable_block_ends_the_connection() {
        let mut bytes = PREFACE.to_vec();
        write_frame(&mut bytes, TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0xff]);
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &bytes)
            .await
            .expect("write");
        drop(client);
        let mut out = Vec::new();
        let err = LenientAuthority::new(server)
            .read_to_end(&mut out)
            .await
            .expect_err("a compression error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
