//! The shim binary as a containerd logging binary: berthd gives an external
//! shim v2 (say `containerd-shim-runc-v2`, which writes only raw `file://`
//! logs) the stdio URI `binary://<this binary>?log-cri=<log>&pid-file=<f>`.
//!
//! containerd's logging-binary protocol: the shim runs the binary with the
//! URI's query as key/value arguments (in no fixed order), the container's
//! stdout and stderr as the read ends on fds 3 and 4, and the write end of
//! a "ready" pipe on fd 5, which the logger closes once it is ready. This
//! logger writes both streams to the CRI log file, as the shim's own
//! `file://` logs do, writes its PID to `pid-file`, and reopens the log on
//! SIGUSR1 (berthd's ReopenContainerLog). After each reopen it writes the
//! number of reopens so far to `reopened-file`: berthd answers
//! ReopenContainerLog only once that number grew, so no line goes to the
//! rotated file after the call returns. It exits when both streams end.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::cri_log::{copy_to_log, CriLog, Stream};

/// The argument that makes the shim binary a logger.
pub const LOG_CRI_ARG: &str = "log-cri";
const PID_FILE_ARG: &str = "pid-file";
const REOPENED_FILE_ARG: &str = "reopened-file";

/// The descriptors containerd's logging protocol hands over.
const STDOUT_FD: i32 = 3;
const STDERR_FD: i32 = 4;
const READY_FD: i32 = 5;

/// A logger invocation: `log-cri PATH [pid-file PATH] [reopened-file
/// PATH]`, in any order.
#[derive(Debug, PartialEq, Eq)]
pub struct LoggerArgs {
    pub log: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub reopened_file: Option<PathBuf>,
}

impl LoggerArgs {
    /// `None` unless `args` (without the program name) ask for a logger.
    pub fn parse(args: &[OsString]) -> Option<anyhow::Result<Self>> {
        if !args.iter().any(|a| a == LOG_CRI_ARG) {
            return None;
        }
        Some(Self::parse_pairs(args))
    }

    fn parse_pairs(args: &[OsString]) -> anyhow::Result<Self> {
        let mut log = None;
        let mut pid_file = None;
        let mut reopened_file = None;
        for pair in args.chunks(2) {
            let [key, value] = pair else {
                anyhow::bail!("logger argument {:?} has no value", pair[0]);
            };
            match key.to_str() {
                Some(LOG_CRI_ARG) => log = Some(PathBuf::from(value)),
                Some(PID_FILE_ARG) => pid_file = Some(PathBuf::from(value)),
                Some(REOPENED_FILE_ARG) => reopened_file = Some(PathBuf::from(value)),
                _ => anyhow::bail!("unknown logger argument {key:?}"),
            }
        }
        let log = log
            .filter(|p| p.is_absolute())
            .with_context(|| format!("{LOG_CRI_ARG} needs an absolute log path"))?;
        Ok(Self {
            log,
            pid_file,
            reopened_file,
        })
    }
}

/// Runs the logger until the container's stdout and stderr both end.
pub fn run(args: &LoggerArgs) -> anyhow::Result<()> {
    for fd in [STDOUT_FD, STDERR_FD, READY_FD] {
        anyhow::ensure!(
            Path::new(&format!("/proc/self/fd/{fd}")).exists(),
            "fd {fd} is not open: run by a shim as a logging binary"
        );
    }
    // Blocked before any thread starts, so only the signal thread takes it.
    let mut reopen = SigSet::empty();
    reopen.add(Signal::SIGUSR1);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&reopen), None)
        .context("block SIGUSR1")?;

    let log = Arc::new(CriLog::open(&args.log)?);
    if let Some(pid_file) = &args.pid_file {
        write_pid_file(pid_file)?;
    }
    #[allow(unsafe_code)]
    // SAFETY: the logging protocol hands this process fds 3-5 (checked open
    // above); nothing else in the process owns or closes them.
    let (stdout, stderr, ready) = unsafe {
        (
            File::from_raw_fd(STDOUT_FD),
            File::from_raw_fd(STDERR_FD),
            OwnedFd::from_raw_fd(READY_FD),
        )
    };
    // Closing the ready pipe tells the shim that output is being taken.
    drop(ready);

    let reopener = Arc::clone(&log);
    let reopened_file = args.reopened_file.clone();
    std::thread::spawn(move || {
        let mut reopens: u64 = 0;
        loop {
            if reopen.wait().is_err() {
                continue;
            }
            if let Err(e) = reopener.reopen() {
                tracing::warn!("cannot reopen the container log: {e}");
                continue;
            }
            reopens += 1;
            if let Some(path) = &reopened_file {
                if let Err(e) = write_atomically(path, &reopens.to_string()) {
                    tracing::warn!("cannot acknowledge the reopen: {e:#}");
                }
            }
        }
    });
    let copies = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)].map(|(src, stream)| {
        let log = Arc::clone(&log);
        std::thread::spawn(move || copy_to_log(src, &log, stream))
    });
    for copy in copies {
        if let Ok(Err(e)) = copy.join() {
            tracing::warn!("reading the container's output failed: {e}");
        }
    }
    for file in [&args.pid_file, &args.reopened_file].into_iter().flatten() {
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}

/// Writes this process's PID to `path`.
fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    write_atomically(path, &std::process::id().to_string())
}

/// Writes `text` to `path` under a temporary name, renamed in, so a reader
/// never sees a partial file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn logger_arguments_come_in_any_order() {
        assert!(LoggerArgs::parse(&args(&["-id", "x", "start"])).is_none());
        let want = LoggerArgs {
            log: "/var/log/pods/c.log".into(),
            pid_file: Some("/run/b/logger.pid".into()),
            reopened_file: Some("/run/b/logger.reopened".into()),
        };
        for order in [
            [
                "log-cri",
                "/var/log/pods/c.log",
                "pid-file",
                "/run/b/logger.pid",
                "reopened-file",
                "/run/b/logger.reopened",
            ],
            [
                "reopened-file",
                "/run/b/logger.reopened",
                "pid-file",
                "/run/b/logger.pid",
                "log-cri",
                "/var/log/pods/c.log",
            ],
        ] {
            let parsed = LoggerArgs::parse(&args(&order))
                .expect("a logger")
                .expect("valid");
            assert_eq!(parsed, want);
        }
        for bad in [
            &["log-cri"][..],
            &["log-cri", "relative.log"],
            &["log-cri", "/a.log", "color", "always"],
        ] {
            assert!(
                LoggerArgs::parse(&args(bad)).expect("a logger").is_err(),
                "{bad:?}"
            );
        }
    }
}
