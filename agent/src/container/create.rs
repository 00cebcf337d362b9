//! CreateContainer.
//!
//! Order of work, each step undone by [`super::teardown`] if a later one
//! fails: validate; find the sandbox (it must be ready; its lock is held
//! throughout, so it cannot be stopped or removed meanwhile) and the image
//! (unknown: `NotFound`); reserve the name; write the record as
//! `Creating`; prepare the rootfs snapshot (parent: the image's top chain
//! ID); mount it briefly to read the image's `/etc/passwd` and
//! `/etc/group`; build the OCI spec and write the bundle's `config.json`;
//! write the record again with the container's cgroup path (so recovery
//! finds a `runc init` left in it); launch the shim and create the task
//! (the shim mounts the rootfs and opens the CRI log); write the record as
//! `Created`; keep the name; start the exit watcher.
//!
//! With the `failpoints` feature, `BERTH_FAILPOINT=container-create:<step>`
//! crashes berthd after the step (`after-record`, `after-bundle`,
//! `after-shim-start`, `during-task-create`, `after-task-create`,
//! `after-created`; see `e2e/tests/crash.rs`).
//!
//! Like RunPodSandbox the work runs in its own task, and a client that went
//! away before the end gets its container rolled back.

use super::exit;
use super::image_volume::{self, ImageVolume};
use super::record::{
    bundle_dir, ContainerError, ContainerRecord, ContainerState, ImageInfo, ProcessUser,
    CONTAINER_RECORD_VERSION,
};
use super::{
    build_container_spec, teardown, HostFacts, ImageConfig, ImageUsers, PodFiles, PodNamespaces,
    PodPidNamespace, SpecInput,
};
use crate::failpoint;
use crate::metrics::Phase;
use crate::runtime::Runtime;
use crate::sandbox::{files, now_nanos, random_id, SandboxError, SandboxRecord, SandboxState};
use crate::shim_client::{self, ShimClient};
use crate::{Error, Result};
use berth_owner_only as owner_only;
use berth_proto::cri::v1 as cri;
use containerd_shim_protos::api::CreateTaskRequest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Creates a container; returns its id.
pub async fn create(state: &Arc<Runtime>, request: cri::CreateContainerRequest) -> Result<String> {
    let config = request
        .config
        .ok_or_else(|| Error::invalid("config", "is required"))?;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    if meta.name.is_empty() {
        return Err(Error::invalid("config.metadata.name", "must not be empty"));
    }
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image.is_empty() {
        return Err(Error::invalid("config.image.image", "must not be empty"));
    }
    let sandbox = state
        .sandboxes
        .find_created(&request.pod_sandbox_id)?
        .ok_or_else(|| SandboxError::NotFound(request.pod_sandbox_id.clone()))?;
    let (_client, gone) = oneshot::channel::<()>();
    let task =
        tokio::spawn(create_task(state.clone(), sandbox.id, config, image, gone).in_current_span());
    task.await.expect("CreateContainer's task does not panic")
}

async fn create_task(
    state: Arc<Runtime>,
    sandbox_id: String,
    config: cri::ContainerConfig,
    image_name: String,
    mut client_gone: oneshot::Receiver<()>,
) -> Result<String> {
    let sandbox = state
        .sandboxes
        .lock(&sandbox_id)
        .await?
        .ok_or_else(|| SandboxError::NotFound(sandbox_id.clone()))?;
    if sandbox.state != SandboxState::Ready {
        return Err(ContainerError::SandboxNotReady(sandbox_id).into());
    }
    let image = state
        .images
        .status(&image_name)
        .await?
        .ok_or_else(|| ContainerError::ImageNotFound(image_name.clone()))?;
    let image_config = state.images.config(&image).await?;
    let mut config = config;
    let image_volumes = image_volume::resolve(&state, &mut config).await?;
    let image_config = ImageConfig {
        user: image_config.config.user.clone().unwrap_or_default(),
        env: image_config.config.env.clone(),
        entrypoint: image_config.config.entrypoint.clone().unwrap_or_default(),
        cmd: image_config.config.cmd.clone().unwrap_or_default(),
        working_dir: image_config.config.working_dir.clone().unwrap_or_default(),
        stop_signal: image_config.config.stop_signal.clone().unwrap_or_default(),
    };
    let pod = sandbox.metadata();
    let meta = config.metadata.clone().unwrap_or_default();
    let name = format!(
        "{}_{}_{}_{}_{}",
        meta.name, pod.name, pod.namespace, pod.uid, meta.attempt
    );
    let id = random_id();
    let mut creation = state.containers.begin_create(&name, &id).await?;
    let handler = if sandbox.runtime_handler.is_empty() {
        state.config.runtime.default_handler.clone()
    } else {
        sandbox.runtime_handler.clone()
    };
    let handler_config = state
        .config
        .runtime
        .handlers
        .get(&handler)
        .cloned()
        .ok_or_else(|| {
            Error::invalid(
                "runtime_handler",
                format!("the pod's handler {handler:?} is no longer configured"),
            )
        })?;
    let log_path = log_path(&sandbox.config.log_directory, &config.log_path)?;
    let stop_signal = stop_signal(&config, &image_config.stop_signal);
    let resources = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default();
    let mut record = ContainerRecord {
        version: CONTAINER_RECORD_VERSION,
        id: id.clone(),
        sandbox_id: sandbox.id.clone(),
        name,
        image: ImageInfo {
            name: image_name,
            id: image.id.clone(),
            repo_tag: image.repo_tags.first().cloned(),
            repo_digest: image.repo_digests.first().cloned(),
        },
        bundle: bundle_dir(&state.config.state, &id),
        log_path,
        runtime: handler_config.runtime_path,
        shim: handler_config.shim,
        task_api: Default::default(),
        cgroup_path: String::new(),
        stop_signal,
        user: ProcessUser::default(),
        state: ContainerState::Creating,
        created_at: now_nanos(),
        started_at: 0,
        finished_at: 0,
        pid: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        resources,
        config,
    };
    persist(&state, record.clone()).await?;
    failpoint::hit("container-create:after-record");
    let parent = image.top_chain_id().map(str::to_owned);
    let made = make(
        &state,
        &sandbox,
        &mut record,
        parent,
        image_config,
        image_volumes,
    )
    .await;
    let made = made.and_then(|()| match client_gone.try_recv() {
        Err(oneshot::error::TryRecvError::Closed) => Err(ContainerError::Abandoned.into()),
        _ => Ok(()),
    });
    let created = match made {
        Ok(()) => {
            record.state = ContainerState::Created;
            persist(&state, record.clone()).await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok(()) => {
            failpoint::hit("container-create:after-created");
            creation.commit_name();
            exit::watch(&state, &id);
            let created = berth_proto::cri::v1::ContainerEventType::ContainerCreatedEvent;
            state.publish_container(&id, &sandbox.id, created);
            tracing::info!(id = %id, name = %record.name, sandbox = %sandbox.id, "container created");
            Ok(id)
        }
        Err(e) => {
            tracing::warn!(id = %id, error = %e, "CreateContainer failed; rolling back");
            if let Err(cleanup) = teardown::remove(&state, &record).await {
                tracing::error!(id = %id, error = %cleanup, "rollback of a container failed");
            }
            Err(e)
        }
    }
}

/// The signal StopContainer sends first: the CRI's, else the image's, else
/// SIGTERM.
/// The CRI log file, `log_directory/log_path`, which must stay inside the
/// pod's log directory: the shim writes it as root. kubelet sends a
/// relative `<name>/<attempt>.log`; an absolute path or `..` is refused.
fn log_path(log_directory: &str, log_path: &str) -> Result<String> {
    use std::path::Component;
    if log_directory.is_empty() || log_path.is_empty() {
        return Ok(String::new());
    }
    let relative = Path::new(log_path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::invalid(
            "log_path",
            format!("{log_path:?} must be a relative path inside the pod's log directory"),
        ));
    }
    Ok(Path::new(log_directory)
        .join(relative)
        .display()
        .to_string())
}

fn stop_signal(config: &cri::ContainerConfig, image: &str) -> String {
    let cri_signal = cri::Signal::try_from(config.stop_signal)
        .ok()
        .filter(|s| *s != cri::Signal::RuntimeDefault)
        .map(|s| s.as_str_name().trim_start_matches("SIGNAL_").to_owned());
    cri_signal
        .or_else(|| (!image.is_empty()).then(|| image.to_owned()))
        .unwrap_or_else(|| "SIGTERM".to_owned())
}

/// What the blocking part learned.
struct Prepared {
    mounts: Vec<berth_mount::Mount>,
    user: ProcessUser,
    cgroup_path: String,
}

/// Makes the snapshot, bundle and task; `record` learns what was made.
#[tracing::instrument(level = "debug", name = "create_container", skip_all, fields(container_id = %record.id, pod_id = %sandbox.id))]
async fn make(
    state: &Arc<Runtime>,
    sandbox: &SandboxRecord,
    record: &mut ContainerRecord,
    parent: Option<String>,
    image_config: ImageConfig,
    image_volumes: Vec<ImageVolume>,
) -> Result<()> {
    let target_pid = target_pid_namespace(state, record)?;
    let prepared = {
        let state = state.clone();
        let sandbox = sandbox.clone();
        let record = record.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let image = ImageParts {
                parent,
                config: image_config,
                volumes: image_volumes,
            };
            prepare_bundle(&state, &sandbox, &record, &image, target_pid)
        })
        .await
        .expect("preparing a bundle does not panic")?
    };
    record.user = prepared.user;
    record.cgroup_path = prepared.cgroup_path;
    // Before anything runs in it: recovery of an interrupted create finds
    // the container's cgroup (and a `runc init` left in it) from here.
    persist(state, record.clone()).await?;
    failpoint::hit("container-create:after-bundle");
    if let Some(dir) = Path::new(&record.log_path).parent() {
        if !record.log_path.is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| ContainerError::io(dir, e))?;
        }
    }

    let settings = &state.containers.shim;
    let shim = record.shim().map_err(ContainerError::from)?;
    let launch = shim_client::launch(settings, &shim, &record.id, &record.bundle);
    let started = state
        .metrics
        .timed(Phase::ShimStart, launch)
        .await
        .inspect_err(|_| state.metrics.shim_start_failed())
        .map_err(ContainerError::from)?;
    record.task_api = started.task_api;
    failpoint::hit("container-create:after-shim-start");
    let client = ShimClient::connect(&record.id, &started.address, started.task_api)
        .await
        .inspect_err(|_| state.metrics.shim_start_failed())
        .map_err(ContainerError::from)?;
    let log = if record.log_path.is_empty() {
        String::new()
    } else {
        shim.log_uri(&record.log_path, &record.bundle)
            .map_err(ContainerError::from)?
    };
    let tty = record.config.tty;
    let request = CreateTaskRequest {
        id: record.id.clone(),
        bundle: record.bundle.display().to_string(),
        rootfs: shim_client::rootfs_mounts(&prepared.mounts),
        terminal: tty,
        stdin: String::new(),
        stdout: log.clone(),
        stderr: if tty { String::new() } else { log },
        options: Some(shim_client::runtime_options(
            settings,
            &record.runtime,
            state.cgroup_driver == crate::cgroups::CgroupDriver::Systemd,
        ))
        .into(),
        ..Default::default()
    };
    // While the shim's `create` runs: the runtime made the container's
    // state directory, and `runc create` is under way.
    let runtime_state = settings.runtime_root.join(&record.id);
    failpoint::hit_when("container-create:during-task-create", move || {
        runtime_state.exists()
    });
    record.pid = state
        .metrics
        .timed(Phase::OciCreate, client.create(request))
        .await
        .map_err(ContainerError::from)?;
    failpoint::hit("container-create:after-task-create");
    Ok(())
}

/// The PID namespace of the container a `TARGET`-mode container joins.
fn target_pid_namespace(state: &Runtime, record: &ContainerRecord) -> Result<Option<PathBuf>> {
    let options = record
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(options) = options.filter(|o| o.pid == cri::NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    let field = "config.linux.security_context.namespace_options.target_id";
    let target = state
        .containers
        .find(&options.target_id)?
        .filter(|t| t.sandbox_id == record.sandbox_id)
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!("no container {:?} in this pod", options.target_id),
            )
        })?;
    if target.state != ContainerState::Running || target.pid == 0 {
        return Err(Error::invalid(
            field,
            format!("container {} is not running", target.id),
        ));
    }
    Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid))))
}

/// What a container takes from its images.
struct ImageParts {
    /// The snapshot parent of the rootfs: the image's top chain ID.
    parent: Option<String>,
    config: ImageConfig,
    volumes: Vec<ImageVolume>,
}

/// Snapshot, image volumes, users, spec, `config.json`.
fn prepare_bundle(
    state: &Runtime,
    sandbox: &SandboxRecord,
    record: &ContainerRecord,
    image: &ImageParts,
    target_pid: Option<PathBuf>,
) -> Result<Prepared> {
    let bundle = &record.bundle;
    // Owner-only up the path: runc enters the bundle as root, and nobody
    // else may reach the rootfs mount point (a setuid binary the container
    // wrote would be root for them) or read the spec.
    if let Some(parent_dir) = bundle.parent() {
        owner_only::create_dir_all(parent_dir).map_err(|e| ContainerError::io(parent_dir, e))?;
    }
    owner_only::create_dir(bundle).map_err(|e| ContainerError::io(bundle, e))?;
    let rootfs = bundle.join("rootfs");
    owner_only::create_dir(&rootfs).map_err(|e| ContainerError::io(&rootfs, e))?;

    let snapshotter = state.images.snapshotter();
    let prepare = || snapshotter.prepare(&record.id, image.parent.as_deref());
    let mounts = state
        .metrics
        .timed_blocking(Phase::SnapshotPrepare, prepare)
        .map_err(ContainerError::from)?;
    let users = read_image_users(&mounts, &rootfs)?;
    let image_volumes = image_volume::mount_all(snapshotter, bundle, &record.id, &image.volumes)?;

    let host = HostFacts::detect(&state.cgroup_layout).map_err(ContainerError::from)?;
    let ns = &sandbox.namespaces;
    let pod_options = sandbox.namespace_options();
    let namespaces = PodNamespaces {
        network: ns.net.clone(),
        ipc: ns.ipc.clone(),
        uts: ns.uts.clone(),
        pid: match (&ns.pid, pod_options.pid == cri::NamespaceMode::Node as i32) {
            (Some(path), _) => PodPidNamespace::Shared(path.clone()),
            (None, true) => PodPidNamespace::Host,
            (None, false) => PodPidNamespace::PerContainer,
        },
    };
    let paths = sandbox.file_paths();
    let pod_files = PodFiles {
        hostname: Some(paths.hostname),
        hosts: Some(paths.hosts),
        resolv_conf: Some(paths.resolv_conf),
        shm: ns.ipc.is_some().then_some(paths.shm),
    };
    let spec = build_container_spec(&SpecInput {
        container_id: &record.id,
        sandbox_id: &sandbox.id,
        config: &record.config,
        sandbox_config: &sandbox.config,
        image_name: &record.image.name,
        image: &image.config,
        users: &users,
        rootfs: &rootfs,
        namespaces: &namespaces,
        target_pid_namespace: target_pid.as_deref(),
        pod_files: &pod_files,
        image_volumes: &image_volumes,
        cgroup_driver: state.cgroup_driver,
        host: &host,
    })
    .map_err(ContainerError::from)?;
    let user = spec
        .process()
        .as_ref()
        .map(|p| ProcessUser {
            uid: p.user().uid(),
            gid: p.user().gid(),
            additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        })
        .unwrap_or_default();
    let cgroup_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let json = serde_json::to_vec(&spec).expect("an OCI spec always serialises");
    let config_path = bundle.join("config.json");
    // The spec holds the environment, secrets included: owner-only.
    files::write_atomic(&config_path, &json, owner_only::FILE_MODE).map_err(|e| match e {
        files::FilesError::Write { path, source } => ContainerError::Io { path, source },
        other => ContainerError::io(&config_path, std::io::Error::other(other.to_string())),
    })?;
    Ok(Prepared {
        mounts,
        user,
        cgroup_path,
    })
}

/// Reads the image's users and groups from the snapshot, mounted at
/// `rootfs` inside a private mount namespace of a throw-away thread: the
/// mount is never visible outside it (so no other mount namespace, such as
/// one runc is setting up at that moment, gets a copy that would keep it
/// busy), and it disappears with the thread.
fn read_image_users(
    mounts: &[berth_mount::Mount],
    rootfs: &Path,
) -> Result<ImageUsers, ContainerError> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let mounts = mounts.to_vec();
    let target = rootfs.to_owned();
    std::thread::Builder::new()
        .name("berth-read-users".to_owned())
        .spawn(move || -> Result<ImageUsers, ContainerError> {
            let private = |e: nix::Error| ContainerError::io(&target, e.into());
            unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).map_err(private)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(private)?;
            berth_mount::mount_all(&mounts, &target).map_err(ContainerError::from)?;
            ImageUsers::read(&target).map_err(ContainerError::from)
            // The thread, its mount namespace and the mount end here.
        })
        .map_err(|e| ContainerError::io(rootfs, e))?
        .join()
        .unwrap_or_else(|_| {
            Err(ContainerError::io(
                rootfs,
                std::io::Error::other("the thread reading the image's users panicked"),
            ))
        })
}

/// Writes the record (on the blocking pool: the store fsyncs).
pub(super) async fn persist(state: &Arc<Runtime>, record: ContainerRecord) -> Result<()> {
    state
        .write(move |s| s.containers.put(&s.store, record))
        .await
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_paths_stay_in_the_pod_log_directory() {
        let dir = "/var/log/pods/ns_pod_uid";
        assert_eq!(
            super::log_path(dir, "app/0.log").expect("kubelet's form"),
            "/var/log/pods/ns_pod_uid/app/0.log"
        );
        assert_eq!(super::log_path("", "app/0.log").expect("no dir"), "");
        assert_eq!(super::log_path(dir, "").expect("no path"), "");
        for bad in ["../../etc/cron.d/x", "/etc/passwd", "app/../../x.log", ".."] {
            let err = super::log_path(dir, bad).expect_err(bad);
            assert!(err.to_string().contains("log_path"), "{bad}: {err}");
            assert_eq!(
                tonic::Status::from(err).code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    use super::*;

    #[test]
    fn stop_signal_precedence() {
        let mut config = cri::ContainerConfig::default();
        assert_eq!(stop_signal(&config, ""), "SIGTERM");
        assert_eq!(stop_signal(&config, "SIGQUIT"), "SIGQUIT");
        config.stop_signal = cri::Signal::Sigint as i32;
        assert_eq!(stop_signal(&config, "SIGQUIT"), "SIGINT");
    }
}
