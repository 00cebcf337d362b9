//! Mounts, as containerd's `mount.Mount`, and mounting them.
//!
//! A snapshot's mounts are handed to the shim (over the shim v2 protocol,
//! which carries type, source and options) or mounted in-process with
//! [`Mount::mount`]. Options are split like containerd's `mount_linux.go`:
//! known flags become `MS_*` bits, everything else is passed to the
//! filesystem as data (`lowerdir=…,upperdir=…`). A read-only bind mount needs
//! a second, remounting call, because `MS_RDONLY` is ignored on the first.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use std::path::PathBuf;

use crate::Result;

/// Why a mount or unmount failed. Its own type, so that code mounting
/// snapshots elsewhere (the shim) needs nothing else of this crate.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) limits the option string to one page.
    #[error("mount options for {target} are {len} bytes, mount(2) takes at most {max}", target = target.display())]
    OptionsTooLong {
        target: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("mount {fs_type} {src} on {target}: {source}", target = target.display())]
    Mount {
        fs_type: String,
        src: String,
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("unmount {target}: {source}", target = target.display())]
    Unmount {
        target: PathBuf,
        source: std::io::Error,
    },
}

/// The largest data string mount(2) accepts: one page, less the final NUL.
const MAX_DATA: usize = 4095;

/// A mount to make a snapshot's filesystem appear at some target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind` (containerd's `type`).
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

/// Splits options into mount flags and the filesystem's data string.
pub(crate) fn parse_options(options: &[String]) -> (MsFlags, String) {
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
    pub fn mount(&self, target: &Path) -> std::result::Result<(), MountError> {
        let (flags, data) = parse_options(&self.options);
        if data.len() > MAX_DATA {
            return Err(MountError::OptionsTooLong {
                target: target.to_owned(),
                len: data.len(),
                max: MAX_DATA,
            });
        }
        let fs_type = if self.fs_type == "bind" {
            None
        } else {
            Some(self.fs_type.as_str())
        };
        let err = |source: nix::Error| MountError::Mount {
            fs_type: self.fs_type.clone(),
            src: self.source.clone(),
            target: target.to_owned(),
            source: source.into(),
        };
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(Some(self.source.as_str()), target, fs_type, flags, data).map_err(err)?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let keep = flags
                & (MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC
                    | MsFlags::MS_NOATIME
                    | MsFlags::MS_NODIRATIME
                    | MsFlags::MS_RELATIME
                    | MsFlags::MS_STRICTATIME);
            let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | keep;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
                // Do not leave a writable mount behind.
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(err(e));
            }
        }
        Ok(())
    }
}

/// Mounts `mounts` at `target` in order (snapshots give exactly one).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for m in mounts {
        m.mount(target)?;
    }
    Ok(())
}

/// Unmounts `target`.
pub fn unmount(target: &Path) -> Result<()> {
    umount2(target, MntFlags::empty()).map_err(|e| {
        MountError::Unmount {
            target: target.to_owned(),
            source: e.into(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let options: Vec<String> = options.iter().map(|s| s.to_string()).collect();
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
            Err(MountError::OptionsTooLong { len: 6009, .. })
        ));
    }
}
