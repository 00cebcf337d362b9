//! Device nodes and the device cgroup.
//!
//! The cgroup denies every device, then allows the standard ones a container
//! always has (`/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`,
//! `console`, `ptmx` and the pts range; runc creates their nodes itself),
//! then each CRI device with its `permissions`. A CRI device's host path is
//! stat'ed (symlinks resolved) for its type, numbers, mode and owner; a
//! directory adds every device below it, under the container path. A
//! privileged container also gets every device of the host's `/dev` (not
//! `pts`, `shm`, `mqueue`, `fd`, nor `console`) and may use all devices.

use super::SpecError;
use berth_proto::cri::v1 as cri;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Directories of `/dev` that are not devices to hand to a container.
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The devices a container may always use: (type, major, minor), `None` for
/// every minor.
const STANDARD: [(LinuxDeviceType, i64, Option<i64>); 9] = [
    (LinuxDeviceType::C, 1, Some(3)), // /dev/null
    (LinuxDeviceType::C, 1, Some(8)), // /dev/random
    (LinuxDeviceType::C, 1, Some(7)), // /dev/full
    (LinuxDeviceType::C, 5, Some(0)), // /dev/tty
    (LinuxDeviceType::C, 1, Some(5)), // /dev/zero
    (LinuxDeviceType::C, 1, Some(9)), // /dev/urandom
    (LinuxDeviceType::C, 5, Some(1)), // /dev/console
    (LinuxDeviceType::C, 136, None),  // /dev/pts/*
    (LinuxDeviceType::C, 5, Some(2)), // /dev/ptmx
];

#[derive(Debug)]
pub(crate) struct Devices {
    /// `linux.devices`: nodes the runtime creates.
    pub nodes: Vec<LinuxDevice>,
    /// `linux.resources.devices`: the device cgroup rules, in order.
    pub rules: Vec<LinuxDeviceCgroup>,
}

pub(crate) fn resolve(requested: &[cri::Device], privileged: bool) -> Result<Devices, SpecError> {
    let mut rules = vec![rule(false, None, None, None, "rwm")];
    rules.extend(
        STANDARD
            .iter()
            .map(|(typ, major, minor)| rule(true, Some(*typ), Some(*major), *minor, "rwm")),
    );
    let mut nodes = Vec::new();
    for (i, device) in requested.iter().enumerate() {
        let field = format!("devices[{i}]");
        let access = permissions(&field, &device.permissions)?;
        let host_error = |path: &Path, source| SpecError::HostPath {
            field: format!("{field}.host_path"),
            path: path.to_owned(),
            source,
        };
        let host_path = Path::new(&device.host_path);
        if !host_path.is_absolute() {
            return Err(SpecError::invalid(
                format!("{field}.host_path"),
                format!("{:?} is not an absolute path", device.host_path),
            ));
        }
        let resolved = std::fs::canonicalize(host_path).map_err(|e| host_error(host_path, e))?;
        let container_path = if device.container_path.is_empty() {
            PathBuf::from(&device.host_path)
        } else {
            PathBuf::from(&device.container_path)
        };
        let found = if resolved.is_dir() {
            walk(&resolved, &container_path).map_err(|e| host_error(&resolved, e))?
        } else {
            match node(&resolved, container_path).map_err(|e| host_error(&resolved, e))? {
                Some(node) => vec![node],
                None => {
                    return Err(SpecError::invalid(
                        format!("{field}.host_path"),
                        format!("{} is not a device", resolved.display()),
                    ))
                }
            }
        };
        for node in found {
            rules.push(rule(
                true,
                Some(node.typ()),
                Some(node.major()),
                Some(node.minor()),
                &access,
            ));
            nodes.push(node);
        }
    }
    if privileged {
        let dev = Path::new("/dev");
        let host = walk(dev, dev).map_err(|source| SpecError::Host {
            path: dev.to_owned(),
            source,
        })?;
        for node in host {
            if !nodes.iter().any(|n| n.path() == node.path()) {
                nodes.push(node);
            }
        }
        rules = vec![rule(true, None, None, None, "rwm")];
    }
    Ok(Devices { nodes, rules })
}

/// A CRI permission string: some of `r`, `w`, `m`; empty means all.
fn permissions(field: &str, value: &str) -> Result<String, SpecError> {
    if value.is_empty() {
        return Ok("rwm".to_owned());
    }
    if value.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        Ok(value.to_owned())
    } else {
        Err(SpecError::invalid(
            format!("{field}.permissions"),
            format!("{value:?} is not a combination of r, w and m"),
        ))
    }
}

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_owned()));
    rule
}

/// The device node at `path` (not following a final symlink), to appear at
/// `container_path`; `None` when it is not a character or block device or
/// a FIFO.
fn node(path: &Path, container_path: PathBuf) -> std::io::Result<Option<LinuxDevice>> {
    let meta = std::fs::symlink_metadata(path)?;
    let kind = meta.file_type();
    let typ = if kind.is_char_device() {
        LinuxDeviceType::C
    } else if kind.is_block_device() {
        LinuxDeviceType::B
    } else if kind.is_fifo() {
        LinuxDeviceType::P
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    let mut device = LinuxDevice::default();
    device
        .set_path(container_path)
        .set_typ(typ)
        .set_major(nix::sys::stat::major(rdev) as i64)
        .set_minor(nix::sys::stat::minor(rdev) as i64)
        .set_file_mode(Some(meta.mode() & 0o7777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Ok(Some(device))
}

/// Every character and block device below `dir`, mapped under
/// `container_dir`; FIFOs, vanished entries and non-devices are skipped.
fn walk(dir: &Path, container_dir: &Path) -> std::io::Result<Vec<LinuxDevice>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let container_path = container_dir.join(&name);
        if kind.is_dir() {
            if SKIPPED_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            out.extend(walk(&entry.path(), &container_path)?);
            continue;
        }
        if name == "console" {
            continue;
        }
        match node(&entry.path(), container_path) {
            Ok(Some(device)) if device.typ() != LinuxDeviceType::P => out.push(device),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(host: &str, container: &str, permissions: &str) -> cri::Device {
        cri::Device {
            host_path: host.to_owned(),
            container_path: container.to_owned(),
            permissions: permissions.to_owned(),
        }
    }

    #[test]
    fn default_rules_deny_then_allow_the_standard_devices() {
        let got = resolve(&[], false).expect("devices");
        assert!(got.nodes.is_empty());
        assert_eq!(got.rules.len(), 1 + STANDARD.len());
        let first = &got.rules[0];
        assert!(
            !first.allow() && first.typ().is_none() && first.access().as_deref() == Some("rwm")
        );
        assert!(got.rules[1..].iter().all(|r| r.allow()));
        assert!(got
            .rules
            .iter()
            .any(|r| r.major() == Some(1) && r.minor() == Some(3)));
    }

    #[test]
    fn cri_device_is_stat_ed() {
        let got = resolve(&[device("/dev/null", "/dev/mynull", "rw")], false).expect("devices");
        let node = got.nodes.first().expect("node");
        assert_eq!(node.path(), Path::new("/dev/mynull"));
        assert_eq!(
            (node.typ(), node.major(), node.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!(node.file_mode(), Some(0o666));
        let last = got.rules.last().expect("rule");
        assert!(last.allow());
        assert_eq!(
            (last.major(), last.minor(), last.access().as_deref()),
            (Some(1), Some(3), Some("rw"))
        );
    }

    #[test]
    fn symlinked_device_and_default_container_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("zero-link");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let link_str = link.to_str().expect("utf-8");
        let got = resolve(&[device(link_str, "", "")], false).expect("devices");
        let node = got.nodes.first().expect("node");
        assert_eq!(
            node.path(),
            link.as_path(),
            "empty container path means the host path"
        );
        assert_eq!((node.major(), node.minor()), (1, 5));
        assert_eq!(
            got.rules.last().and_then(|r| r.access().clone()).as_deref(),
            Some("rwm")
        );
    }

    #[test]
    fn invalid_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain");
        std::fs::write(&file, "").expect("write");
        let file_str = file.to_str().expect("utf-8");
        let cases = [
            (device("/dev/null", "/dev/null", "rwx"), "devices[0].permissions: \"rwx\" is not a combination of r, w and m".to_owned()),
            (device("dev/null", "/dev/null", "r"), "devices[0].host_path: \"dev/null\" is not an absolute path".to_owned()),
            (device(file_str, "/dev/x", "r"), format!("devices[0].host_path: {} is not a device", std::fs::canonicalize(&file).expect("canonical").display())),
            (device("/dev/no-such-device", "/dev/x", "r"), "devices[0].host_path: cannot use /dev/no-such-device: No such file or directory (os error 2)".to_owned()),
        ];
        for (device, want) in cases {
            let err = resolve(&[device], false).expect_err(&want);
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn privileged_gets_host_devices_and_all_access() {
        let got = resolve(&[device("/dev/null", "/dev/null", "r")], true).expect("devices");
        assert_eq!(got.rules.len(), 1);
        let all = &got.rules[0];
        assert!(all.allow() && all.typ().is_none() && all.major().is_none());
        assert_eq!(
            got.nodes
                .iter()
                .filter(|n| n.path() == Path::new("/dev/null"))
                .count(),
            1
        );
        assert!(got.nodes.iter().any(|n| n.path() == Path::new("/dev/zero")));
        assert!(!got.nodes.iter().any(|n| n.path().starts_with("/dev/pts")));
        assert!(!got
            .nodes
            .iter()
            .any(|n| n.path() == Path::new("/dev/console")));
    }
}
