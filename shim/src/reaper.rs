//! Reaping children and telling who exited.
//!
//! The shim is a child subreaper, so the container's processes become its
//! children once runc has set them up and exited. One task reaps every
//! child on SIGCHLD (`waitpid(-1)`) and announces each exit to every
//! subscriber, through an unbounded channel each, so the reaper never
//! waits on a slow subscriber. The exit code is the process's, or 128 +
//! signal for one a signal killed.
//!
//! Because this task reaps every child, nothing may wait for a child
//! itself: whoever starts a process (a runtime command, see
//! [`crate::oci_runtime`]) first takes an [`Exits`] subscription, then
//! spawns, then waits for its pid there. Subscribing first means an exit
//! can never be announced before someone listens.

use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::{Error, Result};

/// Starts the reaper task. Call from the runtime before spawning anything.
pub fn start() -> Result<()> {
    let mut sigchld = signal(SignalKind::child()).map_err(|source| Error::Sys {
        op: "install SIGCHLD handler",
        source,
    })?;
    tokio::spawn(async move {
        // Children that exited before the handler was installed.
        reap_all();
        while sigchld.recv().await.is_some() {
            reap_all();
        }
    });
    Ok(())
}

/// Everyone listening for exits, by subscription id.
#[derive(Debug)]
struct Subscribers {
    next_id: u64,
    list: Vec<(u64, UnboundedSender<(i32, i32)>)>,
}

static SUBSCRIBERS: Mutex<Subscribers> = Mutex::new(Subscribers {
    next_id: 0,
    list: Vec::new(),
});

fn subscribers() -> MutexGuard<'static, Subscribers> {
    // The lock guards plain pushes and removals: a panic cannot leave the
    // list half-changed, so a poisoned lock is still good.
    SUBSCRIBERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tells every subscriber that `pid` exited with `code`.
fn notify(pid: i32, code: i32) {
    subscribers()
        .list
        .retain(|(_, tx)| tx.send((pid, code)).is_ok());
}

fn reap_all() {
    loop {
        let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid: {e}");
                return;
            }
        };
        tracing::debug!(pid = pid.as_raw(), code, "child exited");
        notify(pid.as_raw(), code);
    }
}

/// A subscription to child exits. Exits of other pids seen while waiting
/// are kept, so [`take`](Self::take) still finds them.
#[derive(Debug)]
pub struct Exits {
    id: u64,
    rx: UnboundedReceiver<(i32, i32)>,
    seen: Vec<(i32, i32)>,
}

impl Exits {
    /// Subscribes to all exits from now on.
    pub fn subscribe() -> Self {
        let (tx, rx) = unbounded_channel();
        let mut subs = subscribers();
        let id = subs.next_id;
        subs.next_id += 1;
        subs.list.push((id, tx));
        Self {
            id,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for `pid` to exit and returns its exit code.
    pub async fn wait(&mut self, pid: i32) -> i32 {
        if let Some(code) = self.take(pid) {
            return code;
        }
        loop {
            match self.rx.recv().await {
                Some((p, code)) if p == pid => return code,
                Some(exit) => self.seen.push(exit),
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// The exit code of `pid` if it exited since the subscription.
    pub fn take(&mut self, pid: i32) -> Option<i32> {
        while let Ok(exit) = self.rx.try_recv() {
            self.seen.push(exit);
        }
        let i = self.seen.iter().position(|&(p, _)| p == pid)?;
        Some(self.seen.swap_remove(i).1)
    }

    /// Receives the next exit: `(pid, code)`.
    pub async fn next(&mut self) -> Option<(i32, i32)> {
        self.rx.recv().await
    }
}

impl Drop for Exits {
    fn drop(&mut self) {
        subscribers().list.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_exits_of_other_pids() {
        let mut exits = Exits::subscribe();
        notify(1_000_001, 3);
        notify(1_000_002, 137);
        assert_eq!(exits.wait(1_000_002).await, 137);
        assert_eq!(exits.take(1_000_001), Some(3));
        assert_eq!(exits.take(1_000_001), None);
    }

    #[tokio::test]
    async fn fans_out_and_unsubscribes_on_drop() {
        let mut a = Exits::subscribe();
        let b = Exits::subscribe();
        let id = b.id;
        notify(1_000_003, 1);
        drop(b);
        assert!(subscribers().list.iter().all(|(i, _)| *i != id));
        assert_eq!(a.next().await, Some((1_000_003, 1)));
    }
}
