//! The OCI runtime command line (runc, crun): one command per operation.
//!
//! Every command gets `--root <root> --log <bundle>/runtime-log.json
//! --log-format json` (and `--systemd-cgroup` if asked). A failed command
//! is reported with the runtime's own words: the last `error` record it
//! wrote to that log during the command, else its stderr, else its exit
//! status. Commands that hand their stdio to the container (`create`,
//! `exec`) cannot have their stderr captured, hence the log.
//!
//! Commands are spawned with std and never waited for directly: the
//! [reaper](crate::reaper) reaps them, and we learn their exit from an
//! [`Exits`] subscription taken before the spawn.
//!
//! Each command runs in a process group of its own and is bounded by
//! `$BERTH_SHIM_RUNTIME_TIMEOUT` seconds (berthd sets it from
//! `runtime.command_timeout_seconds`; 30 without it): a runtime that hangs
//! is killed with its whole group (a `runc init` it forked included) and
//! the call fails with DEADLINE_EXCEEDED, well before berthd gives up on
//! the shim.
//!
//! `stats` uses `events --stats`, which runc has and crun 1.8 lacks.
//!
//! crun (1.8) refuses a hybrid cgroup host whose v2 mount has controllers
//! enabled ("cgroups in hybrid mode not supported"), while runc manages
//! the v1 controllers there. On such a host crun's commands run in a mount
//! namespace of their own, a slave of the host's, with the v2 mount
//! detached: crun sees a v1 host and manages the container's v1 cgroups
//! like runc. Mounts a container propagates back (`rshared`) then stop at
//! that namespace.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::bundle;
use crate::error::{Error, Result};
use crate::io::console::ConsoleSocket;
use crate::options::RuntimeOptions;
use crate::reaper::Exits;

/// The stdio a runtime command passes on to the container process.
#[derive(Debug)]
pub struct ChildIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl ChildIo {
    pub fn null() -> Self {
        Self {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }
}

/// The stdio of a new process: pipes, or a terminal the runtime sends to
/// a console socket.
#[derive(Debug)]
pub enum ProcessIo {
    Pipes(ChildIo),
    Console(PathBuf),
}

impl ProcessIo {
    /// Pipes if there are any (no terminal), else a new console socket.
    pub fn new(pipes: Option<ChildIo>) -> Result<(Self, Option<ConsoleSocket>)> {
        Ok(match pipes {
            Some(pipes) => (ProcessIo::Pipes(pipes), None),
            None => {
                let socket = ConsoleSocket::new()?;
                (
                    ProcessIo::Console(socket.path().to_path_buf()),
                    Some(socket),
                )
            }
        })
    }
}

/// The environment variable bounding each runtime command, in seconds.
pub const TIMEOUT_ENV: &str = "BERTH_SHIM_RUNTIME_TIMEOUT";
/// The bound without [`TIMEOUT_ENV`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one runtime command may run: [`TIMEOUT_ENV`] when it holds a
/// positive number of seconds, else [`DEFAULT_TIMEOUT`].
fn command_timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

#[derive(Debug, Clone)]
pub struct OciRuntime {
    binary: PathBuf,
    name: String,
    root: PathBuf,
    log: PathBuf,
    systemd_cgroup: bool,
    no_pivot_root: bool,
    no_new_keyring: bool,
    /// Run commands with the cgroup v2 mount hidden (crun on a hybrid host).
    hide_cgroup2: bool,
    /// How long one command may run before its group is killed.
    timeout: Duration,
}

impl OciRuntime {
    /// Finds the runtime binary of `options`.
    pub fn new(options: &RuntimeOptions, bundle: &Path) -> Result<Self> {
        let binary = resolve(&options.binary_name)?;
        let is_crun = binary.file_name().is_some_and(|name| name == "crun");
        Ok(Self {
            hide_cgroup2: is_crun && hybrid_with_v2_controllers(),
            timeout: command_timeout(),
            name: options.binary_name.clone(),
            binary,
            root: options.root.clone(),
            log: bundle.join(bundle::RUNTIME_LOG),
            systemd_cgroup: options.systemd_cgroup,
            no_pivot_root: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
        })
    }

    /// `create`: sets the container up; its init waits for `start`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: ProcessIo,
    ) -> Result<()> {
        let mut args: Vec<OsString> = vec!["create".into(), "--bundle".into(), bundle.into()];
        args.extend(["--pid-file".into(), pid_file.into()]);
        if self.no_pivot_root {
            args.push("--no-pivot".into());
        }
        if self.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        let stdio = self.with_io(&mut args, io);
        args.push(id.into());
        self.run(args, Some(stdio)).await.map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.run(vec!["start".into(), id.into()], None)
            .await
            .map(drop)
    }

    /// `kill`: signals the init, or with `all` every process of the
    /// container.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut args: Vec<OsString> = vec!["kill".into()];
        if all {
            args.push("--all".into());
        }
        args.extend([id.into(), signal.to_string().into()]);
        self.run(args, None).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args: Vec<OsString> = vec!["delete".into()];
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        self.run(args, None).await.map(drop)
    }

    /// `exec --detach`: starts the process described by the OCI process
    /// spec at `process` in the container.
    pub async fn exec(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        io: ProcessIo,
    ) -> Result<()> {
        let mut args: Vec<OsString> = vec!["exec".into(), "--detach".into()];
        args.extend(["--process".into(), process.into()]);
        args.extend(["--pid-file".into(), pid_file.into()]);
        let stdio = self.with_io(&mut args, io);
        args.push(id.into());
        self.run(args, Some(stdio)).await.map(drop)
    }

    /// `update --resources`: applies the OCI `LinuxResources` JSON file.
    pub async fn update(&self, id: &str, resources: &Path) -> Result<()> {
        let args: Vec<OsString> = vec![
            "update".into(),
            "--resources".into(),
            resources.into(),
            id.into(),
        ];
        self.run(args, None).await.map(drop)
    }

    /// `ps --format json`: the pids of the container's processes.
    pub async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self
            .run(
                vec!["ps".into(), "--format".into(), "json".into(), id.into()],
                None,
            )
            .await?;
        self.parse(&out, "ps")
    }

    /// `events --stats`: one sample of the container's cgroup statistics.
    pub async fn stats(&self, id: &str) -> Result<Stats> {
        let out = self
            .run(vec!["events".into(), "--stats".into(), id.into()], None)
            .await?;
        let event: StatsEvent = self.parse(&out, "events --stats")?;
        Ok(event.data)
    }

    fn with_io(&self, args: &mut Vec<OsString>, io: ProcessIo) -> ChildIo {
        match io {
            ProcessIo::Pipes(stdio) => stdio,
            ProcessIo::Console(socket) => {
                args.extend(["--console-socket".into(), socket.into()]);
                ChildIo::null()
            }
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, out: &[u8], command: &str) -> Result<T> {
        serde_json::from_slice(out).map_err(|e| Error::Runtime {
            runtime: self.name.clone(),
            command: command.to_string(),
            message: format!("unexpected output: {e}"),
        })
    }

    /// Runs one command. With `io`, the command's stdio is handed on and
    /// nothing is captured; without, stdout is returned and stderr kept for
    /// the error message.
    async fn run(&self, args: Vec<OsString>, io: Option<ChildIo>) -> Result<Vec<u8>> {
        let command = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log_offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);

        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd.arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(&args);
        // Its own group: a timeout kills the runtime and what it forked.
        cmd.process_group(0);
        if self.hide_cgroup2 {
            #[allow(unsafe_code)]
            // SAFETY: `detach_cgroup2` runs in the forked child before exec
            // and only makes system calls on static C strings: no
            // allocation, no locks.
            unsafe {
                cmd.pre_exec(detach_cgroup2);
            }
        }
        let captured = io.is_none();
        let io = io.unwrap_or(ChildIo {
            stdin: Stdio::null(),
            stdout: Stdio::piped(),
            stderr: Stdio::piped(),
        });
        cmd.stdin(io.stdin).stdout(io.stdout).stderr(io.stderr);

        let mut exits = Exits::subscribe();
        tracing::debug!(runtime = %self.name, ?args, "run");
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        // Close our copies of the fds handed on, so the container holds the
        // only write ends of its pipes.
        drop(cmd);
        let pid = i32::try_from(child.id()).expect("pids fit in i32");

        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let finished = async {
            if captured {
                let out = child.stdout.take().expect("stdout is piped");
                let err = child.stderr.take().expect("stderr is piped");
                let pipe_err = |source| Error::Sys {
                    op: "read runtime output",
                    source,
                };
                let mut out = tokio::process::ChildStdout::from_std(out).map_err(pipe_err)?;
                let mut err = tokio::process::ChildStderr::from_std(err).map_err(pipe_err)?;
                let (r1, r2) =
                    tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr));
                r1.and(r2).map_err(pipe_err)?;
            }
            Ok::<_, Error>(exits.wait(pid).await)
        };
        let code = match tokio::time::timeout(self.timeout, finished).await {
            Ok(code) => code?,
            Err(_) => {
                let group = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                tracing::warn!(runtime = %self.name, %command, "runtime command timed out: killed its process group");
                return Err(Error::RuntimeTimeout {
                    runtime: self.name.clone(),
                    command,
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        if code == 0 {
            return Ok(stdout);
        }
        let message = last_logged_error(&self.log, log_offset)
            .or_else(|| {
                let text = String::from_utf8_lossy(&stderr).trim().to_string();
                (!text.is_empty()).then_some(text)
            })
            .unwrap_or_else(|| format!("exit status {code}"));
        Err(Error::Runtime {
            runtime: self.name.clone(),
            command,
            message,
        })
    }
}

/// The cgroup v1 root and the v2 mount of a hybrid host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const HYBRID_V2_MOUNT: &std::ffi::CStr = c"/sys/fs/cgroup/unified";

/// True on a hybrid host (v1 controllers under a tmpfs, v2 at `unified`)
/// whose v2 hierarchy has controllers enabled.
fn hybrid_with_v2_controllers() -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC};
    let v2_mount = Path::new(HYBRID_V2_MOUNT.to_str().expect("ASCII path"));
    let hybrid = statfs(CGROUP_ROOT).is_ok_and(|fs| fs.filesystem_type() == TMPFS_MAGIC)
        && statfs(v2_mount).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC);
    hybrid
        && std::fs::read_to_string(v2_mount.join("cgroup.controllers"))
            .is_ok_and(|controllers| !controllers.trim().is_empty())
}

/// In the child before exec: a private mount namespace, a slave of the
/// host's (so the unmount below does not propagate back), without the v2
/// cgroup mount.
fn detach_cgroup2() -> std::io::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&std::ffi::CStr>,
        c"/",
        None::<&std::ffi::CStr>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&std::ffi::CStr>,
    )?;
    umount2(HYBRID_V2_MOUNT, MntFlags::MNT_DETACH)?;
    Ok(())
}

/// Finds `name` in `PATH` unless it is a path.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let path = PathBuf::from(name);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::FailedPrecondition(format!(
                "OCI runtime {name} is not an executable file"
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| {
        OsStr::new("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").into()
    });
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| Error::FailedPrecondition(format!("OCI runtime {name} not found in PATH")))
}

/// The message of the last `"level":"error"` record written to the
/// runtime's JSON log after `offset`.
fn last_logged_error(log: &Path, offset: u64) -> Option<String> {
    #[derive(Deserialize)]
    struct Record {
        level: String,
        msg: String,
    }
    let bytes = std::fs::read(log).ok()?;
    let start = usize::try_from(offset).ok()?.min(bytes.len());
    String::from_utf8_lossy(&bytes[start..])
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .rfind(|r| r.level == "error")
        .map(|r| r.msg.trim().to_string())
}

/// The `data` of runc's stats event (runc `types.Stats`), the parts berth
/// reports.
#[derive(Debug, Default, Deserialize)]
pub struct Stats {
    #[serde(default)]
    pub cpu: Cpu,
    #[serde(default)]
    pub memory: Memory,
    #[serde(default)]
    pub pids: Pids,
}

#[derive(Debug, Deserialize)]
struct StatsEvent {
    data: Stats,
}

#[derive(Debug, Default, Deserialize)]
pub struct Cpu {
    #[serde(default)]
    pub usage: CpuUsage,
    #[serde(default)]
    pub throttling: Throttling,
}

#[derive(Debug, Default, Deserialize)]
pub struct CpuUsage {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub percpu: Vec<u64>,
    #[serde(default)]
    pub kernel: u64,
    #[serde(default)]
    pub user: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Throttling {
    #[serde(default)]
    pub periods: u64,
    #[serde(default)]
    pub throttled_periods: u64,
    #[serde(default)]
    pub throttled_time: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Memory {
    #[serde(default)]
    pub cache: u64,
    #[serde(default)]
    pub usage: MemoryEntry,
    #[serde(default)]
    pub swap: MemoryEntry,
    #[serde(default)]
    pub kernel: MemoryEntry,
    /// cgroup v1 `memory.stat` (v2: its v2 keys).
    #[serde(default)]
    pub raw: std::collections::HashMap<String, u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct MemoryEntry {
    #[serde(default)]
    pub limit: u64,
    #[serde(default)]
    pub usage: u64,
    #[serde(default)]
    pub max: u64,
    #[serde(default)]
    pub failcnt: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pids {
    #[serde(default)]
    pub current: u64,
    #[serde(default)]
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_error_after_the_offset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log.json");
        let old = "{\"level\":\"error\",\"msg\":\"old\",\"time\":\"t\"}\n";
        std::fs::write(
            &log,
            format!(
                "{old}{}\n{}\nnot json\n",
                r#"{"msg":"first","level":"error","time":"t"}"#,
                r#"{"level":"error","msg":"crun: cgroups in hybrid mode not supported\n","time":"t"}"#
            ),
        )
        .expect("write");
        assert_eq!(
            last_logged_error(&log, old.len() as u64).as_deref(),
            Some("crun: cgroups in hybrid mode not supported")
        );
        assert_eq!(last_logged_error(&log, 10_000), None);
        assert_eq!(last_logged_error(&dir.path().join("none"), 0), None);
    }

    #[test]
    fn resolves_binaries() {
        assert!(resolve("sh").expect("sh is in PATH").is_absolute());
        let err = resolve("no-such-runtime-berth").expect_err("missing");
        assert!(
            err.to_string()
                .contains("no-such-runtime-berth not found in PATH"),
            "{err}"
        );
        let plain = tempfile::NamedTempFile::new().expect("temp file");
        let err = resolve(plain.path().to_str().expect("utf-8")).expect_err("not executable");
        assert!(err.to_string().contains("not an executable"), "{err}");
    }

    #[test]
    fn parses_runc_stats() {
        let out = r#"{"type":"stats","id":"c1","data":{"cpu":{"usage":{"percpu":[5,6],"total":11,"kernel":1,"user":10},"throttling":{}},"memory":{"usage":{"limit":100,"usage":50,"max":60,"failcnt":0},"swap":{"limit":0,"usage":0,"max":0,"failcnt":0},"kernel":{"limit":0,"usage":0,"max":0,"failcnt":0},"raw":{"total_inactive_file":7}},"pids":{"current":2},"blkio":{},"hugetlb":{}}}"#;
        let event: StatsEvent = serde_json::from_str(out).expect("parse");
        assert_eq!(event.data.cpu.usage.total, 11);
        assert_eq!(event.data.cpu.usage.percpu, vec![5, 6]);
        assert_eq!(event.data.memory.usage.usage, 50);
        assert_eq!(event.data.memory.raw.get("total_inactive_file"), Some(&7));
        assert_eq!(event.data.pids.current, 2);
    }
}
