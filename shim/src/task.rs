//! The containerd task API (`containerd.task.v3.Task` over ttrpc) for the
//! one container this shim owns. Each RPC checks the container id,
//! delegates to [`Init`] or [`Exec`] and publishes the matching event.
//!
//! Requests are served one at a time under one async lock; `wait` takes it
//! only to find the process and waits outside it. `pause`, `resume` and
//! `checkpoint` answer containerd's "not supported" (`NOT_FOUND`).
//!
//! - `update`: `resources` is the OCI `LinuxResources` as JSON (what
//!   containerd sends), applied with `runtime update`. With the annotation
//!   [`REOPEN_LOG_ANNOTATION`] the init's CRI log file is reopened (CRI
//!   `ReopenContainerLog`); `resources` may then be absent.
//! - `shutdown`: the shim exits once its container was deleted (or was
//!   never created); before that it answers `FAILED_PRECONDITION`, unless
//!   `now` is set.
//! - `stats`: see [`crate::stats`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC,
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::types::task::{ProcessInfo, Status as ApiStatus};
use tokio::sync::{watch, Mutex};

use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::process::exec::Exec;
use crate::process::init::Init;
use crate::process::{timestamp, Exit, Process, Registry, Status};
use crate::reaper::Exits;

/// `UpdateTaskRequest` annotation asking to reopen the container's CRI
/// log file (any value).
pub const REOPEN_LOG_ANNOTATION: &str = "io.berth.shim.reopen-log";

#[derive(Debug)]
struct Container {
    init: Init,
    execs: HashMap<String, Exec>,
}

#[derive(Debug)]
pub struct TaskService {
    namespace: String,
    publisher: Arc<Publisher>,
    registry: Registry,
    container: Mutex<Option<Container>>,
    shutdown: watch::Sender<bool>,
}

impl TaskService {
    /// Creates the service and starts dispatching exits to its processes.
    /// The returned receiver turns true when the shim should exit.
    pub async fn new(
        namespace: &str,
        publisher: Arc<Publisher>,
    ) -> Result<(Self, watch::Receiver<bool>)> {
        let registry = Registry::default();
        let mut exits = Exits::subscribe();
        let (reg, pubr) = (registry.clone(), publisher.clone());
        tokio::spawn(async move {
            while let Some((pid, code)) = exits.next().await {
                if let Some(process) = reg.remove(pid) {
                    tokio::spawn(process.exited(code, pubr.clone()));
                }
            }
        });
        let (shutdown, rx) = watch::channel(false);
        Ok((
            Self {
                namespace: namespace.to_string(),
                publisher,
                registry,
                container: Mutex::new(None),
                shutdown,
            },
            rx,
        ))
    }

    async fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        let guard = self.container.lock().await;
        let c = container(&guard, id)?;
        if exec_id.is_empty() {
            return Ok(c.init.process.clone());
        }
        Ok(exec(c, exec_id)?.process.clone())
    }

    async fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let mut guard = self.container.lock().await;
        if let Some(c) = guard.as_ref() {
            return Err(Error::AlreadyExists(format!("container {}", c.init.id)));
        }
        let init = Init::create(&req, &self.namespace, &self.registry, &self.publisher).await?;
        let pid = init.process.pid();
        tracing::info!(id = %req.id, pid, "created");
        *guard = Some(Container {
            init,
            execs: HashMap::new(),
        });
        drop(guard);
        self.publisher
            .publish(
                TASK_CREATE_EVENT_TOPIC,
                TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    pid,
                    ..Default::default()
                },
            )
            .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_process(&self, req: StartRequest) -> Result<StartResponse> {
        let guard = self.container.lock().await;
        let c = container(&guard, &req.id)?;
        if req.exec_id.is_empty() {
            let process = c.init.process.clone();
            let _gate = process.start_gate.lock().await;
            let pid = c.init.start().await?;
            drop(guard);
            let event = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.publisher.publish(TASK_START_EVENT_TOPIC, event).await;
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }
        let exec = exec(c, &req.exec_id)?;
        let process = exec.process.clone();
        let _gate = process.start_gate.lock().await;
        let pid = exec.start(&c.init, &self.registry, &self.publisher).await?;
        drop(guard);
        let event = TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid,
            ..Default::default()
        };
        self.publisher
            .publish(TASK_EXEC_STARTED_EVENT_TOPIC, event)
            .await;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete_process(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let mut guard = self.container.lock().await;
        let c = container_mut(&mut guard, &req.id)?;
        let (pid, exit) = if req.exec_id.is_empty() {
            let deleted = c.init.delete().await?;
            *guard = None;
            deleted
        } else {
            let deleted = exec(c, &req.exec_id)?.delete(&c.init)?;
            c.execs.remove(&req.exec_id);
            deleted
        };
        drop(guard);
        let (exit_status, exited_at) = exit_fields(exit);
        if req.exec_id.is_empty() {
            let event = TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status,
                exited_at: exited_at.clone(),
                ..Default::default()
            };
            self.publisher.publish(TASK_DELETE_EVENT_TOPIC, event).await;
        }
        Ok(DeleteResponse {
            pid,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    async fn add_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let mut guard = self.container.lock().await;
        let c = container_mut(&mut guard, &req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!("exec {}", req.exec_id)));
        }
        if c.init.process.status() == Status::Stopped {
            return Err(Error::FailedPrecondition(format!(
                "container {} has exited",
                req.id
            )));
        }
        c.execs.insert(req.exec_id.clone(), Exec::new(&req)?);
        drop(guard);
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publisher
            .publish(TASK_EXEC_ADDED_EVENT_TOPIC, event)
            .await;
        Ok(())
    }

    async fn update_task(&self, req: UpdateTaskRequest) -> Result<()> {
        let guard = self.container.lock().await;
        let c = container(&guard, &req.id)?;
        let reopen = req.annotations.contains_key(REOPEN_LOG_ANNOTATION);
        let resources = req.resources.as_ref().filter(|r| !r.value.is_empty());
        if !reopen && resources.is_none() {
            return Err(Error::InvalidArgument(format!(
                "update without resources or the {REOPEN_LOG_ANNOTATION} annotation"
            )));
        }
        if reopen {
            let io = c.init.process.io().ok_or_else(|| {
                Error::FailedPrecondition(format!("container {} has no IO", req.id))
            })?;
            io.reopen_logs()?;
        }
        if let Some(resources) = resources {
            if c.init.process.status() == Status::Stopped {
                return Err(Error::FailedPrecondition(format!(
                    "container {} has exited",
                    req.id
                )));
            }
            serde_json::from_slice::<serde_json::Value>(&resources.value).map_err(|e| {
                Error::InvalidArgument(format!("resources are not OCI LinuxResources JSON: {e}"))
            })?;
            let file = tempfile::Builder::new()
                .prefix(".resources-")
                .suffix(".json")
                .tempfile_in(&c.init.bundle)
                .map_err(|e| Error::io(&c.init.bundle, e))?;
            std::fs::write(file.path(), &resources.value).map_err(|e| Error::io(file.path(), e))?;
            c.init.runtime.update(&req.id, file.path()).await?;
        }
        Ok(())
    }

    async fn stats_task(&self, req: StatsRequest) -> Result<StatsResponse> {
        let guard = self.container.lock().await;
        let c = container(&guard, &req.id)?;
        let stats = c.init.runtime.stats(&req.id).await?;
        drop(guard);
        let metrics = crate::stats::to_metrics(&stats);
        let any =
            crate::events::to_any(crate::stats::METRICS_PACKAGE, &metrics).map_err(|source| {
                Error::Encode {
                    what: "metrics",
                    source,
                }
            })?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn shutdown_shim(&self, req: ShutdownRequest) -> Result<()> {
        let guard = self.container.lock().await;
        if let Some(c) = guard.as_ref() {
            if !req.now {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not deleted: delete it before shutdown",
                    c.init.id
                )));
            }
            tracing::warn!(id = %c.init.id, "shutdown now: the container is left without a shim");
        }
        tracing::info!("shutting down");
        self.shutdown.send_replace(true);
        Ok(())
    }
}

fn container<'a>(guard: &'a Option<Container>, id: &str) -> Result<&'a Container> {
    guard
        .as_ref()
        .filter(|c| c.init.id == id)
        .ok_or_else(|| Error::NotFound(format!("container {id} not found")))
}

fn container_mut<'a>(guard: &'a mut Option<Container>, id: &str) -> Result<&'a mut Container> {
    guard
        .as_mut()
        .filter(|c| c.init.id == id)
        .ok_or_else(|| Error::NotFound(format!("container {id} not found")))
}

fn exec<'a>(c: &'a Container, exec_id: &str) -> Result<&'a Exec> {
    c.execs.get(exec_id).ok_or_else(|| {
        Error::NotFound(format!(
            "exec {exec_id} in container {} not found",
            c.init.id
        ))
    })
}

fn exit_fields(
    exit: Option<Exit>,
) -> (
    u32,
    MessageField<containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp>,
) {
    match exit {
        Some(e) => (e.status, MessageField::some(e.timestamp())),
        None => (0, MessageField::none()),
    }
}

/// Logs a failed RPC and turns its error into a ttrpc status.
fn reply<T>(rpc: &str, result: Result<T>) -> ttrpc::Result<T> {
    result.map_err(|e| {
        tracing::warn!(rpc, "{e}");
        e.into()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let result = async {
            let p = self.process(&req.id, &req.exec_id).await?;
            let (exit_status, exited_at) = exit_fields(p.exit());
            let bundle = {
                let guard = self.container.lock().await;
                guard
                    .as_ref()
                    .map(|c| c.init.bundle.display().to_string())
                    .unwrap_or_default()
            };
            let status = match p.status() {
                Status::Created => ApiStatus::CREATED,
                Status::Running => ApiStatus::RUNNING,
                Status::Stopped => ApiStatus::STOPPED,
            };
            Ok(StateResponse {
                id: p.id().to_string(),
                bundle,
                pid: p.pid(),
                status: EnumOrUnknown::new(status),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status,
                exited_at,
                exec_id: p.exec_id.clone(),
                ..Default::default()
            })
        }
        .await;
        reply("state", result)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        reply("create", self.create_task(req).await)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        reply("start", self.start_process(req).await)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        reply("delete", self.delete_process(req).await)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let result = async {
            let guard = self.container.lock().await;
            let c = container(&guard, &req.id)?;
            let pids = c.init.runtime.ps(&req.id).await?;
            Ok(PidsResponse {
                processes: pids
                    .into_iter()
                    .map(|pid| ProcessInfo {
                        pid,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        .await;
        reply("pids", result)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let guard = self.container.lock().await;
            let c = container(&guard, &req.id)?;
            if req.exec_id.is_empty() {
                c.init.kill(req.signal, req.all).await
            } else {
                exec(c, &req.exec_id)?.kill(req.signal)
            }
        }
        .await;
        reply("kill", result).map(|()| Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        reply("exec", self.add_exec(req).await).map(|()| Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let p = self.process(&req.id, &req.exec_id).await?;
            let io = p
                .io()
                .ok_or_else(|| Error::FailedPrecondition(format!("{} is not started", p.id())))?;
            io.resize(req.width, req.height)
        }
        .await;
        reply("resize_pty", result).map(|()| Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let result = async {
            let p = self.process(&req.id, &req.exec_id).await?;
            if req.stdin {
                if let Some(io) = p.io() {
                    io.close_stdin();
                }
            }
            Ok(())
        }
        .await;
        reply("close_io", result).map(|()| Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        reply("update", self.update_task(req).await).map(|()| Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let result = async {
            let p = self.process(&req.id, &req.exec_id).await?;
            let exit = p.wait().await;
            Ok(WaitResponse {
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            })
        }
        .await;
        reply("wait", result)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        reply("stats", self.stats_task(req).await)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let guard = self.container.lock().await;
        let task_pid = guard
            .as_ref()
            .filter(|c| c.init.id == req.id)
            .map(|c| c.init.process.pid())
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        reply("shutdown", self.shutdown_shim(req).await).map(|()| Empty::new())
    }
}
