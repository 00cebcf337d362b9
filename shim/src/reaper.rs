//! Reaping children and telling who exited.
//!
//! The shim is a child subreaper, so the container's processes become its
//! children once runc has set them up and exited. One task reaps every
//! child on SIGCHLD (`waitpid(-1)`) and announces each exit through the
//! containerd-shim crate's monitor, which fans it out to subscribers. The
//! exit code is the process's, or 128 + signal for one a signal killed.
//!
//! Because this task reaps every child, nothing may wait for a child
//! itself: whoever starts a process (a runtime command, see
//! [`crate::oci_runtime`]) first takes an [`Exits`] subscription, then
//! spawns, then waits for its pid there. Subscribing first means an exit
//! can never be announced before someone listens.

use containerd_shim::monitor::{
    monitor_notify_by_pid, monitor_subscribe, monitor_unsubscribe, Subject, Subscription, Topic,
};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};

use crate::error::{Error, Result};

/// Starts the reaper task. Call from the runtime before spawning anything.
pub fn start() -> Result<()> {
    let mut sigchld = signal(SignalKind::child()).map_err(|source| Error::Sys {
        op: "install SIGCHLD handler",
        source,
    })?;
    tokio::spawn(async move {
        // Children that exited before the handler was installed.
        reap_all().await;
        while sigchld.recv().await.is_some() {
            reap_all().await;
        }
    });
    Ok(())
}

async fn reap_all() {
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
        if let Err(e) = monitor_notify_by_pid(pid.as_raw(), code).await {
            tracing::warn!(pid = pid.as_raw(), "cannot announce exit: {e}");
        }
    }
}

/// A subscription to child exits. Exits of other pids seen while waiting
/// are kept, so [`take`](Self::take) still finds them.
#[derive(Debug)]
pub struct Exits {
    id: i64,
    rx: tokio::sync::mpsc::UnboundedReceiver<containerd_shim::monitor::ExitEvent>,
    seen: Vec<(i32, i32)>,
}

impl Exits {
    /// Subscribes to all exits from now on.
    pub async fn subscribe() -> Result<Self> {
        let Subscription { id, rx } =
            monitor_subscribe(Topic::Pid)
                .await
                .map_err(|source| Error::Shim {
                    context: "subscribe to exits",
                    source,
                })?;
        Ok(Self {
            id,
            rx,
            seen: Vec::new(),
        })
    }

    /// Waits for `pid` to exit and returns its exit code.
    pub async fn wait(&mut self, pid: i32) -> i32 {
        if let Some(code) = self.take(pid) {
            return code;
        }
        loop {
            match self.rx.recv().await {
                Some(event) => {
                    if let Subject::Pid(p) = event.subject {
                        if p == pid {
                            return event.exit_code;
                        }
                        self.seen.push((p, event.exit_code));
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// The exit code of `pid` if it exited since the subscription.
    pub fn take(&mut self, pid: i32) -> Option<i32> {
        while let Ok(event) = self.rx.try_recv() {
            if let Subject::Pid(p) = event.subject {
                self.seen.push((p, event.exit_code));
            }
        }
        let i = self.seen.iter().position(|&(p, _)| p == pid)?;
        Some(self.seen.swap_remove(i).1)
    }

    /// Receives the next exit: `(pid, code)`.
    pub async fn next(&mut self) -> Option<(i32, i32)> {
        loop {
            let event = self.rx.recv().await?;
            if let Subject::Pid(p) = event.subject {
                return Some((p, event.exit_code));
            }
        }
    }
}

impl Drop for Exits {
    fn drop(&mut self) {
        let id = self.id;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = monitor_unsubscribe(id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_exits_of_other_pids() {
        let mut exits = Exits::subscribe().await.expect("subscribe");
        monitor_notify_by_pid(1_000_001, 3).await.expect("notify");
        monitor_notify_by_pid(1_000_002, 137).await.expect("notify");
        assert_eq!(exits.wait(1_000_002).await, 137);
        assert_eq!(exits.take(1_000_001), Some(3));
        assert_eq!(exits.take(1_000_001), None);
    }
}
