//! RunPodSandbox.
//!
//! Order of work, each step undone by [`super::teardown`] if a later one
//! fails: validate the request (nothing made yet); load the CNI network
//! (a pod network that is not ready fails here); reserve the pod name;
//! write the record as `Creating`; make the directory, the namespaces
//! (hostname set in the UTS one), the pod sysctls, the pod files and
//! `/dev/shm`; start the PID init if the pod shares a PID namespace; CNI
//! ADD; write the record as `Ready` with the ADD result; keep the name.
//! With the `failpoints` feature, `BERTH_FAILPOINT=sandbox-run:<step>`
//! crashes berthd after a step (`after-record`, `after-namespaces`,
//! `after-pid-init`, `after-cni-add`; see `e2e/tests/crash.rs`).
//!
//! The work runs in its own task: a client that gives up (kubelet's
//! deadline) does not cut it in half. When the client has gone by the
//! end, the sandbox is rolled back and the name released, so kubelet's
//! retry succeeds instead of finding the name reserved.

use super::{
    namespace_options, network, now_nanos, pid_init, random_id, sandbox_dir, sysctl, teardown,
    NamespacePaths, SandboxError, SandboxRecord, SandboxState, SANDBOX_RECORD_VERSION,
};
use crate::container::{self, ContainerError};
use crate::failpoint;
use crate::metrics::Phase;
use crate::network::cni_config;
use crate::network::netns::{self, NamespaceKind};
use crate::runtime::Runtime;
use crate::sandbox::files;
use crate::{Error, Result};
use berth_owner_only as owner_only;
use berth_proto::cri::v1 as cri;
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Runs a pod sandbox; returns its id.
pub async fn run(state: &Arc<Runtime>, request: cri::RunPodSandboxRequest) -> Result<String> {
    let config = request
        .config
        .ok_or_else(|| Error::invalid("config", "is required"))?;
    validate(state, &config, &request.runtime_handler)?;
    let host_network = namespace_options(&config).network == cri::NamespaceMode::Node as i32;
    let network = if host_network {
        None
    } else {
        let config = state.effective_config();
        let cni = &config.cni;
        Some(
            cni_config::load_network(&cni.conf_dir, &cni.bin_dirs)
                .map_err(SandboxError::NetworkNotReady)?,
        )
    };
    let meta = config.metadata.clone().unwrap_or_default();
    let name = format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    );
    let id = random_id();
    let record = SandboxRecord {
        version: SANDBOX_RECORD_VERSION,
        id: id.clone(),
        name,
        runtime_handler: request.runtime_handler,
        state: SandboxState::Creating,
        created_at: now_nanos(),
        dir: sandbox_dir(&state.config.state, &id),
        namespaces: NamespacePaths::default(),
        init_pid: None,
        network: network
            .as_ref()
            .map(|list| network::network_record(list, state.pod_cidrs.get())),
        resources: Default::default(),
        config,
    };
    // Dropped with this future if the client goes away.
    let (_client, gone) = oneshot::channel::<()>();
    let task = tokio::spawn(create(state.clone(), record, gone).in_current_span());
    task.await.expect("RunPodSandbox's task does not panic")
}

/// Checks what can be checked before anything is made.
fn validate(state: &Runtime, config: &cri::PodSandboxConfig, handler: &str) -> Result<()> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    for (field, value) in [
        ("config.metadata.name", &meta.name),
        ("config.metadata.namespace", &meta.namespace),
        ("config.metadata.uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
    }
    if !handler.is_empty() && !state.config.runtime.handlers.contains_key(handler) {
        let known: Vec<&str> = state
            .config
            .runtime
            .handlers
            .keys()
            .map(String::as_str)
            .collect();
        return Err(Error::invalid(
            "runtime_handler",
            format!(
                "no runtime handler {handler:?} is configured (known: {})",
                known.join(", ")
            ),
        ));
    }
    let options = namespace_options(config);
    const NS: &str = "config.linux.security_context.namespace_options";
    for (field, mode) in [
        ("network", options.network),
        ("pid", options.pid),
        ("ipc", options.ipc),
    ] {
        match cri::NamespaceMode::try_from(mode) {
            Ok(cri::NamespaceMode::Pod | cri::NamespaceMode::Node) => {}
            Ok(cri::NamespaceMode::Container) if field == "pid" => {}
            _ => {
                return Err(Error::invalid(
                    format!("{NS}.{field}"),
                    format!("mode {mode} is not valid for a pod"),
                ))
            }
        }
    }
    if let Some(userns) = &options.userns_options {
        if userns.mode != cri::NamespaceMode::Node as i32 {
            return Err(Error::invalid(
                format!("{NS}.userns_options.mode"),
                "user namespaces are not supported by berth",
            ));
        }
    }
    let host_network = options.network == cri::NamespaceMode::Node as i32;
    let host_ipc = options.ipc == cri::NamespaceMode::Node as i32;
    if let Some(linux) = &config.linux {
        sysctl::validate(&linux.sysctls, host_network, host_ipc).map_err(|(name, reason)| {
            Error::invalid("config.linux.sysctls", format!("{name} {reason}"))
        })?;
    }
    for (i, port) in config.port_mappings.iter().enumerate() {
        let field = format!("config.port_mappings[{i}]");
        if !(0..=65535).contains(&port.host_port) {
            return Err(Error::invalid(
                format!("{field}.host_port"),
                format!("{} is not a port", port.host_port),
            ));
        }
        if port.host_port > 0 && !(1..=65535).contains(&port.container_port) {
            return Err(Error::invalid(
                format!("{field}.container_port"),
                format!("{} is not a port", port.container_port),
            ));
        }
        if !port.host_ip.is_empty() && port.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::invalid(
                format!("{field}.host_ip"),
                format!("{:?} is not an IP address", port.host_ip),
            ));
        }
    }
    files::resolv_conf(config.dns_config.as_ref()).map_err(SandboxError::from)?;
    container::validate_hostname("config.hostname", &config.hostname)
        .map_err(ContainerError::from)?;
    if let Some(sc) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
    {
        container::check_pod_security_modules(sc, &container::SecurityModules::detect())
            .map_err(ContainerError::from)?;
    }
    Ok(())
}

/// The creation proper; see the module doc.
#[tracing::instrument(level = "debug", name = "run_pod_sandbox", skip_all, fields(pod_id = %record.id, pod = %record.name))]
async fn create(
    state: Arc<Runtime>,
    mut record: SandboxRecord,
    mut client_gone: oneshot::Receiver<()>,
) -> Result<String> {
    let mut creation = state
        .sandboxes
        .begin_create(&record.name, &record.id)
        .await?;
    let options = namespace_options(&record.config);
    let node = cri::NamespaceMode::Node as i32;
    record.namespaces = NamespacePaths {
        net: (options.network != node).then(|| record.dir.join("netns")),
        ipc: (options.ipc != node).then(|| record.dir.join("ipcns")),
        // A pod on the host's network keeps the host's name, as in kubelet.
        uts: (options.network != node).then(|| record.dir.join("utsns")),
        pid: (options.pid == cri::NamespaceMode::Pod as i32).then(|| record.dir.join("pidns")),
    };
    persist(&state, record.clone()).await?;
    failpoint::hit("sandbox-run:after-record");

    let made = make(&state, &mut record, &mut client_gone).await;
    let made = made.and_then(|()| match client_gone.try_recv() {
        Err(oneshot::error::TryRecvError::Closed) => Err(SandboxError::Abandoned.into()),
        _ => Ok(()),
    });
    let ready = match made {
        Ok(()) => {
            record.state = SandboxState::Ready;
            persist(&state, record.clone()).await
        }
        Err(e) => Err(e),
    };
    match ready {
        Ok(()) => {
            creation.commit_name();
            tracing::info!(id = %record.id, name = %record.name, ips = ?record.ips(), "pod sandbox is ready");
            for kind in [
                berth_proto::cri::v1::ContainerEventType::ContainerCreatedEvent,
                berth_proto::cri::v1::ContainerEventType::ContainerStartedEvent,
            ] {
                state.publish(&record.id, &record, kind);
            }
            Ok(record.id)
        }
        Err(e) => {
            tracing::warn!(id = %record.id, name = %record.name, error = %e, "RunPodSandbox failed; rolling back");
            rollback(&state, &record).await;
            Err(e)
        }
    }
}

/// Makes everything of the sandbox; `record` learns each thing made.
async fn make(
    state: &Arc<Runtime>,
    record: &mut SandboxRecord,
    client_gone: &mut oneshot::Receiver<()>,
) -> Result<()> {
    let abandoned = |rx: &mut oneshot::Receiver<()>| {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed))
    };
    let snapshot = record.clone();
    let netns_took = tokio::task::spawn_blocking(move || make_local(&snapshot))
        .await
        .expect("making the sandbox dir does not panic")?;
    failpoint::hit("sandbox-run:after-namespaces");
    if abandoned(client_gone) {
        return Err(SandboxError::Abandoned.into());
    }
    if let Some(pidns) = record.namespaces.pid.clone() {
        record.init_pid = Some(pid_init::start(&record.dir, &pidns, &state.shim_cgroup).await?);
        failpoint::hit("sandbox-run:after-pid-init");
    }
    if abandoned(client_gone) {
        return Err(SandboxError::Abandoned.into());
    }
    if let (Some(net), Some(netns)) = (record.network.clone(), record.namespaces.net.clone()) {
        let attach = network::attach(record, &netns, &net, state.config.cni.plugins());
        let (result, ips) = state
            .metrics
            .timed_after(Phase::NetworkSetup, netns_took, attach)
            .await
            .map_err(SandboxError::from)?;
        let net = record.network.as_mut().expect("checked above");
        net.result = Some(result);
        net.ips = ips;
        failpoint::hit("sandbox-run:after-cni-add");
    }
    Ok(())
}

/// The steps that are plain system calls: the directory, namespaces,
/// hostname, sysctls, files and `/dev/shm`. Returns the time the network
/// namespace took (part of the `network_setup` phase).
fn make_local(record: &SandboxRecord) -> Result<std::time::Duration, SandboxError> {
    let dir = &record.dir;
    // Owner-only: containers see the pod's files through bind mounts that
    // runc makes as root, so no other user needs a way in.
    if let Some(parent) = dir.parent() {
        owner_only::create_dir_all(parent).map_err(|source| SandboxError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    owner_only::create_dir(dir).map_err(|source| SandboxError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let ns = &record.namespaces;
    let mut netns_took = std::time::Duration::ZERO;
    for (kind, path) in [
        (NamespaceKind::Network, &ns.net),
        (NamespaceKind::Ipc, &ns.ipc),
        (NamespaceKind::Uts, &ns.uts),
    ] {
        if let Some(path) = path {
            let started = std::time::Instant::now();
            netns::create(kind, path)?;
            if kind == NamespaceKind::Network {
                netns_took = started.elapsed();
            }
        }
    }
    let hostname = if record.config.hostname.is_empty() {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        record.config.hostname.clone()
    };
    if let (Some(uts), false) = (&ns.uts, record.config.hostname.is_empty()) {
        let name = hostname.clone();
        let hostname = hostname.clone();
        netns::run_in_namespace(NamespaceKind::Uts, uts, move || {
            nix::unistd::sethostname(&name)
        })?
        .map_err(|source| SandboxError::Hostname { hostname, source })?;
    }
    if let Some(linux) = &record.config.linux {
        sysctl::apply(&linux.sysctls, ns.net.as_deref(), ns.ipc.as_deref())?;
    }
    let paths = record.file_paths();
    files::write_pod_files(
        &paths,
        &hostname,
        ns.net.is_none(),
        record.config.dns_config.as_ref(),
    )?;
    if ns.ipc.is_some() {
        files::mount_shm(&paths.shm, files::DEFAULT_SHM_SIZE)?;
    }
    Ok(netns_took)
}

/// Undoes a sandbox that did not become ready; failures are logged (the
/// record stays `Creating` then, and start-up retries).
async fn rollback(state: &Arc<Runtime>, record: &SandboxRecord) {
    if let Err(e) = teardown::discard(state, record).await {
        tracing::error!(id = %record.id, error = %e, "cannot roll the sandbox back");
    }
}

/// Writes the record (on the blocking pool: the store fsyncs).
pub(super) async fn persist(state: &Arc<Runtime>, record: SandboxRecord) -> Result<()> {
    state
        .write(move |s| s.sandboxes.put(&s.store, record))
        .await
        .map_err(Error::from)
}
