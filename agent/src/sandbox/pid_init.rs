//! The process that holds a pod's shared PID namespace (`berth-init`, see
//! `src/bin/berth-init.rs`).
//!
//! [`start`] runs `berth-init start <dir>/init.pid`, which leaves a PID 1
//! running in a new PID namespace outside berthd's process tree; berthd
//! pins `/proc/<pid>/ns/pid` at `<dir>/pidns` for containers to join.
//! [`stop`] kills it, which also kills every process left in the
//! namespace. A pid is only signalled after checking that it still is a
//! berth init (PID 1 of its own namespace, running `berth-init run`), so a
//! recycled pid is never killed.

use super::SandboxError;
use crate::network::netns;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pid file `berth-init start` writes in the sandbox dir.
pub const PID_FILE: &str = "init.pid";
/// The init's stderr, in the sandbox dir.
pub const LOG_FILE: &str = "init.log";

/// Starts the init and pins its PID namespace at `pidns`; returns its pid.
/// On error nothing is left running.
/// It runs in `cgroup`, as the shims do, so it outlives berthd's cgroup.
pub async fn start(
    dir: &Path,
    pidns: &Path,
    cgroup: &crate::cgroups::ShimCgroup,
) -> Result<u32, SandboxError> {
    let binary =
        crate::binaries::find(crate::binaries::INIT).ok_or_else(|| SandboxError::Init {
            binary: PathBuf::from(crate::binaries::INIT),
            reason: "not installed beside berthd or on PATH".to_owned(),
        })?;
    let failed = |reason: String| SandboxError::Init {
        binary: binary.clone(),
        reason,
    };
    let io_failed = |what: String| {
        let binary = binary.clone();
        move |source| SandboxError::InitIo {
            binary,
            what,
            source,
        }
    };
    // The init inherits stderr: a file, never a pipe berthd would wait on.
    let log_path = dir.join(LOG_FILE);
    let log = berth_owner_only::open(
        berth_owner_only::open_options()
            .write(true)
            .create(true)
            .truncate(true),
        &log_path,
    )
    .map_err(io_failed(format!("cannot create {}", log_path.display())))?;
    let mut command = tokio::process::Command::new(&binary);
    cgroup.apply(&mut command);
    let output = command
        .arg("start")
        .arg(dir.join(PID_FILE))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(io_failed("cannot run it".to_owned()))?
        .wait_with_output()
        .await
        .map_err(io_failed("cannot run it".to_owned()))?;
    if !output.status.success() {
        let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(failed(format!("{}: {}", output.status, stderr.trim())));
    }
    let pid: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| failed("printed no pid".to_owned()))?;
    let source = PathBuf::from(format!("/proc/{pid}/ns/pid"));
    let pidns = pidns.to_owned();
    let pinned = tokio::task::spawn_blocking(move || netns::pin_existing(&source, &pidns))
        .await
        .expect("pinning does not panic");
    if let Err(e) = pinned {
        stop(dir, Some(pid)).await;
        return Err(e.into());
    }
    Ok(pid)
}

/// Kills the init of the sandbox in `dir` (found by `pid` or the pid file)
/// if it still runs, and waits briefly for it to be gone.
pub async fn stop(dir: &Path, pid: Option<u32>) {
    let pid = pid.or_else(|| {
        std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    });
    let Some(pid) = pid else {
        return;
    };
    if !is_berth_init(pid) {
        return;
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    for _ in 0..100 {
        if !is_berth_init(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(pid, "the pod init did not exit within 1 s of SIGKILL");
}

/// True when `pid` is a live (not zombie) `berth-init run` that is PID 1
/// of its own namespace.
pub fn is_berth_init(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_init =
        args.len() >= 2 && args[0].ends_with(crate::binaries::INIT.as_bytes()) && args[1] == b"run";
    if !is_init {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let zombie = status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'));
    let pid_one = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        == Some("1");
    pid_one && !zombie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn init_holds_a_pid_namespace_until_stopped() {
        if crate::binaries::find(crate::binaries::INIT).is_none() {
            panic!("build berth-init first: cargo build -p berth-agent");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pidns = dir.path().join("pidns");
        let pid = start(dir.path(), &pidns, &crate::cgroups::ShimCgroup::default())
            .await
            .expect("start");
        assert!(is_berth_init(pid));
        assert!(netns::is_pinned(&pidns));
        let file: u32 = std::fs::read_to_string(dir.path().join(PID_FILE))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        assert_eq!(file, pid);
        // Its parent is not berthd: it outlives whoever started it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let ppid = stat.rsplit_once(") ").expect("stat").1.split(' ').nth(1);
        assert_ne!(ppid, Some(std::process::id().to_string().as_str()));
        stop(dir.path(), None).await;
        assert!(!is_berth_init(pid));
        netns::remove(&pidns).expect("unpin");
        // Stopping again, or a pid that is not an init, does nothing.
        stop(dir.path(), Some(pid)).await;
        assert!(!is_berth_init(std::process::id()));
    }
}
