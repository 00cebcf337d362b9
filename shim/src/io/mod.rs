//! A process's stdio: where its output goes and where its input comes from.
//!
//! The stdin, stdout and stderr fields of `CreateTaskRequest` and
//! `ExecProcessRequest` name the ends, as URIs:
//!
//! | value | stdout / stderr | stdin |
//! | --- | --- | --- |
//! | empty | discarded (`/dev/null`) | none (`/dev/null`) |
//! | `file:///abs/path` | a [CRI log](cri_log) file; the same URI in stdout and stderr means one shared file | refused |
//! | `/abs/path` (a FIFO, as containerd makes) | raw bytes written to it | raw bytes read from it; its EOF closes the process's stdin |
//!
//! Other schemes (containerd's `binary://` loggers) are refused. Without a
//! terminal the process gets pipes and one thread per stream copies them
//! (blocking copies, off the async runtime). With a terminal the pty master
//! from the [console socket](console) carries stdin and stdout; stderr is
//! the terminal too and its URI is ignored.

pub mod console;
pub mod cri_log;
pub mod logger;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::oci_runtime::ChildIo;
use cri_log::{CriLog, Stream};

/// The stdio a process was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Where one output stream goes.
#[derive(Debug, Clone)]
enum Sink {
    Null,
    Log(Arc<CriLog>),
    Raw(PathBuf),
}

impl Sink {
    fn parse(uri: &str, field: &str) -> Result<Self> {
        if uri.is_empty() {
            return Ok(Sink::Null);
        }
        if let Some(path) = uri.strip_prefix("file://") {
            let path = absolute(path, field)?;
            return Ok(Sink::Log(Arc::new(CriLog::open(&path)?)));
        }
        Ok(Sink::Raw(absolute(uri, field)?))
    }
}

fn absolute(path: &str, field: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{field} {path:?}: want empty, file:///absolute/path or /absolute/fifo"
        )));
    }
    Ok(p.to_path_buf())
}

/// IO set up but not flowing yet: the pipes exist, the copies start once
/// the runtime made the process ([`Self::start`]).
#[derive(Debug)]
pub struct PendingIo {
    stdin_fifo: Option<PathBuf>,
    stdout: (Sink, Option<File>),
    stderr: (Sink, Option<File>),
    stdin_writer: Option<File>,
}

impl PendingIo {
    /// Opens the sinks of `spec` and, without a terminal, makes the pipes
    /// whose other ends go to the runtime in the returned [`ChildIo`].
    pub fn prepare(spec: &StdioSpec) -> Result<(Self, Option<ChildIo>)> {
        let stdin_fifo = match spec.stdin.as_str() {
            "" => None,
            s if s.starts_with("file://") => {
                return Err(Error::InvalidArgument(format!(
                    "stdin {s:?}: a log file cannot be an input"
                )))
            }
            s => Some(absolute(s, "stdin")?),
        };
        let stdout = Sink::parse(&spec.stdout, "stdout")?;
        let stderr = if spec.stderr == spec.stdout {
            stdout.clone()
        } else {
            Sink::parse(&spec.stderr, "stderr")?
        };
        let mut pending = Self {
            stdin_fifo,
            stdout: (stdout, None),
            stderr: (stderr, None),
            stdin_writer: None,
        };
        if spec.terminal {
            return Ok((pending, None));
        }
        let mut child = ChildIo::null();
        if pending.stdin_fifo.is_some() {
            let (r, w) = pipe()?;
            child.stdin = Stdio::from(r);
            pending.stdin_writer = Some(File::from(w));
        }
        for (sink, reader, slot) in [
            (&pending.stdout.0, &mut pending.stdout.1, &mut child.stdout),
            (&pending.stderr.0, &mut pending.stderr.1, &mut child.stderr),
        ] {
            if !matches!(sink, Sink::Null) {
                let (r, w) = pipe()?;
                *slot = Stdio::from(w);
                *reader = Some(File::from(r));
            }
        }
        Ok((pending, Some(child)))
    }

    /// Starts the copies. `master` is the pty master of a process with a
    /// terminal.
    pub fn start(self, master: Option<File>) -> Result<Io> {
        let mut done = Vec::new();
        let logs = [&self.stdout.0, &self.stderr.0]
            .into_iter()
            .filter_map(|s| match s {
                Sink::Log(log) => Some(log.clone()),
                _ => None,
            })
            .collect();
        let (stdin_writer, console) = match master {
            Some(master) => {
                let output = master.try_clone().map_err(|source| Error::Sys {
                    op: "dup pty master",
                    source,
                })?;
                done.push(spawn_output(output, self.stdout.0.clone(), Stream::Stdout)?);
                let input = master.try_clone().map_err(|source| Error::Sys {
                    op: "dup pty master",
                    source,
                })?;
                let input = self.stdin_fifo.is_some().then_some(input);
                (input, Some(master))
            }
            None => {
                for ((sink, reader), stream) in
                    [(self.stdout, Stream::Stdout), (self.stderr, Stream::Stderr)]
                {
                    if let Some(reader) = reader {
                        done.push(spawn_output(reader, sink, stream)?);
                    }
                }
                (self.stdin_writer, None)
            }
        };
        let stdin = Arc::new(Mutex::new(stdin_writer));
        if let Some(fifo) = self.stdin_fifo {
            spawn_input(fifo, stdin.clone())?;
        }
        Ok(Io {
            stdin,
            console: Mutex::new(console),
            logs,
            done: Mutex::new(done),
        })
    }
}

/// The live IO of a process.
#[derive(Debug)]
pub struct Io {
    stdin: Arc<Mutex<Option<File>>>,
    console: Mutex<Option<File>>,
    logs: Vec<Arc<CriLog>>,
    done: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Io {
    /// Closes the process's stdin (CloseIO); the copy from the stdin FIFO
    /// stops at its next read.
    pub fn close_stdin(&self) {
        self.stdin.lock().expect("stdin lock poisoned").take();
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let console = self.console.lock().expect("console lock poisoned");
        let master = console
            .as_ref()
            .ok_or_else(|| Error::FailedPrecondition("the process has no terminal".to_string()))?;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        console::resize(master, clamp(width), clamp(height))
    }

    /// Reopens the CRI log files (after rotation).
    pub fn reopen_logs(&self) -> Result<()> {
        if self.logs.is_empty() {
            return Err(Error::FailedPrecondition(
                "the process writes no CRI log".to_string(),
            ));
        }
        self.logs.iter().try_for_each(|log| log.reopen())
    }

    /// Waits, at most `limit`, until the output copies reached EOF, so the
    /// log holds everything the process wrote before its exit is reported.
    /// Processes the container left behind may keep a pipe open: hence the
    /// limit.
    pub async fn wait_output(&self, limit: Duration) {
        let receivers = std::mem::take(&mut *self.done.lock().expect("done lock poisoned"));
        let all = async {
            for rx in receivers {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("output still open {limit:?} after the process exited");
        }
    }

    /// Drops the pty master (so reads from it end) and stdin.
    pub fn close(&self) {
        self.close_stdin();
        self.console.lock().expect("console lock poisoned").take();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(drop)
        .map_err(|source| Error::Sys {
            op: "spawn io thread",
            source,
        })
}

/// Copies one output stream to its sink until EOF; the receiver learns
/// when it is done.
fn spawn_output(src: File, sink: Sink, stream: Stream) -> Result<oneshot::Receiver<()>> {
    let (tx, rx) = oneshot::channel();
    spawn_thread(&format!("{stream:?}-copy").to_lowercase(), move || {
        let result = match &sink {
            Sink::Null => std::io::copy(&mut &src, &mut std::io::sink()).map(drop),
            Sink::Log(log) => cri_log::copy_to_log(&src, log, stream),
            Sink::Raw(path) => copy_raw(&src, path),
        };
        if let Err(e) = result {
            tracing::warn!(?stream, "output copy ended: {e}");
        }
        let _ = tx.send(());
    })?;
    Ok(rx)
}

/// Copies to a FIFO (or file). If it cannot be opened, the output is
/// drained so the process never blocks on a full pipe.
fn copy_raw(mut src: &File, path: &Path) -> std::io::Result<()> {
    let mut dst = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot open output, discarding it: {e}");
            return std::io::copy(&mut src, &mut std::io::sink()).map(drop);
        }
    };
    let mut buf = vec![0; 32 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Err(e) = dst.write_all(&buf[..n]) {
            // The reader went away: keep draining.
            tracing::debug!(path = %path.display(), "output reader gone: {e}");
            return std::io::copy(&mut src, &mut std::io::sink()).map(drop);
        }
    }
}

/// Copies the stdin FIFO into the process's stdin until the FIFO's EOF or
/// CloseIO; then closes the process's stdin.
fn spawn_input(fifo: PathBuf, stdin: Arc<Mutex<Option<File>>>) -> Result<()> {
    spawn_thread("stdin-copy", move || {
        // Blocks until a writer opens the FIFO.
        let mut src = match File::open(&fifo) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %fifo.display(), "cannot open stdin: {e}");
                stdin.lock().expect("stdin lock poisoned").take();
                return;
            }
        };
        let mut buf = vec![0; 32 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %fifo.display(), "stdin read: {e}");
                    break;
                }
            };
            let mut guard = stdin.lock().expect("stdin lock poisoned");
            let Some(dst) = guard.as_mut() else { return };
            if dst.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        stdin.lock().expect("stdin lock poisoned").take();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stdin: &str, stdout: &str, stderr: &str) -> StdioSpec {
        StdioSpec {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal: false,
        }
    }

    #[test]
    fn refuses_bad_uris() {
        let cases = [
            (
                spec("", "binary:///bin/logger", ""),
                "stdout \"binary:///bin/logger\"",
            ),
            (spec("", "relative.log", ""), "stdout \"relative.log\""),
            (spec("file:///x", "", ""), "stdin \"file:///x\""),
            (spec("", "", "file://rel"), "stderr \"rel\""),
        ];
        for (s, want) in cases {
            let err = PendingIo::prepare(&s).expect_err(want);
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[tokio::test]
    async fn copies_pipes_to_one_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("c.log");
        let uri = format!("file://{}", log.display());
        let (pending, child) = PendingIo::prepare(&spec("", &uri, &uri)).expect("prepare");
        let child = child.expect("pipes without a terminal");
        // Stand in for the container: write through the child's ends.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"])
            .stdin(child.stdin)
            .stdout(child.stdout)
            .stderr(child.stderr);
        let status = cmd.status().expect("run sh");
        drop(cmd);
        assert!(status.success());
        let io = pending.start(None).expect("start");
        io.wait_output(Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&log).expect("read log");
        let mut lines: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(' ').expect("ts").1)
            .collect();
        lines.sort();
        assert_eq!(lines, vec!["stderr F err", "stdout F out"]);
        assert!(io.resize(80, 24).is_err(), "no terminal");
        io.reopen_logs().expect("reopen");
    }
}
