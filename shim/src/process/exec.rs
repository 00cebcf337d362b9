//! Exec processes: extra processes in a running container.
//!
//! `exec` only registers the process (its OCI process spec, the JSON in
//! `ExecProcessRequest.spec`, and its stdio); `start` writes the spec to
//! `<bundle>/exec-<id>.json` and runs `runtime exec --detach`; the process
//! then belongs to the shim like the init. Signals go straight to its pid.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api::ExecProcessRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::io::{PendingIo, StdioSpec};
use crate::oci_runtime::ProcessIo;
use crate::process::init::Init;
use crate::process::{read_pid, Exit, Process, Registry, Status};
use crate::reaper::Exits;

#[derive(Debug)]
pub struct Exec {
    pub process: Arc<Process>,
    spec: Vec<u8>,
}

impl Exec {
    pub fn new(req: &ExecProcessRequest) -> Result<Self> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if req.exec_id.is_empty() || !req.exec_id.chars().all(valid) || req.exec_id.starts_with('.')
        {
            return Err(Error::InvalidArgument(format!(
                "exec id {:?}: want letters, digits, '-', '_' or '.'",
                req.exec_id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        let value: serde_json::Value = serde_json::from_slice(&spec).map_err(|e| {
            Error::InvalidArgument(format!(
                "exec {}: spec is not an OCI process (JSON): {e}",
                req.exec_id
            ))
        })?;
        if !value.is_object() {
            return Err(Error::InvalidArgument(format!(
                "exec {}: spec is not a JSON object",
                req.exec_id
            )));
        }
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        Ok(Self {
            process: Process::new(&req.id, &req.exec_id, stdio, None),
            spec,
        })
    }

    fn spec_file(&self, init: &Init) -> PathBuf {
        init.bundle
            .join(format!("exec-{}.json", self.process.exec_id))
    }

    fn pid_file(&self, init: &Init) -> PathBuf {
        init.bundle
            .join(format!("exec-{}.pid", self.process.exec_id))
    }

    /// Starts the process in `init`'s container; returns its pid.
    pub async fn start(
        &self,
        init: &Init,
        registry: &Registry,
        publisher: &Arc<Publisher>,
    ) -> Result<u32> {
        if self.process.status() != Status::Created || self.process.pid() != 0 {
            return Err(Error::FailedPrecondition(format!(
                "exec {} is already started",
                self.process.exec_id
            )));
        }
        if init.process.status() != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                init.id
            )));
        }
        let spec_file = self.spec_file(init);
        // The process spec holds the exec's environment: owner-only.
        berth_owner_only::write(&spec_file, &self.spec).map_err(|e| Error::io(&spec_file, e))?;
        let pid_file = self.pid_file(init);
        let (pending, child_io) = PendingIo::prepare(&self.process.stdio)?;
        let (io, console) = ProcessIo::new(child_io)?;
        let mut exits = Exits::subscribe();
        init.runtime
            .exec(&init.id, &spec_file, &pid_file, io)
            .await?;
        // The process runs now: any failure must kill it.
        let adopted = async {
            let master = match console {
                Some(socket) => Some(socket.receive().await?),
                None => None,
            };
            let pid = read_pid(&pid_file)?;
            self.process.set_io(pending.start(master)?);
            Ok(pid)
        }
        .await;
        let pid = match adopted {
            Ok(pid) => pid,
            Err(e) => {
                if let Ok(pid) = read_pid(&pid_file) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                return Err(e);
            }
        };
        self.process.set_running();
        registry.register(pid, &self.process, &mut exits, publisher);
        Ok(pid)
    }

    pub fn kill(&self, signal: u32) -> Result<()> {
        let id = &self.process.exec_id;
        match self.process.status() {
            Status::Created => {
                return Err(Error::FailedPrecondition(format!(
                    "exec {id} is not started"
                )))
            }
            Status::Stopped => {
                return Err(Error::NotFound(format!(
                    "exec {id}: process already finished"
                )))
            }
            Status::Running => {}
        }
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| Error::InvalidArgument(format!("signal {signal}")))?;
        let pid = Pid::from_raw(i32::try_from(self.process.pid()).expect("pids fit in i32"));
        kill(pid, signal).map_err(|e| match e {
            nix::errno::Errno::ESRCH => {
                Error::NotFound(format!("exec {id}: process already finished"))
            }
            e => Error::sys("kill exec process", e),
        })
    }

    /// Forgets the process; it must not be running.
    pub fn delete(&self, init: &Init) -> Result<(u32, Option<Exit>)> {
        if self.process.status() == Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "exec {} is running: kill it before deleting",
                self.process.exec_id
            )));
        }
        if let Some(io) = self.process.io() {
            io.close();
        }
        let _ = std::fs::remove_file(self.spec_file(init));
        let _ = std::fs::remove_file(self.pid_file(init));
        Ok((self.process.pid(), self.process.exit()))
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::protobuf::MessageField;

    use super::*;

    fn req(exec_id: &str, spec: &str) -> ExecProcessRequest {
        ExecProcessRequest {
            id: "c1".into(),
            exec_id: exec_id.into(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: spec.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn validates_requests() {
        let ok = r#"{"args":["echo"],"cwd":"/"}"#;
        let cases = [
            (req("e1", ok), None),
            (req("", ok), Some("exec id \"\"")),
            (req("../x", ok), Some("exec id \"../x\"")),
            (req("e1", "nope"), Some("not an OCI process")),
            (req("e1", "[1]"), Some("not a JSON object")),
        ];
        for (r, want) in cases {
            match (Exec::new(&r), want) {
                (Ok(e), None) => {
                    assert_eq!(e.process.id(), "e1");
                    assert_eq!(e.process.status(), Status::Created);
                    assert!(e.kill(9).is_err(), "not started");
                }
                (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{e}"),
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }
}
