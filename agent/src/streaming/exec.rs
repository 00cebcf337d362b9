//! Exec sessions: a new process in a running container, its stdio wired
//! to the client's streams.
//!
//! The process runs through the container's shim like ExecSync's (see
//! [`crate::container::exec`]), with a terminal when the request asks for
//! one; its stdio are FIFOs in `<state>/exec/<exec id>/` (0700) whose
//! berthd ends are opened, non-blocking, before the shim opens its own.
//! Output is read in [`CHUNK`]s into the client's bounded channels; stdin
//! is written from the client's channel, and its end (the client's EOF)
//! closes the FIFO, whose EOF closes the process's stdin in the shim. Resizes go to the task API's `ResizePty`. After the exit the
//! output may flow for [`OUTPUT_GRACE`] more (a background process can
//! hold the FIFO open), then the session ends.
//!
//! A guard owns the process: a session dropped before the exit (the
//! client went away) kills it with SIGKILL and deletes it from the shim in
//! the background, and its FIFOs are unblocked and removed, so nothing of
//! an interrupted exec is left.

use super::{CommandIo, Outcome, CHUNK};
use crate::container::exec::{dir, new_id, process_spec, running, target, Terminal};
use crate::container::ContainerError;
use crate::runtime::Runtime;
use crate::shim_client::{ExecStdio, ShimClient};
use crate::{Error, Result};
use berth_proto::cri::v1 as cri;
use bytes::{Bytes, BytesMut};
use nix::sys::stat::Mode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// How long output may keep flowing after the process exited.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long a session with a terminal may take to send its size.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);
/// How long a killed exec may take to be reaped before it is deleted.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Checks an Exec request: a command, a running container, sensible
/// streams.
pub fn validate(state: &Runtime, request: &cri::ExecRequest) -> Result<()> {
    if request.cmd.is_empty() {
        return Err(Error::invalid("cmd", "must not be empty"));
    }
    running(state, &request.container_id)?;
    super::check_streams(request.stdin, request.stdout, request.stderr, request.tty)
}

/// Runs the exec of `request` with the client's `io` until the process
/// exited and its output was copied.
pub async fn run(state: Arc<Runtime>, request: cri::ExecRequest, io: CommandIo) -> Outcome {
    match run_exec(&state, &request, io).await {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn run_exec(
    state: &Arc<Runtime>,
    request: &cri::ExecRequest,
    mut io: CommandIo,
) -> Result<i32> {
    let target = target(state, &request.container_id, &request.cmd).await?;

    let terminal = if request.tty {
        // A client with a terminal sends its size first thing: the process
        // starts with it, rather than racing a resize.
        let first = tokio::time::timeout(FIRST_SIZE_WAIT, io.resize.recv()).await;
        Terminal::Sized(first.ok().flatten().map(|s| (s.width, s.height)))
    } else {
        Terminal::None
    };
    let spec = process_spec(&target.record.bundle, &request.cmd, terminal)?;
    let exec_id = new_id();
    let fifos = Fifos::create(
        &dir(state, &exec_id),
        io.stdin.is_some(),
        io.stdout.is_some(),
        io.stderr.is_some() && !request.tty,
    )?;
    let ends = fifos.open()?;
    let mut guard = ExecGuard {
        client: target.client.clone(),
        exec_id: exec_id.clone(),
        finished: false,
    };
    let client = &target.client;
    client
        .exec(&exec_id, spec, &fifos.stdio(request.tty))
        .await
        .map_err(ContainerError::from)?;
    client.start(&exec_id).await.map_err(ContainerError::from)?;

    // The FIFO's EOF closes the process's stdin once the shim has copied
    // what came before it. (CloseIO would race that copy and lose input.)
    let _stdin = fifos.stdin.clone().zip(io.stdin).map(|(fifo, from)| {
        let exec_id = exec_id.clone();
        AbortOnDrop(tokio::spawn(async move {
            match open_stdin(&fifo).await {
                Ok(fifo) => copy_in(from, fifo).await,
                Err(e) => tracing::debug!(exec_id, error = %e, "the shim never opened stdin"),
            }
        }))
    });
    let _resize = {
        let client = client.clone();
        let exec_id = exec_id.clone();
        let mut sizes = io.resize;
        AbortOnDrop(tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let resized = client
                    .resize_pty(&exec_id, size.width.into(), size.height.into())
                    .await;
                if let Err(e) = resized {
                    tracing::debug!(exec_id, error = %e, "cannot resize an exec's terminal");
                }
            }
        }))
    };
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel::<()>();
    let exited = async {
        let waited = client.wait(&exec_id).await;
        drop(exited_tx);
        waited
    };
    let outputs = async {
        let copies = async {
            tokio::join!(
                copy_out(ends.stdout, io.stdout),
                copy_out(ends.stderr, io.stderr)
            )
        };
        tokio::select! {
            _ = copies => {}
            () = async {
                let _ = exited_rx.await;
                tokio::time::sleep(OUTPUT_GRACE).await;
            } => {}
        }
    };
    let (waited, ()) = tokio::join!(exited, outputs);
    let waited = waited.map_err(ContainerError::from)?;
    guard.finished = true;
    if let Err(e) = client.delete(&exec_id).await {
        tracing::debug!(exec_id, error = %e, "cannot delete an exec");
    }
    drop(fifos);
    Ok(waited.exit_status as i32)
}

/// How long the shim may take to open an exec's stdin after its start.
const STDIN_OPEN_WAIT: Duration = Duration::from_secs(10);

/// Opens the stdin FIFO for writing once the shim has opened it for
/// reading (a non-blocking open fails until then): input written earlier
/// would be lost with the last descriptor, and the shim would wait for a
/// writer forever.
async fn open_stdin(path: &Path) -> std::io::Result<pipe::Sender> {
    let deadline = tokio::time::Instant::now() + STDIN_OPEN_WAIT;
    let mut delay = Duration::from_millis(1);
    loop {
        match pipe::OpenOptions::new().open_sender(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            opened => return opened,
        }
    }
}

/// Copies the client's stdin into the process until the client's EOF.
async fn copy_in(mut from: mpsc::Receiver<Bytes>, mut fifo: pipe::Sender) {
    while let Some(chunk) = from.recv().await {
        if fifo.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Copies one output FIFO to the client until its EOF. A client that
/// stopped listening ends the copy; the shim then discards the output.
async fn copy_out(fifo: Option<pipe::Receiver>, to: Option<mpsc::Sender<Bytes>>) {
    let (Some(mut fifo), Some(to)) = (fifo, to) else {
        return;
    };
    let mut buffer = BytesMut::new();
    loop {
        buffer.reserve(CHUNK);
        match fifo.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if to.send(buffer.split().freeze()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A spawned task that ends with its owner.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Kills and deletes an exec whose session ended before it did.
#[derive(Debug)]
struct ExecGuard {
    client: ShimClient,
    exec_id: String,
    finished: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let exec_id = std::mem::take(&mut self.exec_id);
        runtime.spawn(async move {
            let _ = client
                .kill(&exec_id, nix::sys::signal::Signal::SIGKILL as u32, false)
                .await;
            let _ = tokio::time::timeout(KILL_WAIT, client.wait(&exec_id)).await;
            match client.delete(&exec_id).await {
                Ok(_) => tracing::debug!(exec_id, "killed the exec of a session that ended"),
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(exec_id, error = %e, "cannot delete an abandoned exec"),
            }
        });
    }
}

/// The FIFOs of one exec, removed on drop.
#[derive(Debug)]
struct Fifos {
    dir: PathBuf,
    stdin: Option<PathBuf>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
}

/// berthd's ends of the output FIFOs (stdin's opens after the start).
#[derive(Debug)]
struct FifoEnds {
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

impl Fifos {
    fn create(dir: &Path, stdin: bool, stdout: bool, stderr: bool) -> Result<Self> {
        berth_owner_only::create_dir_all(dir).map_err(|e| ContainerError::io(dir, e))?;
        let mut fifos = Self {
            dir: dir.to_owned(),
            stdin: None,
            stdout: None,
            stderr: None,
        };
        for (wanted, name) in [(stdin, "stdin"), (stdout, "stdout"), (stderr, "stderr")] {
            if !wanted {
                continue;
            }
            let path = dir.join(name);
            nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(|e| ContainerError::io(&path, e.into()))?;
            match name {
                "stdin" => fifos.stdin = Some(path),
                "stdout" => fifos.stdout = Some(path),
                _ => fifos.stderr = Some(path),
            }
        }
        Ok(fifos)
    }

    /// Opens berthd's ends of the outputs without waiting for the shim's:
    /// non-blocking, they report readiness only once the shim's writer
    /// came, and EOF once it left.
    fn open(&self) -> Result<FifoEnds> {
        let io = |path: &Path, e: std::io::Error| Error::from(ContainerError::io(path, e));
        let receiver = |path: &Option<PathBuf>| {
            path.as_deref()
                .map(|p| {
                    pipe::OpenOptions::new()
                        .open_receiver(p)
                        .map_err(|e| io(p, e))
                })
                .transpose()
        };
        Ok(FifoEnds {
            stdout: receiver(&self.stdout)?,
            stderr: receiver(&self.stderr)?,
        })
    }

    fn stdio(&self, terminal: bool) -> ExecStdio {
        let uri = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        ExecStdio {
            stdin: uri(&self.stdin),
            stdout: uri(&self.stdout),
            stderr: uri(&self.stderr),
            terminal,
        }
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        // A shim still waiting in open() for berthd's end gets a partner
        // that closes at once, so its copy ends instead of waiting forever.
        use nix::fcntl::{open, OFlag};
        for (path, flags) in [
            (&self.stdin, OFlag::O_WRONLY),
            (&self.stdout, OFlag::O_RDONLY),
            (&self.stderr, OFlag::O_RDONLY),
        ] {
            if let Some(path) = path {
                let _ = open(path.as_path(), flags | OFlag::O_NONBLOCK, Mode::empty());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_fifos_wait_for_their_writer_and_end_at_its_close() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fifos = Fifos::create(&tmp.path().join("e"), true, true, false).expect("fifos");
        let ends = fifos.open().expect("open");
        assert!(ends.stderr.is_none());
        let stdout = fifos.stdout.clone().expect("stdout");
        let stdin = fifos.stdin.clone().expect("stdin");
        // The shim's side, late: it reads stdin to its end, then writes.
        let shim = std::thread::spawn(move || {
            use std::io::{Read, Write};
            std::thread::sleep(Duration::from_millis(100));
            let mut input = Vec::new();
            std::fs::File::open(stdin)
                .expect("open stdin")
                .read_to_end(&mut input)
                .expect("read stdin");
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(stdout)
                .expect("open stdout");
            out.write_all(&input).expect("write");
        });
        let (in_tx, in_rx) = mpsc::channel(1);
        let (out_tx, mut out_rx) = mpsc::channel(1);
        in_tx
            .send(Bytes::from_static(b"hello"))
            .await
            .expect("send");
        drop(in_tx);
        let fifo = open_stdin(fifos.stdin.as_deref().expect("stdin"))
            .await
            .expect("open stdin");
        copy_in(in_rx, fifo).await;
        let copy = tokio::spawn(copy_out(ends.stdout, Some(out_tx)));
        let mut got = Vec::new();
        while let Some(chunk) = out_rx.recv().await {
            got.extend_from_slice(&chunk);
        }
        copy.await.expect("copy out");
        shim.join().expect("shim");
        assert_eq!(got, b"hello");
        drop(fifos);
        assert!(!tmp.path().join("e").exists());
    }
}
