//! A SPDY/3.1 connection over any `AsyncRead + AsyncWrite`, with streams.
//!
//! Two tasks run each connection. The reader owns the read half and the
//! inbound header context: it routes DATA into per-stream buffers (in
//! pieces, never a whole frame at once), hands new streams to
//! [`Connection::accept`], answers PING and applies RST, SETTINGS and
//! WINDOW_UPDATE. The writer owns the write half and the outbound header
//! context: it writes what streams send through one bounded channel, in
//! order (a stream's SYN_REPLY before its DATA, its DATA before its RST or
//! the GOAWAY), and, ahead of it, a small control queue (PING replies,
//! WINDOW_UPDATE, refusals) that never blocks whoever fills it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::{CancellationToken, PollSender};

use crate::frame::{
    Frame, Head, Limits, RstStatus, Setting, GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, HEAD_LEN,
    SETTINGS_INITIAL_WINDOW_SIZE,
};
use crate::headers::{HeaderDecoder, HeaderEncoder, Headers};
use crate::{Error, Result};

/// SPDY/3's initial window, before any SETTINGS.
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Frames the writer's channel holds.
const CHANNEL_FRAMES: usize = 64;
/// Control frames the reader may queue before it waits for the writer.
const CTRL_FRAMES: usize = 256;
/// Bytes read from the socket at a time, and written per batch.
const IO_CHUNK: usize = 64 * 1024;
/// DATA pieces smaller than this are copied out of the read buffer rather
/// than sharing (and pinning) its allocation.
const COPY_BELOW: usize = 4 * 1024;
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Limits of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Streams open at once; the peer's SYN_STREAM beyond it gets
    /// REFUSED_STREAM. Port-forward opens two per forwarded connection.
    pub max_streams: usize,
    /// Unread bytes buffered per stream, also the receive window this side
    /// announces (SETTINGS_INITIAL_WINDOW_SIZE). At least 1 KiB.
    pub stream_buffer: u32,
    /// Unread bytes buffered across all streams: reading the connection
    /// pauses beyond it, whatever the peer's flow control (a peer filling
    /// a thousand windows at once).
    pub connection_buffer: usize,
    /// Largest DATA frame this side writes (Go's io.Copy writes 32 KiB).
    pub write_chunk: usize,
    /// Frame and header-block size limits on what is read.
    pub limits: Limits,
    /// How long the writer may go on flushing once every handle is
    /// dropped, before the connection is cut (a peer that no longer reads).
    pub linger: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_streams: 1024,
            stream_buffer: 256 * 1024,
            connection_buffer: 4 * 1024 * 1024,
            write_chunk: 32 * 1024,
            limits: Limits::default(),
            linger: std::time::Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

impl Role {
    /// Parity of the stream and ping IDs this side originates.
    fn own_parity(self) -> u32 {
        match self {
            Role::Server => 0,
            Role::Client => 1,
        }
    }
}

/// One direction of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Half {
    Open,
    Fin,
    Reset(RstStatus),
    /// The connection ended.
    Lost,
}

impl Half {
    fn is_open(self) -> bool {
        self == Half::Open
    }
}

#[derive(Debug)]
struct StreamState {
    recv: VecDeque<Bytes>,
    recv_len: usize,
    remote: Half,
    local: Half,
    /// Peer-initiated: this side sent SYN_REPLY. Own: the peer's arrived.
    replied: bool,
    reply_headers: Option<Headers>,
    /// Bytes read by the application and not yet returned by WINDOW_UPDATE.
    unacked: u32,
    send_window: i64,
    dropped: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    reply_waker: Option<Waker>,
    /// The reader task, waiting for room in `recv`.
    space_waker: Option<Waker>,
}

impl StreamState {
    fn new(send_window: i64) -> Self {
        Self {
            recv: VecDeque::new(),
            recv_len: 0,
            remote: Half::Open,
            local: Half::Open,
            replied: false,
            reply_headers: None,
            unacked: 0,
            send_window,
            dropped: false,
            read_waker: None,
            write_waker: None,
            reply_waker: None,
            space_waker: None,
        }
    }

    fn wake_all(&mut self) {
        for waker in [
            self.read_waker.take(),
            self.write_waker.take(),
            self.reply_waker.take(),
            self.space_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            waker.wake();
        }
    }

    fn finished(&self) -> bool {
        !self.local.is_open() && !self.remote.is_open()
    }
}

#[derive(Debug)]
struct StreamShared {
    id: u32,
    state: Mutex<StreamState>,
}

impl StreamShared {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().expect("stream lock is never poisoned")
    }
}

#[derive(Debug)]
struct ConnState {
    streams: HashMap<u32, Arc<StreamShared>>,
    /// Highest stream ID the peer opened.
    last_peer_id: u32,
    next_id: u32,
    /// The peer sent SETTINGS_INITIAL_WINDOW_SIZE or WINDOW_UPDATE: its
    /// windows bind what this side writes.
    peer_flow_control: bool,
    peer_initial_window: i64,
    sent_goaway: bool,
    peer_goaway: bool,
    /// The connection is over: nothing more is written.
    closed: bool,
    ctrl: VecDeque<Frame>,
    window_updates: BTreeMap<u32, u32>,
}

#[derive(Debug)]
struct Shared {
    role: Role,
    config: Config,
    state: Mutex<ConnState>,
    /// Wakes the writer for the control queue.
    ctrl_ready: Notify,
    /// Wakes the reader when the control queue has room.
    ctrl_space: Notify,
    /// Serialises ID allocation with sending SYN_STREAM: IDs must reach the
    /// wire in increasing order.
    open_lock: tokio::sync::Mutex<()>,
    /// Unread bytes in all streams' buffers.
    buffered: AtomicUsize,
    /// Bytes read or discarded, not yet returned to the session window.
    session_unacked: AtomicUsize,
    /// Stops both tasks at once ([`Connection::abort`], [`Config::linger`]).
    kill: CancellationToken,
    /// The reader, waiting for `buffered` to drop below the cap.
    space_waker: Mutex<Option<Waker>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state
            .lock()
            .expect("connection lock is never poisoned")
    }

    /// `n` buffered bytes were read or discarded.
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.buffered.fetch_sub(n, Ordering::AcqRel);
        self.credit(n);
        let waker = self
            .space_waker
            .lock()
            .expect("waker lock is never poisoned")
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// `n` bytes of DATA are off the peer's session window for good (read,
    /// or discarded): return them (SPDY/3.1's WINDOW_UPDATE on stream 0)
    /// once half the session window is due.
    fn credit(&self, n: usize) {
        let due = self.session_unacked.fetch_add(n, Ordering::AcqRel) + n;
        if due >= self.config.connection_buffer / 2 {
            let due = self.session_unacked.swap(0, Ordering::AcqRel);
            if due > 0 {
                self.queue_window_update(0, u32::try_from(due).unwrap_or(MAX_STREAM_ID));
            }
        }
    }

    /// Queues a control frame without waiting (bounded by the stream cap:
    /// used for one RST per dropped stream outside a runtime).
    fn push_ctrl(&self, frame: Frame) {
        let mut state = self.lock();
        if !state.closed {
            state.ctrl.push_back(frame);
            drop(state);
            self.ctrl_ready.notify_one();
        }
    }

    /// Queues a control frame from the reader, waiting while the queue is
    /// full (a peer flooding PINGs it does not read answers to).
    async fn queue_ctrl(&self, frame: Frame, stop: &CancellationToken) -> Result<()> {
        loop {
            let space = self.ctrl_space.notified();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Error::ConnectionClosed);
                }
                if state.ctrl.len() < CTRL_FRAMES {
                    state.ctrl.push_back(frame);
                    drop(state);
                    self.ctrl_ready.notify_one();
                    return Ok(());
                }
            }
            tokio::select! {
                _ = space => {}
                _ = stop.cancelled() => return Err(Error::ConnectionClosed),
            }
        }
    }

    fn queue_window_update(&self, id: u32, delta: u32) {
        let mut state = self.lock();
        if state.closed || (id != 0 && !state.streams.contains_key(&id)) {
            return;
        }
        let pending = state.window_updates.entry(id).or_insert(0);
        *pending = pending.saturating_add(delta).min(MAX_STREAM_ID);
        drop(state);
        self.ctrl_ready.notify_one();
    }

    /// Forgets a stream closed both ways.
    fn maybe_remove(&self, stream: &StreamShared) {
        let mut state = self.lock();
        if stream.lock().finished() {
            state.streams.remove(&stream.id);
            state.window_updates.remove(&stream.id);
        }
    }

    /// The connection is over: every stream's open halves are lost.
    fn close_all(&self, local_too: bool) {
        let mut state = self.lock();
        if local_too {
            state.closed = true;
            state.ctrl.clear();
            state.window_updates.clear();
        }
        let streams: Vec<_> = if local_too {
            state.streams.drain().map(|(_, s)| s).collect()
        } else {
            state.streams.values().cloned().collect()
        };
        drop(state);
        for stream in streams {
            let mut s = stream.lock();
            if s.remote.is_open() {
                s.remote = Half::Lost;
            }
            if local_too && s.local.is_open() {
                s.local = Half::Lost;
            }
            s.wake_all();
        }
        self.ctrl_space.notify_waiters();
    }
}

/// A SPDY connection: the streams the peer opens arrive through
/// [`accept`](Connection::accept); [`open`](Connection::open) starts one.
///
/// Must be created inside a tokio runtime: it spawns a reader task and a
/// writer task. Dropping it leaves open streams working.
///
/// Lifecycle: the writer ends, shutting the write half, once the
/// `Connection` and every [`Stream`] are dropped (after writing what they
/// queued), when writing fails, or after a protocol error in what the peer
/// sent (answered with GOAWAY PROTOCOL_ERROR); it then stops the reader.
/// The reader ends at the peer's EOF; streams the peer had not finished
/// then fail to read with [`Error::ConnectionClosed`]. Dropping a stream
/// that is not closed both ways resets it (RST_STREAM CANCEL, after the
/// DATA it queued). A peer that stops reading cannot hold the tasks:
/// [`Config::linger`] after the last handle is dropped, or at
/// [`abort`](Connection::abort), both stop wherever they are and the
/// socket is dropped.
///
/// Memory: at most [`Config::stream_buffer`] unread bytes per stream and
/// [`Config::connection_buffer`] in all (see the crate doc for how that
/// meets flow control), [`Config::max_streams`] open streams (more are
/// refused with REFUSED_STREAM), 64 queued frames of at most
/// [`Config::write_chunk`] bytes on the writer's channel, and a bounded
/// control queue.
#[derive(Debug)]
pub struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Frame>,
    accept: mpsc::Receiver<Stream>,
    _linger: Arc<Linger>,
}

/// Held by the connection and every stream: when the last goes, the
/// connection gets [`Config::linger`] to flush, then is cut.
#[derive(Debug)]
struct Linger {
    kill: CancellationToken,
    after: std::time::Duration,
}

impl Drop for Linger {
    fn drop(&mut self) {
        let kill = self.kill.clone();
        let after = self.after;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(after) => kill.cancel(),
                        _ = kill.cancelled() => {}
                    }
                });
            }
            Err(_) => kill.cancel(),
        }
    }
}

impl Connection {
    /// The server side, on a connection the client upgraded to SPDY/3.1:
    /// accepts the client's (odd) streams.
    pub fn server<T>(io: T, config: Config) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(io, config, Role::Server)
    }

    /// The client side: opens odd streams, which the server replies to.
    pub fn client<T>(io: T, config: Config) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(io, config, Role::Client)
    }

    fn start<T>(io: T, mut config: Config, role: Role) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        config.stream_buffer = config.stream_buffer.clamp(1024, MAX_STREAM_ID);
        config.connection_buffer = config.connection_buffer.max(1024);
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        let (accept_tx, accept) = mpsc::channel(config.max_streams.max(1));
        let mut ctrl = VecDeque::new();
        // Announce this side's window, for peers that do flow control
        // (moby/spdystream ignores it).
        ctrl.push_back(Frame::Settings {
            clear: false,
            entries: vec![Setting {
                flags: 0,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: config.stream_buffer.min(MAX_STREAM_ID),
            }],
        });
        // SPDY/3.1's session window starts at 64 KiB for all streams
        // together: raise it to what this side buffers.
        let session = u32::try_from(config.connection_buffer).unwrap_or(MAX_STREAM_ID);
        if let Some(delta) = session
            .min(MAX_STREAM_ID)
            .checked_sub(DEFAULT_WINDOW as u32)
        {
            if delta > 0 {
                ctrl.push_back(Frame::WindowUpdate {
                    stream_id: 0,
                    delta,
                });
            }
        }
        let shared = Arc::new(Shared {
            role,
            config,
            state: Mutex::new(ConnState {
                streams: HashMap::new(),
                last_peer_id: 0,
                next_id: if role == Role::Client { 1 } else { 2 },
                peer_flow_control: false,
                peer_initial_window: DEFAULT_WINDOW,
                sent_goaway: false,
                peer_goaway: false,
                closed: false,
                ctrl,
                window_updates: BTreeMap::new(),
            }),
            ctrl_ready: Notify::new(),
            ctrl_space: Notify::new(),
            open_lock: tokio::sync::Mutex::new(()),
            buffered: AtomicUsize::new(0),
            session_unacked: AtomicUsize::new(0),
            space_waker: Mutex::new(None),
            kill: CancellationToken::new(),
        });
        let stop = shared.kill.child_token();
        tokio::spawn(write_loop(write, shared.clone(), rx));
        let linger = Arc::new(Linger {
            kill: shared.kill.clone(),
            after: config.linger,
        });
        let reader = Reader {
            linger: Arc::downgrade(&linger),
            shared: shared.clone(),
            tx: tx.downgrade(),
            accept: accept_tx,
            stop,
            decoder: HeaderDecoder::new(config.limits.max_header_block),
        };
        tokio::spawn(reader.run(read));
        Self {
            shared,
            tx,
            accept,
            _linger: linger,
        }
    }

    /// The next stream the peer opened, with its headers; `None` once the
    /// peer has closed the connection (or it failed). Reply to it
    /// ([`Stream::reply`]) before writing.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.accept.recv().await
    }

    /// Opens a stream (SYN_STREAM) with `headers`; `fin` sends nothing more
    /// on it. Await the peer's reply with [`Stream::wait_reply`].
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<Stream> {
        let _order = self.shared.open_lock.lock().await;
        let stream = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(Error::ConnectionClosed);
            }
            if state.sent_goaway || state.peer_goaway {
                return Err(Error::GoingAway);
            }
            let id = state.next_id;
            if id > MAX_STREAM_ID {
                return Err(Error::StreamIdsExhausted);
            }
            state.next_id += 2;
            let mut s = StreamState::new(state.peer_initial_window);
            if fin {
                s.local = Half::Fin;
            }
            let stream = Arc::new(StreamShared {
                id,
                state: Mutex::new(s),
            });
            state.streams.insert(id, stream.clone());
            stream
        };
        let frame = Frame::SynStream {
            stream_id: stream.id,
            associated_to: 0,
            priority: 0,
            fin,
            unidirectional: false,
            headers: headers.clone(),
        };
        let handle = Stream::new(
            self.shared.clone(),
            stream,
            headers,
            false,
            self.tx.clone(),
            self._linger.clone(),
        );
        self.tx
            .send(frame)
            .await
            .map_err(|_| Error::ConnectionClosed)?;
        Ok(handle)
    }

    /// Sends GOAWAY (after everything already queued): the peer may open no
    /// more streams; those open go on. moby/spdystream stops reading at
    /// GOAWAY, so send it last.
    pub async fn close(&self) -> Result<()> {
        let last = {
            let mut state = self.shared.lock();
            if state.sent_goaway {
                return Ok(());
            }
            state.sent_goaway = true;
            state.last_peer_id
        };
        self.tx
            .send(Frame::GoAway {
                last_good_stream_id: last,
                status: GOAWAY_OK,
            })
            .await
            .map_err(|_| Error::ConnectionClosed)
    }

    /// Ends the connection at once: both tasks stop, whatever is queued is
    /// dropped, every stream fails. For a peer that stops reading.
    pub fn abort(&self) {
        self.shared.kill.cancel();
    }

    /// Streams currently open (not yet closed both ways).
    pub fn open_streams(&self) -> usize {
        self.shared.lock().streams.len()
    }
}

/// A stream: its headers, and both directions. [`split`](Stream::split)
/// separates reading and writing for concurrent copies.
#[derive(Debug)]
pub struct Stream {
    recv: RecvStream,
    send: SendStream,
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub struct RecvStream {
    core: Arc<Core>,
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub struct SendStream {
    core: Arc<Core>,
    tx: PollSender<Frame>,
}

/// What both halves share; dropping the last half resets an unfinished
/// stream.
#[derive(Debug)]
struct Core {
    _linger: Arc<Linger>,
    conn: Arc<Shared>,
    tx: mpsc::Sender<Frame>,
    stream: Arc<StreamShared>,
    headers: Headers,
    peer_initiated: bool,
}

impl Drop for Core {
    fn drop(&mut self) {
        let (unfinished, discarded) = {
            let mut s = self.stream.lock();
            s.dropped = true;
            s.recv.clear();
            let discarded = std::mem::take(&mut s.recv_len);
            let unfinished = !s.finished();
            if unfinished {
                s.local = Half::Reset(RstStatus::CANCEL);
                s.remote = Half::Reset(RstStatus::CANCEL);
            }
            s.wake_all();
            (unfinished, discarded)
        };
        self.conn.release(discarded);
        if unfinished {
            // Through the ordered channel: the RST must follow the DATA this
            // stream queued, or the peer drops that data.
            let rst = Frame::RstStream {
                stream_id: self.stream.id,
                status: RstStatus::CANCEL,
            };
            match self.tx.try_send(rst) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(rst)) => {
                    match tokio::runtime::Handle::try_current() {
                        Ok(runtime) => {
                            let tx = self.tx.clone();
                            runtime.spawn(async move { tx.send(rst).await });
                        }
                        Err(_) => self.conn.push_ctrl(rst),
                    }
                }
            }
        }
        self.conn.maybe_remove(&self.stream);
    }
}

impl Stream {
    fn new(
        conn: Arc<Shared>,
        stream: Arc<StreamShared>,
        headers: Headers,
        peer_initiated: bool,
        tx: mpsc::Sender<Frame>,
        linger: Arc<Linger>,
    ) -> Self {
        let core = Arc::new(Core {
            _linger: linger,
            conn,
            tx: tx.clone(),
            stream,
            headers,
            peer_initiated,
        });
        Self {
            recv: RecvStream { core: core.clone() },
            send: SendStream {
                core,
                tx: PollSender::new(tx),
            },
        }
    }

    /// Stream ID.
    pub fn id(&self) -> u32 {
        self.recv.core.stream.id
    }

    /// The headers of its SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.recv.core.headers
    }

    /// Separates the halves.
    pub fn split(self) -> (RecvStream, SendStream) {
        (self.recv, self.send)
    }

    /// Replies (SYN_REPLY) to a stream the peer opened; `fin` sends nothing
    /// more on it.
    pub async fn reply(&mut self, headers: Headers, fin: bool) -> Result<()> {
        self.send.reply(headers, fin).await
    }

    /// Waits for the peer's SYN_REPLY to a stream this side opened.
    pub async fn wait_reply(&mut self) -> Result<Headers> {
        let core = &self.recv.core;
        if core.peer_initiated {
            return Err(Error::InvalidReply {
                id: core.stream.id,
                reason: "the peer opened this stream",
            });
        }
        poll_fn(|cx| {
            let mut s = core.stream.lock();
            if s.replied {
                return Poll::Ready(Ok(s.reply_headers.clone().unwrap_or_default()));
            }
            match s.remote {
                Half::Reset(status) => Poll::Ready(Err(Error::StreamReset {
                    id: core.stream.id,
                    status,
                })),
                Half::Lost => Poll::Ready(Err(Error::ConnectionClosed)),
                Half::Open | Half::Fin => {
                    s.reply_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// See [`RecvStream::read_chunk`].
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        self.recv.read_chunk().await
    }

    /// See [`SendStream::write_all`].
    pub async fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.send.write_all(data).await
    }

    /// See [`SendStream::close`].
    pub async fn close(&mut self) -> Result<()> {
        self.send.close().await
    }

    /// See [`SendStream::reset`].
    pub async fn reset(&mut self, status: RstStatus) -> Result<()> {
        self.send.reset(status).await
    }
}

impl RecvStream {
    /// Stream ID.
    pub fn id(&self) -> u32 {
        self.core.stream.id
    }

    /// The next piece of data; `None` after the peer's FIN. Fails once the
    /// stream is reset (after the data that came before the reset) or the
    /// connection ends without the peer's FIN.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        poll_fn(|cx| self.poll_chunk(cx, usize::MAX)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Result<Option<Bytes>>> {
        let core = &self.core;
        let mut s = core.stream.lock();
        if let Some(front) = s.recv.front_mut() {
            let chunk = if front.len() <= max {
                s.recv.pop_front().expect("front exists")
            } else {
                front.split_to(max)
            };
            let n = chunk.len();
            s.recv_len -= n;
            if let Some(waker) = s.space_waker.take() {
                waker.wake();
            }
            // Return the window once half of it is read back.
            s.unacked = s
                .unacked
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            let update = (s.remote.is_open() && s.unacked >= core.conn.config.stream_buffer / 2)
                .then(|| std::mem::take(&mut s.unacked));
            drop(s);
            core.conn.release(n);
            if let Some(delta) = update {
                core.conn.queue_window_update(core.stream.id, delta);
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        match s.remote {
            Half::Fin => Poll::Ready(Ok(None)),
            Half::Reset(status) => Poll::Ready(Err(Error::StreamReset {
                id: core.stream.id,
                status,
            })),
            Half::Lost => Poll::Ready(Err(Error::ConnectionClosed)),
            Half::Open => {
                s.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.poll_chunk(cx, buf.remaining())) {
            Ok(Some(chunk)) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl SendStream {
    /// Stream ID.
    pub fn id(&self) -> u32 {
        self.core.stream.id
    }

    /// Replies (SYN_REPLY) to a stream the peer opened; `fin` sends nothing
    /// more on it.
    pub async fn reply(&mut self, headers: Headers, fin: bool) -> Result<()> {
        let core = self.core.clone();
        let id = core.stream.id;
        {
            let s = core.stream.lock();
            if !core.peer_initiated {
                return Err(Error::InvalidReply {
                    id,
                    reason: "this side opened the stream",
                });
            }
            if s.replied {
                return Err(Error::InvalidReply {
                    id,
                    reason: "already replied",
                });
            }
            check_writable(id, &s)?;
        }
        poll_fn(|cx| self.poll_reserve(cx)).await?;
        self.send_item(Frame::SynReply {
            stream_id: id,
            fin,
            headers,
        })?;
        let mut s = core.stream.lock();
        s.replied = true;
        if fin {
            s.local = Half::Fin;
        }
        drop(s);
        if fin {
            core.conn.maybe_remove(&core.stream);
        }
        Ok(())
    }

    /// Writes all of `data`, in frames of at most [`Config::write_chunk`]
    /// bytes, waiting for the peer's window when it does flow control.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = poll_fn(|cx| self.poll_send(cx, data)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Finishes this side (an empty DATA frame with FIN); the peer's side
    /// stays readable. Closing twice is a no-op.
    pub async fn close(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_fin(cx)).await
    }

    /// Resets the stream (RST_STREAM with `status`), both ways.
    pub async fn reset(&mut self, status: RstStatus) -> Result<()> {
        let core = self.core.clone();
        {
            let mut s = core.stream.lock();
            if s.finished() {
                return Ok(());
            }
            s.local = Half::Reset(status);
            s.remote = Half::Reset(status);
            s.recv.clear();
            let discarded = std::mem::take(&mut s.recv_len);
            s.wake_all();
            drop(s);
            core.conn.release(discarded);
        }
        core.conn.maybe_remove(&core.stream);
        poll_fn(|cx| self.poll_reserve(cx)).await?;
        self.send_item(Frame::RstStream {
            stream_id: core.stream.id,
            status,
        })
    }

    fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.tx
            .poll_reserve(cx)
            .map_err(|_| Error::ConnectionClosed)
    }

    fn send_item(&mut self, frame: Frame) -> Result<()> {
        self.tx
            .send_item(frame)
            .map_err(|_| Error::ConnectionClosed)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize>> {
        let core = self.core.clone();
        let id = core.stream.id;
        let flow_control = core.conn.lock().peer_flow_control;
        let n = {
            let mut s = core.stream.lock();
            check_writable(id, &s)?;
            if core.peer_initiated && !s.replied {
                return Poll::Ready(Err(Error::NotReplied { id }));
            }
            let mut n = data.len().min(core.conn.config.write_chunk.max(1));
            if flow_control {
                if s.send_window <= 0 {
                    s.write_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                n = n.min(usize::try_from(s.send_window).unwrap_or(usize::MAX));
            }
            n
        };
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(self.poll_reserve(cx))?;
        self.send_item(Frame::Data {
            stream_id: id,
            fin: false,
            data: Bytes::copy_from_slice(&data[..n]),
        })?;
        core.stream.lock().send_window -= n as i64;
        Poll::Ready(Ok(n))
    }

    fn poll_fin(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let core = self.core.clone();
        let id = core.stream.id;
        {
            let s = core.stream.lock();
            if s.local == Half::Fin {
                return Poll::Ready(Ok(()));
            }
            check_writable(id, &s)?;
            if core.peer_initiated && !s.replied {
                return Poll::Ready(Err(Error::NotReplied { id }));
            }
        }
        ready!(self.poll_reserve(cx))?;
        self.send_item(Frame::Data {
            stream_id: id,
            fin: true,
            data: Bytes::new(),
        })?;
        core.stream.lock().local = Half::Fin;
        core.conn.maybe_remove(&core.stream);
        Poll::Ready(Ok(()))
    }
}

fn check_writable(id: u32, s: &StreamState) -> Result<()> {
    match (s.local, s.remote) {
        (Half::Reset(status), _) | (_, Half::Reset(status)) => {
            Err(Error::StreamReset { id, status })
        }
        (Half::Fin, _) => Err(Error::StreamClosed { id }),
        (Half::Lost, _) => Err(Error::ConnectionClosed),
        (Half::Open, _) => Ok(()),
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_send(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Frames are handed to the writer task as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_fin(cx).map_err(Into::into)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

async fn write_loop<W: AsyncWrite>(io: W, shared: Arc<Shared>, mut rx: mpsc::Receiver<Frame>) {
    let mut io = std::pin::pin!(io);
    let kill = shared.kill.clone();
    tokio::select! {
        _ = write_frames(&mut io, &shared, &mut rx) => {
            tokio::select! {
                _ = io.shutdown() => {}
                _ = kill.cancelled() => {}
            }
        }
        _ = kill.cancelled() => {}
    }
    // Stops the reader (and any linger timer).
    kill.cancel();
    rx.close();
    shared.close_all(true);
}

async fn write_frames<W: AsyncWrite>(
    io: &mut Pin<&mut W>,
    shared: &Shared,
    rx: &mut mpsc::Receiver<Frame>,
) -> Result<()> {
    let mut encoder = HeaderEncoder::new()?;
    let mut out = Vec::with_capacity(IO_CHUNK * 2);
    // Every handle is gone: write what the control queue still holds (the
    // RSTs of the last dropped streams), then end.
    let mut ended = false;
    loop {
        let (ctrl, closed) = {
            let mut state = shared.lock();
            let mut ctrl: Vec<Frame> = state.ctrl.drain(..).collect();
            let updates = std::mem::take(&mut state.window_updates);
            ctrl.extend(
                updates
                    .into_iter()
                    .map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
            );
            (ctrl, state.closed)
        };
        if !ctrl.is_empty() {
            shared.ctrl_space.notify_waiters();
        }
        for frame in &ctrl {
            frame.encode(&mut encoder, &mut out)?;
        }
        while out.len() < IO_CHUNK && !closed && !ended {
            match rx.try_recv() {
                Ok(frame) => frame.encode(&mut encoder, &mut out)?,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => ended = true,
            }
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
            continue;
        }
        io.flush().await?;
        if closed || (ended && ctrl.is_empty()) {
            return Ok(());
        }
        if ended {
            continue;
        }
        tokio::select! {
            biased;
            _ = shared.ctrl_ready.notified() => {}
            frame = rx.recv() => match frame {
                Some(frame) => frame.encode(&mut encoder, &mut out)?,
                None => ended = true,
            },
        }
    }
}

struct Reader {
    shared: Arc<Shared>,
    /// Weak, like `tx`: new streams hold it, the reader does not.
    linger: std::sync::Weak<Linger>,
    /// Weak, so that the writer ends once every handle is gone.
    tx: mpsc::WeakSender<Frame>,
    accept: mpsc::Sender<Stream>,
    stop: CancellationToken,
    decoder: HeaderDecoder,
}

/// What the reader may do with the next piece of a DATA frame.
enum Room {
    Bytes(usize),
    Discard,
}

impl Reader {
    async fn run<R: AsyncRead>(mut self, io: R) {
        let mut io = std::pin::pin!(io);
        let result = self.read_frames(&mut io).await;
        let failed = match result {
            Ok(()) => false,
            Err(Error::ConnectionClosed | Error::Io(_)) => true,
            Err(_) => {
                // A protocol error: tell the peer, then end the connection.
                let last_good_stream_id = self.shared.lock().last_peer_id;
                self.shared.push_ctrl(Frame::GoAway {
                    last_good_stream_id,
                    status: GOAWAY_PROTOCOL_ERROR,
                });
                true
            }
        };
        if failed {
            self.shared.lock().closed = true;
            self.shared.ctrl_ready.notify_one();
        }
        self.shared.close_all(false);
    }

    async fn fill<R: AsyncRead>(
        &self,
        io: &mut Pin<&mut R>,
        buf: &mut BytesMut,
        want: usize,
    ) -> Result<bool> {
        while buf.len() < want {
            buf.reserve(IO_CHUNK.max(want - buf.len()));
            let n = tokio::select! {
                n = io.read_buf(buf) => n?,
                _ = self.stop.cancelled() => return Err(Error::ConnectionClosed),
            };
            if n == 0 {
                if buf.is_empty() {
                    return Ok(false);
                }
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        Ok(true)
    }

    async fn read_frames<R: AsyncRead>(&mut self, io: &mut Pin<&mut R>) -> Result<()> {
        let limits = self.shared.config.limits;
        let mut buf = BytesMut::with_capacity(IO_CHUNK);
        loop {
            if !self.fill(io, &mut buf, HEAD_LEN).await? {
                return Ok(());
            }
            let head = Head::parse(*buf.first_chunk::<HEAD_LEN>().expect("filled"), &limits)?;
            buf.advance(HEAD_LEN);
            match head {
                Head::Control { kind, flags, len } => {
                    let len = len as usize;
                    if !self.fill(io, &mut buf, len).await? && len > 0 {
                        return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    let payload = buf.split_to(len);
                    let frame = Frame::decode_control(kind, flags, &payload, &mut self.decoder)?;
                    self.handle(frame).await?;
                }
                Head::Data {
                    stream_id,
                    flags,
                    len,
                } => {
                    self.data(io, &mut buf, stream_id, len as usize).await?;
                    if flags & crate::frame::FLAG_FIN != 0 {
                        self.remote_fin(stream_id);
                    }
                }
            }
        }
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamShared>> {
        self.shared.lock().streams.get(&id).cloned()
    }

    async fn data<R: AsyncRead>(
        &self,
        io: &mut Pin<&mut R>,
        buf: &mut BytesMut,
        id: u32,
        mut remaining: usize,
    ) -> Result<()> {
        let mut target = {
            let state = self.shared.lock();
            let never_opened = if id % 2 == self.shared.role.own_parity() {
                id >= state.next_id
            } else {
                id > state.last_peer_id
            };
            if never_opened {
                // Garbage, most likely (an HTTP request on the upgraded
                // connection reads as DATA): no stream ever had this ID.
                return Err(Error::InvalidFrame {
                    kind: "DATA",
                    reason: "a stream that was never opened",
                });
            }
            state.streams.get(&id).cloned()
        };
        let cap = self.shared.config.stream_buffer as usize;
        while remaining > 0 {
            if buf.is_empty() && !self.fill(io, buf, 1).await? {
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let mut n = remaining.min(buf.len());
            if let Some(stream) = &target {
                match self.room(stream, cap).await? {
                    Room::Bytes(room) => n = n.min(room),
                    Room::Discard => target = None,
                }
            }
            match &target {
                Some(stream) => {
                    let chunk = if n < COPY_BELOW {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        buf.advance(n);
                        chunk
                    } else {
                        buf.split_to(n).freeze()
                    };
                    let mut s = stream.lock();
                    // Counted under the stream's lock, so that whoever
                    // empties the buffer (a read, a drop) releases after.
                    if !s.dropped && s.remote.is_open() {
                        self.shared.buffered.fetch_add(n, Ordering::AcqRel);
                        s.recv_len += n;
                        s.recv.push_back(chunk);
                        if let Some(waker) = s.read_waker.take() {
                            waker.wake();
                        }
                    } else {
                        drop(s);
                        self.shared.credit(n);
                    }
                }
                None => {
                    buf.advance(n);
                    self.shared.credit(n);
                }
            }
            remaining -= n;
        }
        Ok(())
    }

    /// Waits until the stream's buffer has room (the back-pressure of a peer
    /// that ignores windows), or until it no longer takes data.
    async fn room(&self, stream: &StreamShared, cap: usize) -> Result<Room> {
        let total = self.shared.config.connection_buffer;
        let wait = poll_fn(|cx| {
            let mut s = stream.lock();
            if s.dropped || !s.remote.is_open() {
                return Poll::Ready(Room::Discard);
            }
            let room = cap.saturating_sub(s.recv_len);
            if room == 0 {
                s.space_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            drop(s);
            // Register before looking, so a read in between still wakes.
            *self
                .shared
                .space_waker
                .lock()
                .expect("waker lock is never poisoned") = Some(cx.waker().clone());
            let shared_room = total.saturating_sub(self.shared.buffered.load(Ordering::Acquire));
            if shared_room == 0 {
                return Poll::Pending;
            }
            Poll::Ready(Room::Bytes(room.min(shared_room)))
        });
        tokio::select! {
            room = wait => Ok(room),
            _ = self.stop.cancelled() => Err(Error::ConnectionClosed),
        }
    }

    fn remote_fin(&self, id: u32) {
        if let Some(stream) = self.stream(id) {
            {
                let mut s = stream.lock();
                if s.remote.is_open() {
                    s.remote = Half::Fin;
                }
                if let Some(waker) = s.read_waker.take() {
                    waker.wake();
                }
            }
            self.shared.maybe_remove(&stream);
        }
    }

    async fn refuse(&self, stream_id: u32, status: RstStatus) -> Result<()> {
        self.shared
            .queue_ctrl(Frame::RstStream { stream_id, status }, &self.stop)
            .await
    }

    async fn handle(&mut self, frame: Frame) -> Result<()> {
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                unidirectional,
                headers,
                ..
            } => {
                self.syn_stream(stream_id, fin, unidirectional, headers)
                    .await?
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                if stream_id % 2 == self.shared.role.own_parity() {
                    if let Some(stream) = self.stream(stream_id) {
                        let mut s = stream.lock();
                        if !s.replied {
                            s.replied = true;
                            s.reply_headers = Some(headers);
                            if let Some(waker) = s.reply_waker.take() {
                                waker.wake();
                            }
                        }
                    }
                    if fin {
                        self.remote_fin(stream_id);
                    }
                }
            }
            Frame::Headers { stream_id, fin, .. } => {
                if fin {
                    self.remote_fin(stream_id);
                }
            }
            Frame::RstStream { stream_id, status } => {
                if let Some(stream) = self.stream(stream_id) {
                    {
                        let mut s = stream.lock();
                        if !matches!(s.remote, Half::Reset(_)) {
                            s.remote = Half::Reset(status);
                        }
                        if s.local.is_open() || s.local == Half::Fin {
                            s.local = Half::Reset(status);
                        }
                        s.wake_all();
                    }
                    self.shared.maybe_remove(&stream);
                }
            }
            Frame::Settings { entries, .. } => {
                let window = entries
                    .iter()
                    .rev()
                    .find(|e| e.id == SETTINGS_INITIAL_WINDOW_SIZE)
                    .map(|e| i64::from(e.value.min(MAX_STREAM_ID)));
                if let Some(window) = window {
                    let streams: Vec<_> = {
                        let mut state = self.shared.lock();
                        let delta = window - state.peer_initial_window;
                        state.peer_initial_window = window;
                        state.peer_flow_control = true;
                        state.streams.values().map(|s| (s.clone(), delta)).collect()
                    };
                    for (stream, delta) in streams {
                        let mut s = stream.lock();
                        s.send_window += delta;
                        if let Some(waker) = s.write_waker.take() {
                            waker.wake();
                        }
                    }
                }
            }
            Frame::Ping { id } => {
                // Echo the peer's pings; ours (none are sent) are answers.
                if id % 2 != self.shared.role.own_parity() {
                    self.shared
                        .queue_ctrl(Frame::Ping { id }, &self.stop)
                        .await?;
                }
            }
            Frame::GoAway { .. } => self.shared.lock().peer_goaway = true,
            Frame::WindowUpdate { stream_id, delta } => {
                let stream = {
                    let mut state = self.shared.lock();
                    state.peer_flow_control = true;
                    state.streams.get(&stream_id).cloned()
                };
                // Stream 0 is SPDY/3.1's session window: not enforced.
                if let Some(stream) = stream {
                    let mut s = stream.lock();
                    s.send_window =
                        (s.send_window + i64::from(delta)).min(i64::from(MAX_STREAM_ID));
                    if let Some(waker) = s.write_waker.take() {
                        waker.wake();
                    }
                }
            }
            Frame::Data { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    async fn syn_stream(
        &mut self,
        id: u32,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    ) -> Result<()> {
        let refusal = {
            let mut state = self.shared.lock();
            if id % 2 == self.shared.role.own_parity() || id <= state.last_peer_id {
                // moby/spdystream answers a bad ID with PROTOCOL_ERROR too.
                Some(RstStatus::PROTOCOL_ERROR)
            } else {
                state.last_peer_id = id;
                let full = state.streams.len() >= self.shared.config.max_streams;
                (state.sent_goaway || state.closed || full).then_some(RstStatus::REFUSED_STREAM)
            }
        };
        if let Some(status) = refusal {
            return self.refuse(id, status).await;
        }
        let (Some(tx), Some(linger)) = (self.tx.upgrade(), self.linger.upgrade()) else {
            // Every handle is gone: the connection is ending.
            return self.refuse(id, RstStatus::REFUSED_STREAM).await;
        };
        let stream = {
            let mut state = self.shared.lock();
            let mut s = StreamState::new(state.peer_initial_window);
            if fin {
                s.remote = Half::Fin;
            }
            if unidirectional {
                s.local = Half::Fin;
            }
            let finished = s.finished();
            let stream = Arc::new(StreamShared {
                id,
                state: Mutex::new(s),
            });
            if !finished {
                state.streams.insert(id, stream.clone());
            }
            stream
        };
        let handle = Stream::new(self.shared.clone(), stream, headers, true, tx, linger);
        if let Err(
            mpsc::error::TrySendError::Full(handle) | mpsc::error::TrySendError::Closed(handle),
        ) = self.accept.try_send(handle)
        {
            // Nobody accepts (or too many wait): dropping resets it.
            drop(handle);
        }
        Ok(())
    }
}
