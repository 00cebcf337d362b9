//! OOM kills: what makes an exit `OOMKilled`.
//!
//! The kernel counts the processes its OOM killer killed in a memory
//! cgroup: `oom_kill` in `memory.events` on v2 (which includes
//! descendants), in `memory.oom_control` on v1 (since Linux 4.13). berth
//! reads the count once the container has exited, before the runtime
//! deletes the cgroup.
//!
//! Limit: under the systemd driver, systemd may remove a scope's cgroup as
//! soon as its last process exits; the count is then gone and the exit is
//! reported as `Error`. Watching `memory.events` while the container runs
//! would close that gap.

use super::files::FlatKeyed;
use super::{Cgroup, CgroupDirs, CgroupError, CgroupLayout};
use std::path::Path;

/// The `oom_kill` count of the memory cgroup at `dir`: `None` when the file
/// (or the memory controller) is absent.
pub(super) fn read_oom_kills(dir: &Path, unified: bool) -> Result<Option<u64>, CgroupError> {
    let file = if unified {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    Ok(FlatKeyed::read(dir, file)?.and_then(|f| f.get("oom_kill")))
}

impl Cgroup {
    /// Processes of this cgroup the OOM killer killed; `None` when the
    /// cgroup has no memory controller or is gone.
    pub fn oom_kills(&self) -> Result<Option<u64>, CgroupError> {
        let unified = matches!(self.dirs, CgroupDirs::Unified(_));
        match self.dir("memory") {
            Some(dir) => read_oom_kills(dir, unified),
            None => Ok(None),
        }
    }
}

/// True when the memory cgroup of the container whose `linux.cgroupsPath`
/// is `cgroups_path` (either driver's form) counts an OOM kill. Anything
/// unreadable counts as no kill: the exit is then reported as `Error`.
pub fn oom_killed(layout: &CgroupLayout, cgroups_path: &str) -> bool {
    if cgroups_path.is_empty() {
        return false;
    }
    let kills = Cgroup::of_container(layout, cgroups_path).and_then(|c| c.oom_kills());
    match kills {
        Ok(kills) => kills.unwrap_or(0) > 0,
        Err(e) => {
            tracing::debug!(cgroups_path, error = %e, "cannot read the OOM kills of a cgroup");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::testdata;

    #[test]
    fn systemd_scopes_on_v2() {
        let layout = CgroupLayout::Unified {
            mount: testdata("v2-systemd"),
        };
        assert!(oom_killed(
            &layout,
            "kubepods-burstable-pod1.slice:berth:c1"
        ));
        assert!(!oom_killed(
            &layout,
            "kubepods-burstable-pod1.slice:berth:c2"
        ));
        assert!(!oom_killed(
            &layout,
            "kubepods-burstable-pod1.slice:berth:gone"
        ));
        assert!(!oom_killed(&layout, "not a cgroups path"));
        assert!(!oom_killed(&layout, ""));
    }

    #[test]
    fn systemd_scopes_on_v1() {
        let root = testdata("v1-systemd");
        let layout = CgroupLayout::Legacy {
            hierarchies: vec![
                (root.join("systemd"), vec![]),
                (
                    root.join("cpu,cpuacct"),
                    vec!["cpu".into(), "cpuacct".into()],
                ),
                (root.join("memory"), vec!["memory".into()]),
            ],
            unified: None,
        };
        assert!(oom_killed(
            &layout,
            "kubepods-besteffort-pod3.slice:berth:c4"
        ));
        assert!(!oom_killed(
            &layout,
            "kubepods-besteffort-pod3.slice:berth:c5"
        ));
        let without_memory = CgroupLayout::Legacy {
            hierarchies: vec![(root.join("cpu,cpuacct"), vec!["cpu".into()])],
            unified: None,
        };
        assert!(!oom_killed(
            &without_memory,
            "kubepods-besteffort-pod3.slice:berth:c4"
        ));
    }

    #[test]
    fn cgroupfs_paths_on_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = dir.path().join("berth/c1");
        std::fs::create_dir_all(&cgroup).expect("mkdir");
        std::fs::write(
            cgroup.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .expect("write");
        let unified = CgroupLayout::Unified {
            mount: dir.path().to_owned(),
        };
        assert!(oom_killed(&unified, "/berth/c1"));
        assert!(!oom_killed(&unified, "/berth/other"));
        std::fs::write(
            cgroup.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .expect("write");
        let legacy = CgroupLayout::Legacy {
            hierarchies: vec![(dir.path().to_owned(), vec!["memory".into()])],
            unified: None,
        };
        assert!(!oom_killed(&legacy, "/berth/c1"));
        std::fs::write(
            cgroup.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .expect("write");
        assert!(oom_killed(&legacy, "/berth/c1"));
        let layout = CgroupLayout::Unified {
            mount: testdata("v2-cgroupfs"),
        };
        assert!(!oom_killed(&layout, "/kubepods/besteffort/pod2/c3"));
    }
}
