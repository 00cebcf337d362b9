//! Where the cgroups of pods and containers live, for both drivers.
//!
//! - cgroupfs: the `linux.cgroupsPath` berth gives the runtime is an
//!   absolute path, which runc and crun take from each hierarchy's root, so
//!   the directory is that path under every hierarchy.
//! - systemd: the path has runc's and crun's `slice:prefix:name` form. The
//!   runtime asks systemd for a transient scope `prefix-name.scope` in
//!   `slice` (a `name` that is itself a slice is used as is), and systemd
//!   nests a slice `a-b-c.slice` as `a.slice/a-b.slice/a-b-c.slice`
//!   (systemd.slice(5)). So `kubepods-pod1.slice:berth:c1` is the directory
//!   `kubepods.slice/kubepods-pod1.slice/berth-c1.scope` under each
//!   hierarchy (v1 controllers or the unified one).
//!
//! A pod's cgroup is its CRI `cgroup_parent`, which kubelet creates: a path
//! for cgroupfs, a slice name for systemd. A pod without one has no cgroup
//! of its own; its containers sit beside other pods' (in `/berth` or
//! `system.slice`).

use super::CgroupDriver;
use std::path::PathBuf;

/// The `prefix` of berth's systemd scopes, and the cgroupfs parent of
/// containers in pods without a cgroup parent (as containerd uses its
/// namespace).
const BERTH: &str = "berth";

/// The slice of containers whose pod has no cgroup parent (runc's default).
const DEFAULT_SLICE: &str = "system.slice";

/// Why a cgroup path cannot be formed or understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupPathError {
    #[error("{parent:?} is not a systemd slice (the cgroup driver is systemd)")]
    NotASlice { parent: String },
    #[error("{slice:?} is not a valid systemd slice name")]
    InvalidSlice { slice: String },
    #[error("{path:?} is neither an absolute cgroupfs path nor a systemd slice:prefix:name")]
    Unrecognised { path: String },
}

/// The `linux.cgroupsPath` of container `id` in a pod whose CRI
/// `cgroup_parent` is `parent`: `/<parent>/<id>` for cgroupfs
/// (`/berth/<id>` without a parent), and `<parent-slice>:berth:<id>` for
/// systemd (`system.slice:berth:<id>` without a parent).
pub fn container_cgroups_path(
    parent: &str,
    id: &str,
    driver: CgroupDriver,
) -> Result<String, CgroupPathError> {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = parent.trim_matches('/');
            if parent.is_empty() {
                Ok(format!("/{BERTH}/{id}"))
            } else {
                Ok(format!("/{parent}/{id}"))
            }
        }
        CgroupDriver::Systemd => {
            let slice = parent_slice(parent)?.unwrap_or(DEFAULT_SLICE);
            Ok(format!("{slice}:{BERTH}:{id}"))
        }
    }
}

/// The directory of a pod's cgroup under each hierarchy's root, or `None`
/// when the pod has no cgroup parent.
pub fn pod_cgroup_dir(
    parent: &str,
    driver: CgroupDriver,
) -> Result<Option<PathBuf>, CgroupPathError> {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = parent.trim_matches('/');
            Ok((!parent.is_empty()).then(|| PathBuf::from(parent)))
        }
        CgroupDriver::Systemd => parent_slice(parent)?.map(expand_slice).transpose(),
    }
}

/// The directory a container's `linux.cgroupsPath` (either driver's form)
/// names under each hierarchy's root. The form tells the driver: berth's
/// cgroupfs paths are absolute, its systemd paths never are.
pub fn cgroup_dir(cgroups_path: &str) -> Result<PathBuf, CgroupPathError> {
    if let Some(relative) = cgroups_path.strip_prefix('/') {
        return Ok(PathBuf::from(relative.trim_start_matches('/')));
    }
    let unrecognised = || CgroupPathError::Unrecognised {
        path: cgroups_path.to_owned(),
    };
    let mut parts = cgroups_path.split(':');
    let (Some(slice), Some(prefix), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unrecognised());
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') {
        return Err(unrecognised());
    }
    let slice = if slice.is_empty() {
        DEFAULT_SLICE
    } else {
        slice
    };
    let unit = if name.ends_with(".slice") {
        name.to_owned()
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(expand_slice(slice)?.join(unit))
}

/// The slice named by a CRI `cgroup_parent` under the systemd driver: its
/// last component (kubelet may send `a.slice/a-b.slice`; the runtime
/// expands the slice itself), or `None` when there is no parent.
fn parent_slice(parent: &str) -> Result<Option<&str>, CgroupPathError> {
    let slice = parent
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if slice.is_empty() {
        Ok(None)
    } else if slice.ends_with(".slice") {
        Ok(Some(slice))
    } else {
        Err(CgroupPathError::NotASlice {
            parent: parent.to_owned(),
        })
    }
}

/// Where systemd puts a slice: each dash opens a level, so `a-b.slice` is
/// `a.slice/a-b.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<PathBuf, CgroupPathError> {
    let invalid = || CgroupPathError::InvalidSlice {
        slice: slice.to_owned(),
    };
    let name = slice.strip_suffix(".slice").ok_or_else(invalid)?;
    if name == "-" {
        return Ok(PathBuf::new());
    }
    if name.is_empty() || name.contains('/') {
        return Err(invalid());
    }
    let mut dir = PathBuf::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() {
            return Err(invalid());
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(component);
        dir.push(format!("{prefix}.slice"));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupDriver::{Cgroupfs, Systemd};

    #[test]
    #[rustfmt::skip]
    fn container_paths() {
        let cases: Vec<(&str, CgroupDriver, Result<&str, &str>)> = vec![
            ("/kubepods/besteffort/pod1", Cgroupfs, Ok("/kubepods/besteffort/pod1/c1")),
            ("kubepods/", Cgroupfs, Ok("/kubepods/c1")),
            ("", Cgroupfs, Ok("/berth/c1")),
            ("/test.slice", Systemd, Ok("test.slice:berth:c1")),
            ("kubepods.slice/kubepods-pod1.slice", Systemd, Ok("kubepods-pod1.slice:berth:c1")),
            ("", Systemd, Ok("system.slice:berth:c1")),
            ("/kubepods", Systemd, Err("\"/kubepods\" is not a systemd slice (the cgroup driver is systemd)")),
        ];
        for (parent, driver, want) in cases {
            let got = container_cgroups_path(parent, "c1", driver).map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.map(str::to_owned).map_err(str::to_owned),
                "{parent} {driver:?}"
            );
        }
    }

    #[test]
    #[rustfmt::skip]
    fn directories_of_cgroups_paths() {
        let cases: Vec<(&str, Result<&str, ()>)> = vec![
            ("/kubepods/besteffort/pod1/c1", Ok("kubepods/besteffort/pod1/c1")),
            ("/berth/c1", Ok("berth/c1")),
            ("system.slice:berth:c1", Ok("system.slice/berth-c1.scope")),
            ("kubepods-besteffort-pod1.slice:berth:c1",
             Ok("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/berth-c1.scope")),
            ("-.slice:berth:c1", Ok("berth-c1.scope")),
            (":berth:c1", Ok("system.slice/berth-c1.scope")),
            ("machine.slice:berth:inner.slice", Ok("machine.slice/inner.slice")),
            ("relative/path", Err(())),
            ("a.slice:berth", Err(())),
            ("a.slice:berth:c1:extra", Err(())),
            ("kubepods--pod1.slice:berth:c1", Err(())),
            ("-kubepods.slice:berth:c1", Err(())),
            ("kubepods:berth:c1", Err(())),
        ];
        for (path, want) in cases {
            let got = cgroup_dir(path).map_err(|_| ());
            assert_eq!(got, want.map(PathBuf::from), "{path}");
        }
    }

    #[test]
    fn container_paths_resolve_under_their_pod() {
        for (parent, driver) in [
            ("/kubepods/burstable/pod1", Cgroupfs),
            ("kubepods-burstable-pod1.slice", Systemd),
            (
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
                Systemd,
            ),
        ] {
            let pod = pod_cgroup_dir(parent, driver)
                .expect("a valid parent")
                .expect("a pod cgroup");
            let container =
                cgroup_dir(&container_cgroups_path(parent, "c1", driver).expect("path"))
                    .expect("dir");
            assert_eq!(container.parent(), Some(pod.as_path()), "{parent}");
        }
        assert_eq!(pod_cgroup_dir("", Cgroupfs), Ok(None));
        assert_eq!(pod_cgroup_dir("/", Systemd), Ok(None));
        assert!(matches!(
            pod_cgroup_dir("/kubepods", Systemd),
            Err(CgroupPathError::NotASlice { .. })
        ));
    }
}
