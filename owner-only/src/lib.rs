//! Owner-only directories and files, for everything berth keeps about a
//! container: bundles and their rootfs mount points, snapshots, the content
//! store, the shims' logs, exit files and sockets, pod sandbox dirs.
//!
//! No other user of the node may reach any of it. Specs hold the
//! container's environment (secrets included), and a setuid binary that a
//! container writes into its own filesystem runs as root for any host user
//! who can reach it through the mount point (the class of CVE-2021-41103).
//! Directories are 0700, files 0600, set explicitly after creation so the
//! umask never decides; an existing directory that is looser is tightened.
//! This crate is the one home of those modes: the agent, the shim, the
//! snapshotter and the image service all create their files through it.
//!
//! Layout: [`create_dir`] and [`create_dir_all`] make directories,
//! [`open_options`], [`open`] and [`write()`] files, with [`DIR_MODE`] and
//! [`FILE_MODE`].

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of berth's own directories.
pub const DIR_MODE: u32 = 0o700;
/// The mode of berth's own files.
pub const FILE_MODE: u32 = 0o600;

/// Creates the directory `path` (its parent must exist) with mode 0700;
/// fails with `AlreadyExists` when it exists, as [`std::fs::create_dir`].
pub fn create_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Creates `path` and its missing parents, each with mode 0700, and
/// tightens `path` to 0700 when it exists looser. Parents that exist are
/// left as they are: they may be the system's (`/run`, `/var/lib`).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return restrict_dir(path);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            create_dir_all(parent)?;
        }
    }
    match create_dir(path) {
        // Another thread made it in between: still make sure of its mode.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => restrict_dir(path),
        other => other,
    }
}

/// Tightens the existing directory `path` to 0700 when its group or others
/// have any access; a stricter mode is kept.
pub fn restrict_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path)?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Options that create a file with mode 0600 (the umask can only remove
/// bits); [`open`] also tightens a file that exists.
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Opens `path` with `options` (from [`open_options`]) and sets the file's
/// mode to 0600, whoever created it.
pub fn open(options: &OpenOptions, path: &Path) -> io::Result<File> {
    let file = options.open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Writes `bytes` to `path` (created or truncated) with mode 0600.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = open(open_options().write(true).create(true).truncate(true), path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").mode() & 0o7777
    }

    #[test]
    fn directories_are_0700_at_every_created_level() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o755)).expect("chmod");
        let leaf = tmp.path().join("a/b/c");
        create_dir_all(&leaf).expect("create");
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&tmp.path().join(dir)), 0o700, "{dir}");
        }
        // The existing parent is the caller's (the system's) to choose.
        assert_eq!(mode(tmp.path()), 0o755);
        // Idempotent.
        create_dir_all(&leaf).expect("again");
    }

    #[test]
    fn a_looser_existing_directory_is_tightened_a_stricter_one_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).expect("mkdir");
        std::fs::set_permissions(&loose, Permissions::from_mode(0o711)).expect("chmod");
        create_dir_all(&loose).expect("tighten");
        assert_eq!(mode(&loose), 0o700);
        let strict = tmp.path().join("strict");
        std::fs::create_dir(&strict).expect("mkdir");
        std::fs::set_permissions(&strict, Permissions::from_mode(0o500)).expect("chmod");
        restrict_dir(&strict).expect("kept");
        assert_eq!(mode(&strict), 0o500);
    }

    #[test]
    fn create_dir_refuses_an_existing_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = create_dir(tmp.path()).expect_err("exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn files_are_0600_new_or_existing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let new = tmp.path().join("new");
        write(&new, b"secret").expect("write");
        assert_eq!(mode(&new), 0o600);
        assert_eq!(std::fs::read(&new).expect("read"), b"secret");
        let old = tmp.path().join("old");
        std::fs::write(&old, b"x").expect("write");
        std::fs::set_permissions(&old, Permissions::from_mode(0o644)).expect("chmod");
        open(open_options().append(true).create(true), &old).expect("open");
        assert_eq!(mode(&old), 0o600);
    }
}
