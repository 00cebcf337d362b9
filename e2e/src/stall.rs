//! A loopback TCP proxy in front of the test registry that holds blob
//! downloads part-way, so that a test can act (kill berthd) while a pull is
//! certainly in the middle of a layer, not after it.
//!
//! Each connection is forwarded as it is. After the client sends a request
//! for a blob (`GET .../blobs/sha256:...`), at most [`StallingProxy::HELD_AFTER`]
//! bytes of the answer are passed on while the proxy is stalling; the rest
//! waits until [`StallingProxy::release`] or the connection closes. Small
//! blobs (manifests' configs, the base layer) go through whole.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often held and idle threads look at the flags.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct Shared {
    stalling: AtomicBool,
    /// Answers being held right now.
    held: AtomicUsize,
    closing: AtomicBool,
    /// Every socket, to shut them down when the proxy goes.
    sockets: Mutex<Vec<TcpStream>>,
}

/// The proxy; stops (and closes every connection) when dropped.
#[derive(Debug)]
pub struct StallingProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl StallingProxy {
    /// Bytes of a blob's answer (headers included) passed on before the hold.
    pub const HELD_AFTER: usize = 2 << 20;

    /// Listens on a free loopback port, forwarding to `upstream`
    /// (`127.0.0.1:PORT`), stalling from the start.
    pub fn start(upstream: &str) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared::default());
        shared.stalling.store(true, Ordering::SeqCst);
        let upstream = upstream.to_owned();
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, &upstream, &shared))
        };
        Ok(Self {
            address,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `127.0.0.1:PORT` of the proxy, the registry host of image references
    /// that go through it.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Writes `MIRRORS/127.0.0.1:PORT/hosts.toml` so that berthd talks plain
    /// HTTP to the proxy (hosts.toml is read on every pull).
    pub fn write_hosts(&self, mirrors: &Path) -> Result<(), String> {
        let dir = mirrors.join(self.address());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let url = format!("http://{}", self.address());
        std::fs::write(
            dir.join("hosts.toml"),
            format!("server = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// How many blob answers are being held now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Lets every held and later answer through.
    pub fn release(&self) {
        self.shared.stalling.store(false, Ordering::SeqCst);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Ok(sockets) = self.shared.sockets.lock() {
            for socket in sockets.iter() {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: &str, shared: &Arc<Shared>) {
    while !shared.closing.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if let Err(e) = connect(client, upstream, shared) {
                    eprintln!("stalling proxy: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                eprintln!("stalling proxy: accept: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Starts the two forwarding threads of one connection.
fn connect(client: TcpStream, upstream: &str, shared: &Arc<Shared>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    if let Ok(mut sockets) = shared.sockets.lock() {
        sockets.push(client.try_clone()?);
        sockets.push(server.try_clone()?);
    }
    // Bytes of the current blob answer still allowed through; None when the
    // last request was not for a blob.
    let budget = Arc::new(Mutex::new(None::<usize>));
    let closed = Arc::new(AtomicBool::new(false));
    {
        let (from, to) = (client.try_clone()?, server.try_clone()?);
        let (budget, closed) = (Arc::clone(&budget), Arc::clone(&closed));
        std::thread::spawn(move || requests(from, to, &budget, &closed));
    }
    let shared = Arc::clone(shared);
    std::thread::spawn(move || answers(server, client, &budget, &closed, &shared));
    Ok(())
}

/// Client to registry: passes requests on, noting blob requests. berthd's
/// HTTP client sends one request at a time per connection, so what follows
/// a blob request on the way back is that blob's answer.
fn requests(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: &Mutex<Option<usize>>,
    closed: &AtomicBool,
) {
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Ok(mut budget) = budget.lock() {
            if text.starts_with("GET ") {
                let blob = text
                    .lines()
                    .next()
                    .is_some_and(|l| l.contains("/blobs/sha256:"));
                *budget = blob.then_some(StallingProxy::HELD_AFTER);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    closed.store(true, Ordering::SeqCst);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Registry to client: passes answers on, holding a blob's answer after its
/// budget while the proxy stalls.
fn answers(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: &Mutex<Option<usize>>,
    closed: &AtomicBool,
    shared: &Shared,
) {
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        let allowed = match budget.lock() {
            Ok(mut budget) => match budget.as_mut() {
                Some(left) if shared.stalling.load(Ordering::SeqCst) => {
                    let allowed = (*left).min(chunk.len());
                    *left -= allowed;
                    Some(allowed)
                }
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(allowed) = allowed {
            if allowed < chunk.len() {
                if to.write_all(&chunk[..allowed]).is_err() {
                    break;
                }
                chunk = &chunk[allowed..];
                shared.held.fetch_add(1, Ordering::SeqCst);
                while shared.stalling.load(Ordering::SeqCst)
                    && !closed.load(Ordering::SeqCst)
                    && !shared.closing.load(Ordering::SeqCst)
                {
                    std::thread::sleep(POLL);
                }
                shared.held.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
