//! Containers of a pod: the translation of a CRI `ContainerConfig` into an
//! OCI runtime spec (the bundle's `config.json`).
//!
//! Layout: [`build_container_spec`] (`spec.rs`) is the one entry point; it
//! takes a [`SpecInput`] that carries the CRI request plus everything berth
//! already knows about the pod, the image and the host ([`HostFacts`],
//! `host.rs`). The rules live beside it: `user.rs` resolves users and groups
//! against the image's `/etc/passwd` and `/etc/group`, `capabilities.rs` the
//! capability sets, `mounts.rs` the mount list, `devices.rs` device nodes and
//! the device cgroup, `seccomp.rs` the seccomp profile (with berth's built-in
//! default). Every failure is a [`SpecError`] that names the CRI field.
//!
//! The semantics follow containerd's CRI plugin
//! (`internal/cri/server/container_create*.go`, `internal/cri/opts`), which
//! is what critest and kubelet are tested against; where berth differs, the
//! item says so.

mod capabilities;
mod devices;
mod host;
mod mounts;
mod seccomp;
mod spec;
mod user;

pub use host::HostFacts;
pub use spec::{
    build_container_spec, cgroups_path, ImageConfig, PodFiles, PodNamespaces, PodPidNamespace,
    SpecError, SpecInput,
};
pub use user::ImageUsers;
