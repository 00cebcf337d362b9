//! Filesystem usage for CRI `ImageFsInfo`.
//!
//! Per-snapshot usage ([`Usage`]) is measured by walking a snapshot's `fs`
//! directory (`tree.rs`); committed snapshots are measured once, at commit,
//! and the number kept in their record. [`FsUsage`] adds the filesystem under
//! the root: its mount point, the mount in `/proc/self/mountinfo` that
//! contains the root (berth-mount's [`containing`]), and its size from
//! `statvfs(2)`.
//!
//! [`containing`]: berth_mount::mountinfo::containing

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{Error, Result};

/// What the snapshotter's root uses, and the filesystem it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// When this was measured.
    pub timestamp: SystemTime,
    /// Mount point of the filesystem holding the root (CRI `FilesystemIdentifier`).
    pub mountpoint: PathBuf,
    /// Bytes used by snapshots and metadata (allocated blocks).
    pub used_bytes: u64,
    /// Inodes used by snapshots and metadata.
    pub used_inodes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// Inodes of the filesystem.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

/// The size of the filesystem holding the snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
}

pub(crate) fn capacity(path: &Path) -> Result<Capacity> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| Error::io("statvfs", path, e))?;
    let frag = st.fragment_size();
    Ok(Capacity {
        total_bytes: st.blocks().saturating_mul(frag),
        available_bytes: st.blocks_available().saturating_mul(frag),
        total_inodes: st.files(),
        free_inodes: st.files_free(),
    })
}

/// The mount point of the filesystem holding `path`.
pub(crate) fn mountpoint(path: &Path) -> Result<PathBuf> {
    let path = std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
    let table = berth_mount::mountinfo::read_self()?;
    berth_mount::mountinfo::containing(&table, &path)
        .map(|m| m.mount_point.clone())
        .ok_or_else(|| {
            Error::io(
                "find the mount point of",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_a_mount_point_and_capacity() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mp = mountpoint(tmp.path()).expect("mountpoint");
        assert!(tmp.path().starts_with(&mp), "{mp:?}");
        let cap = capacity(tmp.path()).expect("statvfs");
        assert!(cap.total_bytes > 0 && cap.available_bytes <= cap.total_bytes);
    }
}
