//! Mounting the rootfs a `CreateTaskRequest` carries, and unmounting it.
//!
//! The mount itself is the snapshotter's ([`berth_snapshotter::Mount`]:
//! flags split from data as containerd's `mount_linux.go` does, read-only
//! binds remounted). mount(2) takes at most one page of data; an overlay
//! whose data is longer gets its `lowerdir` paths made relative to their
//! common parent and is mounted from a thread that changes to that
//! directory (containerd's `compactLowerdirOption`).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sched::{unshare, CloneFlags};

const LOWERDIR: &str = "lowerdir=";
const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Mount(#[from] berth_snapshotter::MountError),
    #[error("mount options for {} are {len} bytes, more than one page", target.display())]
    TooLong { target: PathBuf, len: usize },
    #[error("change to the lower directories' parent {}: {source}", dir.display())]
    Chdir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmount {}: {source}", target.display())]
    Unmount {
        target: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("read {MOUNTINFO}: {0}")]
    MountInfo(#[source] std::io::Error),
}

/// Rewrites the `lowerdir=` option relative to the lower directories'
/// common parent, returned with the new options. `None` if there is no
/// such parent below `/` (or fewer than two lower directories).
fn compact_lowerdir(options: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let lower = options.iter().find_map(|o| o.strip_prefix(LOWERDIR))?;
    let dirs: Vec<&str> = lower.split(':').collect();
    if dirs.len() < 2 {
        return None;
    }
    let first = dirs[0];
    let common = dirs[1..].iter().fold(first.len(), |len, d| {
        first
            .bytes()
            .zip(d.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count()
    });
    // Cut back to a whole directory: `/s/1` and `/s/12` share `/s/`.
    let slash = first.as_bytes()[..common]
        .iter()
        .rposition(|&b| b == b'/')?;
    let parent = &first[..=slash];
    if parent == "/" {
        return None;
    }
    let relative: Vec<&str> = dirs.iter().map(|d| &d[parent.len()..]).collect();
    let options = options
        .iter()
        .map(|o| match o.strip_prefix(LOWERDIR) {
            Some(_) => format!("{LOWERDIR}{}", relative.join(":")),
            None => o.clone(),
        })
        .collect();
    Some((PathBuf::from(parent), options))
}

/// Mounts `m` on `target`, an existing directory, as the snapshotter
/// mounts its snapshots. Blocks.
pub fn mount_rootfs(m: &Mount, target: &Path) -> Result<(), MountError> {
    let rootfs = berth_snapshotter::Mount {
        fs_type: m.type_.clone(),
        source: m.source.clone(),
        options: m.options.clone(),
    };
    match rootfs.mount(target) {
        Err(berth_snapshotter::MountError::OptionsTooLong { len, .. }) => {
            mount_compacted(rootfs, target, len)
        }
        mounted => Ok(mounted?),
    }
}

/// Mounts an overlay whose options exceed one page with its `lowerdir`
/// relative to the lower directories' parent, from a thread working there.
fn mount_compacted(
    mut rootfs: berth_snapshotter::Mount,
    target: &Path,
    len: usize,
) -> Result<(), MountError> {
    let too_long = || MountError::TooLong {
        target: target.to_owned(),
        len,
    };
    if rootfs.fs_type != "overlay" {
        return Err(too_long());
    }
    let (dir, options) = compact_lowerdir(&rootfs.options).ok_or_else(too_long)?;
    rootfs.options = options;
    let target = std::path::absolute(target).map_err(|source| MountError::Chdir {
        dir: target.to_owned(),
        source,
    })?;
    // The working directory is per process unless the thread unshares it;
    // the thread ends with the mount, so no other code sees the change.
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_FS)
                .map_err(std::io::Error::from)
                .and_then(|()| std::env::set_current_dir(&dir))
                .map_err(|source| MountError::Chdir {
                    dir: dir.clone(),
                    source,
                })?;
            Ok(rootfs.mount(&target)?)
        })
        .join()
        .expect("the mount thread does not panic")
    })
}

/// Unmounts everything at and under `target`, deepest first, including
/// mounts stacked on one another. Blocks.
pub fn unmount_recursive(target: &Path) -> Result<(), MountError> {
    let table = std::fs::read(MOUNTINFO).map_err(MountError::MountInfo)?;
    let mut points = mounts_under(&table, target);
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        loop {
            match umount2(&point, MntFlags::empty()) {
                Ok(()) => {}
                // Nothing (more) mounted there, or the path is gone.
                Err(Errno::EINVAL | Errno::ENOENT) => break,
                Err(source) => {
                    return Err(MountError::Unmount {
                        target: point,
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

/// The mount points in `mountinfo` (proc(5)) at or under `target`.
fn mounts_under(mountinfo: &[u8], target: &Path) -> Vec<PathBuf> {
    let target = target.as_os_str().as_bytes();
    let target = target.strip_suffix(b"/").unwrap_or(target);
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(unescape)
        .filter(|p| {
            p.strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
        })
        .map(|p| PathBuf::from(OsString::from_vec(p)))
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compacts_lowerdirs() {
        let options = strings(&[
            "index=off",
            "lowerdir=/var/lib/s/12/fs:/var/lib/s/1/fs:/var/lib/s/3/fs",
        ]);
        let (dir, options) = compact_lowerdir(&options).expect("compacts");
        assert_eq!(dir, Path::new("/var/lib/s/"));
        assert_eq!(options, strings(&["index=off", "lowerdir=12/fs:1/fs:3/fs"]));

        for no in [
            &["lowerdir=/a/fs"][..],
            &["lowerdir=/a/fs:/b/fs"],
            &["upperdir=/u"],
        ] {
            assert_eq!(compact_lowerdir(&strings(no)), None, "{no:?}");
        }
    }

    #[test]
    fn finds_mounts_under_a_target() {
        let table = b"\
22 1 0:21 / /run rw - tmpfs tmpfs rw
30 22 0:40 / /run/b/rootfs rw - overlay overlay rw,lowerdir=/x
31 30 0:41 / /run/b/rootfs/proc rw - proc proc rw
32 22 0:42 / /run/b/rootfs2 rw - tmpfs tmpfs rw
33 22 0:43 / /run/b/rootfs/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_under(table, Path::new("/run/b/rootfs/")),
            [
                "/run/b/rootfs",
                "/run/b/rootfs/proc",
                "/run/b/rootfs/with space"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(unescape(br"a\134b\0"), br"a\b\0");
    }

    #[test]
    fn mounts_and_unmounts_a_read_only_bind() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let (src, target) = (dir.path().join("src"), dir.path().join("target"));
        for d in [&src, &target] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let m = Mount {
            type_: "bind".into(),
            source: src.display().to_string(),
            options: strings(&["rbind", "ro"]),
            ..Default::default()
        };
        mount_rootfs(&m, &target).expect("mount");
        mount_rootfs(&m, &target).expect("mount again, stacked");
        let err = std::fs::write(target.join("f"), b"x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        unmount_recursive(&target).expect("unmount");
        std::fs::write(target.join("f"), b"x").expect("the plain directory again");
        assert!(!src.join("f").exists());
    }
}
