//! Mounts, as containerd's `mount.Mount`, mounting and unmounting them.
//!
//! Options are split like containerd's `mount_linux.go`: known flags become
//! `MS_*` bits, everything else is passed to the filesystem as data
//! (`lowerdir=…,upperdir=…`). A read-only bind mount needs a second,
//! remounting call, because `MS_RDONLY` is ignored on the first.
//!
//! mount(2) takes at most one page of data. An overlay whose data is longer
//! gets its `lowerdir` paths made relative to their common parent and is
//! mounted from a thread working in that directory (containerd's
//! `compactLowerdirOption`): `12/fs:11/fs:…` instead of
//! `/var/lib/berth/snapshotter/snapshots/12/fs:…`.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::{mountinfo, Error, Result};

/// The largest data string mount(2) accepts: one page, less the final NUL.
const MAX_DATA: usize = 4095;

const LOWERDIR: &str = "lowerdir=";

/// A mount that makes a filesystem appear at a target, as containerd and
/// the shim v2 protocol describe it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mount {
    /// Filesystem type: `overlay`, `bind`, `tmpfs`, ... (containerd's `type`).
    pub fs_type: String,
    /// `overlay` for overlay mounts, the directory for bind mounts.
    pub source: String,
    /// Mount options, for example `ro`, `rbind`, `lowerdir=…`.
    pub options: Vec<String>,
}

/// `MS_*` flags named by options; `true` sets the flag, `false` clears it.
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("async", false, MsFlags::MS_SYNCHRONOUS),
    ("atime", false, MsFlags::MS_NOATIME),
    ("bind", true, MsFlags::MS_BIND),
    ("defaults", false, MsFlags::empty()),
    ("dev", false, MsFlags::MS_NODEV),
    ("diratime", false, MsFlags::MS_NODIRATIME),
    ("dirsync", true, MsFlags::MS_DIRSYNC),
    ("exec", false, MsFlags::MS_NOEXEC),
    ("noatime", true, MsFlags::MS_NOATIME),
    ("nodev", true, MsFlags::MS_NODEV),
    ("nodiratime", true, MsFlags::MS_NODIRATIME),
    ("noexec", true, MsFlags::MS_NOEXEC),
    ("norelatime", false, MsFlags::MS_RELATIME),
    ("nostrictatime", false, MsFlags::MS_STRICTATIME),
    ("nosuid", true, MsFlags::MS_NOSUID),
    ("rbind", true, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("relatime", true, MsFlags::MS_RELATIME),
    ("remount", true, MsFlags::MS_REMOUNT),
    ("ro", true, MsFlags::MS_RDONLY),
    ("rw", false, MsFlags::MS_RDONLY),
    ("strictatime", true, MsFlags::MS_STRICTATIME),
    ("suid", false, MsFlags::MS_NOSUID),
    ("sync", true, MsFlags::MS_SYNCHRONOUS),
];

/// The flags a read-only bind's remount keeps from the first call.
const REMOUNT_KEEPS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

/// Splits options into mount flags and the filesystem's data string.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match FLAGS.iter().find(|(name, _, _)| name == option) {
            Some((_, true, f)) => flags.insert(*f),
            Some((_, false, f)) => flags.remove(*f),
            None => data.push(option.as_str()),
        }
    }
    (flags, data.join(","))
}

impl Mount {
    /// Mounts this at `target`, an existing directory.
    pub fn mount(&self, target: &Path) -> Result<()> {
        let (flags, data) = parse_options(&self.options);
        if data.len() <= MAX_DATA {
            return self.mount_parsed(target, flags, &data);
        }
        let too_long = |len: usize| Error::OptionsTooLong {
            target: target.to_owned(),
            len,
            max: MAX_DATA,
        };
        let compacted = (self.fs_type == "overlay")
            .then(|| compact_lowerdir(&self.options))
            .flatten();
        let Some((dir, options)) = compacted else {
            return Err(too_long(data.len()));
        };
        let (flags, data) = parse_options(&options);
        if data.len() > MAX_DATA {
            return Err(too_long(data.len()));
        }
        let target = std::path::absolute(target).map_err(|source| self.error(target, source))?;
        // The working directory is per process unless the thread unshares
        // it; the thread ends with the mount, so no other code sees the
        // change. A new thread shares the mount namespace of the one that
        // spawns it, so the mount lands where a direct one would.
        std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_FS)
                    .map_err(std::io::Error::from)
                    .and_then(|()| std::env::set_current_dir(&dir))
                    .map_err(|source| Error::Chdir {
                        dir: dir.clone(),
                        source,
                    })?;
                self.mount_parsed(&target, flags, &data)
            })
            .join()
            .expect("the mount thread does not panic")
        })
    }

    fn mount_parsed(&self, target: &Path, flags: MsFlags, data: &str) -> Result<()> {
        let fs_type = (self.fs_type != "bind").then_some(self.fs_type.as_str());
        let data = (!data.is_empty()).then_some(data);
        mount(Some(self.source.as_str()), target, fs_type, flags, data)
            .map_err(|e| self.error(target, e.into()))?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let remount = MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | (flags & REMOUNT_KEEPS);
            if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
                // Do not leave a writable mount behind.
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(self.error(target, e.into()));
            }
        }
        Ok(())
    }

    fn error(&self, target: &Path, source: std::io::Error) -> Error {
        Error::Mount {
            fs_type: self.fs_type.clone(),
            src: self.source.clone(),
            target: target.to_owned(),
            source,
        }
    }
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

/// Mounts `mounts` at `target` in order (snapshots give exactly one).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    mounts.iter().try_for_each(|m| m.mount(target))
}

/// Unmounts the top mount at `target`.
pub fn unmount(target: &Path) -> Result<()> {
    umount2(target, MntFlags::empty()).map_err(|e| Error::Unmount {
        target: target.to_owned(),
        source: e.into(),
    })
}

/// Unmounts everything at and under `target`, deepest first, including
/// mounts stacked on one another; stops at the first mount that will not
/// go (busy, for example).
pub fn unmount_recursive(target: &Path) -> Result<()> {
    for point in points_under(target)? {
        // Unmount until nothing (more) is mounted there.
        loop {
            match umount2(&point, MntFlags::empty()) {
                Ok(()) => {}
                Err(Errno::EINVAL | Errno::ENOENT) => break,
                Err(e) => {
                    return Err(Error::Unmount {
                        target: point,
                        source: e.into(),
                    })
                }
            }
        }
    }
    Ok(())
}

/// Detaches everything at and under `target` (`MNT_DETACH`: busy mounts
/// go from the namespace now and from the kernel when no longer used),
/// deepest first. Tries every mount; returns the first failure.
pub fn detach_recursive(target: &Path) -> Result<()> {
    let mut first_error = None;
    for point in points_under(target)? {
        match umount2(&point, MntFlags::MNT_DETACH) {
            // Gone already, with a mount above it.
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => {
                first_error.get_or_insert(Error::Unmount {
                    target: point,
                    source: e.into(),
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The mount points at and under `target`, deepest first and, at equal
/// depth, the last mounted first.
fn points_under(target: &Path) -> Result<Vec<PathBuf>> {
    let table = mountinfo::read_self()?;
    let mut points: Vec<PathBuf> = mountinfo::under(&table, target)
        .rev()
        .map(|m| m.mount_point.clone())
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MountInfo;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn mounted_under(dir: &Path) -> Vec<PathBuf> {
        let table = mountinfo::read_self().expect("mountinfo");
        mountinfo::under(&table, dir)
            .map(|m| m.mount_point.clone())
            .collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let cases: &[(&[&str], MsFlags, &str)] = &[
            (
                &["ro", "rbind"],
                MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC,
                "",
            ),
            (&["rw", "rbind"], MsFlags::MS_BIND | MsFlags::MS_REC, ""),
            (&["ro", "rw"], MsFlags::empty(), ""),
            (
                &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"],
                MsFlags::empty(),
                "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b",
            ),
            (
                &["nosuid", "nodev", "lowerdir=/a:/b"],
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                "lowerdir=/a:/b",
            ),
            (&["nosuid", "suid"], MsFlags::empty(), ""),
            (&[], MsFlags::empty(), ""),
        ];
        for (options, flags, data) in cases {
            let options = strings(options);
            assert_eq!(
                parse_options(&options),
                (*flags, data.to_string()),
                "{options:?}"
            );
        }
    }

    #[test]
    fn over_long_options_are_refused_before_mounting() {
        let m = Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}", "/x".repeat(3000))],
        };
        let target = Path::new("/nonexistent-target");
        assert!(matches!(
            m.mount(target),
            Err(Error::OptionsTooLong { len: 6009, .. })
        ));
        let bind = Mount {
            fs_type: "bind".into(),
            source: "/".into(),
            options: vec![format!("x={}", "y".repeat(5000))],
        };
        assert!(matches!(
            bind.mount(target),
            Err(Error::OptionsTooLong { len: 5002, .. })
        ));
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
    fn mounts_and_unmounts_a_read_only_bind() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let (src, target) = (dir.path().join("src"), dir.path().join("target"));
        for d in [&src, &target] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let m = Mount {
            fs_type: "bind".into(),
            source: src.display().to_string(),
            options: strings(&["rbind", "ro", "nosuid"]),
        };
        m.mount(&target).expect("mount");
        m.mount(&target).expect("mount again, stacked");
        let err = std::fs::write(target.join("f"), b"x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(Errno::EROFS as i32));
        let table = mountinfo::read_self().expect("mountinfo");
        let top = mountinfo::containing(&table, &target).expect("mounted");
        assert!(top.options.iter().any(|o| o == "ro"), "{top:?}");
        assert!(top.options.iter().any(|o| o == "nosuid"), "kept: {top:?}");
        unmount_recursive(&target).expect("unmount");
        assert_eq!(mounted_under(&target), Vec::<PathBuf>::new());
        std::fs::write(target.join("f"), b"x").expect("the plain directory again");
        assert!(!src.join("f").exists());
    }

    /// Paths with every character the kernel escapes, mounted for real.
    #[test]
    fn finds_and_detaches_mounts_with_escaped_characters() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("a dir");
        let names = [
            "with space",
            "with\ttab",
            "with\nnewline",
            "with\\backslash",
        ];
        let tmpfs = Mount {
            fs_type: "tmpfs".into(),
            source: "berth mount\ttest".into(),
            options: strings(&["nosuid", "size=1m"]),
        };
        let mut want = vec![root.clone()];
        std::fs::create_dir(&root).expect("mkdir");
        tmpfs.mount(&root).expect("mount the parent");
        for name in names {
            let target = root.join(name);
            std::fs::create_dir(&target).expect("mkdir");
            tmpfs.mount(&target).expect("mount");
            want.push(target);
        }
        let table = mountinfo::read_self().expect("mountinfo");
        let found: Vec<&MountInfo> = mountinfo::under(&table, &root).collect();
        assert_eq!(
            found
                .iter()
                .map(|m| m.mount_point.clone())
                .collect::<Vec<_>>(),
            want
        );
        assert!(found.iter().all(|m| m.source == "berth mount\ttest"));
        assert!(found.iter().all(|m| m.fs_type == "tmpfs"));
        // Keep one busy: a detach takes it anyway.
        let busy = std::fs::File::create(root.join(names[0]).join("open")).expect("create");
        detach_recursive(dir.path()).expect("detach");
        assert_eq!(mounted_under(dir.path()), Vec::<PathBuf>::new());
        drop(busy);
        detach_recursive(dir.path()).expect("nothing left is fine");
    }

    /// More lower layers than one page of absolute paths can name.
    #[test]
    fn mounts_an_overlay_deeper_than_a_page() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let layers = dir
            .path()
            .join("a-long-directory-name-for-the-snapshots-of-this-test");
        let lower: Vec<PathBuf> = (0..100)
            .map(|i| {
                let fs = layers.join(i.to_string()).join("fs");
                std::fs::create_dir_all(&fs).expect("mkdir");
                std::fs::write(fs.join(format!("layer-{i}")), i.to_string()).expect("write");
                fs
            })
            .collect();
        std::fs::write(lower[0].join("shadowed"), b"top").expect("write");
        std::fs::write(lower[99].join("shadowed"), b"bottom").expect("write");
        let lowerdir: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let m = Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}", lowerdir.join(":"))],
        };
        assert!(parse_options(&m.options).1.len() > MAX_DATA);
        let target = dir.path().join("rootfs");
        std::fs::create_dir(&target).expect("mkdir");
        let cwd = std::env::current_dir().expect("cwd");
        m.mount(&target).expect("mount");
        assert_eq!(std::env::current_dir().expect("cwd"), cwd, "cwd unchanged");
        let mounted = || {
            let table = mountinfo::read_self().expect("mountinfo");
            mountinfo::containing(&table, &target).cloned()
        };
        let overlay = mounted().expect("mounted");
        assert_eq!(overlay.mount_point, target);
        assert_eq!(overlay.fs_type, "overlay");
        assert_eq!(
            std::fs::read_to_string(target.join("layer-99")).expect("read"),
            "99"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("shadowed")).expect("read"),
            "top"
        );
        unmount(&target).expect("unmount");
        assert_ne!(mounted().map(|m| m.mount_point), Some(target));
    }
}
