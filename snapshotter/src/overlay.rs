//! overlayfs: the mounts of a snapshot, and what berth checks on the host.
//!
//! Mounts follow containerd's overlay snapshotter (`plugins/snapshots/overlay/overlay.go`):
//!
//! | snapshot | parents | mount |
//! | --- | --- | --- |
//! | active | none | bind of its `fs`, `rw` |
//! | view | none | bind of its (empty) `fs`, `ro` |
//! | view | one | bind of the parent's `fs`, `ro` (overlay needs two lower layers without an upper) |
//! | view | several | overlay, `lowerdir` only, so read-only |
//! | active | some | overlay with `upperdir` = its `fs`, `workdir` = its `work`, `lowerdir` = the parents' `fs` |
//!
//! `lowerdir` lists the closest parent first. When the running kernel's
//! overlay module has the `index` parameter, `index=off` is added like
//! containerd does: with the index on, a lower layer shared by two overlays
//! with different upper directories makes the second mount fail.

use std::path::{Path, PathBuf};

use berth_mount::Mount;

use crate::{Error, Kind, Result};

/// overlayfs refuses more lower layers than this (`OVL_MAX_STACK`).
pub(crate) const MAX_LAYERS: usize = 500;

/// Where snapshot directories live.
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    /// `<root>/snapshots`
    pub snapshots: PathBuf,
}

impl Dirs {
    pub fn snapshot(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    pub fn fs(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("fs")
    }

    pub fn work(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("work")
    }

    fn fs_str(&self, id: u64) -> String {
        path_string(&self.fs(id))
    }
}

/// The root is checked to be UTF-8 at open, so paths below it are too.
fn path_string(path: &Path) -> String {
    path.to_str()
        .expect("the root was checked to be UTF-8 when the snapshotter was opened")
        .to_owned()
}

/// The mounts of snapshot `id` of `kind` whose ancestors are `parents`
/// (closest first).
pub(crate) fn mounts(
    dirs: &Dirs,
    kind: Kind,
    id: u64,
    parents: &[u64],
    index_off: bool,
) -> Vec<Mount> {
    let bind = |source: String, ro: bool| Mount {
        fs_type: "bind".to_owned(),
        source,
        options: vec![if ro { "ro" } else { "rw" }.to_owned(), "rbind".to_owned()],
    };
    match (kind, parents) {
        (Kind::Active, []) => vec![bind(dirs.fs_str(id), false)],
        (_, []) => vec![bind(dirs.fs_str(id), true)],
        (Kind::View | Kind::Committed, [parent]) => vec![bind(dirs.fs_str(*parent), true)],
        _ => {
            let mut options = Vec::new();
            if index_off {
                options.push("index=off".to_owned());
            }
            if kind == Kind::Active {
                options.push(format!("workdir={}", path_string(&dirs.work(id))));
                options.push(format!("upperdir={}", dirs.fs_str(id)));
            }
            let lower: Vec<String> = parents.iter().map(|p| dirs.fs_str(*p)).collect();
            options.push(format!("lowerdir={}", lower.join(":")));
            vec![Mount {
                fs_type: "overlay".to_owned(),
                source: "overlay".to_owned(),
                options,
            }]
        }
    }
}

/// Whether the overlay module has an `index` parameter to turn off.
pub(crate) fn has_index_parameter() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

/// Paths below the root end up in mount options, which split on `,` and
/// `:` and cannot hold other than UTF-8 here.
pub(crate) fn check_root(root: &Path) -> Result<()> {
    match root.to_str() {
        Some(s) if !s.contains([',', ':', '\n']) => Ok(()),
        _ => Err(Error::InvalidRoot {
            path: root.to_owned(),
        }),
    }
}

/// overlayfs needs the backing filesystem to report file types in directory
/// entries (XFS formatted with `ftype=0` does not): `dir` must contain a
/// subdirectory whose type is reported.
pub(crate) fn check_dtype(dir: &Path, subdir: &str) -> Result<()> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let err = |e: nix::Error| Error::io("read directory", dir, e);
    let mut d = Dir::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    for entry in d.iter() {
        let entry = entry.map_err(err)?;
        if entry.file_name().to_bytes() == subdir.as_bytes() {
            return match entry.file_type() {
                Some(Type::Directory) => Ok(()),
                _ => Err(Error::NoDType {
                    path: dir.to_owned(),
                }),
            };
        }
    }
    Err(Error::io(
        "find",
        dir.join(subdir),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(m: &Mount) -> Vec<&str> {
        m.options.iter().map(String::as_str).collect()
    }

    #[test]
    fn mounts_follow_containerd() {
        let dirs = Dirs {
            snapshots: PathBuf::from("/r/snapshots"),
        };
        let bind_rw = mounts(&dirs, Kind::Active, 3, &[], true);
        assert_eq!(bind_rw.len(), 1);
        assert_eq!(bind_rw[0].fs_type, "bind");
        assert_eq!(bind_rw[0].source, "/r/snapshots/3/fs");
        assert_eq!(opts(&bind_rw[0]), ["rw", "rbind"]);

        let view_empty = mounts(&dirs, Kind::View, 3, &[], true);
        assert_eq!(view_empty[0].source, "/r/snapshots/3/fs");
        assert_eq!(opts(&view_empty[0]), ["ro", "rbind"]);

        let view_one = mounts(&dirs, Kind::View, 3, &[2], true);
        assert_eq!(view_one[0].fs_type, "bind");
        assert_eq!(view_one[0].source, "/r/snapshots/2/fs");
        assert_eq!(opts(&view_one[0]), ["ro", "rbind"]);

        let view_many = mounts(&dirs, Kind::View, 9, &[5, 2, 1], true);
        assert_eq!(view_many[0].fs_type, "overlay");
        assert_eq!(view_many[0].source, "overlay");
        assert_eq!(
            opts(&view_many[0]),
            [
                "index=off",
                "lowerdir=/r/snapshots/5/fs:/r/snapshots/2/fs:/r/snapshots/1/fs"
            ]
        );

        let active = mounts(&dirs, Kind::Active, 9, &[2], false);
        assert_eq!(
            opts(&active[0]),
            [
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs",
                "lowerdir=/r/snapshots/2/fs"
            ]
        );
    }

    #[test]
    fn roots_that_break_mount_options_are_refused() {
        for bad in ["/var/lib/a,b", "/var/lib/a:b", "/var/lib/a\nb"] {
            assert!(
                matches!(check_root(Path::new(bad)), Err(Error::InvalidRoot { .. })),
                "{bad}"
            );
        }
        check_root(Path::new("/var/lib/berth/snapshotter")).expect("plain path is fine");
    }

    #[test]
    fn dtype_is_reported_here() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("snapshots")).expect("mkdir");
        check_dtype(tmp.path(), "snapshots").expect("d_type");
    }
}
