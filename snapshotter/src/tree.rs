//! Walking and removing directory trees through directory descriptors, never
//! following symlinks.
//!
//! A running container changes its upper directory while berth measures or
//! removes it, and a layer may plant symlinks, so a path is never resolved
//! again from the top: each directory is opened relative to its parent's
//! descriptor with `O_NOFOLLOW`, and whatever is found is stat'ed with
//! `AT_SYMLINK_NOFOLLOW`. A walk holds at most [`OPEN_DIRS`] descriptors and
//! uses no recursion: deeper directories give up their descriptor and are
//! reopened by name from the nearest ancestor still held, so a tree of any
//! depth is handled with bounded memory and descriptors.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Directory descriptors a walk keeps open at most.
const OPEN_DIRS: usize = 64;

/// Flags to open a directory without following a symlink in its last component.
pub(crate) const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens directory `name` in `parent` without following a symlink.
pub(crate) fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(parent, name, DIR_FLAGS, Mode::empty())
}

/// Whether a `st_mode` names a file of type `kind`.
pub(crate) fn is_type(st_mode: u32, kind: SFlag) -> bool {
    st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// Bytes and inodes of a directory tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Disk space in bytes (allocated blocks × 512, like `du`), hard links
    /// counted once.
    pub bytes: u64,
    /// Inodes, the top directory included, hard links counted once.
    pub inodes: u64,
}

struct Frame {
    /// Name in the parent frame's directory (empty for the top).
    name: OsString,
    /// `None` once given up to bound the descriptors held.
    fd: Option<OwnedFd>,
    /// Entries not visited yet.
    pending: Vec<(OsString, Option<Type>)>,
}

/// A depth-first walk; the caller decides which entries to enter.
struct Walk {
    frames: Vec<Frame>,
}

impl Walk {
    fn new(top: OwnedFd) -> nix::Result<Self> {
        let pending = read_names(top.as_fd())?;
        Ok(Walk {
            frames: vec![Frame {
                name: OsString::new(),
                fd: Some(top),
                pending,
            }],
        })
    }

    /// Makes sure the innermost directory has a descriptor.
    fn ensure_fd(&mut self) -> nix::Result<()> {
        let last = self.frames.len() - 1;
        if self.frames[last].fd.is_some() {
            return Ok(());
        }
        let held = self.frames[..last]
            .iter()
            .rposition(|f| f.fd.is_some())
            .expect("the top frame always keeps its descriptor");
        let mut fd = open_dir_at(
            self.frames[held]
                .fd
                .as_ref()
                .expect("found by rposition")
                .as_fd(),
            &self.frames[held + 1].name,
        )?;
        for frame in &self.frames[held + 2..=last] {
            fd = open_dir_at(fd.as_fd(), &frame.name)?;
        }
        self.frames[last].fd = Some(fd);
        Ok(())
    }

    /// The innermost directory; call [`Walk::ensure_fd`] first.
    fn fd(&self) -> BorrowedFd<'_> {
        self.frames
            .last()
            .and_then(|f| f.fd.as_ref())
            .expect("ensure_fd was called before fd")
            .as_fd()
    }

    fn next_entry(&mut self) -> Option<(OsString, Option<Type>)> {
        self.frames.last_mut().and_then(|f| f.pending.pop())
    }

    /// Enters directory `name` of the innermost directory; `Ok(false)` when it
    /// is gone or no longer a directory.
    fn enter(&mut self, name: OsString) -> nix::Result<bool> {
        let fd = match open_dir_at(self.fd(), &name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(false),
            Err(e) => return Err(e),
        };
        let pending = read_names(fd.as_fd())?;
        self.frames.push(Frame {
            name,
            fd: Some(fd),
            pending,
        });
        let depth = self.frames.len();
        if depth > OPEN_DIRS {
            // Keep the top frame's descriptor: reopening starts there.
            self.frames[depth - OPEN_DIRS].fd = None;
        }
        Ok(true)
    }

    /// Leaves the innermost directory and returns its name, or `None` when the
    /// walk is over.
    fn leave(&mut self) -> Option<OsString> {
        let frame = self.frames.pop().expect("a walk has frames until it ends");
        if self.frames.is_empty() {
            None
        } else {
            Some(frame.name)
        }
    }
}

/// Names in a directory (without `.` and `..`), with their type when the
/// filesystem reports it.
fn read_names(fd: BorrowedFd<'_>) -> nix::Result<Vec<(OsString, Option<Type>)>> {
    // A fresh descriptor, so the read position is our own.
    let mut dir = Dir::openat(fd, ".", DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push((OsStr::from_bytes(name).to_owned(), entry.file_type()));
    }
    Ok(names)
}

/// Removes `name` in `parent` and, if it is a directory, everything below it.
/// Symlinks are removed, never followed; a missing `name` is not an error.
pub(crate) fn remove_all_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let top = match open_dir_at(parent, name) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut walk = Walk::new(top)?;
    loop {
        walk.ensure_fd()?;
        match walk.next_entry() {
            Some((entry, kind)) => {
                if kind != Some(Type::Directory) {
                    match unlinkat(walk.fd(), entry.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => continue,
                        Err(Errno::EISDIR) => {}
                        Err(e) => return Err(e),
                    }
                }
                if !walk.enter(entry.clone())? {
                    match unlinkat(walk.fd(), entry.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            None => match walk.leave() {
                Some(done) => {
                    walk.ensure_fd()?;
                    match unlinkat(walk.fd(), done.as_os_str(), UnlinkatFlags::RemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    return match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
            },
        }
    }
}

/// Removes the directory tree at `path` (whose own path is trusted), like
/// [`remove_all_at`]. A missing `path` is not an error.
pub(crate) fn remove_all(path: &Path) -> nix::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Errno::EINVAL);
    };
    let parent = match open(
        parent,
        DIR_FLAGS.difference(OFlag::O_NOFOLLOW),
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_all_at(parent.as_fd(), name)
}

/// Disk usage of the tree at `path`, which must be a directory (its own path
/// is trusted). Does not cross into other filesystems mounted below it.
pub(crate) fn disk_usage(path: &Path) -> nix::Result<Usage> {
    let top = open(path, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())?;
    let st = fstat(top.as_fd())?;
    let dev = st.st_dev;
    let mut usage = Usage {
        bytes: block_bytes(st.st_blocks),
        inodes: 1,
    };
    let mut linked = HashSet::new();
    let mut walk = Walk::new(top)?;
    loop {
        walk.ensure_fd()?;
        match walk.next_entry() {
            Some((entry, _)) => {
                let st = match fstatat(walk.fd(), entry.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
                let is_dir = is_type(st.st_mode, SFlag::S_IFDIR);
                if !is_dir && st.st_nlink > 1 && !linked.insert(st.st_ino) {
                    continue;
                }
                usage.bytes += block_bytes(st.st_blocks);
                usage.inodes += 1;
                if is_dir && st.st_dev == dev {
                    walk.enter(entry)?;
                }
            }
            None => {
                if walk.leave().is_none() {
                    return Ok(usage);
                }
            }
        }
    }
}

fn block_bytes(blocks: i64) -> u64 {
    u64::try_from(blocks).unwrap_or(0) * 512
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn sentinel(dir: &Path) -> PathBuf {
        let s = dir.join("sentinel");
        fs::create_dir(&s).expect("create sentinel");
        fs::write(s.join("keep"), b"keep").expect("write sentinel file");
        s
    }

    #[test]
    fn remove_all_does_not_follow_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = sentinel(tmp.path());
        let victim = tmp.path().join("victim");
        fs::create_dir_all(victim.join("a/b")).expect("mkdir");
        symlink(&s, victim.join("a/to-sentinel")).expect("symlink");
        symlink(&s, victim.join("a/b/to-sentinel-dir")).expect("symlink");
        fs::write(victim.join("a/b/file"), b"x").expect("write");
        remove_all(&victim).expect("remove");
        assert!(!victim.exists());
        assert_eq!(fs::read(s.join("keep")).expect("sentinel kept"), b"keep");
        // Removing what does not exist is fine.
        remove_all(&victim).expect("remove again");
    }

    #[test]
    fn remove_all_at_removes_a_symlink_to_a_directory_not_its_target() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = sentinel(tmp.path());
        symlink(&s, tmp.path().join("link")).expect("symlink");
        let parent = open(tmp.path(), DIR_FLAGS, Mode::empty()).expect("open");
        remove_all_at(parent.as_fd(), OsStr::new("link")).expect("remove");
        assert!(fs::symlink_metadata(tmp.path().join("link")).is_err());
        assert!(s.join("keep").exists());
    }

    /// Deeper than the descriptor window, so directories are reopened.
    fn deep_tree(top: &Path, depth: usize) {
        let mut p = top.to_path_buf();
        for i in 0..depth {
            p.push(format!("d{i}"));
        }
        fs::create_dir_all(&p).expect("mkdir deep");
        fs::write(p.join("leaf"), b"leaf").expect("write leaf");
        // A sibling at every tenth level, visited after the deep branch.
        let mut q = top.to_path_buf();
        for i in 0..depth {
            q.push(format!("d{i}"));
            if i % 10 == 0 {
                fs::write(q.join("side"), b"s").expect("write side");
            }
        }
    }

    #[test]
    fn deep_trees_are_measured_and_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let top = tmp.path().join("deep");
        let depth = 3 * OPEN_DIRS + 7;
        deep_tree(&top, depth);
        let usage = disk_usage(&top).expect("usage");
        // top + depth dirs + leaf + one side file per ten levels
        assert_eq!(
            usage.inodes,
            1 + depth as u64 + 1 + depth.div_ceil(10) as u64
        );
        remove_all(&top).expect("remove");
        assert!(!top.exists());
    }

    #[test]
    fn usage_counts_hard_links_once_and_does_not_follow_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = sentinel(tmp.path());
        fs::write(s.join("big"), vec![7u8; 1 << 20]).expect("big sentinel file");
        let top = tmp.path().join("t");
        fs::create_dir(&top).expect("mkdir");
        fs::write(top.join("f"), vec![1u8; 100_000]).expect("write");
        fs::hard_link(top.join("f"), top.join("g")).expect("link");
        symlink(&s, top.join("s")).expect("symlink");
        let usage = disk_usage(&top).expect("usage");
        assert_eq!(usage.inodes, 3, "top, f (= g), s");
        assert!(usage.bytes >= 100_000, "{usage:?}");
        assert!(
            usage.bytes < 1 << 20,
            "the sentinel was not counted: {usage:?}"
        );
    }
}
