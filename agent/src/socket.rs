//! The CRI unix socket: root-only, never shared, never left behind.
//!
//! A socket file left by a crashed berthd is replaced; one that a live
//! process still answers on is an error. The socket is bound under a
//! temporary name, restricted to 0660 and then renamed into place, so the
//! final path never exists with looser permissions. A lock file beside it
//! (`<socket>.lock`, held with flock for the daemon's lifetime) keeps two
//! berthds from racing for one path.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path} is in use by a running process (another berthd?)")]
    InUse { path: PathBuf },
    #[error("socket path {path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A bound CRI socket; dropping it removes the socket file.
#[derive(Debug)]
pub struct CriSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    inode: u64,
    _lock: Flock<File>,
}

impl CriSocket {
    /// Binds `path`, replacing a stale socket file.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = lock_file(path)?;
        remove_stale(path)?;

        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("berth.sock");
        let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        let listener = UnixListener::bind(&temporary).map_err(io)?;
        let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o660))
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(e));
        }
        listener.set_nonblocking(true).map_err(io)?;
        let inode = std::fs::metadata(path).map_err(io)?.ino();
        Ok(Self {
            listener: Some(listener),
            path: path.to_owned(),
            inode,
            _lock: lock,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the listener for the server; the file stays owned by `self`.
    pub fn listener(&mut self) -> std::io::Result<tokio::net::UnixListener> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| std::io::Error::other("listener already taken"))?;
        tokio::net::UnixListener::from_std(listener)
    }
}

impl Drop for CriSocket {
    fn drop(&mut self) {
        // Remove the file only if it is still the socket this daemon bound.
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| m.ino() == self.inode)
            .unwrap_or(false);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket");
            }
        }
    }
}

fn lock_file(path: &Path) -> Result<Flock<File>, SocketError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| SocketError::Io {
            path: lock_path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            SocketError::InUse {
                path: path.to_owned(),
            }
        } else {
            SocketError::Io {
                path: lock_path,
                source: errno.into(),
            }
        }
    })
}

/// Removes a socket file that nobody listens on any more.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing stale socket");
            std::fs::remove_file(path).map_err(|source| SocketError::Io {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(SocketError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_root_only_and_removes_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/berth.sock");
        let socket = CriSocket::bind(&path).expect("bind");
        let metadata = std::fs::metadata(&path).expect("socket exists");
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
        UnixStream::connect(&path).expect("listening");
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.sock");
        drop(UnixListener::bind(&path).expect("stale bind"));
        assert!(
            path.exists(),
            "std leaves the file behind, as a crash would"
        );
        let _socket = CriSocket::bind(&path).expect("stale socket replaced");
        UnixStream::connect(&path).expect("listening");
    }

    #[test]
    fn live_socket_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.sock");
        let _other = UnixListener::bind(&path).expect("other listener");
        let err = CriSocket::bind(&path).expect_err("in use");
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        assert!(path.exists(), "the other process's socket is untouched");
    }

    #[test]
    fn second_berthd_is_refused_by_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.sock");
        let _first = CriSocket::bind(&path).expect("first");
        let err = CriSocket::bind(&path).expect_err("second");
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.sock");
        std::fs::write(&path, b"precious").expect("write");
        let err = CriSocket::bind(&path).expect_err("not a socket");
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    }
}
