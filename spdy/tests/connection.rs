//! Connections over loopback TCP: this crate's client against its server,
//! and a raw peer writing frames by hand the way moby/spdystream does
//! (no flow control) or the way a hostile client would.

use berth_spdy::frame::{Frame, FrameDecoder, Limits, GOAWAY_PROTOCOL_ERROR};
use berth_spdy::headers::HeaderEncoder;
use berth_spdy::{Config, Connection, Error, Headers, RstStatus, Stream};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server and a client connection over loopback TCP.
async fn pair(server: Config, client: Config) -> (Connection, Connection) {
    let (server_io, client_io) = tcp_pair().await;
    (
        Connection::server(server_io, server),
        Connection::client(client_io, client),
    )
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (accepted.expect("accept").0, client.expect("connect"))
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut h = Headers::new();
    for (n, v) in pairs {
        h.insert(n, v).expect("valid header");
    }
    h
}

/// Deterministic bytes, different per stream.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn read_to_end(stream: &mut Stream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = stream.read_chunk().await.expect("read") {
        all.extend_from_slice(&chunk);
    }
    all
}

/// Opens a stream from the client and accepts and replies to it on the
/// server.
async fn open_accepted(
    server: &mut Connection,
    client: &Connection,
    name: &str,
) -> (Stream, Stream) {
    let mut ours = client
        .open(headers(&[("streamtype", name)]), false)
        .await
        .expect("open");
    let mut theirs = server.accept().await.expect("accepted");
    assert_eq!(theirs.headers().get("streamtype"), Some(name));
    assert_eq!(theirs.id(), ours.id());
    theirs
        .reply(headers(&[("streamtype", name)]), false)
        .await
        .expect("reply");
    let reply = ours.wait_reply().await.expect("reply arrives");
    assert_eq!(reply.get("streamtype"), Some(name));
    (theirs, ours)
}

#[tokio::test]
async fn several_streams_exchange_data_both_ways_at_once() {
    let (mut server, client) = pair(Config::default(), Config::default()).await;
    let mut pairs = Vec::new();
    for name in ["stdin", "stdout", "stderr", "error"] {
        pairs.push(open_accepted(&mut server, &client, name).await);
    }
    assert_eq!(
        pairs.iter().map(|(s, _)| s.id()).collect::<Vec<_>>(),
        [1, 3, 5, 7]
    );
    let mut tasks = Vec::new();
    for (seed, (theirs, mut ours)) in pairs.into_iter().enumerate() {
        let seed = seed as u8;
        let up = payload(seed, 1_000_000 + usize::from(seed) * 333);
        let down = payload(seed + 100, 700_000 + usize::from(seed) * 777);
        tasks.push(tokio::spawn(async move {
            let (want_up, want_down) = (up.clone(), down.clone());
            // Server: echo-free, reads everything while writing its own.
            let server_side = async move {
                let (mut rx, mut tx) = theirs.split();
                let write = async {
                    tx.write_all(&down).await.expect("server write");
                    tx.shutdown().await.expect("server fin");
                };
                let mut got = Vec::new();
                let read = rx.read_to_end(&mut got);
                let (_, n) = tokio::join!(write, read);
                n.expect("server read");
                got
            };
            let client_side = async move {
                let write = async {
                    ours.write_all(&up).await.expect("client write");
                };
                write.await;
                ours.close().await.expect("client fin");
                read_to_end(&mut ours).await
            };
            let (got_up, got_down) = tokio::join!(server_side, client_side);
            assert!(got_up == want_up, "stream {seed}: upload differs");
            assert!(got_down == want_down, "stream {seed}: download differs");
        }));
    }
    for task in tasks {
        task.await.expect("stream task");
    }
    assert_eq!(server.open_streams(), 0, "closed both ways: forgotten");
}

#[tokio::test]
async fn a_stream_nobody_reads_does_not_block_another() {
    let (mut server, client) = pair(Config::default(), Config::default()).await;
    let (mut stuck_server, mut stuck_client) = open_accepted(&mut server, &client, "a").await;
    let (mut live_server, mut live_client) = open_accepted(&mut server, &client, "b").await;
    // Both sides do flow control: the stuck stream's writers stop at the
    // window instead of filling the connection.
    let stuck_down = tokio::spawn(async move {
        let _ = stuck_server.write_all(&payload(1, 4 << 20)).await;
        stuck_server
    });
    let stuck_up = tokio::spawn(async move {
        let _ = stuck_client.write_all(&payload(2, 4 << 20)).await;
        stuck_client
    });
    let data = payload(3, 3 << 20);
    let expect = data.clone();
    let (_, got) = tokio::join!(
        async {
            live_client.write_all(&data).await.expect("write");
            live_client.close().await.expect("fin");
        },
        read_to_end(&mut live_server)
    );
    assert!(got == expect, "live upload differs");
    let back = payload(4, 3 << 20);
    let (_, got) = tokio::join!(
        async {
            live_server.write_all(&back).await.expect("write");
            live_server.close().await.expect("fin");
        },
        read_to_end(&mut live_client)
    );
    assert!(got == back, "live download differs");
    // The stuck writers are still waiting for a window.
    assert!(!stuck_down.is_finished() && !stuck_up.is_finished());
    stuck_down.abort();
    stuck_up.abort();
}

/// A raw peer: frames written and read by hand over TCP.
struct RawPeer {
    io: TcpStream,
    encoder: HeaderEncoder,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl RawPeer {
    async fn connect(config: Config) -> (Connection, RawPeer) {
        let (server_io, io) = tcp_pair().await;
        let peer = RawPeer {
            io,
            encoder: HeaderEncoder::new().expect("encoder"),
            decoder: FrameDecoder::new(Limits::default()),
            buf: BytesMut::new(),
        };
        (Connection::server(server_io, config), peer)
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        frame.encode(&mut self.encoder, &mut out).expect("encode");
        self.io.write_all(&out).await.expect("raw write");
    }

    /// The next frame, `None` at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("server frames decode")
            {
                return Some(frame);
            }
            if self.io.read_buf(&mut self.buf).await.expect("raw read") == 0 {
                return None;
            }
        }
    }

    /// Skips frames until one matches.
    async fn expect(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            match self.recv().await {
                Some(frame) if want(&frame) => return frame,
                Some(other) => eprintln!("skipped {other:?}"),
                None => panic!("EOF while waiting for {what}"),
            }
        }
    }

    async fn syn(&mut self, stream_id: u32, name: &str) {
        self.send(Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: headers(&[("streamtype", name)]),
        })
        .await;
    }
}

#[tokio::test]
async fn a_peer_without_flow_control_is_paused_and_loses_nothing() {
    let config = Config {
        stream_buffer: 64 * 1024,
        ..Config::default()
    };
    let (mut server, mut peer) = RawPeer::connect(config).await;
    peer.syn(1, "a").await;
    peer.syn(3, "b").await;
    let mut a = server.accept().await.expect("a");
    let mut b = server.accept().await.expect("b");
    // Like moby/spdystream: no SETTINGS, no WINDOW_UPDATE, 16 MiB of DATA
    // in frames of up to 1 MiB, far past the 64 KiB buffer.
    let big = payload(9, 16 << 20);
    let writer = {
        let big = big.clone();
        tokio::spawn(async move {
            for chunk in big.chunks(1 << 20) {
                peer.send(Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await;
            }
            peer.send(Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            })
            .await;
            peer.send(Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"after"),
            })
            .await;
            peer
        })
    };
    // The server's reader waits for `a` to be drained (the socket buffers
    // fill and the peer blocks), then delivers everything in order.
    let got = read_to_end(&mut a).await;
    assert!(got == big, "stream a differs");
    assert_eq!(read_to_end(&mut b).await, b"after");
    let mut peer = writer.await.expect("writer");
    // Replies were never sent: writing is refused, as Go would drop it.
    assert!(matches!(
        b.write_all(b"x").await,
        Err(Error::NotReplied { id: 3 })
    ));
    drop((a, b));
    // Both dropped before replying and closing: reset (CANCEL). Before
    // that, the windows came back as the server read: stream 1's, and the
    // session's (stream 0) beyond the first raise.
    let (mut stream_updates, mut session_updates, mut resets) = (0, 0, Vec::new());
    while resets.len() < 2 {
        match peer.recv().await.expect("frames until the resets") {
            Frame::WindowUpdate { stream_id: 1, .. } => stream_updates += 1,
            Frame::WindowUpdate { stream_id: 0, .. } => session_updates += 1,
            Frame::RstStream { stream_id, status } => resets.push((stream_id, status)),
            _ => {}
        }
    }
    assert_eq!(resets, [(1, RstStatus::CANCEL), (3, RstStatus::CANCEL)]);
    assert!(
        stream_updates > 0 && session_updates > 1,
        "{stream_updates} {session_updates}"
    );
}

#[tokio::test]
async fn pings_are_answered_and_settings_announce_the_window() {
    let (_server, mut peer) = RawPeer::connect(Config::default()).await;
    let first = peer.recv().await.expect("settings");
    let Frame::Settings { entries, .. } = first else {
        panic!("first frame {first:?}");
    };
    assert_eq!(
        entries[0].id,
        berth_spdy::frame::SETTINGS_INITIAL_WINDOW_SIZE
    );
    assert_eq!(entries[0].value, Config::default().stream_buffer);
    // SPDY/3.1: the session window, raised from 64 KiB to the connection's
    // buffer.
    let second = peer.recv().await.expect("session window");
    assert_eq!(
        second,
        Frame::WindowUpdate {
            stream_id: 0,
            delta: (Config::default().connection_buffer - 65536) as u32,
        }
    );
    for id in [1, 3, 5] {
        peer.send(Frame::Ping { id }).await;
        peer.expect("ping echo", |f| *f == Frame::Ping { id }).await;
    }
}

#[tokio::test]
async fn resets_reach_the_other_side() {
    let (mut server, client) = pair(Config::default(), Config::default()).await;
    let (mut theirs, mut ours) = open_accepted(&mut server, &client, "data").await;
    ours.write_all(b"before").await.expect("write");
    ours.reset(RstStatus::CANCEL).await.expect("reset");
    assert_eq!(
        theirs.read_chunk().await.expect("data before the reset"),
        Some(Bytes::from_static(b"before"))
    );
    assert!(matches!(
        theirs.read_chunk().await,
        Err(Error::StreamReset {
            status: RstStatus::CANCEL,
            ..
        })
    ));
    assert!(matches!(
        theirs.write_all(b"x").await,
        Err(Error::StreamReset { .. })
    ));
    assert!(matches!(
        ours.write_all(b"x").await,
        Err(Error::StreamReset { .. })
    ));

    // The server dropping an unfinished stream resets it.
    let (theirs, mut ours) = open_accepted(&mut server, &client, "other").await;
    drop(theirs);
    assert!(matches!(
        ours.read_chunk().await,
        Err(Error::StreamReset {
            status: RstStatus::CANCEL,
            ..
        })
    ));
}

#[tokio::test]
async fn goaway_stops_new_streams_and_keeps_open_ones() {
    let (mut server, client) = pair(Config::default(), Config::default()).await;
    let (mut theirs, mut ours) = open_accepted(&mut server, &client, "data").await;
    server.close().await.expect("goaway");
    // Once the GOAWAY is in, the client opens nothing more.
    theirs.write_all(b"still here").await.expect("write");
    theirs.close().await.expect("fin");
    assert_eq!(read_to_end(&mut ours).await, b"still here");
    assert!(matches!(
        client.open(Headers::new(), false).await,
        Err(Error::GoingAway)
    ));
    // Streams already open carry on in the other direction too.
    ours.write_all(b"up").await.expect("write");
    ours.close().await.expect("fin");
    assert_eq!(read_to_end(&mut theirs).await, b"up");

    // A raw peer ignoring the GOAWAY is refused.
    let (server, mut peer) = RawPeer::connect(Config::default()).await;
    server.close().await.expect("goaway");
    peer.expect("goaway", |f| matches!(f, Frame::GoAway { .. }))
        .await;
    peer.syn(1, "late").await;
    peer.expect("refusal", |f| {
        *f == Frame::RstStream {
            stream_id: 1,
            status: RstStatus::REFUSED_STREAM,
        }
    })
    .await;
}

#[tokio::test]
async fn streams_beyond_the_cap_are_refused() {
    let config = Config {
        max_streams: 3,
        ..Config::default()
    };
    let (mut server, mut peer) = RawPeer::connect(config).await;
    for id in (1..=9).step_by(2) {
        peer.syn(id, "s").await;
    }
    for id in [7, 9] {
        peer.expect("refusal", |f| {
            *f == Frame::RstStream {
                stream_id: id,
                status: RstStatus::REFUSED_STREAM,
            }
        })
        .await;
    }
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(server.accept().await.expect("accepted").id());
    }
    assert_eq!(accepted, [1, 3, 5]);
    // A stream ID that goes backwards is a protocol error for that stream.
    peer.syn(3, "again").await;
    peer.expect("protocol error", |f| {
        *f == Frame::RstStream {
            stream_id: 3,
            status: RstStatus::PROTOCOL_ERROR,
        }
    })
    .await;
}

#[tokio::test]
async fn garbage_ends_the_connection_with_goaway() {
    for garbage in [
        // Not SPDY at all (an HTTP request on the upgraded connection).
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        // A SYN_STREAM announcing 16 MiB: refused from its head alone.
        &[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff][..],
        // A SYN_STREAM whose header block is not zlib.
        &[
            0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3,
            4,
        ][..],
    ] {
        let (mut server, mut peer) = RawPeer::connect(Config::default()).await;
        peer.io.write_all(garbage).await.expect("write garbage");
        peer.expect("goaway", |f| {
            matches!(
                f,
                Frame::GoAway {
                    status: GOAWAY_PROTOCOL_ERROR,
                    ..
                }
            )
        })
        .await;
        assert!(peer.recv().await.is_none(), "then EOF");
        assert!(server.accept().await.is_none());
    }
}

#[tokio::test]
async fn a_truncated_frame_ends_the_connection() {
    let (mut server, mut peer) = RawPeer::connect(Config::default()).await;
    peer.syn(1, "a").await;
    let mut a = server.accept().await.expect("a");
    // Half a DATA frame, then EOF.
    peer.io
        .write_all(&[0, 0, 0, 1, 0, 0, 0, 10, b'h', b'a'])
        .await
        .expect("write");
    peer.io.shutdown().await.expect("shutdown");
    assert_eq!(
        a.read_chunk().await.expect("the part that came"),
        Some(Bytes::from_static(b"ha"))
    );
    assert!(matches!(a.read_chunk().await, Err(Error::ConnectionClosed)));
    assert!(server.accept().await.is_none());
}

#[tokio::test]
async fn dropping_every_handle_closes_the_socket() {
    let (server, mut peer) = RawPeer::connect(Config::default()).await;
    peer.syn(1, "a").await;
    let mut server = server;
    let mut a = server.accept().await.expect("a");
    a.reply(Headers::new(), false).await.expect("reply");
    a.write_all(b"bye").await.expect("write");
    a.close().await.expect("fin");
    drop(server);
    drop(a);
    peer.expect(
        "data",
        |f| matches!(f, Frame::Data { stream_id: 1, data, .. } if data.as_ref() == b"bye"),
    )
    .await;
    // The peer never finished stream 1: dropping it resets it; then the
    // socket closes.
    peer.expect("reset", |f| {
        matches!(f, Frame::RstStream { stream_id: 1, .. })
    })
    .await;
    assert!(peer.recv().await.is_none(), "the socket closes");
}

#[tokio::test]
async fn the_connection_wide_buffer_is_released_by_reads_and_drops() {
    let config = Config {
        stream_buffer: 1 << 20,
        connection_buffer: 64 * 1024,
        ..Config::default()
    };
    let (mut server, mut peer) = RawPeer::connect(config).await;
    for id in [1, 3, 5, 7, 9] {
        peer.syn(id, "s").await;
    }
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(server.accept().await.expect("accepted"));
    }
    let dropped = streams.remove(0);
    let sends: Vec<(u32, Vec<u8>)> = [1u32, 3, 5, 7, 9]
        .iter()
        .map(|&id| (id, payload(id as u8, 1 << 20)))
        .collect();
    let writer = {
        let sends = sends.clone();
        tokio::spawn(async move {
            // Stream 1 first: 1 MiB, far past the 64 KiB the whole
            // connection may hold, then the others interleaved.
            for (id, data) in &sends[..1] {
                peer.send(Frame::Data {
                    stream_id: *id,
                    fin: true,
                    data: Bytes::copy_from_slice(data),
                })
                .await;
            }
            for piece in 0..16 {
                for (id, data) in &sends[1..] {
                    let chunk = &data[piece * 65536..(piece + 1) * 65536];
                    peer.send(Frame::Data {
                        stream_id: *id,
                        fin: piece == 15,
                        data: Bytes::copy_from_slice(chunk),
                    })
                    .await;
                }
            }
            peer
        })
    };
    // Dropping the stream nobody reads frees the connection for the rest,
    // read all at once.
    drop(dropped);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { (s.id(), read_to_end(&mut s).await) }))
        .collect();
    for reader in readers {
        let (id, got) = reader.await.expect("reader");
        let want = &sends.iter().find(|(i, _)| *i == id).expect("sent").1;
        assert!(got == *want, "stream {id} differs");
    }
    writer.await.expect("writer");
}

#[tokio::test]
async fn abort_frees_a_connection_whose_peer_stopped_reading() {
    let (mut server, mut peer) = RawPeer::connect(Config::default()).await;
    peer.syn(1, "stdout").await;
    let mut stream = server.accept().await.expect("accepted");
    stream.reply(Headers::new(), false).await.expect("reply");
    // The raw peer does no flow control and reads nothing: the writer
    // blocks on the socket, then the stream on the writer's channel.
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 1 << 20];
        loop {
            if let Err(e) = stream.write_all(&chunk).await {
                return e;
            }
        }
    });
    // Wait until the writer is stuck: the peer's socket stops accepting.
    let mut seen = 0usize;
    while seen < 1 << 20 {
        let mut buf = vec![0u8; 64 * 1024];
        seen += peer.io.read(&mut buf).await.expect("read");
    }
    server.abort();
    assert!(matches!(
        writer.await.expect("writer"),
        Error::ConnectionClosed | Error::StreamReset { .. }
    ));
    // The socket is closed: the peer reads what was in flight, then EOF.
    let mut rest = Vec::new();
    peer.io.read_to_end(&mut rest).await.expect("read to EOF");
    assert!(server.accept().await.is_none());
}

#[tokio::test]
async fn the_last_handle_dropped_cuts_a_peer_that_stopped_reading() {
    let config = Config {
        linger: std::time::Duration::from_millis(50),
        ..Config::default()
    };
    let (mut server, mut peer) = RawPeer::connect(config).await;
    peer.syn(1, "stdout").await;
    let mut stream = server.accept().await.expect("accepted");
    stream.reply(Headers::new(), false).await.expect("reply");
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 1 << 20];
        while stream.write_all(&chunk).await.is_ok() {}
    });
    let mut seen = 0usize;
    while seen < 1 << 20 {
        let mut buf = vec![0u8; 64 * 1024];
        seen += peer.io.read(&mut buf).await.expect("read");
    }
    // Every handle goes while the writer is stuck on the peer's socket.
    writer.abort();
    let _ = writer.await;
    drop(server);
    let mut rest = Vec::new();
    peer.io.read_to_end(&mut rest).await.expect("read to EOF");
}
