//! The `start` and `delete` actions: short-lived runs of the binary that
//! launch a shim server and clean up after a dead one.
//!
//! `start` computes the shim's socket, `unix://<dir>/<sha256 of
//! "<-address>/<-namespace>/<-id>">` (containerd's naming, see
//! `SocketAddress` in containerd's `pkg/shim/util_unix.go`),
//! where `<dir>` is `$BERTH_SHIM_SOCKET_DIR` or `/run/berth/s`. If a shim
//! already answers there it is reused; a dead socket is removed. Otherwise
//! it spawns the server ([`crate::service`]) with cwd = bundle and waits
//! for its readiness line. It writes the address to `<bundle>/address` and
//! prints containerd's 2.x start reply (as the containerd-shim crate does
//! for containerd's legacy protocol):
//! `{"version":3,"address":"unix:///run/berth/s/<hash>","protocol":"ttrpc"}`.
//!
//! `delete` is for a shim that died: it runs `runtime delete --force`,
//! unmounts a rootfs the shim had mounted, removes the dead socket and
//! prints a protobuf `DeleteResponse` built from `exit.json` (or, without
//! one, pid 0 and status 137 = 128 + SIGKILL, as containerd's runc shim).
//! It refuses while the shim still answers: then use the task API.

use berth_owner_only as owner_only;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::TASK_API_VERSION;
use sha2::{Digest, Sha256};

use crate::bundle::{self, ExitRecord};
use crate::error::{Error, Result};
use crate::flags::Flags;
use crate::options::RuntimeOptions;
use crate::process::timestamp;

/// Overrides the directory of shim sockets (tests use a temp dir).
pub const SOCKET_DIR_ENV: &str = "BERTH_SHIM_SOCKET_DIR";
const DEFAULT_SOCKET_DIR: &str = "/run/berth/s";
/// How long the server may take to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Launches (or finds) the shim server; returns the reply for stdout.
pub fn start(flags: &Flags) -> Result<Vec<u8>> {
    require(flags)?;
    let bundle = bundle_dir(flags)?;
    let address = socket_address(flags);
    let path = socket_path(&address);
    if let Some(dir) = path.parent() {
        owner_only::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            tracing::info!(%address, "a shim already serves this container");
            return finish(&bundle, &address);
        }
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }

    let exe = std::env::current_exe().map_err(|source| Error::Sys {
        op: "find own executable",
        source,
    })?;
    let log_path = bundle.join(bundle::SHIM_LOG);
    let log = owner_only::open(
        owner_only::open_options().create(true).append(true),
        &log_path,
    )
    .map_err(|e| Error::io(&log_path, e))?;
    let mut cmd = Command::new(&exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", &address])
        .arg("-bundle")
        .arg(&bundle);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.current_dir(&bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        binary: exe.clone(),
        source,
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    match line.trim_end() {
        "ok" => finish(&bundle, &address),
        failed => {
            // We started it: stop it (by its pid) and reap it.
            let _ = child.kill();
            let _ = child.wait();
            let why = failed
                .strip_prefix("error: ")
                .map(str::to_string)
                .unwrap_or_else(|| format!("it did not start serving within {READY_TIMEOUT:?}"));
            Err(Error::FailedPrecondition(format!(
                "shim server for {} failed: {why} (see {})",
                flags.id,
                log_path.display()
            )))
        }
    }
}

fn finish(bundle: &Path, address: &str) -> Result<Vec<u8>> {
    let path = bundle.join(bundle::ADDRESS);
    owner_only::write(&path, address.as_bytes()).map_err(|e| Error::io(&path, e))?;
    let reply = serde_json::json!({
        "version": TASK_API_VERSION,
        "address": address,
        "protocol": "ttrpc",
    });
    Ok(reply.to_string().into_bytes())
}

/// Cleans up after a dead shim; returns the protobuf `DeleteResponse`.
pub fn delete(flags: &Flags) -> Result<Vec<u8>> {
    require(flags)?;
    let bundle = bundle_dir(flags)?;
    let address = socket_address(flags);
    let socket = socket_path(&address);
    if UnixStream::connect(&socket).is_ok() {
        return Err(Error::FailedPrecondition(format!(
            "the shim of {} still serves at {address}: delete through the task API",
            flags.id
        )));
    }
    let options = RuntimeOptions::read(&bundle)?
        .unwrap_or_else(|| RuntimeOptions::defaults(&flags.namespace));
    let binary = crate::oci_runtime::resolve(&options.binary_name)?;
    let out = Command::new(&binary)
        .arg("--root")
        .arg(&options.root)
        .args(["delete", "--force", &flags.id])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { binary, source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains("does not exist") && !stderr.contains("not found")
    {
        tracing::warn!("{} delete: {}", options.binary_name, stderr.trim());
    }
    if options.mounted_rootfs {
        crate::process::init::unmount(&bundle.join("rootfs"))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&socket, e)),
    }
    let record: Option<ExitRecord> = bundle::read_json(&bundle.join(bundle::EXIT))?;
    let response = match record {
        Some(r) => DeleteResponse {
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: MessageField::some(timestamp(r.exited_at().unwrap_or_else(SystemTime::now))),
            ..Default::default()
        },
        None => DeleteResponse {
            pid: 0,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        },
    };
    response.write_to_bytes().map_err(|source| Error::Decode {
        what: "delete response",
        source,
    })
}

fn require(flags: &Flags) -> Result<()> {
    if flags.namespace.is_empty() || flags.id.is_empty() {
        return Err(Error::InvalidArgument(
            "-namespace and -id are required".to_string(),
        ));
    }
    Ok(())
}

fn bundle_dir(flags: &Flags) -> Result<PathBuf> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().map_err(|source| Error::Sys {
        op: "find the bundle (current directory)",
        source,
    })
}

/// The shim's socket address, `unix://…`.
pub fn socket_address(flags: &Flags) -> String {
    let dir = std::env::var(SOCKET_DIR_ENV)
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_string());
    // Joined as paths (no doubled `/`), as containerd's `filepath.Join`.
    let key = PathBuf::from(&flags.address)
        .join(&flags.namespace)
        .join(&flags.id);
    let digest = Sha256::digest(key.as_os_str().as_encoded_bytes());
    let hash = digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    format!("unix://{}/{hash}", dir.trim_end_matches('/'))
}

fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_socket_addresses() {
        let flags = Flags {
            namespace: "k8s.io".into(),
            id: "c1".into(),
            address: "/run/berth/berthd.sock".into(),
            ..Default::default()
        };
        let a = socket_address(&flags);
        let dir = std::env::var(SOCKET_DIR_ENV).unwrap_or_else(|_| DEFAULT_SOCKET_DIR.into());
        let hash = a
            .strip_prefix(&format!("unix://{dir}/"))
            .expect("in the socket dir");
        // sha256("/run/berth/berthd.sock/k8s.io/c1"): running shims keep
        // their names across upgrades.
        assert_eq!(
            hash,
            "b5063b80610def54e526a1b2bcf7f7b61c9973fc23fd3acd349e9aef9a78a88d"
        );
        let other = Flags {
            id: "c2".into(),
            ..flags
        };
        assert_ne!(socket_address(&other), a);
        assert_eq!(socket_path("unix:///x/y"), Path::new("/x/y"));
    }

    #[test]
    fn start_reply_is_containerd_json() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reply = finish(dir.path(), "unix:///run/berth/s/abc").expect("finish");
        let v: serde_json::Value = serde_json::from_slice(&reply).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"version": 3, "address": "unix:///run/berth/s/abc", "protocol": "ttrpc"})
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(bundle::ADDRESS)).expect("address file"),
            "unix:///run/berth/s/abc"
        );
    }
}
