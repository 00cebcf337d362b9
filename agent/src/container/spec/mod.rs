//! CRI `ContainerConfig` → OCI runtime spec.
//!
//! [`build_container_spec`] is a translation: besides its [`SpecInput`] it
//! only touches the host where the CRI asks it to (it creates a missing bind
//! source directory and resolves symlinks in it, stats requested devices,
//! lists `/dev` for privileged containers and reads a `Localhost` seccomp
//! profile). Facts about the host come in [`HostFacts`], so tests can feed
//! any machine.
//!
//! What the spec contains, and where berth departs from containerd:
//!
//! - `process.args`: `command` replaces the image's entrypoint and drops its
//!   cmd; `args` replaces the image's cmd (kubelet's rules, as containerd).
//! - `process.env`: a default `PATH`, then `HOSTNAME`, then the image's env,
//!   then the CRI envs, each later value replacing an earlier one by key.
//! - `process.user`: see `user.rs`. `process.capabilities`: see
//!   `capabilities.rs`; ambient capabilities are always empty, as in
//!   containerd (the CRI's `add_ambient_capabilities` is ignored).
//! - `process.oomScoreAdj`: set only when the CRI gives resources, raised to
//!   [`HostFacts::min_oom_score_adj`]. A process without `CAP_SYS_RESOURCE`
//!   cannot lower its own score, so a value below the daemon's own would make
//!   the runtime fail; containerd does the same with
//!   `restrict_oom_score_adj`.
//! - `process.rlimits`: none (containerd removes its defaults too).
//! - `hostname`: the pod's hostname when the container joins the pod's UTS
//!   namespace; with the host's UTS namespace no hostname is set (runc would
//!   refuse it), and `HOSTNAME` is the host's name when the pod has none.
//! - `linux.namespaces`: network, IPC and UTS follow the pod (a path from
//!   [`PodNamespaces`], or no entry for the host's); PID follows the
//!   container's mode: `CONTAINER` a new one, `TARGET` the target
//!   container's, `POD` the pod's ([`PodPidNamespace`]). `NODE` also follows
//!   the pod, as in containerd: the host's PID namespace is a pod-level
//!   choice (`hostPID`, which kubelet copies into both levels), so a
//!   container-level option alone cannot reach it. Always a new mount
//!   namespace; a new cgroup namespace on cgroup v2 unless privileged (as
//!   containerd). User namespaces are not supported and are refused.
//! - `linux.resources`: CPU, cpuset, memory (swap = limit when the host
//!   accounts swap and the CRI gives no swap limit), hugepages (skipped with
//!   a warning when the host has no hugetlb controller, like containerd's
//!   default `tolerate_missing_hugetlb_controller`), `unified`, and the device
//!   cgroup. The CRI has no pids limit for containers (kubelet sets it on the
//!   pod cgroup), so none is set.
//! - `linux.maskedPaths` / `readonlyPaths`: the CRI lists when non-empty,
//!   otherwise the usual defaults; none when privileged. containerd uses
//!   empty lists when the CRI gives none; berth masks by default instead,
//!   since proto3 cannot tell "absent" from "empty" and kubelet always sends
//!   the defaults itself (an empty list would mean `procMount: Unmasked`,
//!   which needs user namespaces berth does not support).
//! - `linux.seccomp`: see `seccomp.rs`. `process.apparmorProfile`,
//!   `process.selinuxLabel` and `linux.mountLabel`: see `lsm.rs`; requests
//!   the host cannot enforce are refused.
//! - `annotations`: the CRI container annotations plus the
//!   `io.kubernetes.cri.*` keys containerd sets, which win over annotations
//!   of the same name.

mod capabilities;
mod devices;
mod host;
mod lsm;
mod mounts;
mod seccomp;
mod user;

use crate::cgroups::{self, CgroupDriver, CgroupPathError};
use berth_proto::cri::v1 as cri;
pub use host::{HostFacts, SecurityModules};
pub use lsm::check_pod as check_pod_security_modules;
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxHugepageLimit, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxResources, Process, Root, Spec, User,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
pub use user::ImageUsers;

/// The OCI runtime spec version berth writes (that of runc 1.1).
const OCI_VERSION: &str = "1.0.2-dev";

/// `PATH` when neither the image nor the CRI sets one.
const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Masked paths when the CRI gives none: what kubelet and containerd use.
const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Read-only paths when the CRI gives none.
const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The annotation keys containerd's CRI plugin sets; tools such as kata and
/// device hooks read them.
mod annotation {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// The parts of the image's config (OCI image spec `config`) that shape the
/// container's process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `User`: `uid`, `name`, `uid:gid` or `name:group`; empty means root.
    pub user: String,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`; empty means `/`.
    pub working_dir: String,
    /// `StopSignal`, e.g. `SIGQUIT`; not part of the spec (StopContainer
    /// uses it), carried here so the image's config travels as one value.
    pub stop_signal: String,
}

/// The pod's pinned namespaces. For network, IPC and UTS, `None` means the
/// pod uses the host's namespace of that kind, and the container gets no
/// namespace entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: PodPidNamespace,
}

/// The PID namespace of a pod, which containers in `POD` mode follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PodPidNamespace {
    /// The pod shares one PID namespace, held by its sandbox process: the
    /// path is that process's `/proc/<pid>/ns/pid`.
    Shared(PathBuf),
    /// The pod shares none: each container gets its own.
    #[default]
    PerContainer,
    /// The pod uses the host's (`hostPID`).
    Host,
}

/// Files the pod provides to each of its containers. A file that is `None`
/// is not mounted (the image's own file stays visible).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFiles {
    pub hostname: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The pod's `/dev/shm` directory. Ignored when the pod shares the
    /// host's IPC namespace: then the host's `/dev/shm` is mounted.
    pub shm: Option<PathBuf>,
}

/// Everything [`build_container_spec`] needs to know.
#[derive(Debug, Clone, Copy)]
pub struct SpecInput<'a> {
    pub container_id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub sandbox_config: &'a cri::PodSandboxConfig,
    /// The image as the client named it, for the image-name annotation.
    pub image_name: &'a str,
    pub image: &'a ImageConfig,
    /// The image's users and groups, for user resolution.
    pub users: &'a ImageUsers,
    /// The container's mounted root filesystem (absolute): `root.path`.
    pub rootfs: &'a Path,
    pub namespaces: &'a PodNamespaces,
    /// The PID namespace of the container named by `namespace_options.
    /// target_id`; required when the PID mode is `TARGET`.
    pub target_pid_namespace: Option<&'a Path>,
    pub pod_files: &'a PodFiles,
    /// The mounted image volumes, by index in `config.mounts`.
    pub image_volumes: &'a std::collections::BTreeMap<usize, PathBuf>,
    pub cgroup_driver: CgroupDriver,
    pub host: &'a HostFacts,
}

/// Why a CRI request cannot become a spec. Every variant except
/// [`SpecError::Host`] is the client's mistake (`InvalidArgument`); see
/// [`SpecError::is_invalid_argument`].
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A CRI field holds a value berth cannot use.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("linux.security_context.run_as_group: set without run_as_user or run_as_username")]
    GroupWithoutUser,
    #[error("{field}: user {name:?} not found in the image's /etc/passwd")]
    UserNotFound { field: &'static str, name: String },
    #[error("{field}: group {name:?} not found in the image's /etc/group")]
    GroupNotFound { field: &'static str, name: String },
    #[error("{field}: unknown capability {name:?}")]
    UnknownCapability { field: &'static str, name: String },
    #[error("{field}: {what} is not supported by berth")]
    Unsupported { field: String, what: &'static str },
    /// A host path named by the request (bind source, device) is unusable.
    #[error("{field}: cannot use {path}: {source}")]
    HostPath {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: seccomp profile {path}: {reason}")]
    SeccompProfile {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The host's own state could not be read (not the client's fault).
    #[error("cannot read {path}: {source}")]
    Host {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("linux.cgroup_parent: {0}")]
    CgroupParent(#[from] CgroupPathError),
    /// The host's cgroups could not be read (not the client's fault).
    #[error("cannot read the host's cgroups: {0}")]
    HostCgroups(#[source] cgroups::CgroupError),
}

impl SpecError {
    /// True when the request itself is at fault, so the CRI answer is
    /// `InvalidArgument`; false for host failures (`Internal`).
    pub fn is_invalid_argument(&self) -> bool {
        !matches!(self, Self::Host { .. } | Self::HostCgroups(_))
    }

    /// The class of this error.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        if self.is_invalid_argument() {
            ErrorKind::InvalidArgument
        } else {
            ErrorKind::Internal
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Builds the OCI runtime spec of a container.
pub fn build_container_spec(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let default_sc = cri::LinuxContainerSecurityContext::default();
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let pod_linux = input.sandbox_config.linux.as_ref();
    let default_pod_sc = cri::LinuxSandboxSecurityContext::default();
    let pod_sc = pod_linux
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_pod_sc);
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());

    let privileged = sc.privileged;
    if privileged && !pod_sc.privileged {
        return Err(SpecError::invalid(
            "linux.security_context.privileged",
            "a privileged container needs a privileged pod sandbox",
        ));
    }

    let hostname = if input.sandbox_config.hostname.is_empty() {
        input.host.hostname.clone()
    } else {
        input.sandbox_config.hostname.clone()
    };
    // Only in the pod's own UTS namespace, and only a name the pod chose.
    let pod_hostname = (input.namespaces.uts.is_some()
        && !input.sandbox_config.hostname.is_empty())
    .then(|| input.sandbox_config.hostname.clone());
    let user = user::resolve(sc, pod_sc, &input.image.user, input.users)?;
    let caps = capabilities::resolve(sc, &input.host.capabilities)?;
    let seccomp = seccomp::resolve(sc, &caps)?;
    let modules = &input.host.security_modules;
    let apparmor = lsm::container_apparmor(sc, modules)?;
    let selinux = lsm::container_selinux(sc, pod_sc, modules)?;
    let namespaces = namespaces(input, sc)?;
    let cgroupns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Cgroup);
    let mounts = mounts::plan(&mounts::MountInput {
        cri_mounts: &config.mounts,
        image_volumes: input.image_volumes,
        pod_files: input.pod_files,
        host_ipc: input.namespaces.ipc.is_none(),
        readonly_rootfs: sc.readonly_rootfs,
        privileged,
        cgroupns,
        mountinfo: &input.host.mountinfo,
    })?;
    let devices = devices::resolve(&config.devices, privileged)?;

    let mut process = Process::default();
    process
        .set_terminal(Some(config.tty))
        .set_console_size(None)
        .set_user(oci_user(&user))
        .set_args(Some(process_args(config, input.image)?))
        .set_command_line(None)
        .set_env(Some(process_env(config, input.image, &hostname)))
        .set_cwd(process_cwd(config, input.image)?)
        .set_capabilities(Some(oci_capabilities(&caps)))
        .set_rlimits(None)
        .set_no_new_privileges(Some(sc.no_new_privs))
        .set_apparmor_profile(apparmor)
        .set_oom_score_adj(resources.map(|r| oom_score_adj(r, input.host.min_oom_score_adj)))
        .set_selinux_label(selinux.as_ref().map(|l| l.process.clone()))
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf())
        .set_readonly(Some(sc.readonly_rootfs));

    let (masked, readonly) = if privileged {
        (None, None)
    } else {
        (
            Some(path_list(&sc.masked_paths, &DEFAULT_MASKED_PATHS)),
            Some(path_list(&sc.readonly_paths, &DEFAULT_READONLY_PATHS)),
        )
    };
    let sysctls = pod_linux.map(|l| l.sysctls.clone()).unwrap_or_default();

    let mut linux = Linux::default();
    linux
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl((!sysctls.is_empty()).then_some(sysctls))
        .set_resources(Some(linux_resources(resources, devices.rules, input.host)?))
        .set_cgroups_path(Some(PathBuf::from(cgroups::container_cgroups_path(
            pod_linux.map(|l| l.cgroup_parent.as_str()).unwrap_or(""),
            input.container_id,
            input.cgroup_driver,
        )?)))
        .set_namespaces(Some(namespaces))
        .set_devices((!devices.nodes.is_empty()).then_some(devices.nodes))
        .set_seccomp(seccomp)
        .set_rootfs_propagation(mounts.rootfs_propagation)
        .set_masked_paths(masked)
        .set_readonly_paths(readonly)
        .set_mount_label(selinux.map(|l| l.mount));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_owned())
        .set_root(Some(root))
        .set_mounts(Some(mounts.mounts))
        .set_process(Some(process))
        .set_hostname(pod_hostname)
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations(input)))
        .set_linux(Some(linux));
    Ok(spec)
}

/// The process's argv, by kubelet's rules.
fn process_args(
    config: &cri::ContainerConfig,
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let mut argv = if config.command.is_empty() {
        // `ENTRYPOINT [""]` in a Dockerfile means "no entrypoint".
        if image.entrypoint.len() == 1 && image.entrypoint[0].is_empty() {
            Vec::new()
        } else {
            image.entrypoint.clone()
        }
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        argv.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        argv.extend(image.cmd.iter().cloned());
    }
    if argv.is_empty() {
        return Err(SpecError::invalid(
            "command",
            "no command given and the image has neither entrypoint nor cmd",
        ));
    }
    Ok(argv)
}

/// The environment: default `PATH`, `HOSTNAME`, the image's, the CRI's.
fn process_env(config: &cri::ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH_ENV.to_owned()];
    merge_env(&mut env, [format!("HOSTNAME={hostname}")]);
    merge_env(&mut env, image.env.iter().cloned());
    merge_env(
        &mut env,
        config
            .envs
            .iter()
            .map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value))),
    );
    env
}

/// Sets each `KEY=value` of `overrides` in place of an earlier value of the
/// same key, or appends it. An entry without `=` unsets the key (the image
/// spec's convention).
fn merge_env(env: &mut Vec<String>, overrides: impl IntoIterator<Item = String>) {
    for entry in overrides {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        let position = env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match (position, entry.contains('=')) {
            (Some(i), true) => env[i] = entry,
            (None, true) => env.push(entry),
            (Some(i), false) => {
                env.remove(i);
            }
            (None, false) => {}
        }
    }
}

/// The working directory: the CRI's, else the image's, else `/`.
fn process_cwd(config: &cri::ContainerConfig, image: &ImageConfig) -> Result<PathBuf, SpecError> {
    if !config.working_dir.is_empty() {
        if !config.working_dir.starts_with('/') {
            return Err(SpecError::invalid(
                "working_dir",
                format!("{:?} is not an absolute path", config.working_dir),
            ));
        }
        return Ok(PathBuf::from(&config.working_dir));
    }
    if image.working_dir.is_empty() {
        return Ok(PathBuf::from("/"));
    }
    // Docker resolves a relative WorkingDir against `/`; so does berth.
    Ok(Path::new("/").join(&image.working_dir))
}

fn oci_user(user: &user::ResolvedUser) -> User {
    let mut oci = User::default();
    oci.set_uid(user.uid)
        .set_gid(user.gid)
        .set_umask(None)
        .set_additional_gids(
            (!user.additional_gids.is_empty()).then(|| user.additional_gids.clone()),
        )
        .set_username(None);
    oci
}

fn oci_capabilities(caps: &[Capability]) -> LinuxCapabilities {
    let set: Capabilities = caps.iter().copied().collect();
    let mut oci = LinuxCapabilities::default();
    oci.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    oci
}

/// The CRI's OOM score adjustment, raised to the daemon's own (see the module
/// doc) and kept within the kernel's range.
fn oom_score_adj(resources: &cri::LinuxContainerResources, min: i32) -> i32 {
    let wanted = resources.oom_score_adj.clamp(-1000, 1000) as i32;
    wanted.max(min).min(1000)
}

fn path_list(cri: &[String], defaults: &[&str]) -> Vec<String> {
    if cri.is_empty() {
        defaults.iter().map(|p| (*p).to_owned()).collect()
    } else {
        cri.to_vec()
    }
}

fn namespaces(
    input: &SpecInput<'_>,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    const FIELD: &str = "linux.security_context.namespace_options";
    let options = sc.namespace_options.clone().unwrap_or_default();
    if let Some(userns) = &options.userns_options {
        match cri::NamespaceMode::try_from(userns.mode) {
            Ok(cri::NamespaceMode::Node) => {}
            Ok(_) | Err(_) => {
                return Err(SpecError::Unsupported {
                    field: format!("{FIELD}.userns_options.mode"),
                    what: "a user namespace",
                })
            }
        }
    }
    let pod = input.namespaces;
    let join = |typ: LinuxNamespaceType, path: Option<&Path>| {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ).set_path(path.map(Path::to_path_buf));
        ns
    };

    let mut out = Vec::new();
    let pid_mode = cri::NamespaceMode::try_from(options.pid).map_err(|_| {
        SpecError::invalid(
            format!("{FIELD}.pid"),
            format!("unknown mode {}", options.pid),
        )
    })?;
    match pid_mode {
        cri::NamespaceMode::Pod | cri::NamespaceMode::Node => match &pod.pid {
            PodPidNamespace::Shared(path) => out.push(join(LinuxNamespaceType::Pid, Some(path))),
            PodPidNamespace::PerContainer => out.push(join(LinuxNamespaceType::Pid, None)),
            PodPidNamespace::Host => {}
        },
        cri::NamespaceMode::Container => out.push(join(LinuxNamespaceType::Pid, None)),
        cri::NamespaceMode::Target => {
            let path = input.target_pid_namespace.ok_or_else(|| {
                SpecError::invalid(
                    format!("{FIELD}.target_id"),
                    format!(
                        "target container {:?} has no PID namespace",
                        options.target_id
                    ),
                )
            })?;
            out.push(join(LinuxNamespaceType::Pid, Some(path)));
        }
    }
    for (typ, path) in [
        (LinuxNamespaceType::Ipc, &pod.ipc),
        (LinuxNamespaceType::Uts, &pod.uts),
    ] {
        if let Some(path) = path {
            out.push(join(typ, Some(path)));
        }
    }
    out.push(join(LinuxNamespaceType::Mount, None));
    if let Some(path) = &pod.network {
        out.push(join(LinuxNamespaceType::Network, Some(path)));
    }
    // A cgroup namespace hides the host's hierarchy on v2; containerd skips
    // it on v1 and for privileged containers (containers/libpod#4363).
    if input.host.cgroup_unified && !sc.privileged {
        out.push(join(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

/// The longest hostname the kernel takes (`HOST_NAME_MAX`).
const HOSTNAME_MAX: usize = 64;

/// Checks a pod's hostname: it becomes one line of `/etc/hostname` and the
/// UTS name. Dot-separated labels of ASCII letters, digits, `-` and `_`,
/// none empty or starting or ending with `-`: every DNS-1123 name kubelet
/// sends (pod names, `hostname.subdomain`) and the hosts' own names under
/// `hostNetwork`, which may hold upper case or `_`. Empty means "the host's".
pub fn validate_hostname(field: &str, hostname: &str) -> Result<(), SpecError> {
    if hostname.is_empty() {
        return Ok(());
    }
    let reason = if hostname.len() > HOSTNAME_MAX {
        Some(format!("is longer than {HOSTNAME_MAX} bytes"))
    } else if let Some(c) = hostname
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(format!("holds {c:?}, which no hostname may"))
    } else if hostname
        .split('.')
        .any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-'))
    {
        Some("has an empty label or one starting or ending with '-'".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpecError::invalid(
            field,
            format!("{hostname:?} is not a valid hostname: {reason}"),
        )),
        None => Ok(()),
    }
}

/// Checks a cpuset list as the kernel parses it (`cpuset.cpus`): comma
/// separated numbers or ranges `a-b`, a range optionally strided as
/// `a-b:used/group`.
fn validate_cpu_list(field: &str, list: &str) -> Result<(), SpecError> {
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let item_ok = |item: &str| {
        let (range, stride) = match item.split_once(':') {
            Some((range, stride)) => (range, Some(stride)),
            None => (item, None),
        };
        let bounds = match range.split_once('-') {
            Some((low, high)) => number(low).zip(number(high)),
            None if stride.is_none() => number(range).map(|n| (n, n)),
            None => None,
        };
        let stride_ok = stride.is_none_or(|s| {
            s.split_once('/')
                .and_then(|(used, group)| number(used).zip(number(group)))
                .is_some_and(|(used, group)| used > 0 && used <= group)
        });
        bounds.is_some_and(|(low, high)| low <= high) && stride_ok
    };
    match list.split(',').find(|item| !item_ok(item)) {
        Some(item) => Err(SpecError::invalid(
            field,
            format!("{list:?} is not a CPU list like \"0-3,5\" ({item:?})"),
        )),
        None => Ok(()),
    }
}

/// Checks the values of the CRI resources that the kernel would refuse, so
/// the client hears which field is wrong instead of the runtime's error.
fn validate_resources(r: &cri::LinuxContainerResources) -> Result<(), SpecError> {
    const FIELD: &str = "linux.resources";
    // -1 is the kernel's "no limit" for the CFS quota; the others have no
    // negative meaning (0 leaves them unset).
    for (name, value, min) in [
        ("cpu_period", r.cpu_period, 0),
        ("cpu_quota", r.cpu_quota, -1),
        ("cpu_shares", r.cpu_shares, 0),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes, 0),
        (
            "memory_swap_limit_in_bytes",
            r.memory_swap_limit_in_bytes,
            0,
        ),
    ] {
        if value < min {
            return Err(SpecError::invalid(
                format!("{FIELD}.{name}"),
                format!("{value} is negative"),
            ));
        }
    }
    for (name, list) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !list.is_empty() {
            validate_cpu_list(&format!("{FIELD}.{name}"), list)?;
        }
    }
    Ok(())
}

/// The OCI resources of a container (create and UpdateContainerResources),
/// after checking the CRI's values.
pub(crate) fn linux_resources(
    resources: Option<&cri::LinuxContainerResources>,
    device_rules: Vec<oci_spec::runtime::LinuxDeviceCgroup>,
    host: &HostFacts,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    out.set_devices(Some(device_rules));
    let Some(r) = resources else {
        return Ok(out);
    };
    validate_resources(r)?;

    let mut cpu = LinuxCpu::default();
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }

    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
    }
    if host.swap_limit {
        // Without a swap limit, memory+swap = memory: the container does not swap.
        let swap = if r.memory_swap_limit_in_bytes != 0 {
            r.memory_swap_limit_in_bytes
        } else {
            r.memory_limit_in_bytes
        };
        if swap != 0 {
            memory.set_swap(Some(swap));
        }
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }

    if !r.hugepage_limits.is_empty() {
        if host.hugetlb {
            out.set_hugepage_limits(Some(
                r.hugepage_limits
                    .iter()
                    .map(|h| {
                        let mut limit = LinuxHugepageLimit::default();
                        limit
                            .set_page_size(h.page_size.clone())
                            .set_limit(i64::try_from(h.limit).unwrap_or(i64::MAX));
                        limit
                    })
                    .collect(),
            ));
        } else {
            tracing::warn!("the hugetlb cgroup controller is missing: hugepage limits skipped");
        }
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}

fn annotations(input: &SpecInput<'_>) -> HashMap<String, String> {
    let mut out = input.config.annotations.clone();
    let pod = input.sandbox_config.metadata.clone().unwrap_or_default();
    let name = input
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    for (key, value) in [
        (annotation::CONTAINER_TYPE, "container".to_owned()),
        (annotation::SANDBOX_ID, input.sandbox_id.to_owned()),
        (annotation::SANDBOX_NAME, pod.name),
        (annotation::SANDBOX_NAMESPACE, pod.namespace),
        (annotation::SANDBOX_UID, pod.uid),
        (annotation::CONTAINER_NAME, name),
        (annotation::IMAGE_NAME, input.image_name.to_owned()),
    ] {
        out.insert(key.to_owned(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompAction, Mount};

    /// Owns everything a [`SpecInput`] borrows.
    struct Fixture {
        config: cri::ContainerConfig,
        sandbox: cri::PodSandboxConfig,
        image: ImageConfig,
        users: ImageUsers,
        namespaces: PodNamespaces,
        target: Option<PathBuf>,
        files: PodFiles,
        driver: CgroupDriver,
        host: HostFacts,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                config: cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "web".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: "registry.k8s.io/e2e-test-images/busybox:1.29-2".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                sandbox: cri::PodSandboxConfig {
                    metadata: Some(cri::PodSandboxMetadata {
                        name: "pod-a".into(),
                        uid: "uid-1".into(),
                        namespace: "default".into(),
                        attempt: 0,
                    }),
                    hostname: "pod-a-host".into(),
                    linux: Some(cri::LinuxPodSandboxConfig {
                        cgroup_parent: "/kubepods/besteffort/poduid-1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                image: ImageConfig {
                    user: String::new(),
                    env: vec!["PATH=/image/bin".into(), "LANG=C".into()],
                    entrypoint: vec!["/entry".into()],
                    cmd: vec!["serve".into(), "--port=80".into()],
                    working_dir: "/srv".into(),
                    stop_signal: "SIGQUIT".into(),
                },
                users: ImageUsers::parse(Some("root:x:0:0::/root:/bin/sh\n"), Some("root:x:0:\n")),
                namespaces: PodNamespaces {
                    network: Some("/run/berth/netns/pod-a".into()),
                    ipc: Some("/run/berth/ipcns/pod-a".into()),
                    uts: Some("/run/berth/utsns/pod-a".into()),
                    pid: PodPidNamespace::Shared("/proc/4242/ns/pid".into()),
                },
                target: None,
                files: PodFiles::default(),
                driver: CgroupDriver::Cgroupfs,
                host: HostFacts {
                    hostname: "node-1".into(),
                    capabilities: capabilities::from_bitmap(0x1fffeffffff),
                    min_oom_score_adj: -500,
                    cgroup_unified: false,
                    swap_limit: false,
                    hugetlb: true,
                    mountinfo: "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n".into(),
                    security_modules: SecurityModules::default(),
                },
            }
        }

        fn sc(&mut self) -> &mut cri::LinuxContainerSecurityContext {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn pod_sc(&mut self) -> &mut cri::LinuxSandboxSecurityContext {
            self.sandbox
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn resources(&mut self) -> &mut cri::LinuxContainerResources {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default)
        }

        fn build(&self) -> Result<Spec, SpecError> {
            build_container_spec(&SpecInput {
                container_id: "c0ffee",
                sandbox_id: "5a4db0c5",
                config: &self.config,
                sandbox_config: &self.sandbox,
                image_name: "registry.k8s.io/e2e-test-images/busybox:1.29-2",
                image: &self.image,
                users: &self.users,
                rootfs: Path::new("/var/lib/berth/containers/c0ffee/rootfs"),
                namespaces: &self.namespaces,
                target_pid_namespace: self.target.as_deref(),
                pod_files: &self.files,
                image_volumes: &std::collections::BTreeMap::new(),
                cgroup_driver: self.driver,
                host: &self.host,
            })
        }

        fn spec(&self) -> Spec {
            self.build().expect("spec")
        }
    }

    fn process(spec: &Spec) -> &Process {
        spec.process().as_ref().expect("process")
    }

    fn linux(spec: &Spec) -> &Linux {
        spec.linux().as_ref().expect("linux")
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn args_precedence_table() {
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            Result<&'a [&'a str], &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "image only",
                &[],
                &[],
                &["/entry"],
                &["serve"],
                Ok(&["/entry", "serve"]),
            ),
            (
                "args replace cmd",
                &[],
                &["other"],
                &["/entry"],
                &["serve"],
                Ok(&["/entry", "other"]),
            ),
            (
                "command drops entrypoint and cmd",
                &["/bin/sh"],
                &[],
                &["/entry"],
                &["serve"],
                Ok(&["/bin/sh"]),
            ),
            (
                "command and args",
                &["/bin/sh"],
                &["-c", "true"],
                &["/entry"],
                &["serve"],
                Ok(&["/bin/sh", "-c", "true"]),
            ),
            (
                "cmd without entrypoint",
                &[],
                &[],
                &[],
                &["top"],
                Ok(&["top"]),
            ),
            (
                "args without entrypoint",
                &[],
                &["ls"],
                &[],
                &["top"],
                Ok(&["ls"]),
            ),
            (
                "empty entrypoint string is none",
                &[],
                &[],
                &[""],
                &["top"],
                Ok(&["top"]),
            ),
            (
                "nothing at all",
                &[],
                &[],
                &[],
                &[],
                Err("command: no command given and the image has neither entrypoint nor cmd"),
            ),
        ];
        for (name, command, args, entrypoint, cmd, want) in cases {
            let mut f = Fixture::new();
            f.config.command = strings(command);
            f.config.args = strings(args);
            f.image.entrypoint = strings(entrypoint);
            f.image.cmd = strings(cmd);
            let got = f
                .build()
                .map(|s| process(&s).args().clone().unwrap_or_default())
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map(strings).map_err(str::to_owned), "{name}");
        }
    }

    #[test]
    fn env_merge_table() {
        let kv = |k: &str, v: &str| cri::KeyValue {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        };
        type Case<'a> = (
            &'a str,
            Vec<&'a str>,
            Vec<cri::KeyValue>,
            &'a str,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "image env replaces the default PATH, CRI envs override by key",
                vec!["PATH=/image/bin", "LANG=C"],
                vec![kv("LANG", "en_US.UTF-8"), kv("NEW", "1")],
                "pod-a-host",
                vec![
                    "PATH=/image/bin",
                    "HOSTNAME=pod-a-host",
                    "LANG=en_US.UTF-8",
                    "NEW=1",
                ],
            ),
            (
                "default PATH when nobody sets one",
                vec![],
                vec![],
                "pod-a-host",
                vec![DEFAULT_PATH_ENV, "HOSTNAME=pod-a-host"],
            ),
            (
                "CRI env may replace PATH and HOSTNAME; values may hold =",
                vec!["A=1"],
                vec![kv("PATH", "/x"), kv("HOSTNAME", "h"), kv("Q", "a=b")],
                "pod-a-host",
                vec!["PATH=/x", "HOSTNAME=h", "A=1", "Q=a=b"],
            ),
            (
                "an image entry without = unsets",
                vec!["PATH"],
                vec![],
                "pod-a-host",
                vec!["HOSTNAME=pod-a-host"],
            ),
            (
                "no pod hostname: the host's",
                vec![],
                vec![],
                "",
                vec![DEFAULT_PATH_ENV, "HOSTNAME=node-1"],
            ),
        ];
        for (name, image_env, envs, hostname, want) in cases {
            let mut f = Fixture::new();
            f.image.env = image_env.iter().map(|s| (*s).to_owned()).collect();
            f.config.envs = envs;
            f.sandbox.hostname = hostname.into();
            let got = process(&f.spec()).env().clone().unwrap_or_default();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn cwd_tty_and_flags() {
        let cases: Vec<(&str, &str, Result<&str, &str>)> = vec![
            ("CRI working_dir wins", "/work", Ok("/work")),
            ("image WorkingDir", "", Ok("/srv")),
            (
                "relative CRI working_dir",
                "work",
                Err("working_dir: \"work\" is not an absolute path"),
            ),
        ];
        for (name, working_dir, want) in cases {
            let mut f = Fixture::new();
            f.config.working_dir = working_dir.into();
            let got = f
                .build()
                .map(|s| process(&s).cwd().to_string_lossy().into_owned())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.map(str::to_owned).map_err(str::to_owned),
                "{name}"
            );
        }
        let mut f = Fixture::new();
        f.image.working_dir = String::new();
        assert_eq!(process(&f.spec()).cwd(), Path::new("/"));
        f.image.working_dir = "app".into();
        assert_eq!(process(&f.spec()).cwd(), Path::new("/app"));

        let mut f = Fixture::new();
        let spec = f.spec();
        assert_eq!(process(&spec).terminal(), Some(false));
        assert_eq!(process(&spec).no_new_privileges(), Some(false));
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(false));
        f.config.tty = true;
        f.sc().no_new_privs = true;
        f.sc().readonly_rootfs = true;
        let spec = f.spec();
        assert_eq!(process(&spec).terminal(), Some(true));
        assert_eq!(process(&spec).no_new_privileges(), Some(true));
        assert!(process(&spec).rlimits().is_none());
        let root = spec.root().as_ref().expect("root");
        assert_eq!(
            root.path(),
            Path::new("/var/lib/berth/containers/c0ffee/rootfs")
        );
        assert_eq!(root.readonly(), Some(true));
    }

    #[test]
    fn user_and_groups_reach_the_process() {
        let mut f = Fixture::new();
        f.users = ImageUsers::parse(
            Some("root:x:0:0::/:/bin/sh\nbob:x:1000:1000::/:/bin/sh\n"),
            Some("bob:x:1000:bob\nextra:x:50000:bob\n"),
        );
        f.sc().run_as_username = "bob".into();
        f.sc().supplemental_groups = vec![1234];
        f.pod_sc().supplemental_groups = vec![5678];
        let spec = f.spec();
        let user = process(&spec).user();
        assert_eq!((user.uid(), user.gid()), (1000, 1000));
        assert_eq!(
            user.additional_gids().as_deref(),
            Some(&[1234, 5678, 50000][..])
        );

        let mut f = Fixture::new();
        f.sc().run_as_group = Some(cri::Int64Value { value: 5 });
        assert!(matches!(f.build(), Err(SpecError::GroupWithoutUser)));
    }

    #[test]
    fn capabilities_and_seccomp_in_the_spec() {
        let bounding = |spec: &Spec| {
            process(spec)
                .capabilities()
                .as_ref()
                .and_then(|c| c.bounding().clone())
                .unwrap_or_default()
        };
        let mut f = Fixture::new();
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            drop_capabilities: vec!["NET_RAW".into()],
            add_ambient_capabilities: vec!["CHOWN".into()],
        });
        f.sc().seccomp = Some(cri::SecurityProfile::default()); // RuntimeDefault
        let spec = f.spec();
        let caps = process(&spec).capabilities().clone().expect("caps");
        assert!(bounding(&spec).contains(&Capability::SysAdmin));
        assert!(!bounding(&spec).contains(&Capability::NetRaw));
        assert_eq!(caps.effective(), caps.bounding());
        assert_eq!(caps.permitted(), caps.bounding());
        assert!(caps.ambient().is_none() && caps.inheritable().is_none());
        let seccomp = linux(&spec).seccomp().clone().expect("default profile");
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(
            seccomp
                .syscalls()
                .iter()
                .flatten()
                .any(|r| r.names().iter().any(|n| n == "sethostname")),
            "CAP_SYS_ADMIN allows sethostname in the default profile"
        );

        // Privileged: every host capability, no seccomp, no masking, all devices.
        let mut f = Fixture::new();
        f.pod_sc().privileged = true;
        f.sc().privileged = true;
        f.sc().seccomp = Some(cri::SecurityProfile::default());
        f.sc().masked_paths = vec!["/bin/ls".into()];
        let spec = f.spec();
        assert_eq!(
            bounding(&spec).len(),
            40,
            "all but CAP_SYS_RESOURCE, which berthd lacks"
        );
        let l = linux(&spec);
        assert!(l.seccomp().is_none());
        assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
        let rules = l
            .resources()
            .as_ref()
            .and_then(|r| r.devices().clone())
            .unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        assert!(
            l.devices().as_ref().is_some_and(|d| !d.is_empty()),
            "host devices"
        );

        // A privileged container needs a privileged pod.
        let mut f = Fixture::new();
        f.sc().privileged = true;
        assert_eq!(
            f.build().map(|_| ()).map_err(|e| e.to_string()),
            Err("linux.security_context.privileged: a privileged container needs a privileged pod sandbox".to_owned())
        );
    }

    #[test]
    fn masked_and_readonly_paths_table() {
        type Case<'a> = (
            &'a str,
            Vec<&'a str>,
            Vec<&'a str>,
            Vec<&'a str>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "defaults",
                vec![],
                vec![],
                DEFAULT_MASKED_PATHS.to_vec(),
                DEFAULT_READONLY_PATHS.to_vec(),
            ),
            (
                "CRI lists override",
                vec!["/bin/ls"],
                vec!["/tmp"],
                vec!["/bin/ls"],
                vec!["/tmp"],
            ),
            (
                "one list given",
                vec![],
                vec!["/tmp"],
                DEFAULT_MASKED_PATHS.to_vec(),
                vec!["/tmp"],
            ),
        ];
        for (name, masked, readonly, want_masked, want_readonly) in cases {
            let mut f = Fixture::new();
            f.sc().masked_paths = strings(&masked);
            f.sc().readonly_paths = strings(&readonly);
            let spec = f.spec();
            assert_eq!(
                linux(&spec).masked_paths().clone(),
                Some(strings(&want_masked)),
                "{name}"
            );
            assert_eq!(
                linux(&spec).readonly_paths().clone(),
                Some(strings(&want_readonly)),
                "{name}"
            );
        }
    }

    #[test]
    fn namespaces_table() {
        use cri::NamespaceMode as M;
        type Want = Result<Vec<(LinuxNamespaceType, Option<&'static str>)>, &'static str>;
        let pod_ns = |extra: Vec<(LinuxNamespaceType, Option<&'static str>)>| {
            let mut all = extra;
            all.extend([
                (LinuxNamespaceType::Ipc, Some("/run/berth/ipcns/pod-a")),
                (LinuxNamespaceType::Uts, Some("/run/berth/utsns/pod-a")),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some("/run/berth/netns/pod-a")),
            ]);
            all
        };
        struct Case {
            name: &'static str,
            pid: M,
            pod: PodNamespaces,
            target: Option<&'static str>,
            unified: bool,
            want: Want,
        }
        let shared = Fixture::new().namespaces;
        let per_container = PodNamespaces {
            pid: PodPidNamespace::PerContainer,
            ..shared.clone()
        };
        let host_pid = PodNamespaces {
            pid: PodPidNamespace::Host,
            ..shared.clone()
        };
        let pod_pid = (LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid"));
        let new_pid = (LinuxNamespaceType::Pid, None);
        let case = |name, pid, pod: &PodNamespaces, want| Case {
            name,
            pid,
            pod: pod.clone(),
            target: None,
            unified: false,
            want,
        };
        let cases = vec![
            case(
                "POD joins the pod's",
                M::Pod,
                &shared,
                Ok(pod_ns(vec![pod_pid])),
            ),
            case(
                "POD, pod not sharing",
                M::Pod,
                &per_container,
                Ok(pod_ns(vec![new_pid])),
            ),
            case(
                "POD in a hostPID pod",
                M::Pod,
                &host_pid,
                Ok(pod_ns(vec![])),
            ),
            case(
                "CONTAINER gets its own",
                M::Container,
                &shared,
                Ok(pod_ns(vec![new_pid])),
            ),
            case(
                "CONTAINER in a hostPID pod",
                M::Container,
                &host_pid,
                Ok(pod_ns(vec![new_pid])),
            ),
            case(
                "NODE follows the pod",
                M::Node,
                &shared,
                Ok(pod_ns(vec![pod_pid])),
            ),
            case(
                "NODE in a hostPID pod",
                M::Node,
                &host_pid,
                Ok(pod_ns(vec![])),
            ),
            Case {
                target: Some("/proc/77/ns/pid"),
                ..case(
                    "TARGET joins the target's",
                    M::Target,
                    &shared,
                    Ok(pod_ns(vec![(
                        LinuxNamespaceType::Pid,
                        Some("/proc/77/ns/pid"),
                    )])),
                )
            },
            case(
                "TARGET without a target",
                M::Target,
                &shared,
                Err("linux.security_context.namespace_options.target_id: \
                     target container \"other\" has no PID namespace"),
            ),
            Case {
                unified: true,
                ..case(
                    "cgroup v2 adds a cgroup namespace",
                    M::Container,
                    &shared,
                    Ok({
                        let mut all = pod_ns(vec![new_pid]);
                        all.push((LinuxNamespaceType::Cgroup, None));
                        all
                    }),
                )
            },
            case(
                "host network, IPC, UTS and PID",
                M::Pod,
                &PodNamespaces {
                    pid: PodPidNamespace::Host,
                    ..PodNamespaces::default()
                },
                Ok(vec![(LinuxNamespaceType::Mount, None)]),
            ),
        ];
        for case in cases {
            let mut f = Fixture::new();
            f.namespaces = case.pod;
            f.target = case.target.map(PathBuf::from);
            f.host.cgroup_unified = case.unified;
            f.sc().namespace_options = Some(cri::NamespaceOption {
                pid: case.pid as i32,
                target_id: "other".into(),
                ..Default::default()
            });
            let got = f
                .build()
                .map(|s| {
                    linux(&s)
                        .namespaces()
                        .clone()
                        .unwrap_or_default()
                        .iter()
                        .map(|n| (n.typ(), n.path().clone()))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| e.to_string());
            let want = case
                .want
                .map(|w| {
                    w.into_iter()
                        .map(|(t, p)| (t, p.map(PathBuf::from)))
                        .collect()
                })
                .map_err(str::to_owned);
            assert_eq!(got, want, "{}", case.name);
        }

        // Privileged containers keep the host's cgroup namespace even on v2.
        let mut f = Fixture::new();
        f.host.cgroup_unified = true;
        f.pod_sc().privileged = true;
        f.sc().privileged = true;
        let spec = f.spec();
        assert!(!linux(&spec)
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup));

        // User namespaces are refused.
        let mut f = Fixture::new();
        f.sc().namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: M::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = f.build().expect_err("userns");
        assert_eq!(err.to_string(), "linux.security_context.namespace_options.userns_options.mode: a user namespace is not supported by berth");
    }

    #[test]
    fn hostname_follows_the_uts_namespace() {
        let f = Fixture::new();
        assert_eq!(f.spec().hostname().as_deref(), Some("pod-a-host"));
        let mut f = Fixture::new();
        f.namespaces.uts = None;
        assert_eq!(f.spec().hostname().as_deref(), None);
        let mut f = Fixture::new();
        f.sandbox.hostname = String::new();
        assert_eq!(
            f.spec().hostname().as_deref(),
            None,
            "the pod's UTS namespace keeps its name"
        );
    }

    #[test]
    fn resources_table() {
        struct Case {
            name: &'static str,
            resources: Option<cri::LinuxContainerResources>,
            swap_limit: bool,
            hugetlb: bool,
            check: fn(&LinuxResources, Option<i32>),
        }
        let full = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            oom_score_adj: 900,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_owned(), "200M".to_owned())].into(),
            memory_swap_limit_in_bytes: 0,
        };
        let cases = vec![
            Case {
                name: "no resources: device rules only, oom inherited",
                resources: None,
                swap_limit: true,
                hugetlb: true,
                check: |r, oom| {
                    assert!(
                        r.cpu().is_none() && r.memory().is_none() && r.hugepage_limits().is_none()
                    );
                    assert!(r.devices().as_ref().is_some_and(|d| !d.is_empty()));
                    assert_eq!(oom, None);
                },
            },
            Case {
                name: "everything, no swap accounting",
                resources: Some(full.clone()),
                swap_limit: false,
                hugetlb: true,
                check: |r, oom| {
                    let cpu = r.cpu().as_ref().expect("cpu");
                    assert_eq!(
                        (cpu.period(), cpu.quota(), cpu.shares()),
                        (Some(100_000), Some(50_000), Some(512))
                    );
                    assert_eq!(
                        (cpu.cpus().as_deref(), cpu.mems().as_deref()),
                        (Some("0-1"), Some("0"))
                    );
                    let memory = r.memory().as_ref().expect("memory");
                    assert_eq!((memory.limit(), memory.swap()), (Some(256 << 20), None));
                    let huge = r.hugepage_limits().as_ref().expect("hugepages");
                    assert_eq!(
                        (huge[0].page_size().as_str(), huge[0].limit()),
                        ("2MB", 4 << 20)
                    );
                    assert_eq!(
                        r.unified()
                            .as_ref()
                            .and_then(|u| u.get("memory.high"))
                            .map(String::as_str),
                        Some("200M")
                    );
                    assert_eq!(oom, Some(900));
                },
            },
            Case {
                name: "swap accounting: swap = limit",
                resources: Some(full.clone()),
                swap_limit: true,
                hugetlb: false,
                check: |r, _| {
                    let memory = r.memory().as_ref().expect("memory");
                    assert_eq!(memory.swap(), Some(256 << 20));
                    assert!(
                        r.hugepage_limits().is_none(),
                        "no hugetlb controller: skipped"
                    );
                },
            },
            Case {
                name: "explicit swap limit",
                resources: Some(cri::LinuxContainerResources {
                    memory_swap_limit_in_bytes: 512 << 20,
                    ..full.clone()
                }),
                swap_limit: true,
                hugetlb: true,
                check: |r, _| {
                    assert_eq!(r.memory().as_ref().and_then(|m| m.swap()), Some(512 << 20))
                },
            },
            Case {
                name: "oom score below the daemon's is raised",
                resources: Some(cri::LinuxContainerResources {
                    oom_score_adj: -998,
                    ..Default::default()
                }),
                swap_limit: false,
                hugetlb: true,
                check: |r, oom| {
                    assert!(r.cpu().is_none() && r.memory().is_none());
                    assert_eq!(oom, Some(-500));
                },
            },
            Case {
                name: "oom score above 1000 is capped",
                resources: Some(cri::LinuxContainerResources {
                    oom_score_adj: 5000,
                    ..Default::default()
                }),
                swap_limit: false,
                hugetlb: true,
                check: |_, oom| assert_eq!(oom, Some(1000)),
            },
        ];
        for case in cases {
            let mut f = Fixture::new();
            f.host.swap_limit = case.swap_limit;
            f.host.hugetlb = case.hugetlb;
            if let Some(r) = case.resources {
                *f.resources() = r;
            }
            let spec = f.spec();
            let resources = linux(&spec).resources().clone().expect("resources");
            (case.check)(&resources, process(&spec).oom_score_adj());
            eprintln!("ok: {}", case.name);
        }
    }

    #[test]
    fn cgroups_path_follows_the_driver() {
        use CgroupDriver::Systemd;
        let mut f = Fixture::new();
        f.driver = Systemd;
        f.sandbox.linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/test.slice".into(),
            ..Default::default()
        });
        assert_eq!(
            linux(&f.spec()).cgroups_path().as_deref(),
            Some(Path::new("test.slice:berth:c0ffee"))
        );
        f.sandbox.linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods".into(),
            ..Default::default()
        });
        let err = f.build().expect_err("not a slice");
        assert!(err.is_invalid_argument());
        assert_eq!(
            err.to_string(),
            "linux.cgroup_parent: \"/kubepods\" is not a systemd slice (the cgroup driver is systemd)"
        );
    }

    #[test]
    fn sysctls_annotations_and_mounts() {
        let mut f = Fixture::new();
        f.sandbox.linux.get_or_insert_with(Default::default).sysctls =
            [("kernel.shm_rmid_forced".to_owned(), "1".to_owned())].into();
        f.config.annotations = [
            ("team".to_owned(), "a".to_owned()),
            (
                "io.kubernetes.cri.sandbox-id".to_owned(),
                "spoofed".to_owned(),
            ),
        ]
        .into();
        let spec = f.spec();
        assert_eq!(
            linux(&spec)
                .sysctl()
                .as_ref()
                .and_then(|s| s.get("kernel.shm_rmid_forced"))
                .map(String::as_str),
            Some("1")
        );
        let annotations = spec.annotations().clone().expect("annotations");
        let get = |k: &str| annotations.get(k).map(String::as_str);
        assert_eq!(get("team"), Some("a"));
        assert_eq!(get("io.kubernetes.cri.container-type"), Some("container"));
        assert_eq!(get("io.kubernetes.cri.sandbox-id"), Some("5a4db0c5"));
        assert_eq!(get("io.kubernetes.cri.sandbox-name"), Some("pod-a"));
        assert_eq!(get("io.kubernetes.cri.sandbox-namespace"), Some("default"));
        assert_eq!(get("io.kubernetes.cri.sandbox-uid"), Some("uid-1"));
        assert_eq!(get("io.kubernetes.cri.container-name"), Some("web"));
        assert_eq!(
            get("io.kubernetes.cri.image-name"),
            Some("registry.k8s.io/e2e-test-images/busybox:1.29-2")
        );

        let destinations: Vec<_> = spec
            .mounts()
            .iter()
            .flatten()
            .map(Mount::destination)
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert!(linux(&spec).rootfs_propagation().is_none());
    }

    #[test]
    fn errors_say_whose_fault() {
        let mut f = Fixture::new();
        f.sc().run_as_username = "nobody-here".into();
        let err = f.build().expect_err("unknown user");
        assert_eq!(
            err.to_string(),
            "linux.security_context.run_as_username: user \"nobody-here\" not found in the image's /etc/passwd"
        );
        assert!(err.is_invalid_argument());
        let host = SpecError::Host {
            path: PathBuf::from("/proc/self/status"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!host.is_invalid_argument());
    }

    /// The spec as runc reads it: JSON with the required fields, which
    /// round-trips through serde unchanged.
    #[test]
    fn json_round_trip_has_the_required_fields() {
        let mut f = Fixture::new();
        f.sc().seccomp = Some(cri::SecurityProfile::default());
        *f.resources() = cri::LinuxContainerResources {
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        };
        let spec = f.spec();
        let json = serde_json::to_string_pretty(&spec).expect("serialize");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["ociVersion"], OCI_VERSION);
        assert_eq!(
            value["root"]["path"],
            "/var/lib/berth/containers/c0ffee/rootfs"
        );
        let args = value["process"]["args"].as_array().expect("args");
        assert!(!args.is_empty());
        assert_eq!(value["process"]["cwd"], "/srv");
        assert_eq!(value["process"]["user"]["uid"], 0);
        assert!(value["process"]["capabilities"]["bounding"]
            .as_array()
            .is_some_and(|b| b.contains(&"CAP_CHOWN".into())));
        assert_eq!(value["linux"]["namespaces"][0]["type"], "pid");
        assert!(value["linux"]["namespaces"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["type"] == "network")));
        assert_eq!(value["linux"]["resources"]["memory"]["limit"], 1 << 30);
        assert_eq!(value["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(value["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            value["linux"]["seccomp"]["architectures"]
                .as_array()
                .map(Vec::len),
            Some(if cfg!(target_arch = "x86_64") {
                3
            } else {
                value["linux"]["seccomp"]["architectures"]
                    .as_array()
                    .map_or(0, Vec::len)
            })
        );
        assert_eq!(
            value["linux"]["cgroupsPath"],
            "/kubepods/besteffort/poduid-1/c0ffee"
        );
        assert_eq!(value["mounts"][0]["destination"], "/proc");
        for absent in ["hooks", "solaris", "windows", "vm", "zos", "domainname"] {
            assert!(value.get(absent).is_none(), "{absent} must not be written");
        }
        let back: Spec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, spec);
    }

    /// A host with AppArmor (these profiles loaded) and SELinux enabled.
    fn enforcing_host() -> SecurityModules {
        SecurityModules {
            apparmor: Some(
                [lsm::DEFAULT_APPARMOR_PROFILE, "my-profile"]
                    .map(str::to_owned)
                    .into(),
            ),
            selinux: true,
        }
    }

    #[test]
    fn apparmor_table() {
        use cri::security_profile::ProfileType;
        let profile = |kind: ProfileType, reference: &str| {
            Some(cri::SecurityProfile {
                profile_type: kind as i32,
                localhost_ref: reference.into(),
            })
        };
        type Case<'a> = (
            &'a str,
            Option<cri::SecurityProfile>,
            &'a str,
            bool,
            Result<Option<&'a str>, &'a str>,
            Result<Option<&'a str>, &'a str>,
        );
        const UNSUPPORTED: &str = "linux.security_context.apparmor: apparmor is not supported";
        const UNSUPPORTED_OLD: &str =
            "linux.security_context.apparmor_profile: apparmor is not supported";
        // name, apparmor, apparmor_profile, privileged, on a host without
        // AppArmor, on a host with it.
        let cases: Vec<Case> = vec![
            ("nothing asked", None, "", false, Ok(None), Ok(None)),
            (
                "runtime default",
                profile(ProfileType::RuntimeDefault, ""),
                "",
                false,
                Err(UNSUPPORTED),
                Ok(Some(lsm::DEFAULT_APPARMOR_PROFILE)),
            ),
            (
                "unconfined",
                profile(ProfileType::Unconfined, ""),
                "",
                false,
                Ok(None),
                Ok(None),
            ),
            (
                "localhost",
                profile(ProfileType::Localhost, "localhost/my-profile"),
                "",
                false,
                Err(UNSUPPORTED),
                Ok(Some("my-profile")),
            ),
            (
                "localhost without prefix",
                profile(ProfileType::Localhost, "my-profile"),
                "",
                false,
                Err(UNSUPPORTED),
                Ok(Some("my-profile")),
            ),
            (
                "localhost not loaded",
                profile(ProfileType::Localhost, "other"),
                "",
                false,
                Err(UNSUPPORTED),
                Err("linux.security_context.apparmor: AppArmor profile \"other\" is not loaded on this host"),
            ),
            (
                "localhost without a name",
                profile(ProfileType::Localhost, ""),
                "",
                false,
                Err("linux.security_context.apparmor.localhost_ref: a Localhost profile needs a profile name"),
                Err("linux.security_context.apparmor.localhost_ref: a Localhost profile needs a profile name"),
            ),
            (
                "the new field wins over the deprecated one",
                profile(ProfileType::Unconfined, ""),
                "runtime/default",
                false,
                Ok(None),
                Ok(None),
            ),
            (
                "deprecated runtime/default",
                None,
                "runtime/default",
                false,
                Err(UNSUPPORTED_OLD),
                Ok(Some(lsm::DEFAULT_APPARMOR_PROFILE)),
            ),
            (
                "deprecated localhost",
                None,
                "localhost/my-profile",
                false,
                Err(UNSUPPORTED_OLD),
                Ok(Some("my-profile")),
            ),
            ("deprecated unconfined", None, "unconfined", false, Ok(None), Ok(None)),
            (
                "deprecated nonsense",
                None,
                "docker/default",
                false,
                Err("linux.security_context.apparmor_profile: unknown AppArmor profile \"docker/default\""),
                Err("linux.security_context.apparmor_profile: unknown AppArmor profile \"docker/default\""),
            ),
            (
                "privileged: refused where unsupported, none where enabled",
                profile(ProfileType::RuntimeDefault, ""),
                "",
                true,
                Err(UNSUPPORTED),
                Ok(None),
            ),
        ];
        for (name, apparmor, deprecated, privileged, without, with) in cases {
            for (host, want) in [
                (SecurityModules::default(), without),
                (enforcing_host(), with),
            ] {
                let mut f = Fixture::new();
                f.host.security_modules = host;
                f.pod_sc().privileged = privileged;
                f.sc().privileged = privileged;
                f.sc().apparmor = apparmor.clone();
                #[allow(deprecated)]
                {
                    f.sc().apparmor_profile = deprecated.into();
                }
                let got = f
                    .build()
                    .map(|s| process(&s).apparmor_profile().clone())
                    .map_err(|e| e.to_string());
                match (&got, want) {
                    (Ok(got), Ok(want)) => {
                        assert_eq!(got.as_deref(), want, "{name}");
                    }
                    (Err(got), Err(want)) => assert!(got.starts_with(want), "{name}: {got}"),
                    _ => panic!("{name}: got {got:?}, want {want:?}"),
                }
                if let Err(e) = f.build() {
                    assert!(e.is_invalid_argument(), "{name}");
                }
            }
        }
    }

    #[test]
    fn selinux_table() {
        let options = |user: &str, role: &str, typ: &str, level: &str| {
            Some(cri::SeLinuxOption {
                user: user.into(),
                role: role.into(),
                r#type: typ.into(),
                level: level.into(),
            })
        };
        type Case<'a> = (
            &'a str,
            Option<cri::SeLinuxOption>,
            Option<cri::SeLinuxOption>,
            Result<Option<(&'a str, &'a str)>, &'a str>,
        );
        // name, container options, pod options, labels where SELinux is
        // enabled; where it is not, every case that sets something fails.
        let cases: Vec<Case> = vec![
            ("nothing", None, None, Ok(None)),
            ("all empty", options("", "", "", ""), None, Ok(None)),
            (
                "full label",
                options("u", "r", "t", "s0:c1,c2"),
                None,
                Ok(Some(("u:r:t:s0:c1,c2", "u:object_r:container_file_t:s0:c1,c2"))),
            ),
            (
                "level only",
                options("", "", "", "s0:c5"),
                None,
                Ok(Some((
                    "system_u:system_r:container_t:s0:c5",
                    "system_u:object_r:container_file_t:s0:c5",
                ))),
            ),
            (
                "the pod's when the container has none",
                None,
                options("", "", "spc_t", ""),
                Ok(Some((
                    "system_u:system_r:spc_t:s0",
                    "system_u:object_r:container_file_t:s0",
                ))),
            ),
            (
                "the container's over the pod's",
                options("", "", "a_t", ""),
                options("", "", "b_t", ""),
                Ok(Some((
                    "system_u:system_r:a_t:s0",
                    "system_u:object_r:container_file_t:s0",
                ))),
            ),
            (
                "a colon outside the level",
                options("", "", "a:b", ""),
                None,
                Err("linux.security_context.selinux_options.type: \"a:b\" is not a valid SELinux type"),
            ),
        ];
        for (name, own, pod, want) in cases {
            let mut f = Fixture::new();
            f.host.security_modules = enforcing_host();
            f.sc().selinux_options = own.clone();
            f.pod_sc().selinux_options = pod.clone();
            let got = f
                .build()
                .map(|s| {
                    let process = process(&s).selinux_label().clone();
                    let mount = linux(&s).mount_label().clone();
                    process.zip(mount)
                })
                .map_err(|e| e.to_string());
            let want = want
                .map(|w| w.map(|(p, m)| (p.to_owned(), m.to_owned())))
                .map_err(str::to_owned);
            assert_eq!(got, want, "{name}");

            f.host.security_modules = SecurityModules::default();
            let sets_something = [&own, &pod].iter().any(|o| {
                o.as_ref()
                    .is_some_and(|o| *o != cri::SeLinuxOption::default())
            });
            match f.build() {
                Ok(spec) => {
                    assert!(!sets_something, "{name}: accepted without SELinux");
                    assert!(process(&spec).selinux_label().is_none(), "{name}");
                    assert!(linux(&spec).mount_label().is_none(), "{name}");
                }
                Err(e) => {
                    assert!(sets_something, "{name}: {e}");
                    assert!(e.is_invalid_argument());
                    assert!(
                        e.to_string()
                            .contains("selinux_options: selinux is not supported"),
                        "{name}: {e}"
                    );
                }
            }
        }
        // Privileged: valid options, no label.
        let mut f = Fixture::new();
        f.host.security_modules = enforcing_host();
        f.pod_sc().privileged = true;
        f.sc().privileged = true;
        f.sc().selinux_options = options("", "", "t", "");
        let spec = f.spec();
        assert!(process(&spec).selinux_label().is_none());
    }

    #[test]
    fn resources_are_checked_in_create_and_update() {
        type Case<'a> = (
            &'a str,
            fn(&mut cri::LinuxContainerResources),
            Result<(), &'a str>,
        );
        let cases: Vec<Case> = vec![
            ("all unset", |_| {}, Ok(())),
            (
                "legal values",
                |r| {
                    r.cpu_period = 100_000;
                    r.cpu_quota = 50_000;
                    r.cpu_shares = 512;
                    r.memory_limit_in_bytes = 1 << 30;
                    r.memory_swap_limit_in_bytes = 2 << 30;
                    r.cpuset_cpus = "0-3,5".into();
                    r.cpuset_mems = "0".into();
                },
                Ok(()),
            ),
            ("unlimited quota", |r| r.cpu_quota = -1, Ok(())),
            (
                "strided cpu list",
                |r| r.cpuset_cpus = "0-7:2/4,9".into(),
                Ok(()),
            ),
            (
                "negative memory",
                |r| r.memory_limit_in_bytes = -5,
                Err("linux.resources.memory_limit_in_bytes: -5 is negative"),
            ),
            (
                "negative swap",
                |r| r.memory_swap_limit_in_bytes = -2,
                Err("linux.resources.memory_swap_limit_in_bytes: -2 is negative"),
            ),
            (
                "negative shares",
                |r| r.cpu_shares = -1,
                Err("linux.resources.cpu_shares: -1 is negative"),
            ),
            (
                "quota below -1",
                |r| r.cpu_quota = -2,
                Err("linux.resources.cpu_quota: -2 is negative"),
            ),
            (
                "negative period",
                |r| r.cpu_period = -1,
                Err("linux.resources.cpu_period: -1 is negative"),
            ),
            (
                "cpus not a list",
                |r| r.cpuset_cpus = "abc".into(),
                Err("linux.resources.cpuset_cpus: \"abc\" is not a CPU list"),
            ),
            (
                "reversed range",
                |r| r.cpuset_cpus = "3-1".into(),
                Err("linux.resources.cpuset_cpus: \"3-1\" is not a CPU list"),
            ),
            (
                "empty item",
                |r| r.cpuset_mems = "0,,1".into(),
                Err("linux.resources.cpuset_mems: \"0,,1\" is not a CPU list"),
            ),
            (
                "negative cpu",
                |r| r.cpuset_cpus = "-1".into(),
                Err("linux.resources.cpuset_cpus: \"-1\" is not a CPU list"),
            ),
        ];
        for (name, set, want) in cases {
            let mut f = Fixture::new();
            set(f.resources());
            let got = f.build().map(|_| ()).map_err(|e| e.to_string());
            match (&got, want) {
                (Ok(()), Ok(())) => {}
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{name}: {got}"),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
            // UpdateContainerResources translates with the same function.
            let resources = f.config.linux.as_ref().and_then(|l| l.resources.as_ref());
            let update = linux_resources(resources, Vec::new(), &f.host);
            assert_eq!(update.is_ok(), want.is_ok(), "{name}: update");
        }
    }

    #[test]
    fn hostname_table() {
        for ok in [
            "",
            "pod-a",
            "web-0.web.default.svc",
            "Node_1",
            "a",
            "0",
            &"a".repeat(63),
        ] {
            validate_hostname("hostname", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            "two\nlines",
            "with space",
            "a/b",
            "-lead",
            "trail-",
            "a..b",
            ".dot",
            "dot.",
            "caf\u{e9}",
            &"a".repeat(65),
        ] {
            let err = validate_hostname("config.hostname", bad).expect_err(bad);
            assert!(
                err.to_string().starts_with("config.hostname: "),
                "{bad:?}: {err}"
            );
            assert!(err.is_invalid_argument());
        }
    }
}
