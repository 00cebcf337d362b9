//! Sampling: the periodic collector, and the refresh a call asks for.
//!
//! Every period the collector (a tokio task that hands each round to the
//! blocking pool) reads the cgroup and writable layer of every created or
//! running container, then the cgroup (or, for a pod without one, the sum
//! of its containers') and interfaces of every ready pod, and replaces the
//! cache: objects gone since are dropped from it. A round that takes
//! longer than a period delays the next instead of piling up.
//!
//! A call first refreshes the cgroup readings of what it answers about
//! that are older than [`MAX_AGE`] (or missing: a container started since
//! the last round), on the blocking pool, and waits for that at most
//! [`REFRESH_TIMEOUT`]: a slow cgroup then only delays its own numbers,
//! which land in the cache for the next call, and the call answers with
//! what is known.

use super::network;
use super::sample::{lock, sum, Entry, LayerUsage, NetworkReading, Reading};
use crate::cgroups::{pod_cgroup_dir, Cgroup, CgroupStats};
use crate::container::{ContainerRecord, ContainerState};
use crate::runtime::Runtime;
use crate::sandbox::{now_nanos, SandboxRecord, SandboxState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Readings older than this are refreshed for a call: `crictl stats` asks
/// twice, 1 s apart, and fails unless the timestamps differ.
pub const MAX_AGE: Duration = Duration::from_millis(500);

/// How long a call waits for its refresh before answering with the cache.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// The running collector; [`Collector::stop`] ends it.
#[derive(Debug)]
pub struct Collector {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the collector of `state`, one round every `state.stats.period`,
/// the first at once.
pub fn spawn(state: Arc<Runtime>) -> Collector {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(state.stats.period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = &mut stopped => break,
            }
            let round = state.clone();
            if tokio::task::spawn_blocking(move || collect(&round))
                .await
                .is_err()
            {
                tracing::error!("a stats collection round panicked");
            }
        }
    });
    Collector { stop, task }
}

impl Collector {
    /// Stops the collector after its current round.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// True for the containers stats are collected for: those with a cgroup.
pub fn is_live(record: &ContainerRecord) -> bool {
    matches!(
        record.state,
        ContainerState::Created | ContainerState::Running
    )
}

/// True for the pods stats are collected for.
pub fn is_ready(record: &SandboxRecord) -> bool {
    record.state == SandboxState::Ready
}

/// One round of the collector.
pub fn collect(state: &Runtime) {
    let containers: Vec<ContainerRecord> = state
        .containers
        .list()
        .into_iter()
        .filter(is_live)
        .collect();
    let mountpoint = mountpoint(state);
    let readings: HashMap<String, (Option<Reading>, Option<LayerUsage>)> = containers
        .iter()
        .map(|record| {
            let reading = read_container(state, record);
            let layer = mountpoint
                .as_deref()
                .and_then(|mp| writable_layer(state, record, mp));
            (record.id.clone(), (reading, layer))
        })
        .collect();
    let pods: Vec<SandboxRecord> = state
        .sandboxes
        .list()
        .into_iter()
        .filter(is_ready)
        .collect();
    let pod_readings: HashMap<String, (Option<Reading>, Option<NetworkReading>)> = pods
        .iter()
        .map(|pod| {
            let members: Vec<&CgroupStats> = containers
                .iter()
                .filter(|c| c.sandbox_id == pod.id)
                .filter_map(|c| readings.get(&c.id)?.0.as_ref().map(|r| &r.stats))
                .collect();
            (
                pod.id.clone(),
                (read_pod(state, pod, &members), read_network(pod)),
            )
        })
        .collect();

    let mut cache = lock(&state.stats.containers);
    cache.retain(|id, _| readings.contains_key(id));
    for (id, (reading, layer)) in readings {
        let entry = cache.entry(id).or_default();
        if let Some(reading) = reading {
            entry.record_tick(reading);
        }
        if layer.is_some() {
            entry.writable_layer = layer;
        }
    }
    drop(cache);
    let mut cache = lock(&state.stats.pods);
    cache.retain(|id, _| pod_readings.contains_key(id));
    for (id, (reading, network)) in pod_readings {
        let entry = cache.entry(id).or_default();
        if let Some(reading) = reading {
            entry.record_tick(reading);
        }
        if network.is_some() {
            entry.network = network;
        }
    }
}

/// Refreshes the stale readings of `containers` (and, after them, of
/// `pods`) for a call; see the module doc.
pub async fn refresh(
    state: &Arc<Runtime>,
    containers: Vec<ContainerRecord>,
    pods: Vec<SandboxRecord>,
) {
    let now = now_nanos();
    let stale_containers: Vec<ContainerRecord> = {
        let cache = lock(&state.stats.containers);
        containers
            .into_iter()
            .filter(|c| cache.get(&c.id).is_none_or(|e| e.is_stale(now, MAX_AGE)))
            .collect()
    };
    let stale_pods: Vec<SandboxRecord> = {
        let cache = lock(&state.stats.pods);
        pods.into_iter()
            .filter(|p| cache.get(&p.id).is_none_or(|e| e.is_stale(now, MAX_AGE)))
            .collect()
    };
    if stale_containers.is_empty() && stale_pods.is_empty() {
        return;
    }
    let blocking = state.clone();
    let work = tokio::task::spawn_blocking(move || {
        refresh_blocking(&blocking, &stale_containers, &stale_pods)
    });
    if tokio::time::timeout(REFRESH_TIMEOUT, work).await.is_err() {
        tracing::debug!("stats refresh is slow; answering from the cache");
    }
}

fn refresh_blocking(state: &Runtime, containers: &[ContainerRecord], pods: &[SandboxRecord]) {
    let mountpoint = mountpoint(state);
    for record in containers {
        let reading = read_container(state, record);
        // A container never sampled gets its writable layer measured too.
        let new = state.stats.container(&record.id).is_none();
        let layer = match (&mountpoint, new) {
            (Some(mp), true) => writable_layer(state, record, mp),
            _ => None,
        };
        let mut cache = lock(&state.stats.containers);
        let entry = cache.entry(record.id.clone()).or_default();
        if let Some(reading) = reading {
            entry.record_refresh(reading);
        }
        if layer.is_some() {
            entry.writable_layer = layer;
        }
    }
    for pod in pods {
        let members: Vec<CgroupStats> = state
            .containers
            .in_sandbox(&pod.id)
            .iter()
            .filter(|c| is_live(c))
            .filter_map(|c| state.stats.container(&c.id)?.cgroup.map(|r| r.stats))
            .collect();
        let members: Vec<&CgroupStats> = members.iter().collect();
        let reading = read_pod(state, pod, &members);
        let new = state.stats.pod(&pod.id).is_none();
        let network = new.then(|| read_network(pod)).flatten();
        let mut cache = lock(&state.stats.pods);
        let entry = cache.entry(pod.id.clone()).or_default();
        if let Some(reading) = reading {
            entry.record_refresh(reading);
        }
        if network.is_some() {
            entry.network = network;
        }
    }
}

/// Reads a container's cgroup; `None` when it is gone (the container
/// exited meanwhile) or unreadable.
fn read_container(state: &Runtime, record: &ContainerRecord) -> Option<Reading> {
    let timestamp = now_nanos();
    match Cgroup::of_container(&state.cgroup_layout, &record.cgroup_path).and_then(|c| c.stats()) {
        Ok(stats) => Some(Reading { timestamp, stats }),
        Err(error) => {
            tracing::debug!(id = %record.id, %error, "no cgroup stats for container");
            None
        }
    }
}

/// Reads a pod's cgroup, or sums its containers' readings when it has no
/// cgroup of its own (no `cgroup_parent`).
fn read_pod(state: &Runtime, pod: &SandboxRecord, members: &[&CgroupStats]) -> Option<Reading> {
    let timestamp = now_nanos();
    let parent = pod
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or_default();
    let dir = match pod_cgroup_dir(parent, state.cgroup_driver) {
        Ok(dir) => dir,
        Err(error) => {
            tracing::debug!(id = %pod.id, %error, "no cgroup for pod");
            return None;
        }
    };
    let stats = match dir {
        Some(dir) => match Cgroup::new(&state.cgroup_layout, &dir).stats() {
            Ok(stats) => stats,
            Err(error) => {
                tracing::debug!(id = %pod.id, %error, "no cgroup stats for pod");
                return None;
            }
        },
        None => sum(members),
    };
    Some(Reading { timestamp, stats })
}

/// Measures a container's writable layer: its snapshot, named by its id.
fn writable_layer(
    state: &Runtime,
    record: &ContainerRecord,
    mountpoint: &str,
) -> Option<LayerUsage> {
    let timestamp = now_nanos();
    match state.images.snapshotter().usage(&record.id) {
        Ok(usage) => Some(LayerUsage {
            timestamp,
            mountpoint: mountpoint.to_owned(),
            bytes: usage.bytes,
            inodes: usage.inodes,
        }),
        Err(error) => {
            tracing::debug!(id = %record.id, %error, "no writable layer usage for container");
            None
        }
    }
}

/// Reads a pod's interfaces; `None` for a pod on the host's network.
fn read_network(pod: &SandboxRecord) -> Option<NetworkReading> {
    let netns = pod.namespaces.net.as_deref()?;
    let timestamp = now_nanos();
    match network::read(netns) {
        Ok(interfaces) => Some(NetworkReading {
            timestamp,
            interfaces,
        }),
        Err(error) => {
            tracing::debug!(id = %pod.id, %error, "no network stats for pod");
            None
        }
    }
}

/// The snapshotter's mount point, looked up on first use.
fn mountpoint(state: &Runtime) -> Option<String> {
    if let Some(known) = state.stats.mountpoint.get() {
        return Some(known.clone());
    }
    match state.images.snapshotter().mountpoint() {
        Ok(path) => {
            let path = path.to_string_lossy().into_owned();
            Some(state.stats.mountpoint.get_or_init(|| path).clone())
        }
        Err(error) => {
            tracing::warn!(%error, "cannot find the snapshotter's mount point");
            None
        }
    }
}

/// The entries of `ids` in `map`, for translation outside the lock.
pub(super) fn entries(
    map: &std::sync::Mutex<HashMap<String, Entry>>,
    ids: impl IntoIterator<Item = String>,
) -> HashMap<String, Entry> {
    let cache = lock(map);
    ids.into_iter()
        .filter_map(|id| cache.get(&id).cloned().map(|e| (id, e)))
        .collect()
}
