//! Containers of a pod: their lifecycle through per-container shims, and
//! the translation of a CRI `ContainerConfig` into an OCI runtime spec.
//!
//! Layout: the CRI calls live in [`create`], [`start`], [`stop`],
//! [`remove`], [`status`], [`list`], [`exec_sync`], [`update`]
//! (resources) and [`reopen_log`]; [`exec`] is what ExecSync and the
//! streaming server's exec share; [`record`] holds the persisted
//! [`ContainerRecord`] and the [`Containers`] of a berthd. Ending a
//! container: [`exit`] learns of exits and is the one place that records
//! an end ([`exit::record`]), [`teardown`] the one place that releases what
//! a container holds; [`stop`], [`remove`] and [`lifecycle`] (what the
//! sandbox calls) use the two. Each container is run by its own shim
//! (`crate::shim_client`), which outlives berthd.
//!
//! The spec lives in `spec/`: [`build_container_spec`] (`spec/mod.rs`) is
//! the one entry point; it takes a [`SpecInput`] that carries the CRI
//! request plus everything berth already knows about the pod, the image and
//! the host ([`HostFacts`], `spec/host.rs`). The rules live beside it in
//! `spec/`: `user.rs` resolves users and groups against the image's
//! `/etc/passwd` and `/etc/group`, `capabilities.rs` the capability sets,
//! `mounts.rs` the mount list, `devices.rs` device nodes and the device
//! cgroup, `seccomp.rs` the seccomp profile (with berth's built-in default).
//! Every failure is a [`SpecError`] that names the CRI field.
//!
//! The semantics follow containerd's CRI plugin
//! (`internal/cri/server/container_*.go`, `internal/cri/opts`), which is
//! what critest and kubelet are tested against; where berth differs, the
//! item says so.

pub mod create;
pub mod exec;
pub mod exec_sync;
pub mod exit;
pub mod image_volume;
pub mod lifecycle;
pub mod list;
pub mod record;
pub mod remove;
pub mod reopen_log;
mod spec;
pub mod start;
pub mod status;
pub mod stop;
pub mod teardown;
pub mod update;

pub use record::{ContainerError, ContainerRecord, ContainerState, Containers};
pub use spec::{
    build_container_spec, check_pod_security_modules, validate_hostname, HostFacts, ImageConfig,
    ImageUsers, PodFiles, PodNamespaces, PodPidNamespace, SecurityModules, SpecError, SpecInput,
};
