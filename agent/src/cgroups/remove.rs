//! Removing a container's cgroup that no runtime accounts for any more:
//! what a `runc init` orphaned by an interrupted create leaves. The OCI
//! runtime's own `delete --force` comes first; this catches what it cannot
//! see (a create killed before the runtime wrote its state).

use super::{cgroup_dir, CgroupError, CgroupLayout};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long killed processes may take to leave their cgroup.
const EMPTY_WAIT: Duration = Duration::from_secs(5);

/// Kills every process in the cgroup of a container (its
/// `linux.cgroupsPath`) and removes its directory in every hierarchy,
/// named and hybrid ones included (the runtime makes it in all of them).
/// A cgroup that does not exist is not an error.
pub fn kill_and_remove(layout: &CgroupLayout, cgroups_path: &str) -> Result<(), CgroupError> {
    let dir = cgroup_dir(cgroups_path)?;
    let dirs: Vec<PathBuf> = hierarchy_roots(layout)
        .into_iter()
        .map(|root| root.join(&dir))
        .filter(|d| d.is_dir())
        .collect();
    for dir in &dirs {
        kill_all(dir);
    }
    let deadline = Instant::now() + EMPTY_WAIT;
    for dir in &dirs {
        remove_tree(dir, deadline)?;
    }
    Ok(())
}

/// The root of every mounted hierarchy.
fn hierarchy_roots(layout: &CgroupLayout) -> Vec<PathBuf> {
    match layout {
        CgroupLayout::Unified { mount } => vec![mount.clone()],
        CgroupLayout::Legacy {
            hierarchies,
            unified,
        } => hierarchies
            .iter()
            .map(|(mount, _)| mount.clone())
            .chain(unified.clone())
            .collect(),
    }
}

/// SIGKILLs the processes of `dir` and of the cgroups below it.
fn kill_all(dir: &Path) {
    for pid in procs(dir) {
        let pid = nix::unistd::Pid::from_raw(pid);
        // Gone meanwhile (ESRCH) is what we want anyway.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    for child in subdirs(dir) {
        kill_all(&child);
    }
}

/// Removes `dir` and the cgroups below it, deepest first, waiting until
/// `deadline` for killed processes to leave.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    for child in subdirs(dir) {
        remove_tree(&child, deadline)?;
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while a killed process is still being reaped.
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test's own child, killed if the test fails before it is.
    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A live cgroup on this machine's layout with a process in it: the
    /// process is killed and the directory removed in every hierarchy.
    #[test]
    fn kills_the_processes_and_removes_the_cgroup() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let layout = CgroupLayout::detect().expect("layout");
        let path = format!("/berth-test-remove-{}", std::process::id());
        let dirs: Vec<PathBuf> = hierarchy_roots(&layout)
            .into_iter()
            .map(|root| root.join(path.trim_start_matches('/')))
            .collect();
        let mut child = KillOnDrop(
            std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("sleep"),
        );
        for dir in &dirs {
            std::fs::create_dir_all(dir).expect("cgroup dir");
            // A v1 cpuset takes no task before it has CPUs and memory nodes.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Some(parent) = dir.parent().filter(|_| dir.join(file).exists()) {
                    let value = std::fs::read_to_string(parent.join(file)).expect("parent's");
                    std::fs::write(dir.join(file), value.trim()).expect("cpuset");
                }
            }
            std::fs::write(dir.join("cgroup.procs"), child.0.id().to_string())
                .expect("move into the cgroup");
        }
        kill_and_remove(&layout, &path).expect("removed");
        let status = child.0.wait().expect("reaped");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        for dir in &dirs {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
        kill_and_remove(&layout, &path).expect("a cgroup already gone is fine");
    }
}
