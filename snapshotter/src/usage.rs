//! Filesystem usage for CRI `ImageFsInfo`.
//!
//! Per-snapshot usage ([`Usage`]) is measured by walking a snapshot's `fs`
//! directory (`tree.rs`); committed snapshots are measured once, at commit,
//! and the number kept in their record. [`FsUsage`] adds the filesystem under
//! the root: its mount point, found in `/proc/self/mountinfo` (the longest
//! mount point that contains the root, the last one mounted there), and its
//! size from `statvfs(2)`.

use std::os::unix::ffi::OsStrExt;
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

/// The size of the filesystem holding `path`.
pub(crate) struct Capacity {
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
    const MOUNTINFO: &str = "/proc/self/mountinfo";
    let path = std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
    let text = std::fs::read(MOUNTINFO).map_err(|e| Error::io("read", MOUNTINFO, e))?;
    let points = mount_points(&text);
    best_mountpoint(&points, &path).ok_or_else(|| {
        Error::io(
            "find the mount point of",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// Mount points in mountinfo order (field 5, octal escapes undone).
fn mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(field))))
        .collect()
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(digits) = field.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// The longest mount point containing `path`; among equals the last.
fn best_mountpoint(points: &[PathBuf], path: &Path) -> Option<PathBuf> {
    let mut best: Option<&PathBuf> = None;
    for p in points {
        if path.starts_with(p) && best.is_none_or(|b| p.as_os_str().len() >= b.as_os_str().len()) {
            best = Some(p);
        }
    }
    best.cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
40 22 253:1 / /var/lib rw,relatime shared:3 - xfs /dev/vdb rw
41 40 253:2 / /var/lib/with\\040space rw,relatime shared:4 - ext4 /dev/vdc rw
42 40 253:3 / /var/lib/berth rw,relatime shared:5 - ext4 /dev/vdd rw
43 40 253:4 / /var/lib/berth rw,relatime shared:6 - ext4 /dev/vde rw
";

    #[test]
    fn mountinfo_is_parsed_and_the_longest_last_mount_point_wins() {
        let points = mount_points(SAMPLE.as_bytes());
        assert_eq!(points.len(), 6);
        assert_eq!(points[3], PathBuf::from("/var/lib/with space"));
        let cases = [
            ("/var/lib/berth/snapshotter", "/var/lib/berth"),
            ("/var/lib/berthx", "/var/lib"),
            ("/var/lib/with space/x", "/var/lib/with space"),
            ("/srv", "/"),
            ("/", "/"),
        ];
        for (path, want) in cases {
            assert_eq!(
                best_mountpoint(&points, Path::new(path)),
                Some(PathBuf::from(want)),
                "{path}"
            );
        }
    }

    #[test]
    fn escapes_are_undone_and_bad_ones_kept() {
        assert_eq!(unescape(br"a\040b\011c\012d\134e"), b"a b\tc\nd\\e");
        assert_eq!(unescape(br"a\04"), br"a\04");
        assert_eq!(unescape(br"a\999"), br"a\999");
        assert_eq!(unescape(br"trailing\\"), br"trailing\\");
    }

    #[test]
    fn this_machine_has_a_mount_point_and_capacity() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mp = mountpoint(tmp.path()).expect("mountpoint");
        assert!(tmp.path().starts_with(&mp), "{mp:?}");
        let cap = capacity(tmp.path()).expect("statvfs");
        assert!(cap.total_bytes > 0 && cap.available_bytes <= cap.total_bytes);
    }
}
