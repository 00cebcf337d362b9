//! Pod namespaces that outlive every process: bind-mounted namespace files.
//!
//! A sandbox's network, IPC and UTS namespaces are created without a pause
//! process: a throw-away OS thread unshares the namespace and bind-mounts
//! its `/proc/thread-self/ns/<kind>` onto a file under the state dir; the
//! mount keeps the namespace alive after the thread exits. The thread is
//! never returned to tokio's pool, so no task ever runs in a foreign
//! namespace (the rule of containerd's `pkg/netns`).

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::{Path, PathBuf};

/// A kind of namespace berth pins for a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    Network,
    Ipc,
    Uts,
}

impl NamespaceKind {
    fn clone_flag(self) -> CloneFlags {
        match self {
            Self::Network => CloneFlags::CLONE_NEWNET,
            Self::Ipc => CloneFlags::CLONE_NEWIPC,
            Self::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }

    /// The name in `/proc/<pid>/ns/` and in OCI specs' `linux.namespaces`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Self::Network => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
        }
    }
}

/// Why a namespace could not be created or removed.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot create {kind} namespace file {path}: {source}")]
    Create {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unshare {kind} namespace: {source}")]
    Unshare {
        kind: &'static str,
        source: nix::Error,
    },
    #[error("cannot bind-mount {kind} namespace onto {path}: {source}")]
    Mount {
        kind: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("cannot unmount namespace {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
    #[error("cannot remove namespace file {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespace thread for {path} panicked")]
    ThreadPanicked { path: PathBuf },
}

/// Creates a new namespace of `kind` pinned at `path` (which must not
/// exist). On error nothing is left at `path`.
pub fn create(kind: NamespaceKind, path: &Path) -> Result<(), NamespaceError> {
    let name = kind.proc_name();
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| NamespaceError::Create {
            kind: name,
            path: path.to_owned(),
            source,
        })?;
    let target = path.to_owned();
    let pinned = std::thread::Builder::new()
        .name(format!("berth-{name}ns"))
        .spawn(move || -> Result<(), NamespaceError> {
            unshare(kind.clone_flag())
                .map_err(|source| NamespaceError::Unshare { kind: name, source })?;
            let own = format!("/proc/thread-self/ns/{name}");
            mount(
                Some(own.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NamespaceError::Mount {
                kind: name,
                path: target.clone(),
                source,
            })
            // The thread ends here and takes its private namespace with it;
            // the bind mount keeps the new namespace alive.
        })
        .map_err(|source| NamespaceError::Create {
            kind: name,
            path: path.to_owned(),
            source,
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(NamespaceError::ThreadPanicked {
                path: path.to_owned(),
            })
        });
    if pinned.is_err() {
        let _ = std::fs::remove_file(path);
    }
    pinned
}

/// Unmounts and removes a pinned namespace. Removing one that is already
/// gone succeeds, so teardown can be retried after a crash.
pub fn remove(path: &Path) -> Result<(), NamespaceError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NamespaceError::Unmount {
                path: path.to_owned(),
                source,
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NamespaceError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// True when `path` is a pinned namespace (an nsfs bind mount).
pub fn is_pinned(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Pins the existing namespace file `source` (such as `/proc/<pid>/ns/pid`)
/// at `path` (which must not exist) with a bind mount. On error nothing is
/// left at `path`.
pub fn pin_existing(source: &Path, path: &Path) -> Result<(), NamespaceError> {
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| NamespaceError::Create {
            kind: "pinned",
            path: path.to_owned(),
            source,
        })?;
    let mounted = mount(
        Some(source),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NamespaceError::Mount {
        kind: "pinned",
        path: path.to_owned(),
        source,
    });
    if mounted.is_err() {
        let _ = std::fs::remove_file(path);
    }
    mounted
}

/// Runs `f` on a fresh OS thread that has joined the network namespace at
/// `path`; the thread is discarded afterwards.
pub fn run_in_network_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NamespaceError> {
    run_in_namespace(NamespaceKind::Network, path, f)
}

/// Runs `f` on a fresh OS thread that has joined the namespace of `kind` at
/// `path`; the thread is discarded afterwards, so no other code ever runs
/// in the namespace.
pub fn run_in_namespace<T: Send + 'static>(
    kind: NamespaceKind,
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NamespaceError> {
    let name = kind.proc_name();
    let path = path.to_owned();
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name(format!("berth-in-{name}ns"))
        .spawn(move || -> Result<T, NamespaceError> {
            let file =
                std::fs::File::open(&thread_path).map_err(|source| NamespaceError::Create {
                    kind: name,
                    path: thread_path.clone(),
                    source,
                })?;
            nix::sched::setns(&file, kind.clone_flag())
                .map_err(|source| NamespaceError::Unshare { kind: name, source })?;
            Ok(f())
        })
        .map_err(|source| NamespaceError::Create {
            kind: name,
            path: path.clone(),
            source,
        })?
        .join()
        .unwrap_or(Err(NamespaceError::ThreadPanicked { path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode_of(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("namespace file").ino()
    }

    #[test]
    fn pinned_namespaces_differ_from_ours_and_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for kind in [
            NamespaceKind::Network,
            NamespaceKind::Ipc,
            NamespaceKind::Uts,
        ] {
            let path = dir.path().join(kind.proc_name());
            create(kind, &path).expect("create namespace (tests run as root)");
            assert!(is_pinned(&path), "{kind:?} is an nsfs mount");
            use std::os::unix::fs::MetadataExt;
            let pinned = std::fs::metadata(&path).expect("stat").ino();
            assert_ne!(
                pinned,
                inode_of(&format!("/proc/self/ns/{}", kind.proc_name()))
            );
            remove(&path).expect("remove");
            assert!(!path.exists());
            remove(&path).expect("removing twice is fine");
        }
    }

    #[test]
    fn existing_path_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("net");
        std::fs::write(&path, b"keep").expect("write");
        assert!(matches!(
            create(NamespaceKind::Network, &path),
            Err(NamespaceError::Create { .. })
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"keep");
    }

    #[test]
    fn code_runs_inside_the_network_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("net");
        create(NamespaceKind::Network, &path).expect("create");
        let pinned = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).expect("stat").ino()
        };
        let seen = run_in_network_namespace(&path, || inode_of("/proc/thread-self/ns/net"))
            .expect("run inside");
        assert_eq!(seen, pinned);
        // This thread never moved.
        assert_ne!(inode_of("/proc/thread-self/ns/net"), pinned);
        remove(&path).expect("remove");
    }

    #[test]
    fn code_runs_inside_ipc_and_uts_namespaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uts = dir.path().join("uts");
        create(NamespaceKind::Uts, &uts).expect("create");
        let host = nix::unistd::gethostname().expect("hostname");
        let seen = run_in_namespace(NamespaceKind::Uts, &uts, || {
            nix::unistd::sethostname("berth-unit").expect("sethostname");
            nix::unistd::gethostname().expect("hostname")
        })
        .expect("run inside");
        assert_eq!(seen, "berth-unit");
        assert_eq!(nix::unistd::gethostname().expect("hostname"), host);
        let again = run_in_namespace(NamespaceKind::Uts, &uts, || {
            nix::unistd::gethostname().expect("hostname")
        })
        .expect("run inside");
        assert_eq!(again, "berth-unit", "the pinned namespace keeps it");
        remove(&uts).expect("remove");
    }

    #[test]
    fn existing_namespaces_are_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pid");
        pin_existing(Path::new("/proc/self/ns/pid"), &path).expect("pin");
        assert!(is_pinned(&path));
        assert_eq!(
            std::fs::metadata(&path)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .expect("stat"),
            inode_of("/proc/self/ns/pid")
        );
        remove(&path).expect("remove");
        assert!(!path.exists());
        assert!(pin_existing(Path::new("/nonexistent/ns"), &path).is_err());
        assert!(!path.exists(), "nothing left after a failed pin");
    }
}
