//! The cgroup shims run in: `berth-shims` at the root of every mounted
//! hierarchy, never berthd's own cgroup.
//!
//! A shim (and berth-init, and so the containers they parent until runc
//! moves them into their own cgroups) would otherwise inherit berthd's
//! cgroup; systemd stopping or restarting `berth.service` kills every
//! process of that cgroup unless `KillMode=process`, and a `Delegate=yes`
//! unit's cgroup is berthd's alone. containerd keeps its shims in its own
//! unit and relies on `KillMode=process`; berth takes them out altogether,
//! so no unit setting and no `systemctl kill` of berthd reaches them.
//!
//! The move happens in the forked child before it execs the shim's `start`
//! action: the daemon that action forks is born in `berth-shims`, with no
//! window in berthd's cgroup. Writing `0` to a `cgroup.procs` moves the
//! writer, on v1 and v2 alike. A hierarchy where the cgroup cannot be made
//! is logged and skipped: the shim then stays in berthd's cgroup there.

use super::CgroupLayout;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The cgroup's name below each hierarchy's root.
pub const SHIMS_CGROUP: &str = "berth-shims";

/// The `cgroup.procs` files a launched shim writes itself into.
#[derive(Debug, Clone, Default)]
pub struct ShimCgroup {
    procs: Arc<Vec<CString>>,
}

impl ShimCgroup {
    /// Creates `berth-shims` in every hierarchy of `layout` (idempotent).
    pub fn prepare(layout: &CgroupLayout) -> Self {
        let mounts: Vec<(&Path, bool)> = match layout {
            CgroupLayout::Unified { mount } => vec![(mount.as_path(), false)],
            CgroupLayout::Legacy {
                hierarchies,
                unified,
            } => hierarchies
                .iter()
                .map(|(mount, controllers)| {
                    (mount.as_path(), controllers.iter().any(|c| c == "cpuset"))
                })
                .chain(unified.iter().map(|mount| (mount.as_path(), false)))
                .collect(),
        };
        let mut procs = Vec::new();
        for (mount, cpuset) in mounts {
            match create(mount, cpuset) {
                Ok(file) => procs.push(
                    CString::new(file.as_os_str().as_bytes())
                        .expect("cgroup paths have no NUL byte"),
                ),
                Err(e) => tracing::warn!(
                    hierarchy = %mount.display(),
                    error = %e,
                    "cannot make the shims' cgroup; shims stay in berthd's cgroup of this hierarchy"
                ),
            }
        }
        Self {
            procs: Arc::new(procs),
        }
    }

    /// The `cgroup.procs` files shims are moved into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.procs
            .iter()
            .map(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c.as_bytes())))
            .collect()
    }

    /// Makes `command`'s process move itself into the shims' cgroup
    /// between fork and exec.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        if self.procs.is_empty() {
            return;
        }
        let procs = Arc::clone(&self.procs);
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec. It only
        // reads the already built C strings and makes open/write/close
        // system calls: no allocation, no lock, nothing another thread of
        // the parent could have held at fork.
        unsafe {
            command.pre_exec(move || {
                for file in procs.iter() {
                    enter(file);
                }
                Ok(())
            });
        }
    }
}

/// Writes `0` (this process) into the `cgroup.procs` file `file`. Errors
/// are ignored: the child cannot report them, and staying put is safe.
fn enter(file: &std::ffi::CStr) {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    if let Ok(fd) = open(file, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        let _ = nix::unistd::write(&fd, b"0");
    }
}

/// Makes `<mount>/berth-shims` and returns its `cgroup.procs`. A new
/// cpuset cgroup takes no process until it has CPUs and memory nodes, so
/// those are copied from the root.
fn create(mount: &Path, cpuset: bool) -> std::io::Result<PathBuf> {
    let dir = mount.join(SHIMS_CGROUP);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if cpuset {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = std::fs::read_to_string(dir.join(file))?;
            if own.trim().is_empty() {
                let root = std::fs::read_to_string(mount.join(file))?;
                std::fs::write(dir.join(file), root.trim())?;
            }
        }
    }
    Ok(dir.join("cgroup.procs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_launched_process_lands_in_the_shims_cgroup_of_every_hierarchy() {
        let layout = CgroupLayout::detect().expect("layout");
        let shims = ShimCgroup::prepare(&layout);
        let files = shims.procs_files();
        assert!(!files.is_empty(), "no hierarchy took the shims' cgroup");
        let mut command = tokio::process::Command::new("sleep");
        command.arg("30");
        shims.apply(&mut command);
        let mut child = command.spawn().expect("spawn sleep");
        let pid = child.id().expect("pid");
        // `<id>:<controllers>:<path>`, one line per hierarchy (`0::` the
        // unified one), named hierarchies (`name=systemd`) included.
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
        child.kill().await.expect("kill");
        for line in cgroups.lines() {
            let path = line.splitn(3, ':').nth(2).unwrap_or_default();
            assert_eq!(path, format!("/{SHIMS_CGROUP}"), "{line} in\n{cgroups}");
        }
        // Prepared again (a restart): the same files, nothing fails.
        assert_eq!(ShimCgroup::prepare(&layout).procs_files(), files);
    }
}
