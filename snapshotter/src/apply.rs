//! Applying a layer, an uncompressed tar stream, to an overlay upper directory.
//!
//! [`apply_layer`] streams entries into a directory that overlayfs will use as
//! one layer: file data is copied through a fixed buffer, never held whole.
//! OCI whiteouts become overlay whiteouts: `.wh.NAME` a character device 0/0
//! named `NAME`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its
//! directory ([image-spec layer.md](https://github.com/opencontainers/image-spec/blob/main/layer.md#whiteouts)).
//! A whiteout only hides lower layers, so one for an entry this same layer
//! already made leaves the entry (and makes a directory opaque), and an entry
//! after a whiteout of its path replaces the device (a directory then becomes
//! opaque: the layer deleted and recreated it).
//!
//! Kept from each entry: owner (uid/gid, numeric), mode with set-uid,
//! set-gid and sticky bits, mtime (PAX fractional seconds too; the access time
//! is set to the same value; directories last, after their contents), PAX
//! `SCHILY.xattr.*` attributes, hard links, symlinks, device nodes and fifos.
//! GNU and PAX long names and links are read by the `tar` crate.
//!
//! # Confinement
//!
//! A layer is untrusted. No entry may create, change or delete anything
//! outside the target directory, which the following rules guarantee without
//! any check-then-use race:
//!
//! - Paths are taken apart lexically. A leading `/` is stripped and `.`
//!   components are dropped (like containerd and Docker, which join absolute
//!   names to the root: such layers exist in the wild). Any `..` component is
//!   refused, even one that would stay inside (`a/../b`): real layers have
//!   none, and refusing is simpler to trust than normalising.
//! - Every directory is opened one component at a time from a descriptor of
//!   the target with `openat(O_NOFOLLOW | O_DIRECTORY)`, so the kernel never
//!   follows a symlink while berth resolves a path. A symlink in the way
//!   (planted earlier in the same layer, pointing anywhere) is refused with
//!   [`ApplyError::SymlinkInPath`]; berth never writes through one. This is
//!   stricter than containerd, which resolves symlinks scoped to the root;
//!   with parallel unpacking the lower layers are not visible anyway (see
//!   below). `openat2(RESOLVE_BENEATH)` would do the same walk in one call but
//!   needs Linux 5.6 and unsafe code; parents must be created one by one
//!   regardless.
//! - The last component is acted on with `*at` calls that do not follow it
//!   (`O_CREAT | O_EXCL | O_NOFOLLOW`, `mknodat`, `symlinkat`, `linkat`
//!   without `AT_SYMLINK_FOLLOW`, `AT_SYMLINK_NOFOLLOW`, `lsetxattr` through
//!   `/proc/self/fd/N/NAME`); an existing entry in the way is removed first
//!   (a directory with its contents, see `tree.rs`), never opened.
//! - A hard link's target is resolved by the same rules and must already
//!   exist in this layer: hard links into lower layers cannot be made when
//!   layers are unpacked in parallel into separate directories.
//! - A whiteout's name must be a single, non-empty component other than `.`
//!   and `..`. AUFS metadata (`.wh..wh.*` other than the opaque marker) is
//!   skipped, like Docker does.
//! - `trusted.overlay.*` attributes from the layer are dropped: they steer
//!   overlayfs (redirects, metacopy) and only berth's whiteout conversion may
//!   set them.
//! - Paths longer than `PATH_MAX` (4096 bytes) are refused: no tool could
//!   open them, and the limit bounds the directory depth an entry can create.
//!
//! Layers are applied into an empty directory with no view of the parent
//! layers, so entries such as `lib/x` where a lower layer has `lib` as a
//! symlink create a real directory `lib` in this layer (which then hides the
//! lower symlink). Layers written by Docker, BuildKit and containerd record the
//! real paths and are not affected.
//!
//! Device nodes are created as the layer says; whether a container may open
//! them is the device cgroup's business, not the unpacker's.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;

use crate::tree::{is_type, open_dir_at, remove_all_at, DIR_FLAGS};

/// The OCI marker that makes its directory opaque.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of OCI whiteouts.
const WHITEOUT: &[u8] = b".wh.";
/// Prefix of AUFS metadata, skipped.
const AUFS_META: &[u8] = b".wh..wh.";
/// The xattr overlayfs reads for opaque directories.
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";
/// Longest entry path accepted, Linux's `PATH_MAX`.
const MAX_PATH: usize = 4096;
/// Copy buffer for file data.
const BUFFER: usize = 64 * 1024;

/// What [`apply_layer`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries applied or skipped (extension headers not counted).
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Whiteouts and opaque markers converted.
    pub whiteouts: u64,
}

/// Why a layer could not be applied. Entry paths are shown as the archive has
/// them.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot open layer target directory {path}: {source}")]
    Target { path: PathBuf, source: io::Error },
    /// The tar stream is malformed or the reader failed.
    #[error("cannot read layer tar stream: {source}")]
    Read { source: io::Error },
    #[error("entry {path:?}: `..` is refused in layer paths")]
    ParentDir { path: PathBuf },
    /// A directory on the way is a symlink (berth never writes through one).
    #[error("entry {path:?}: {component:?} is a symlink, berth does not write through symlinks")]
    SymlinkInPath { path: PathBuf, component: PathBuf },
    #[error("entry {path:?}: {component:?} is not a directory")]
    NotADirectory { path: PathBuf, component: PathBuf },
    #[error("entry {path:?}: whiteout names no single file")]
    InvalidWhiteout { path: PathBuf },
    #[error("entry {path:?}: hard link target {target:?} does not exist in this layer")]
    LinkTargetMissing { path: PathBuf, target: PathBuf },
    #[error("entry {path:?}: hard link target {target:?} is a directory")]
    LinkTargetDirectory { path: PathBuf, target: PathBuf },
    #[error("entry {path:?}: {reason}")]
    InvalidEntry { path: PathBuf, reason: String },
    #[error("entry {path:?}: tar entry type {kind:?} is not supported")]
    UnsupportedType { path: PathBuf, kind: char },
    #[error("entry {path:?}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

/// Applies the tar stream `reader` to `target_dir`, an overlay upper
/// directory (normally empty, see [`Snapshotter::prepare_layer`]).
///
/// Reads the stream to its end, past the tar end marker, so that a reader
/// which computes a digest sees every byte. On error the directory is left
/// partly written; the caller removes the snapshot. The confinement rules are
/// in the module documentation.
///
/// [`Snapshotter::prepare_layer`]: crate::Snapshotter::prepare_layer
pub fn apply_layer(reader: impl Read, target_dir: &Path) -> Result<ApplyStats, ApplyError> {
    let root = open(
        target_dir,
        DIR_FLAGS.difference(OFlag::O_NOFOLLOW),
        Mode::empty(),
    )
    .map_err(|e| ApplyError::Target {
        path: target_dir.to_owned(),
        source: e.into(),
    })?;
    let mut applier = Applier {
        root,
        stats: ApplyStats::default(),
        dir_times: Vec::new(),
        buf: vec![0; BUFFER],
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .map_err(|source| ApplyError::Read { source })?
    {
        let mut entry = entry.map_err(|source| ApplyError::Read { source })?;
        applier.entry(&mut entry)?;
    }
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|source| ApplyError::Read { source })?;
    applier.finish()?;
    Ok(applier.stats)
}

/// Entry metadata berth keeps.
struct Meta {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Why a directory walk stopped, at which component (an index into the
/// components walked).
enum WalkError {
    Symlink(usize),
    NotDir(usize),
    Missing(usize),
    Io(&'static str, io::Error),
}

struct Applier {
    root: OwnedFd,
    stats: ApplyStats,
    /// Directories whose times are set after all entries.
    dir_times: Vec<(Vec<OsString>, TimeSpec)>,
    buf: Vec<u8>,
}

impl Applier {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Defaults for the whole archive; containerd ignores them too.
            return Ok(());
        }
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let path = PathBuf::from(OsString::from_vec(raw.clone()));
        let comps = components(&raw).map_err(|e| e.into_error(&path))?;

        if comps
            .iter()
            .any(|c| c.as_bytes().starts_with(AUFS_META) && c.as_bytes() != OPAQUE)
        {
            return Ok(());
        }
        if comps.last().is_some_and(|c| c.as_bytes() == OPAQUE) {
            return self.opaque(&path, &comps[..comps.len() - 1]);
        }
        let meta = Meta::read(entry, &path)?;
        if let Some(last) = comps.last() {
            if let Some(name) = last.as_bytes().strip_prefix(WHITEOUT) {
                return self.whiteout(&path, &comps[..comps.len() - 1], name, &meta);
            }
        }
        // Old (V7) archives mark directories with a trailing slash only.
        let is_dir = kind.is_dir() || (kind == EntryType::Regular && raw.ends_with(b"/"));
        let Some((name, parents)) = comps.split_last() else {
            if !is_dir {
                return Err(invalid(&path, "the root of a layer must be a directory"));
            }
            let root = self.root.try_clone().map_err(|e| io_err(&path, "dup", e))?;
            self.set_dir_meta(&path, root, &meta)?;
            self.dir_times.push((comps, meta.mtime));
            return Ok(());
        };
        let parent = self.open_dirs(&path, &comps, parents.len(), true)?;
        let parent = parent.as_fd();
        if is_dir {
            self.directory(&path, parent, name, &meta)?;
            self.dir_times.push((comps.clone(), meta.mtime));
            return Ok(());
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&path, parent, name, entry, &meta)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid(&path, "symlink without a target"))?
                    .into_owned();
                self.remove(&path, parent, name)?;
                symlinkat(target.as_slice(), parent, name.as_os_str())
                    .map_err(|e| io_err(&path, "symlink", e))?;
                self.set_meta_at(&path, parent, name, &meta, SFlag::S_IFLNK)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid(&path, "hard link without a target"))?
                    .into_owned();
                self.hard_link(&path, parent, name, &target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let header = entry.header();
                        let major = header
                            .device_major()
                            .map_err(|e| invalid(&path, format!("device major: {e}")))?
                            .unwrap_or(0);
                        let minor = header
                            .device_minor()
                            .map_err(|e| invalid(&path, format!("device minor: {e}")))?
                            .unwrap_or(0);
                        let sflag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, makedev(major.into(), minor.into()))
                    }
                };
                self.remove(&path, parent, name)?;
                mknodat(
                    parent,
                    name.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| io_err(&path, "mknod", e))?;
                self.set_meta_at(&path, parent, name, &meta, sflag)
            }
            other => Err(ApplyError::UnsupportedType {
                path,
                kind: char::from(other.as_byte()),
            }),
        }
    }

    /// Opens the directory made of the first `n` of `comps`, one component
    /// at a time without following symlinks. With `create`, missing
    /// directories are made (0755, owned by root) and a whiteout in the way
    /// becomes an opaque directory.
    fn open_dirs(
        &self,
        path: &Path,
        comps: &[OsString],
        n: usize,
        create: bool,
    ) -> Result<OwnedFd, ApplyError> {
        self.walk(&comps[..n], create)
            .map_err(|e| walk_error(path, comps, e))
    }

    fn walk(&self, comps: &[OsString], create: bool) -> Result<OwnedFd, WalkError> {
        let mut cur = self.root.try_clone().map_err(|e| WalkError::Io("dup", e))?;
        for (i, name) in comps.iter().enumerate() {
            cur = child_dir(cur.as_fd(), name, create).map_err(|e| match e {
                ChildError::Symlink => WalkError::Symlink(i),
                ChildError::NotDir => WalkError::NotDir(i),
                ChildError::Missing => WalkError::Missing(i),
                ChildError::Io(op, e) => WalkError::Io(op, e),
            })?;
        }
        Ok(cur)
    }

    fn opaque(&mut self, path: &Path, dir: &[OsString]) -> Result<(), ApplyError> {
        let fd = self.open_dirs(path, dir, dir.len(), true)?;
        set_opaque(fd.as_fd()).map_err(|e| io_err(path, "set opaque xattr", e))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn whiteout(
        &mut self,
        path: &Path,
        parents: &[OsString],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        if name.is_empty() || name == b"." || name == b".." {
            return Err(ApplyError::InvalidWhiteout {
                path: path.to_owned(),
            });
        }
        let name = OsStr::from_bytes(name);
        let parent = self.open_dirs(path, parents, parents.len(), true)?;
        let parent = parent.as_fd();
        self.stats.whiteouts += 1;
        match stat_at(parent, name).map_err(|e| io_err(path, "stat", e))? {
            None => {}
            // This layer made the entry: a whiteout only hides lower layers.
            Some(st) if is_type(st.st_mode, SFlag::S_IFDIR) => {
                let dir = open_dir_at(parent, name).map_err(|e| io_err(path, "open", e))?;
                return set_opaque(dir.as_fd()).map_err(|e| io_err(path, "set opaque xattr", e));
            }
            Some(_) => return Ok(()),
        }
        mknodat(parent, name, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| io_err(path, "mknod whiteout", e))?;
        fchownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(path, "chown", e))
    }

    fn directory(
        &mut self,
        path: &Path,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        let existing = stat_at(parent, name).map_err(|e| io_err(path, "stat", e))?;
        let fd = match existing {
            Some(st) if is_type(st.st_mode, SFlag::S_IFDIR) => {
                open_dir_at(parent, name).map_err(|e| io_err(path, "open", e))?
            }
            _ => {
                let replaces_whiteout = existing.is_some_and(|st| is_whiteout(&st));
                if existing.is_some() {
                    self.remove(path, parent, name)?;
                }
                mkdirat(parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| io_err(path, "mkdir", e))?;
                let fd = open_dir_at(parent, name).map_err(|e| io_err(path, "open", e))?;
                if replaces_whiteout {
                    set_opaque(fd.as_fd()).map_err(|e| io_err(path, "set opaque xattr", e))?;
                }
                fd
            }
        };
        self.set_dir_meta(path, fd, meta)
    }

    fn set_dir_meta(&self, path: &Path, fd: OwnedFd, meta: &Meta) -> Result<(), ApplyError> {
        fchown(fd.as_fd(), Some(meta.uid), Some(meta.gid)).map_err(|e| io_err(path, "chown", e))?;
        fchmod(fd.as_fd(), meta.mode).map_err(|e| io_err(path, "chmod", e))?;
        set_xattrs(path, &File::from(fd), &meta.xattrs, SFlag::S_IFDIR)
    }

    fn file<R: Read>(
        &mut self,
        path: &Path,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        data: &mut R,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        self.remove(path, parent, name)?;
        let fd = openat(
            parent,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(path, "create", e))?;
        let mut file = File::from(fd);
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ApplyError::Read { source }),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| io_err(path, "write", e))?;
            self.stats.bytes += n as u64;
        }
        // Owner before mode: chown clears set-uid and set-gid. Attributes
        // after both: chown clears security.capability.
        fchown(file.as_fd(), Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_err(path, "chown", e))?;
        fchmod(file.as_fd(), meta.mode).map_err(|e| io_err(path, "chmod", e))?;
        set_xattrs(path, &file, &meta.xattrs, SFlag::S_IFREG)?;
        futimens(file.as_fd(), &meta.mtime, &meta.mtime).map_err(|e| io_err(path, "set times", e))
    }

    fn hard_link(
        &mut self,
        path: &Path,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &[u8],
    ) -> Result<(), ApplyError> {
        let target_path = PathBuf::from(OsStr::from_bytes(target));
        let tcomps = components(target).map_err(|e| match e {
            PathError::ParentDir => ApplyError::ParentDir {
                path: path.to_owned(),
            },
            other => invalid(
                path,
                format!("hard link target {target_path:?}: {}", other.reason()),
            ),
        })?;
        let Some((tname, tparents)) = tcomps.split_last() else {
            return Err(ApplyError::LinkTargetDirectory {
                path: path.to_owned(),
                target: target_path,
            });
        };
        let missing = || ApplyError::LinkTargetMissing {
            path: path.to_owned(),
            target: target_path.clone(),
        };
        let tparent = match self.walk(tparents, false) {
            Ok(fd) => fd,
            Err(WalkError::Missing(_)) => return Err(missing()),
            Err(e) => return Err(walk_error(path, &tcomps, e)),
        };
        let tst = stat_at(tparent.as_fd(), tname)
            .map_err(|e| io_err(path, "stat link target", e))?
            .ok_or_else(missing)?;
        if is_type(tst.st_mode, SFlag::S_IFDIR) {
            return Err(ApplyError::LinkTargetDirectory {
                path: path.to_owned(),
                target: target_path,
            });
        }
        if let Some(st) = stat_at(parent, name).map_err(|e| io_err(path, "stat", e))? {
            if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino {
                return Ok(());
            }
            self.remove(path, parent, name)?;
        }
        linkat(
            tparent.as_fd(),
            tname.as_os_str(),
            parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|e| io_err(path, "link", e))
    }

    /// Sets owner, mode, xattrs and times of a non-directory, non-regular
    /// entry just made at `name` (symlinks keep mode 0777).
    fn set_meta_at(
        &mut self,
        path: &Path,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        kind: SFlag,
    ) -> Result<(), ApplyError> {
        fchownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(path, "chown", e))?;
        if kind != SFlag::S_IFLNK {
            fchmodat(parent, name, meta.mode, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| io_err(path, "chmod", e))?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr on /proc/self/fd/N/NAME: the directory is the one
            // resolved above and the last component is not followed.
            let proc_path = Path::new("/proc/self/fd")
                .join(parent.as_raw_fd().to_string())
                .join(name);
            for (key, value) in &meta.xattrs {
                if let Err(e) = xattr::set(&proc_path, key, value) {
                    skip_or_fail(path, key, e, kind)?;
                }
            }
        }
        utimensat(
            parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(path, "set times", e))
    }

    /// Removes whatever is at `name` (nothing if missing).
    fn remove(&self, path: &Path, parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), ApplyError> {
        remove_all_at(parent, name).map_err(|e| io_err(path, "remove existing entry", e))
    }

    /// Sets directory times, now that nothing will be written into them.
    fn finish(&mut self) -> Result<(), ApplyError> {
        for (comps, mtime) in self.dir_times.iter().rev() {
            let path = PathBuf::from_iter(comps);
            let Some((name, parents)) = comps.split_last() else {
                futimens(self.root.as_fd(), mtime, mtime)
                    .map_err(|e| io_err(&path, "set times", e))?;
                continue;
            };
            // Later entries may have removed or replaced it: then skip it.
            let Ok(parent) = self.walk(parents, false) else {
                continue;
            };
            match utimensat(
                parent.as_fd(),
                name.as_os_str(),
                mtime,
                mtime,
                UtimensatFlags::NoFollowSymlink,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io_err(&path, "set times", e)),
            }
        }
        Ok(())
    }
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<Self, ApplyError> {
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| invalid(path, format!("mode: {e}")))?;
        let uid = header
            .uid()
            .map_err(|e| invalid(path, format!("uid: {e}")))?;
        let gid = header
            .gid()
            .map_err(|e| invalid(path, format!("gid: {e}")))?;
        let mtime = header
            .mtime()
            .map_err(|e| invalid(path, format!("mtime: {e}")))?;
        let uid =
            u32::try_from(uid).map_err(|_| invalid(path, format!("uid {uid} is too large")))?;
        let gid =
            u32::try_from(gid).map_err(|_| invalid(path, format!("gid {gid} is too large")))?;
        let mut meta = Meta {
            mode: Mode::from_bits_truncate(mode & 0o7777),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mtime: TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0),
            xattrs: Vec::new(),
        };
        let Some(pax) = entry
            .pax_extensions()
            .map_err(|source| ApplyError::Read { source })?
        else {
            return Ok(meta);
        };
        for ext in pax {
            let ext = ext.map_err(|source| ApplyError::Read { source })?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.starts_with(b"trusted.overlay.") {
                    tracing::warn!(entry = ?path, xattr = %String::from_utf8_lossy(name), "dropping overlayfs attribute from layer");
                    continue;
                }
                meta.xattrs.push((
                    OsStr::from_bytes(name).to_owned(),
                    ext.value_bytes().to_vec(),
                ));
            } else if key == b"mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    meta.mtime = t;
                }
            }
        }
        Ok(meta)
    }
}

/// Parses a PAX time, `SECONDS[.FRACTION]`, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(if negative && nanos > 0 {
        TimeSpec::new(secs - 1, 1_000_000_000 - nanos)
    } else {
        TimeSpec::new(secs, nanos)
    })
}

/// Why an archive path was refused.
#[derive(Debug, PartialEq, Eq)]
enum PathError {
    ParentDir,
    Nul,
    TooLong,
}

impl PathError {
    fn reason(&self) -> &'static str {
        match self {
            PathError::ParentDir => "`..` is refused in layer paths",
            PathError::Nul => "path contains a NUL byte",
            PathError::TooLong => "path is longer than 4096 bytes",
        }
    }

    fn into_error(self, path: &Path) -> ApplyError {
        match self {
            PathError::ParentDir => ApplyError::ParentDir {
                path: path.to_owned(),
            },
            other => invalid(path, other.reason()),
        }
    }
}

/// Splits an archive path into its components: a leading `/` and `.`
/// components are dropped, `..` is refused. No components means the root.
fn components(raw: &[u8]) -> Result<Vec<OsString>, PathError> {
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    if raw.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let mut comps = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathError::ParentDir),
            c => comps.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    Ok(comps)
}

enum ChildError {
    Symlink,
    NotDir,
    Missing,
    Io(&'static str, io::Error),
}

/// Opens (with `create`: makes) directory `name` in `parent`.
fn child_dir(parent: BorrowedFd<'_>, name: &OsStr, create: bool) -> Result<OwnedFd, ChildError> {
    let io = |op| move |e: Errno| ChildError::Io(op, e.into());
    let make = |opaque: bool| -> Result<OwnedFd, ChildError> {
        mkdirat(parent, name, Mode::from_bits_truncate(0o700)).map_err(io("mkdir"))?;
        let fd = open_dir_at(parent, name).map_err(io("open"))?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o755)).map_err(io("chmod"))?;
        if opaque {
            set_opaque(fd.as_fd()).map_err(|e| ChildError::Io("set opaque xattr", e))?;
        }
        Ok(fd)
    };
    match open_dir_at(parent, name) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) if create => make(false),
        Err(Errno::ENOENT) => Err(ChildError::Missing),
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io("stat"))?;
            if is_type(st.st_mode, SFlag::S_IFLNK) {
                Err(ChildError::Symlink)
            } else if create && is_whiteout(&st) {
                // The layer deleted this directory and now writes into it.
                nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .map_err(io("remove whiteout"))?;
                make(true)
            } else {
                Err(ChildError::NotDir)
            }
        }
        Err(e) => Err(ChildError::Io("open", e.into())),
    }
}

fn walk_error(path: &Path, comps: &[OsString], e: WalkError) -> ApplyError {
    let upto = |i: usize| PathBuf::from_iter(&comps[..=i]);
    match e {
        WalkError::Symlink(i) => ApplyError::SymlinkInPath {
            path: path.to_owned(),
            component: upto(i),
        },
        WalkError::NotDir(i) => ApplyError::NotADirectory {
            path: path.to_owned(),
            component: upto(i),
        },
        WalkError::Missing(i) => invalid(path, format!("{:?} does not exist", upto(i))),
        WalkError::Io(op, e) => io_err(path, op, e),
    }
}

fn stat_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An overlay whiteout: a character device with device number 0/0.
fn is_whiteout(st: &FileStat) -> bool {
    is_type(st.st_mode, SFlag::S_IFCHR) && st.st_rdev == 0
}

fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    let file = File::from(dir.try_clone_to_owned()?);
    xattr::FileExt::set_xattr(&file, OVERLAY_OPAQUE, b"y")
}

fn set_xattrs(
    path: &Path,
    file: &File,
    xattrs: &[(OsString, Vec<u8>)],
    kind: SFlag,
) -> Result<(), ApplyError> {
    for (key, value) in xattrs {
        if let Err(e) = xattr::FileExt::set_xattr(file, key, value) {
            skip_or_fail(path, key, e, kind)?;
        }
    }
    Ok(())
}

/// Attributes the filesystem cannot store (`ENOTSUP`), and `user.*` ones,
/// which Linux allows on regular files and directories only (`EPERM`), are
/// skipped with a warning, like containerd does; anything else fails.
fn skip_or_fail(path: &Path, key: &OsStr, e: io::Error, kind: SFlag) -> Result<(), ApplyError> {
    let unsupported = e.raw_os_error() == Some(Errno::ENOTSUP as i32);
    let not_here = e.raw_os_error() == Some(Errno::EPERM as i32)
        && kind != SFlag::S_IFREG
        && kind != SFlag::S_IFDIR;
    if unsupported || not_here {
        tracing::warn!(entry = ?path, xattr = ?key, error = %e, "skipping extended attribute");
        Ok(())
    } else {
        Err(ApplyError::Io {
            path: path.to_owned(),
            op: "set extended attribute",
            source: e,
        })
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ApplyError {
    ApplyError::InvalidEntry {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, op: &'static str, e: impl Into<io::Error>) -> ApplyError {
    ApplyError::Io {
        path: path.to_owned(),
        op,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Builds layers in memory, including entries the `tar` builder refuses.
    struct Layer {
        b: tar::Builder<Vec<u8>>,
    }

    impl Default for Layer {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Layer {
        fn new() -> Self {
            Layer {
                b: tar::Builder::new(Vec::new()),
            }
        }

        fn header(kind: EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(1_600_000_000);
            h.set_size(0);
            h
        }

        /// An entry whose name is written into the header as is.
        fn raw(
            &mut self,
            name: &[u8],
            kind: EntryType,
            data: &[u8],
            link: Option<&[u8]>,
        ) -> &mut Self {
            let mut h = Self::header(kind, 0o644, 0, 0);
            if kind == EntryType::Directory {
                h.set_mode(0o755);
            }
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            }
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.b.append(&h, data).expect("append raw entry");
            self
        }

        /// A PAX extended header for the next entry.
        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            let mut data = Vec::new();
            for (key, value) in records {
                let body = key.len() + value.len() + 3;
                let mut len = body + body.to_string().len();
                if len.to_string().len() != body.to_string().len() {
                    len = body + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut h = Self::header(EntryType::XHeader, 0o644, 0, 0);
            h.as_old_mut().name[..12].copy_from_slice(b"PaxHeader/x\0");
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.b.append(&h, data.as_slice()).expect("append pax");
            self
        }

        /// A GNU long name header for the next entry.
        fn gnu_long_name(&mut self, name: &[u8]) -> &mut Self {
            let mut data = name.to_vec();
            data.push(0);
            let mut h = Self::header(EntryType::GNULongName, 0o644, 0, 0);
            h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.b
                .append(&h, data.as_slice())
                .expect("append long name");
            self
        }

        fn dir(&mut self, path: &str) -> &mut Self {
            self.dir_with(path, 0o755, 0, 0)
        }

        fn dir_with(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
            let mut h = Self::header(EntryType::Directory, mode, uid, gid);
            self.b
                .append_data(&mut h, path, io::empty())
                .expect("append dir");
            self
        }

        fn file(&mut self, path: &str, data: &str) -> &mut Self {
            self.file_with(path, data.as_bytes(), 0o644, 0, 0)
        }

        fn file_with(
            &mut self,
            path: &str,
            data: &[u8],
            mode: u32,
            uid: u64,
            gid: u64,
        ) -> &mut Self {
            let mut h = Self::header(EntryType::Regular, mode, uid, gid);
            h.set_size(data.len() as u64);
            self.b.append_data(&mut h, path, data).expect("append file");
            self
        }

        fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0);
            self.b
                .append_link(&mut h, path, target)
                .expect("append symlink");
            self
        }

        fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
            let mut h = Self::header(EntryType::Link, 0o644, 0, 0);
            self.b
                .append_link(&mut h, path, target)
                .expect("append hard link");
            self
        }

        fn node(
            &mut self,
            path: &str,
            kind: EntryType,
            major: u32,
            minor: u32,
            mode: u32,
        ) -> &mut Self {
            let mut h = Self::header(kind, mode, 0, 0);
            h.set_device_major(major).expect("major");
            h.set_device_minor(minor).expect("minor");
            self.b
                .append_data(&mut h, path, io::empty())
                .expect("append node");
            self
        }

        fn finish(&mut self) -> Vec<u8> {
            let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
            b.into_inner().expect("finish tar")
        }
    }

    /// Owners, devices and `trusted.*` attributes need root (CI runs as root).
    fn assert_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test must run as root"
        );
    }

    fn apply(layer: &mut Layer, target: &Path) -> Result<ApplyStats, ApplyError> {
        apply_layer(layer.finish().as_slice(), target)
    }

    fn meta(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn paths_are_split_lexically() {
        let c = |s: &[u8]| {
            components(s).map(|v| {
                v.iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(c(b"a/b/c"), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(
            c(b"/abs//x/./y/"),
            Ok(vec!["abs".into(), "x".into(), "y".into()])
        );
        assert_eq!(c(b"./"), Ok(vec![]));
        assert_eq!(c(b"/"), Ok(vec![]));
        assert_eq!(c(b"..."), Ok(vec!["...".into()]));
        assert_eq!(c(b"a/../b"), Err(PathError::ParentDir));
        assert_eq!(c(b".."), Err(PathError::ParentDir));
        assert_eq!(c(b"a\0b"), Err(PathError::Nul));
        assert_eq!(c(&[b'a'; 4097]), Err(PathError::TooLong));
    }

    #[test]
    fn pax_times_are_parsed() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(
            t("1700000000.123456789123"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("x"), None);
        assert_eq!(t("1.2x"), None);
    }

    #[test]
    fn metadata_is_preserved() {
        assert_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        let long_dir = format!("data/{}", "long-directory-name-".repeat(4));
        let long_file = format!("{long_dir}/{}.txt", "f".repeat(120));
        let mut l = Layer::new();
        l.dir_with("./", 0o751, 0, 0)
            .dir_with("tmp", 0o1777, 0, 0)
            .dir_with("data", 0o755, 0, 0)
            .file_with("data/suid", b"suid\n", 0o4755, 0, 0)
            .file_with("data/sgid", b"sgid\n", 0o2711, 0, 42)
            .file_with("data/owned", b"owned\n", 0o600, 1234, 5678)
            .hardlink("data/hard-owned", "data/owned")
            .symlink("data/link", "owned")
            .node("dev/null", EntryType::Char, 1, 3, 0o666)
            .node("dev/loop0", EntryType::Block, 7, 0, 0o660)
            .node("run/fifo", EntryType::Fifo, 0, 0, 0o620)
            .pax(&[
                ("SCHILY.xattr.user.berth", b"yes"),
                ("mtime", b"1600000000.25"),
            ])
            .file("data/xattr", "x")
            .pax(&[("SCHILY.xattr.user.dir", b"d")])
            .dir("data/xdir")
            .pax(&[("SCHILY.xattr.trusted.berth", b"on-a-fifo")])
            .node("run/xfifo", EntryType::Fifo, 0, 0, 0o600)
            .file(&long_file, "long name\n")
            .file("data/zzz-written-last", "z");
        let stats = apply(&mut l, t).expect("apply");
        assert_eq!(stats.entries, 16, "{stats:?}");
        assert_eq!(stats.bytes, 5 + 5 + 6 + 1 + 10 + 1);

        assert_eq!(meta(t).mode() & 0o7777, 0o751);
        assert_eq!(meta(&t.join("tmp")).mode() & 0o7777, 0o1777);
        assert_eq!(meta(&t.join("data/suid")).mode() & 0o7777, 0o4755);
        let sgid = meta(&t.join("data/sgid"));
        assert_eq!((sgid.mode() & 0o7777, sgid.gid()), (0o2711, 42));
        let owned = meta(&t.join("data/owned"));
        assert_eq!(
            (owned.uid(), owned.gid(), owned.mode() & 0o7777),
            (1234, 5678, 0o600)
        );
        assert_eq!(owned.nlink(), 2);
        assert_eq!(meta(&t.join("data/hard-owned")).ino(), owned.ino());
        assert_eq!(
            fs::read_link(t.join("data/link")).expect("readlink"),
            Path::new("owned")
        );
        assert_eq!(meta(&t.join("data/link")).mtime(), 1_600_000_000);
        let null = meta(&t.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!((null.rdev(), null.mode() & 0o7777), (makedev(1, 3), 0o666));
        let lp = meta(&t.join("dev/loop0"));
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), makedev(7, 0));
        let fifo = meta(&t.join("run/fifo"));
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o620);
        assert_eq!(
            xattr::get(t.join("data/xattr"), "user.berth").expect("getxattr"),
            Some(b"yes".to_vec())
        );
        let x = meta(&t.join("data/xattr"));
        assert_eq!((x.mtime(), x.mtime_nsec()), (1_600_000_000, 250_000_000));
        assert_eq!(
            xattr::get(t.join("data/xdir"), "user.dir").expect("getxattr"),
            Some(b"d".to_vec())
        );
        assert_eq!(
            xattr::get(t.join("run/xfifo"), "trusted.berth").expect("getxattr"),
            Some(b"on-a-fifo".to_vec())
        );
        assert_eq!(
            fs::read_to_string(t.join(&long_file)).expect("long"),
            "long name\n"
        );
        // Directory times are set after their contents were written; implicit
        // parents are 0755.
        assert_eq!(meta(&t.join("data")).mtime(), 1_600_000_000);
        assert_eq!(meta(t).mtime(), 1_600_000_000);
        let dev = meta(&t.join("dev"));
        assert_eq!((dev.mode() & 0o7777, dev.uid()), (0o755, 0));
    }

    #[test]
    fn gnu_long_names_are_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let name = format!("d/{}", "n".repeat(200));
        let mut l = Layer::new();
        l.gnu_long_name(name.as_bytes())
            .raw(b"ignored", EntryType::Regular, b"gnu", None);
        apply(&mut l, tmp.path()).expect("apply");
        assert_eq!(fs::read(tmp.path().join(&name)).expect("read"), b"gnu");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        assert_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        let mut l = Layer::new();
        l.dir("d")
            .file_with("d/.wh.gone", b"", 0o644, 7, 8)
            .file("d/sub/.wh..wh..opq", "")
            .file(".wh..wh..plnk/123", "aufs hard link store")
            .file(".wh..wh.aufs", "");
        let stats = apply(&mut l, t).expect("apply");
        assert_eq!(stats.whiteouts, 2);
        let wh = meta(&t.join("d/gone"));
        assert!(wh.file_type().is_char_device());
        assert_eq!((wh.rdev(), wh.uid(), wh.gid()), (0, 7, 8));
        assert_eq!(
            xattr::get(t.join("d/sub"), OVERLAY_OPAQUE).expect("getxattr"),
            Some(b"y".to_vec())
        );
        assert!(!t.join("d/.wh.gone").exists());
        assert!(!t.join("d/sub/.wh..wh..opq").exists());
        assert!(!t.join(".wh..wh..plnk").exists());
        assert!(!t.join(".wh..wh.aufs").exists());
    }

    #[test]
    fn whiteouts_only_hide_lower_layers() {
        assert_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        let mut l = Layer::new();
        l.file("f", "kept")
            .file(".wh.f", "")
            .dir("d")
            .file("d/x", "x")
            .file(".wh.d", "")
            .file(".wh.g", "")
            .file("g", "recreated")
            .file(".wh.e", "")
            .dir("e")
            .file(".wh.h", "")
            .file("h/y", "y");
        apply(&mut l, t).expect("apply");
        let opaque = |p: &str| xattr::get(t.join(p), OVERLAY_OPAQUE).expect("getxattr");
        assert_eq!(fs::read_to_string(t.join("f")).expect("f"), "kept");
        assert_eq!(fs::read_to_string(t.join("d/x")).expect("d/x"), "x");
        assert_eq!(opaque("d"), Some(b"y".to_vec()), "deleted below, made here");
        assert_eq!(fs::read_to_string(t.join("g")).expect("g"), "recreated");
        assert!(meta(&t.join("e")).is_dir());
        assert_eq!(opaque("e"), Some(b"y".to_vec()));
        assert_eq!(fs::read_to_string(t.join("h/y")).expect("h/y"), "y");
        assert_eq!(opaque("h"), Some(b"y".to_vec()));
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        let mut l = Layer::new();
        l.file("a", "file")
            .dir("a")
            .file("a/inner", "i")
            .dir("b")
            .file("b/deep/x", "x")
            .file("b", "now a file")
            .symlink("c", "/etc/passwd")
            .file("c", "not a link")
            .file("d", "one")
            .file("d", "two")
            .dir_with("e", 0o700, 0, 0)
            .dir_with("e", 0o755, 3, 3);
        apply(&mut l, t).expect("apply");
        assert_eq!(fs::read_to_string(t.join("a/inner")).expect("a/inner"), "i");
        assert_eq!(fs::read_to_string(t.join("b")).expect("b"), "now a file");
        assert!(meta(&t.join("c")).is_file());
        assert_eq!(fs::read_to_string(t.join("d")).expect("d"), "two");
        let e = meta(&t.join("e"));
        assert_eq!((e.mode() & 0o7777, e.uid()), (0o755, 3));
    }

    #[test]
    fn overlay_attributes_from_layers_are_dropped() {
        assert_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut l = Layer::new();
        l.pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.kept", b"1"),
        ])
        .dir("d");
        apply(&mut l, tmp.path()).expect("apply");
        let d = tmp.path().join("d");
        assert_eq!(
            xattr::get(&d, "trusted.overlay.redirect").expect("get"),
            None
        );
        assert_eq!(xattr::get(&d, OVERLAY_OPAQUE).expect("get"), None);
        assert_eq!(
            xattr::get(&d, "user.kept").expect("get"),
            Some(b"1".to_vec())
        );
    }

    /// Counts what the reader handed out.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn the_stream_is_read_past_the_end_marker() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let big = vec![0x5a; 3 * BUFFER + 17];
        let mut l = Layer::new();
        l.file_with("big", &big, 0o644, 0, 0);
        let mut bytes = l.finish();
        // Writers pad to a 10 KiB record; digests cover the padding.
        bytes.resize(bytes.len() + 10240, 0);
        let total = bytes.len() as u64;
        let mut reader = Counting {
            inner: bytes.as_slice(),
            read: 0,
        };
        let stats = apply_layer(&mut reader, tmp.path()).expect("apply");
        assert_eq!(reader.read, total);
        assert_eq!(stats.bytes, big.len() as u64);
        assert_eq!(fs::read(tmp.path().join("big")).expect("read"), big);
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut l = Layer::new();
        l.file_with("big", &[1u8; 5000], 0o644, 0, 0);
        let bytes = l.finish();
        let err = apply_layer(&bytes[..2000], tmp.path()).expect_err("truncated");
        assert!(matches!(err, ApplyError::Read { .. }), "{err}");
        let mut corrupt = bytes.clone();
        corrupt[148] ^= 0x01; // the checksum field
        let err = apply_layer(corrupt.as_slice(), tmp.path()).expect_err("corrupt");
        assert!(matches!(err, ApplyError::Read { .. }), "{err}");
        let err = apply_layer(&b""[..], &tmp.path().join("missing")).expect_err("no target");
        assert!(matches!(err, ApplyError::Target { .. }), "{err}");
    }

    // ---- hostile layers ----

    /// What a hostile layer must lead to.
    enum Expect {
        Refused(fn(&ApplyError) -> bool),
        /// Applied, confined; the check looks at the target.
        Confined(fn(&Path)),
    }

    /// A description of a tree that changes when anything in it does.
    fn fingerprint(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            let m = meta(&p);
            let mut attrs: Vec<String> = xattr::list(&p)
                .expect("listxattr")
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            attrs.sort();
            let content = if m.is_file() {
                fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} mode={:o} uid={} gid={} mtime={} len={} xattrs={attrs:?} content={content:?}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.len()
            ));
            if m.is_dir() {
                for e in fs::read_dir(&p).expect("read_dir") {
                    stack.push(e.expect("entry").path());
                }
            }
        }
        out.sort();
        out
    }

    fn ls(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn hostile_layers_are_refused_or_confined() {
        assert_root();
        let pid = std::process::id();
        let abs_name = format!("berth-apply-escape-{pid}");
        type Build = Box<dyn Fn(&mut Layer, &Path)>;
        let cases: Vec<(&str, Build, Expect)> = vec![
            (
                "dotdot file",
                Box::new(|l, _| {
                    l.raw(b"../escape", EntryType::Regular, b"pwned", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "dotdot nested",
                Box::new(|l, _| {
                    l.raw(b"a/../../escape", EntryType::Regular, b"pwned", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "dotdot that would stay inside",
                Box::new(|l, _| {
                    l.raw(b"a/../b", EntryType::Regular, b"x", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "dotdot directory",
                Box::new(|l, _| {
                    l.raw(b"../sentinel/", EntryType::Directory, b"", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "dotdot in a PAX path",
                Box::new(|l, _| {
                    l.pax(&[("path", b"../pax-escape")]).raw(
                        b"harmless",
                        EntryType::Regular,
                        b"pwned",
                        None,
                    );
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "dotdot in a GNU long name",
                Box::new(|l, _| {
                    l.gnu_long_name(b"../gnu-escape").raw(
                        b"harmless",
                        EntryType::Regular,
                        b"pwned",
                        None,
                    );
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "absolute file is confined",
                Box::new({
                    let name = abs_name.clone();
                    move |l, _| {
                        l.raw(
                            format!("/{name}").as_bytes(),
                            EntryType::Regular,
                            b"inside",
                            None,
                        );
                    }
                }),
                Expect::Confined(|t| {
                    let name = format!("berth-apply-escape-{}", std::process::id());
                    assert_eq!(fs::read(t.join(&name)).expect("confined file"), b"inside");
                    assert!(!Path::new("/").join(&name).exists());
                }),
            ),
            (
                "absolute path below /etc is confined",
                Box::new({
                    let name = abs_name.clone();
                    move |l, _| {
                        l.raw(
                            format!("/etc/{name}/x").as_bytes(),
                            EntryType::Regular,
                            b"inside",
                            None,
                        );
                    }
                }),
                Expect::Confined(|t| {
                    let name = format!("berth-apply-escape-{}", std::process::id());
                    assert!(t.join("etc").join(&name).join("x").is_file());
                    assert!(!Path::new("/etc").join(&name).exists());
                }),
            ),
            (
                "file through a relative symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel").file("link/pwned", "pwned");
                }),
                Expect::Refused(
                    |e| matches!(e, ApplyError::SymlinkInPath { component, .. } if component == Path::new("link")),
                ),
            ),
            (
                "file through an absolute symlink",
                Box::new(|l, tmp| {
                    let abs = tmp.join("sentinel");
                    l.symlink("link", abs.to_str().expect("utf-8"))
                        .file("link/pwned", "pwned");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "file through a symlink to /",
                Box::new(|l, _| {
                    l.symlink("root", "/").file("root/tmp/pwned", "pwned");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "directory through a symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel").dir("link/sub");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "nested symlink",
                Box::new(|l, _| {
                    l.dir("a")
                        .symlink("a/b", "../../sentinel")
                        .file("a/b/c/pwned", "pwned");
                }),
                Expect::Refused(
                    |e| matches!(e, ApplyError::SymlinkInPath { component, .. } if component == Path::new("a/b")),
                ),
            ),
            (
                "symlink chain",
                Box::new(|l, _| {
                    l.symlink("l1", "l2")
                        .symlink("l2", "../sentinel")
                        .file("l1/pwned", "pwned");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "symlink in a PAX path",
                Box::new(|l, _| {
                    let long = format!("link/{}", "p".repeat(150));
                    l.symlink("link", "../sentinel")
                        .pax(&[("path", long.as_bytes())])
                        .raw(b"short", EntryType::Regular, b"pwned", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "file replacing a symlink does not write its target",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel/file").file("link", "pwned");
                }),
                Expect::Confined(|t| {
                    assert!(meta(&t.join("link")).is_file());
                    assert_eq!(fs::read(t.join("link")).expect("read"), b"pwned");
                }),
            ),
            (
                "directory replacing a symlink does not chmod its target",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel")
                        .dir_with("link", 0o777, 1, 1);
                }),
                Expect::Confined(|t| assert!(meta(&t.join("link")).is_dir())),
            ),
            (
                "device replacing a symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel/file").node(
                        "link",
                        EntryType::Fifo,
                        0,
                        0,
                        0o666,
                    );
                }),
                Expect::Confined(|t| assert!(meta(&t.join("link")).file_type().is_fifo())),
            ),
            (
                "hard link replacing a symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel/file")
                        .file("f", "f")
                        .hardlink("link", "f");
                }),
                Expect::Confined(|t| {
                    assert_eq!(meta(&t.join("link")).ino(), meta(&t.join("f")).ino())
                }),
            ),
            (
                "xattrs on a symlink stay on the link",
                Box::new(|l, _| {
                    l.pax(&[
                        ("SCHILY.xattr.trusted.berth", b"x"),
                        ("SCHILY.xattr.user.berth", b"x"),
                    ])
                    .symlink("link", "../sentinel/file");
                }),
                Expect::Confined(|t| {
                    assert!(meta(&t.join("link")).file_type().is_symlink());
                    assert_eq!(
                        xattr::get(t.join("link"), "trusted.berth").expect("get"),
                        Some(b"x".to_vec())
                    );
                }),
            ),
            (
                "hard link to a file outside",
                Box::new(|l, _| {
                    l.raw(b"hl", EntryType::Link, b"", Some(b"../sentinel/file"));
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "hard link to an absolute path outside",
                Box::new(|l, tmp| {
                    let abs = tmp.join("sentinel/file");
                    l.hardlink("hl", abs.to_str().expect("utf-8"));
                }),
                Expect::Refused(|e| matches!(e, ApplyError::LinkTargetMissing { .. })),
            ),
            (
                "hard link to /etc/passwd",
                Box::new(|l, _| {
                    l.hardlink("hl", "/etc/passwd");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::LinkTargetMissing { .. })),
            ),
            (
                "hard link through a symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel").hardlink("hl", "link/file");
                }),
                Expect::Refused(
                    |e| matches!(e, ApplyError::SymlinkInPath { component, .. } if component == Path::new("link")),
                ),
            ),
            (
                "hard link to a symlink links the symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel/file").hardlink("hl", "link");
                }),
                Expect::Confined(|t| assert!(meta(&t.join("hl")).file_type().is_symlink())),
            ),
            (
                "hard link to a directory",
                Box::new(|l, _| {
                    l.dir("d").hardlink("hl", "d");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::LinkTargetDirectory { .. })),
            ),
            (
                "hard link to nothing",
                Box::new(|l, _| {
                    l.hardlink("hl", "nope");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::LinkTargetMissing { .. })),
            ),
            (
                "hard link placed through a symlink",
                Box::new(|l, _| {
                    l.file("f", "f")
                        .symlink("link", "../sentinel")
                        .hardlink("link/hl", "f");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "whiteout named ..",
                Box::new(|l, _| {
                    l.raw(b"a/.wh..", EntryType::Regular, b"", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::InvalidWhiteout { .. })),
            ),
            (
                "whiteout with an empty name",
                Box::new(|l, _| {
                    l.raw(b".wh.", EntryType::Regular, b"", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::InvalidWhiteout { .. })),
            ),
            (
                "whiteout outside",
                Box::new(|l, _| {
                    l.raw(b"../.wh.sentinel", EntryType::Regular, b"", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::ParentDir { .. })),
            ),
            (
                "whiteout through a symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel").file("link/.wh.file", "");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "opaque through a symlink",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel")
                        .file("link/.wh..wh..opq", "");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "opaque through an absolute symlink",
                Box::new(|l, tmp| {
                    let abs = tmp.join("sentinel");
                    l.symlink("link", abs.to_str().expect("utf-8"))
                        .file("link/.wh..wh..opq", "");
                }),
                Expect::Refused(|e| matches!(e, ApplyError::SymlinkInPath { .. })),
            ),
            (
                "whiteout of a symlink removes only the link",
                Box::new(|l, _| {
                    l.symlink("link", "../sentinel").file(".wh.link", "");
                }),
                Expect::Confined(|t| assert!(meta(&t.join("link")).file_type().is_symlink())),
            ),
            (
                "file below a file",
                Box::new(|l, _| {
                    l.file("f", "f").file("f/x", "x");
                }),
                Expect::Refused(
                    |e| matches!(e, ApplyError::NotADirectory { component, .. } if component == Path::new("f")),
                ),
            ),
            (
                "root as a symlink",
                Box::new(|l, _| {
                    l.raw(b"./", EntryType::Symlink, b"", Some(b"../sentinel"));
                }),
                Expect::Refused(|e| matches!(e, ApplyError::InvalidEntry { .. })),
            ),
            (
                "NUL in a PAX path",
                Box::new(|l, _| {
                    l.pax(&[("path", b"a\0b")])
                        .raw(b"x", EntryType::Regular, b"", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::InvalidEntry { .. })),
            ),
            (
                "path longer than PATH_MAX",
                Box::new(|l, _| {
                    let long = "d/".repeat(2100);
                    l.pax(&[("path", long.as_bytes())])
                        .raw(b"x", EntryType::Directory, b"", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::InvalidEntry { .. })),
            ),
            (
                "unsupported entry type",
                Box::new(|l, _| {
                    l.raw(b"vol", EntryType::new(b'V'), b"", None);
                }),
                Expect::Refused(|e| matches!(e, ApplyError::UnsupportedType { kind: 'V', .. })),
            ),
        ];

        for (name, build, expect) in cases {
            let tmp = tempfile::tempdir().expect("tempdir");
            let target = tmp.path().join("target");
            let sentinel = tmp.path().join("sentinel");
            fs::create_dir(&target).expect("target");
            fs::create_dir_all(sentinel.join("dir")).expect("sentinel");
            fs::write(sentinel.join("file"), "sentinel\n").expect("sentinel file");
            let before = fingerprint(&sentinel);

            let mut layer = Layer::new();
            build(&mut layer, tmp.path());
            let result = apply(&mut layer, &target);
            match (&expect, &result) {
                (Expect::Refused(ok), Err(e)) => assert!(ok(e), "{name}: wrong error: {e}"),
                (Expect::Confined(check), Ok(_)) => check(&target),
                (Expect::Refused(_), Ok(stats)) => {
                    panic!("{name}: applied ({stats:?}), should be refused")
                }
                (Expect::Confined(_), Err(e)) => {
                    panic!("{name}: refused ({e}), should be confined")
                }
            }
            assert_eq!(fingerprint(&sentinel), before, "{name}: sentinel changed");
            assert_eq!(
                ls(tmp.path()),
                ["sentinel", "target"],
                "{name}: something appeared next to the target"
            );
            for escaped in ["escape", "pax-escape", "gnu-escape", "pwned"] {
                assert!(!tmp.path().join(escaped).exists(), "{name}: {escaped}");
            }
        }
        assert!(!Path::new("/").join(&abs_name).exists());
        assert!(!Path::new("/etc").join(&abs_name).exists());
    }
}
