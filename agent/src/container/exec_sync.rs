//! ExecSync: run a command in a running container and return its output
//! and exit code.
//!
//! The process runs through the container's shim (`exec`, `start`, `wait`)
//! as [`super::exec`] prepares it, without a terminal. Its stdout and
//! stderr go to two FIFOs in `<state>/exec/<exec id>/` that a reader thread
//! each drains: the first 16 MiB of each stream are kept, the rest read
//! and dropped (the CRI's limit, CVE-2022-1708), so a chatty process never
//! blocks; the response as a whole must also fit gRPC's message cap
//! (`grpc.max_message_size`, 16 MiB, which kubelet's receive limit equals),
//! so when both streams together are larger, stdout is cut first, keeping
//! at least half the room for stderr. On timeout the exec'd process is killed (never the container)
//! and the call fails with `DeadlineExceeded`, as containerd's does.
//!
//! Output written by a background process that outlives the command keeps
//! the FIFO open; berth waits [`OUTPUT_GRACE`] after the exit for the
//! streams to end, then returns what it read.

use super::record::ContainerError;
use crate::runtime::Runtime;
use crate::shim_client::{ExecStdio, ShimClient};
use crate::Result;
use berth_proto::cri::v1 as cri;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most output kept per stream.
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// How long output may keep flowing after the process exited.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// Room left in a response for everything but the output.
const RESPONSE_OVERHEAD: usize = 64 * 1024;
/// How long a killed exec may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Runs `request.cmd` in the container.
pub async fn exec_sync(
    state: &Arc<Runtime>,
    request: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse> {
    let super::exec::ExecTarget { record, client } =
        super::exec::target(state, &request.container_id, &request.cmd).await?;
    let process =
        super::exec::process_spec(&record.bundle, &request.cmd, super::exec::Terminal::None)?;
    let exec_id = super::exec::new_id();
    let io = ExecIo::new(&super::exec::dir(state, &exec_id))?;
    let stdio = ExecStdio {
        stdout: io.stdout.display().to_string(),
        stderr: io.stderr.display().to_string(),
        ..Default::default()
    };
    let ran = run(&client, &exec_id, process, &stdio, request.timeout).await;
    if let Err(e) = client.delete(&exec_id).await {
        if !e.is_not_found() {
            tracing::debug!(id = %record.id, exec_id, error = %e, "cannot delete an exec");
        }
    }
    // After a failed exec nobody will open the FIFOs; after an exit the
    // shim's copies may still be opening them, so they get a grace period.
    let grace = if ran.is_ok() {
        OUTPUT_GRACE
    } else {
        io.unblock();
        Duration::ZERO
    };
    let (out, err) = io.collect(grace).await;
    let budget = state
        .config
        .grpc
        .max_message_size
        .saturating_sub(RESPONSE_OVERHEAD);
    let (out, err) = fit(out, err, budget);
    match ran {
        Ok(exit_code) => Ok(cri::ExecSyncResponse {
            stdout: out,
            stderr: err,
            exit_code: exit_code as i32,
        }),
        Err(RunError::Timeout) => Err(ContainerError::ExecTimeout {
            id: record.id.clone(),
            seconds: request.timeout,
        }
        .into()),
        Err(RunError::Shim(e)) => Err(ContainerError::from(e).into()),
    }
}

enum RunError {
    Timeout,
    Shim(crate::shim_client::ShimError),
}

/// Starts the exec and waits for its exit status.
async fn run(
    client: &ShimClient,
    exec_id: &str,
    process: Vec<u8>,
    stdio: &ExecStdio,
    timeout: i64,
) -> Result<u32, RunError> {
    client
        .exec(exec_id, process, stdio)
        .await
        .map_err(RunError::Shim)?;
    client.start(exec_id).await.map_err(RunError::Shim)?;
    let waited = if timeout > 0 {
        match tokio::time::timeout(
            Duration::from_secs(timeout.unsigned_abs()),
            client.wait(exec_id),
        )
        .await
        {
            Ok(waited) => waited,
            Err(_) => {
                let _ = client.kill(exec_id, Signal::SIGKILL as u32, false).await;
                let _ = tokio::time::timeout(KILL_WAIT, client.wait(exec_id)).await;
                return Err(RunError::Timeout);
            }
        }
    } else {
        client.wait(exec_id).await
    };
    waited.map(|w| w.exit_status).map_err(RunError::Shim)
}

/// Cuts the streams so that together they take at most `budget` bytes:
/// stdout is cut first, and stderr keeps at least half of it.
fn fit(mut out: Vec<u8>, mut err: Vec<u8>, budget: usize) -> (Vec<u8>, Vec<u8>) {
    let out_len = out.len().min(budget - err.len().min(budget / 2));
    out.truncate(out_len);
    err.truncate(budget - out_len);
    (out, err)
}

/// What one reader thread has read, and its end.
type Reader = (Arc<Mutex<Vec<u8>>>, tokio::sync::oneshot::Receiver<()>);

/// The FIFOs of one exec and the threads that drain them.
struct ExecIo {
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    readers: Vec<Reader>,
}

impl ExecIo {
    fn new(dir: &Path) -> Result<Self> {
        berth_owner_only::create_dir_all(dir).map_err(|e| ContainerError::io(dir, e))?;
        let mut io = Self {
            dir: dir.to_owned(),
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
            readers: Vec::new(),
        };
        for fifo in [io.stdout.clone(), io.stderr.clone()] {
            nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(|e| ContainerError::io(&fifo, e.into()))?;
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let (done, finished) = tokio::sync::oneshot::channel();
            let sink = buffer.clone();
            std::thread::Builder::new()
                .name("berth-exec-output".to_owned())
                .spawn(move || {
                    drain(&fifo, &sink);
                    let _ = done.send(());
                })
                .map_err(|e| ContainerError::io(dir, e))?;
            io.readers.push((buffer, finished));
        }
        Ok(io)
    }

    /// Waits for both streams to end (at most `grace`) and returns what
    /// was read.
    async fn collect(mut self, grace: Duration) -> (Vec<u8>, Vec<u8>) {
        let mut outputs = Vec::new();
        for (buffer, finished) in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(grace, finished).await;
            let bytes = std::mem::take(&mut *buffer.lock().expect("output lock"));
            outputs.push(bytes);
        }
        let err = outputs.pop().unwrap_or_default();
        let out = outputs.pop().unwrap_or_default();
        (out, err)
    }
}

impl ExecIo {
    /// A reader still waiting in open() (nobody opened the FIFO for
    /// writing) gets a writer that closes at once, so it sees EOF and ends.
    fn unblock(&self) {
        for fifo in [&self.stdout, &self.stderr] {
            let _ = nix::fcntl::open(
                fifo.as_path(),
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_NONBLOCK,
                Mode::empty(),
            );
        }
    }
}

impl Drop for ExecIo {
    fn drop(&mut self) {
        self.unblock();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a FIFO to its end, keeping at most [`MAX_OUTPUT`] bytes.
fn drain(fifo: &Path, sink: &Mutex<Vec<u8>>) {
    let Ok(mut file) = std::fs::File::open(fifo) else {
        return;
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                let mut kept = sink.lock().expect("output lock");
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_fits_the_message_cap() {
        let (out, err) = fit(vec![1; 10], vec![2; 10], 12);
        assert_eq!((out.len(), err.len()), (6, 6));
        let (out, err) = fit(vec![1; 10], vec![2; 1], 12);
        assert_eq!((out.len(), err.len()), (10, 1));
        let (out, err) = fit(vec![1; 2], vec![2; 20], 12);
        assert_eq!((out.len(), err.len()), (2, 10));
        let (out, err) = fit(vec![1; 3], vec![2; 3], 12);
        assert_eq!((out.len(), err.len()), (3, 3));
    }

    #[tokio::test]
    async fn output_is_drained_capped_and_unblocked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = ExecIo::new(&dir.path().join("e1")).expect("io");
        let stdout = io.stdout.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut fifo = std::fs::OpenOptions::new()
                .write(true)
                .open(stdout)
                .expect("open");
            fifo.write_all(b"hello").expect("write");
        });
        writer.join().expect("writer");
        // Nobody opens stderr: its reader is unblocked after the grace.
        let (out, err) = io.collect(Duration::from_millis(100)).await;
        assert_eq!(out, b"hello");
        assert!(err.is_empty());
        assert!(!dir.path().join("e1").exists());
    }
}
