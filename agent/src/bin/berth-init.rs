//! berth-init: the process that holds a pod's shared PID namespace.
//!
//! A PID namespace lives only as long as its first process (its "PID 1"),
//! and that process must reap orphans, so a pod whose containers share one
//! PID namespace (`NamespaceMode::POD`) needs a process berth owns; berth
//! needs no pause image for it.
//!
//! - `berth-init start [PID_FILE]` (run by berthd): unshares a new PID
//!   namespace and starts `berth-init run` as its PID 1, in its own session
//!   with stdin and stdout on `/dev/null` (stderr is inherited), writes that
//!   process's PID as seen from the caller's namespace to `PID_FILE` (if
//!   given) and to stdout, each with a newline, and exits without waiting
//!   for it, so the init is re-parented to the host's init (or subreaper)
//!   and outlives berthd. The pid file is written before anything else can
//!   fail, so whoever started it can always find and stop the init.
//! - `berth-init run`: PID 1 of the pod. Blocks every signal it handles
//!   and waits for them: `SIGCHLD` reaps every exited child; `SIGTERM` and
//!   `SIGINT` end it with status 0 (the kernel then kills whatever else runs
//!   in the namespace). PID 1 gets no signal it did not ask for, so
//!   anything else is ignored.
#![forbid(unsafe_code)]

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

fn main() -> ExitCode {
    let action = std::env::args().nth(1).unwrap_or_default();
    let outcome = match action.as_str() {
        "start" => start(std::env::args_os().nth(2).map(std::path::PathBuf::from)),
        "run" => run(),
        _ => Err("usage: berth-init start [PID_FILE] | run".to_owned()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("berth-init: {message}");
            ExitCode::FAILURE
        }
    }
}

fn start(pid_file: Option<std::path::PathBuf>) -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("cannot unshare a PID namespace: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    // The first child after unshare(CLONE_NEWPID) is PID 1 of the new namespace.
    let child = Command::new(exe)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the init: {e}"))?;
    if let Some(path) = pid_file {
        if let Err(e) = std::fs::write(&path, format!("{}\n", child.id())) {
            // Nobody could find it again: end it (it ignores SIGTERM until it
            // blocks signals, SIGKILL always works).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(format!("cannot write {}: {e}", path.display()));
        }
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", child.id())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot report the init's pid: {e}"))
}

fn run() -> Result<(), String> {
    // Leaves berthd's session and process group: its signals are not ours.
    let _ = nix::unistd::setsid();
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(signal);
    }
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => return Ok(()),
            Err(e) => return Err(format!("sigwait: {e}")),
        }
    }
}

/// Reaps every child that has exited.
fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
