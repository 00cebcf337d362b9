//! The runtime: what berthd knows and holds, shared by the CRI calls
//! (through `server`), start-up recovery and the exit watchers.
//!
//! The operations live in the domain modules ([`crate::sandbox`],
//! [`crate::container`], [`crate::recovery`]); each takes the
//! [`Runtime`]. Locking: a pod's or a container's lifecycle changes run
//! under its lock in [`Runtime::sandboxes`] or [`Runtime::containers`]
//! (see [`crate::store::objects`]); CreateContainer holds the pod's lock as
//! well, so a pod cannot stop while a container is made in it. Store writes
//! fsync and run on the blocking pool ([`Runtime::write`]).

use crate::cgroups::{choose_driver, systemd_running, CgroupDriver, CgroupLayout};
use crate::config::Config;
use crate::container::ContainerState;
use crate::container::Containers;
use crate::events::Events;
use crate::metrics::{Metrics, ObjectCounts};
use crate::network::pod_cidr::PodCidrs;
use crate::sandbox::{SandboxRecord, SandboxState, Sandboxes};
use crate::stats::StatsCache;
use crate::store::{Store, Table};
use crate::Result;
use berth_proto::cri::v1::ContainerEventType;
use std::sync::{Arc, RwLock};

/// The state of one berthd.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration read at start-up; never changes. What a reload
    /// (SIGHUP) may change is read through [`Runtime::effective_config`].
    pub config: Config,
    /// The configuration in effect: `config` with the keys of the last
    /// reload applied ([`crate::reload`]). Swapped whole, never held.
    effective: RwLock<Arc<Config>>,
    /// The metadata store. Written only through the tables of `sandboxes`
    /// and `containers`, which write their records through to it.
    pub store: Store,
    /// Where the cgroup controllers are mounted; detected at start-up.
    pub cgroup_layout: CgroupLayout,
    /// Where shims and pod inits run, outside berthd's own cgroup.
    pub shim_cgroup: crate::cgroups::ShimCgroup,
    /// The cgroup driver of pods and containers; chosen at start-up.
    pub cgroup_driver: CgroupDriver,
    /// Images and the snapshotter, with their own locking; shared with the
    /// image service's background work.
    pub images: Arc<berth_imageservice::Images>,
    /// Pod sandboxes: records, names, one lock per pod. Written by
    /// RunPodSandbox, StopPodSandbox, RemovePodSandbox,
    /// UpdatePodSandboxResources and recovery, each under the pod's lock.
    pub sandboxes: Sandboxes,
    /// Containers: records, names, one lock per container, shim clients and
    /// exit watchers. Written by the container calls under the container's
    /// lock, and by the exit watchers, which only record exits (without the
    /// lock: recording is one atomic update and the first exit stays).
    pub containers: Containers,
    /// Lifecycle events for GetContainerEvents, published once a change is
    /// on record; closed at shutdown.
    pub events: Events,
    /// The stats collector's samples; written by its rounds and by the
    /// stats calls' refreshes (see [`crate::stats`]).
    pub stats: StatsCache,
    /// Prometheus metrics, counted by the CRI layer and the domain code;
    /// served by the metrics endpoint.
    pub metrics: Arc<Metrics>,
    /// The node's pod CIDRs (UpdateRuntimeConfig), persisted.
    pub pod_cidrs: PodCidrs,
}

impl Runtime {
    /// Opens the store, loads the sandboxes and containers, detects the
    /// cgroup layout and driver and opens the image store: everything that
    /// can fail at start-up before the CRI socket is bound.
    pub async fn open(config: Config) -> Result<Self> {
        let store = Store::open(&config.root)?;
        let cgroup_layout = CgroupLayout::detect()?;
        let shim_cgroup = crate::cgroups::ShimCgroup::prepare(&cgroup_layout);
        let sandboxes = Sandboxes::load(&store, Table::Sandboxes)?;
        let pod_cidrs = PodCidrs::load(&store)?;
        let containers = Containers::load(
            &store,
            crate::shim_client::ShimSettings {
                agent_socket: config.socket_path(),
                socket_dir: config.state.join("s"),
                runtime_root: config.state.join("runc"),
                runtime_timeout: std::time::Duration::from_secs(
                    config.runtime.command_timeout_seconds,
                ),
                cgroup: shim_cgroup.clone(),
            },
        )?;
        let cgroup_driver = choose_driver(config.cgroup.driver, systemd_running())?;
        let images = berth_imageservice::Images::open(berth_imageservice::ImagesConfig {
            root: config.root.clone(),
            hosts_dir: Some(config.registry.config_path.clone()),
            auth_file: config.registry.auth_file(),
            max_concurrent_downloads: config.image.max_concurrent_downloads,
            stall_timeout: std::time::Duration::from_secs(config.image.stall_timeout_seconds),
            pinned: config.image.pinned_images.clone(),
            keep_layer_blobs: config.image.keep_layer_blobs,
        })
        .await?;
        let stats = StatsCache::new(std::time::Duration::from_millis(
            config.stats.collect_period_ms,
        ));
        Ok(Self {
            effective: RwLock::new(Arc::new(config.clone())),
            config,
            store,
            cgroup_layout,
            shim_cgroup,
            cgroup_driver,
            images: Arc::new(images),
            sandboxes,
            containers,
            events: Events::default(),
            stats,
            metrics: Arc::new(Metrics::new()),
            pod_cidrs,
        })
    }

    /// The configuration in effect now: the start-up one with the keys of
    /// the last reload applied. The CNI directory and anything else a
    /// reload may change are read from here.
    pub fn effective_config(&self) -> Arc<Config> {
        self.effective
            .read()
            .expect("config lock is never poisoned")
            .clone()
    }

    /// Replaces the configuration in effect (by [`crate::reload::apply`]).
    pub(crate) fn set_effective_config(&self, config: Arc<Config>) {
        *self
            .effective
            .write()
            .expect("config lock is never poisoned") = config;
    }

    /// Runs `write` on the blocking pool: store commits fsync, and an async
    /// worker must not wait for the disk.
    pub async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        write: impl FnOnce(&Runtime) -> T + Send + 'static,
    ) -> T {
        let runtime = Arc::clone(self);
        tokio::task::spawn_blocking(move || write(&runtime))
            .await
            .expect("store writes do not panic")
    }

    /// Pods and containers by state and the running shims, as the records
    /// say now: the state gauges of a scrape.
    pub fn object_counts(&self) -> ObjectCounts {
        let mut pods = [("creating", 0), ("ready", 0), ("not_ready", 0)];
        for sandbox in self.sandboxes.list() {
            let slot = match sandbox.effective_state() {
                SandboxState::Creating => 0,
                SandboxState::Ready => 1,
                SandboxState::NotReady => 2,
            };
            pods[slot].1 += 1;
        }
        let mut containers = [
            ("creating", 0),
            ("created", 0),
            ("running", 0),
            ("exited", 0),
        ];
        for container in self.containers.list() {
            let slot = match container.state {
                ContainerState::Creating => 0,
                ContainerState::Created => 1,
                ContainerState::Running => 2,
                ContainerState::Exited => 3,
            };
            containers[slot].1 += 1;
        }
        ObjectCounts {
            pods: pods.to_vec(),
            shims: containers[1].1 + containers[2].1,
            containers: containers.to_vec(),
        }
    }

    /// Publishes `kind` for `id` (a container of `sandbox`, or the sandbox
    /// itself) with the statuses as they are now.
    pub fn publish(&self, id: &str, sandbox: &SandboxRecord, kind: ContainerEventType) {
        self.events.publish(id, sandbox, &self.containers, kind);
    }

    /// Publishes `kind` for container `id` of the sandbox `sandbox_id`, if
    /// that sandbox still exists.
    pub fn publish_container(&self, id: &str, sandbox_id: &str, kind: ContainerEventType) {
        if let Some(sandbox) = self.sandboxes.get(sandbox_id) {
            self.publish(id, &sandbox, kind);
        }
    }
}
