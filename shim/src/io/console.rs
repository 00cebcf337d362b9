//! Terminals. For a process with a terminal the shim listens on a unix
//! socket and passes it to the runtime (`--console-socket`); the runtime
//! sends back the pty master as an `SCM_RIGHTS` message. The socket lives
//! in a fresh directory under the temp dir, because a socket path must fit
//! in 108 bytes and bundle paths may not.
//!
//! This module holds the shim's only `unsafe` code: taking ownership of a
//! received fd and the `TIOCSWINSZ` ioctl, which nix does not wrap.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

use crate::error::{Error, Result};

/// How long the runtime may take to connect after it returned.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct ConsoleSocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-pty")
            .tempdir()
            .map_err(|source| Error::Sys {
                op: "create console socket directory",
                source,
            })?;
        let path = dir.path().join("pty.sock");
        let listener = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            _dir: dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master the runtime sent. Call after the runtime
    /// command succeeded.
    pub async fn receive(self) -> Result<File> {
        let (stream, _) = tokio::time::timeout(RECEIVE_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| {
                Error::FailedPrecondition(format!(
                    "the runtime sent no terminal to {} (does the process spec ask for one?)",
                    self.path.display()
                ))
            })?
            .map_err(|e| Error::io(&self.path, e))?;
        let stream = stream.into_std().map_err(|e| Error::io(&self.path, e))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(RECEIVE_TIMEOUT)))
                .map_err(|e| Error::io(&path, e))?;
            receive_fd(stream.as_raw_fd()).map(File::from)
        })
        .await
        .expect("receive task does not panic")
    }
}

fn receive_fd(socket: RawFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::sys("receive pty master", e))?;
    let mut received = Vec::new();
    for cmsg in msg
        .cmsgs()
        .map_err(|e| Error::sys("receive pty master", e))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received.extend(fds);
        }
    }
    let mut owned = received.into_iter().map(|fd| {
        #[allow(unsafe_code)]
        // SAFETY: the kernel just installed `fd` in this process for the
        // SCM_RIGHTS message; nothing else refers to it, so we own it.
        unsafe {
            OwnedFd::from_raw_fd(fd)
        }
    });
    let master = owned.next().ok_or_else(|| {
        Error::FailedPrecondition("the runtime's console message carried no fd".to_string())
    })?;
    // Any further fds are closed as `owned` drops.
    Ok(master)
}

/// Sets the window size of the terminal of `master`.
pub fn resize(master: &File, width: u16, height: u16) -> Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `master` is an open fd for the call's duration, and
    // TIOCSWINSZ reads one `winsize` from the valid pointer we pass.
    // JUSTIFICATION: nix has no wrapper for TIOCSWINSZ.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(Error::sys("resize terminal", nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::pty::openpty;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[tokio::test]
    async fn receives_a_master_and_resizes_it() {
        let socket = ConsoleSocket::new().expect("console socket");
        let pty = openpty(None, None).expect("openpty");
        let path = socket.path().to_path_buf();
        let master_fd = pty.master.as_raw_fd();
        // What runc does: connect and send the master.
        let sender = std::thread::spawn(move || {
            let stream = UnixStream::connect(&path).expect("connect");
            let fds = [master_fd];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(b"/dev/ptmx")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .expect("sendmsg");
        });
        let master = socket.receive().await.expect("receive");
        sender.join().expect("sender");
        resize(&master, 120, 40).expect("resize");
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: `pty.slave` is open and TIOCGWINSZ writes one `winsize`
        // to the valid pointer.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
    }
}
