//! containerd-shim-berth-v2: the per-container shim of berth.
//!
//! Layout: one process per container owns it. `main.rs` dispatches the
//! containerd shim v2 actions ([`flags`] parses the command line): `start`
//! and `delete` ([`launcher`]) run briefly; without an action the binary is
//! the shim server ([`service`]), which serves the task API ([`task`]) over
//! ttrpc, mounts the rootfs (with berth-mount), drives runc or crun
//! ([`oci_runtime`], chosen by [`options`]), copies stdio and writes CRI
//! logs ([`io`]), reaps exits ([`reaper`], [`process`]),
//! persists `exit.json` ([`bundle`]), reports cgroup stats ([`stats`]) and
//! publishes events ([`events`]).
//!
//! # Launching (what the agent does)
//!
//! ```text
//! cd <bundle> && TTRPC_ADDRESS=<events socket, optional> \
//!   containerd-shim-berth-v2 -namespace <ns> -id <container id> \
//!     -address <agent socket> [-bundle <bundle>] [-debug] start
//! ```
//!
//! `-address` only names the socket: `unix://<dir>/<sha256>` with `<dir>`
//! `$BERTH_SHIM_SOCKET_DIR` or `/run/berth/s`. stdout is one JSON object,
//! `{"version":3,"address":"unix://…","protocol":"ttrpc"}` (containerd
//! 2.0–2.2's reply, as the containerd-shim crate writes it; containerd 1.6
//! reads a bare address and fails on it; containerd 2.3's protobuf
//! bootstrap on stdin is not spoken). Connect a ttrpc `TaskClient` to `address`,
//! then `create` with the bundle, `options` (a `containerd.runc.v1.Options`
//! `Any` choosing runc or crun) and stdout/stderr `file:///path/to/log` for
//! the CRI log. A non-zero exit means no shim runs; stderr says why.
//! After `delete` of the task, `shutdown` makes the shim exit. If the shim
//! died, `… -namespace <ns> -id <id> -bundle <bundle> delete` cleans up and
//! prints a protobuf `DeleteResponse`.
#![deny(unsafe_code)]

mod bundle;
mod error;
mod events;
mod flags;
mod io;
mod launcher;
mod oci_runtime;
mod options;
mod process;
mod reaper;
mod service;
mod stats;
mod task;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-berth-v2: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // Run as a containerd logging binary for an external shim's container.
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if let Some(logger) = io::logger::LoggerArgs::parse(&args) {
        return io::logger::run(&logger?).context("log-cri");
    }
    let flags = flags::Flags::parse(args).context("parse arguments")?;
    if flags.version {
        println!("containerd-shim-berth-v2 {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(if flags.debug {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    anyhow::ensure!(!flags.info, "-info is not supported");
    let reply = match flags.action.as_str() {
        "start" => launcher::start(&flags).context("start")?,
        "delete" => launcher::delete(&flags).context("delete")?,
        "" => {
            anyhow::ensure!(!flags.socket.is_empty(), "-socket is required to serve");
            return service::serve(&flags).context("serve");
        }
        other => anyhow::bail!("unknown action {other:?}: want start or delete"),
    };
    let mut stdout = std::io::stdout();
    stdout.write_all(&reply).context("write reply")?;
    stdout.flush().context("write reply")
}
