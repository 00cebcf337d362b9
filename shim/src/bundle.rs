//! The files the shim keeps in the bundle directory, beside `config.json`.
//!
//! | file | written by | content |
//! | --- | --- | --- |
//! | `address` | `start` | the shim's ttrpc address, `unix:///…`, no newline |
//! | `shim.log` | the shim server | its own log (its stderr) |
//! | `options.json` | `create` | [`RuntimeOptions`](crate::options::RuntimeOptions): how to reach the runtime after the shim is gone |
//! | `exit.json` | the init's exit | [`ExitRecord`] |
//! | `runtime-log.json` | runc / crun | the runtime's `--log`, JSON lines |
//! | `init.pid`, `exec-<id>.pid` | runc / crun | pid files |
//! | `exec-<id>.json` | `exec` | the OCI process spec of an exec |
//!
//! `options.json` and `exit.json` are replaced atomically (temporary file,
//! fsync, check, rename, fsync of the directory): a reader sees the old or
//! the new file, never a torn one, even after a crash.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const ADDRESS: &str = "address";
pub const SHIM_LOG: &str = "shim.log";
pub const OPTIONS: &str = "options.json";
pub const EXIT: &str = "exit.json";
pub const RUNTIME_LOG: &str = "runtime-log.json";
pub const INIT_PID: &str = "init.pid";

/// Version of the [`ExitRecord`] format.
pub const EXIT_RECORD_VERSION: u32 = 1;

/// How the container's init process ended, kept in `exit.json` so that an
/// agent that restarts after the container exited learns it even when the
/// shim is gone.
///
/// ```json
/// {"version":1,"id":"c1","pid":4242,"exit_status":137,"exited_at":"2024-05-01T10:00:00.123456789Z"}
/// ```
///
/// `exit_status` is the exit code, or 128 + the signal number for a process
/// a signal killed. `exited_at` is UTC RFC 3339 with nine fractional digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub version: u32,
    pub id: String,
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: String,
}

impl ExitRecord {
    pub fn new(id: &str, pid: u32, exit_status: u32, exited_at: SystemTime) -> Self {
        Self {
            version: EXIT_RECORD_VERSION,
            id: id.to_string(),
            pid,
            exit_status,
            exited_at: crate::io::cri_log::rfc3339_nano(exited_at),
        }
    }

    /// The time of `exited_at`, if it parses.
    pub fn exited_at(&self) -> Option<SystemTime> {
        time::OffsetDateTime::parse(
            &self.exited_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .map(SystemTime::from)
    }
}

/// Reads a JSON file of the bundle; `None` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// Replaces `path` with `value` as JSON, atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(tmp.path(), e))?;
    let written = std::fs::read(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
    if written != bytes {
        return Err(Error::io(
            tmp.path(),
            std::io::Error::other("read back differs from what was written"),
        ));
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn exit_record_round_trips() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(EXIT);
        assert_eq!(read_json::<ExitRecord>(&path).expect("read"), None);

        let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let record = ExitRecord::new("c1", 42, 137, at);
        write_json(&path, &record).expect("write");
        let text = std::fs::read_to_string(&path).expect("read text");
        assert_eq!(
            text,
            r#"{"version":1,"id":"c1","pid":42,"exit_status":137,"exited_at":"2023-11-14T22:13:20.000000005Z"}"#
        );
        let back: ExitRecord = read_json(&path).expect("read").expect("present");
        assert_eq!(back, record);
        assert_eq!(back.exited_at(), Some(at));

        // Replacing leaves no temporary file behind.
        write_json(&path, &ExitRecord::new("c1", 42, 0, at)).expect("rewrite");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(EXIT)]);
    }

    #[test]
    fn bad_json_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(EXIT);
        std::fs::write(&path, "{").expect("write");
        let err = read_json::<ExitRecord>(&path).expect_err("bad json");
        assert!(err.to_string().contains("exit.json"), "{err}");
    }
}
