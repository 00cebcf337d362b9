//! Accept loops that survive a full file table.
//!
//! `accept` fails at once, again and again, while the process is out of
//! file descriptors (EMFILE) or the system is (ENFILE); a loop that retries
//! at once spins at full CPU and logs each failure. Every listener of
//! berthd backs off instead: 5 ms after the first failure, doubling up to
//! 1 s, back to none after a success; the failure is logged at most once
//! per 10 s, with the number of failures since the last line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The wait after the first failure in a row.
const FIRST_DELAY: Duration = Duration::from_millis(5);
/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per listener in this time.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The backoff and log rate limit of one listener.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: &'static str,
    delay: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptBackoff {
    /// A backoff for the listener named `listener` in log lines.
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            delay: Duration::ZERO,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Records a failed accept; returns how long to wait before the next.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        if let Some(failures) = self.log_now(Instant::now()) {
            tracing::warn!(
                listener = self.listener,
                error = %error,
                failures,
                "accept failed; backing off"
            );
        }
        self.next_delay()
    }

    /// Records a successful accept: the next failure starts over.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }

    fn next_delay(&mut self) -> Duration {
        self.delay = if self.delay.is_zero() {
            FIRST_DELAY
        } else {
            (self.delay * 2).min(MAX_DELAY)
        };
        self.delay
    }

    /// Counts one failure at `now`; returns the failures to report when a
    /// line is due (this one and those not logged since the last line).
    fn log_now(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL);
        if !due {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// A TCP listener that serves at most a fixed number of connections at
/// once: one more is closed at accept, so its descriptor is back at once.
#[derive(Debug)]
pub struct CappedTcpListener {
    listener: TcpListener,
    backoff: AcceptBackoff,
    slots: Arc<Semaphore>,
    max: usize,
}

impl CappedTcpListener {
    /// Serves `listener` (named `name` in log lines) with at most `max`
    /// connections open.
    pub fn new(listener: TcpListener, name: &'static str, max: usize) -> Self {
        Self {
            listener,
            backoff: AcceptBackoff::new(name),
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The next connection and its slot, which it must hold while served;
    /// failed accepts back off.
    pub async fn accept(&mut self) -> (TcpStream, OwnedSemaphorePermit) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    self.backoff.succeeded();
                    match self.slots.clone().try_acquire_owned() {
                        Ok(slot) => return (stream, slot),
                        Err(_) => tracing::debug!(
                            listener = self.backoff.listener,
                            "{} connections open; closing one more",
                            self.max
                        ),
                    }
                }
                Err(e) => tokio::time::sleep(self.backoff.failed(&e)).await,
            }
        }
    }
}

/// The connections of a unix listener, as tonic takes them, with
/// [`AcceptBackoff`] between failed accepts. It never yields an error.
#[derive(Debug)]
pub struct UnixIncoming {
    listener: UnixListener,
    backoff: AcceptBackoff,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UnixIncoming {
    pub fn new(listener: UnixListener, name: &'static str) -> Self {
        Self {
            listener,
            backoff: AcceptBackoff::new(name),
            waiting: None,
        }
    }
}

impl tokio_stream::Stream for UnixIncoming {
    type Item = std::io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(waiting) = this.waiting.as_mut() {
                ready!(waiting.as_mut().poll(cx));
                this.waiting = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    this.backoff.succeeded();
                    return Poll::Ready(Some(Ok(stream)));
                }
                Err(e) => {
                    let delay = this.backoff.failed(&e);
                    this.waiting = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_restart_after_a_success() {
        let mut backoff = AcceptBackoff::new("test");
        let delays: Vec<u64> = (0..10)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.next_delay(), FIRST_DELAY);
    }

    #[test]
    fn one_line_per_interval_with_the_failures_it_stands_for() {
        let mut backoff = AcceptBackoff::new("test");
        let start = Instant::now();
        assert_eq!(
            backoff.log_now(start),
            Some(1),
            "the first failure is logged"
        );
        for i in 1..1000 {
            let at = start + LOG_INTERVAL * i / 1000;
            assert_eq!(backoff.log_now(at), None, "failure {i} within the interval");
        }
        assert_eq!(backoff.log_now(start + LOG_INTERVAL), Some(1000));
        assert_eq!(backoff.log_now(start + LOG_INTERVAL * 3 / 2), None);
        assert_eq!(backoff.log_now(start + LOG_INTERVAL * 2), Some(2));
    }

    #[tokio::test]
    async fn unix_incoming_yields_connections() {
        use tokio_stream::StreamExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("s");
        let listener = UnixListener::bind(&path).expect("bind");
        let mut incoming = UnixIncoming::new(listener, "test");
        let _client = UnixStream::connect(&path).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection");
        assert!(accepted.is_ok());
    }
}
