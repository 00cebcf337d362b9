//! The container's mounts.
//!
//! The list is: the default mounts (`/proc`, a `/dev` tmpfs, `/dev/pts`,
//! `/dev/shm`, `/dev/mqueue`, `/sys` read-only, `/sys/fs/cgroup` read-only;
//! both writable when privileged), minus those a bind below replaces (same
//! destination, or anything under `/dev` when `/dev` itself is bound), then
//! the binds: the CRI mounts plus the pod's `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf` and `/dev/shm` where no CRI mount covers them. Binds
//! are sorted by depth (stable), so a parent is mounted before its children
//! and never hides them. As in containerd, the pod's `/etc` files are
//! read-only when the root filesystem is, and other binds are not.
//!
//! A bind is `rbind` plus its propagation (`rprivate`, `rslave`, `rshared`)
//! and `ro`/`rw`. A `rslave` or `rshared` bind needs the root filesystem's
//! propagation to match (`linux.rootfsPropagation`), and its source to sit
//! on a slave or shared host mount; otherwise the request fails, as in
//! containerd, rather than silently not propagating. `recursive_read_only`
//! adds `rro` (runc ≥ 1.1 on Linux ≥ 5.12 applies it to submounts too); it
//! needs `readonly` and private propagation. `mount_options` may add the
//! harmless options `nosuid`, `nodev`, `noexec` and the atime ones. SELinux
//! relabeling is ignored (no SELinux here). Image volumes and idmapped
//! mounts are refused.
//!
//! Host side, as containerd: a missing source is created as a directory
//! (0755), and symlinks in the source are resolved, so a symlinked host path
//! mounts its target.

use super::host;
use super::{PodFiles, SpecError};
use berth_mount::MountInfo;
use berth_proto::cri::v1 as cri;
use oci_spec::runtime::Mount;
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Options `mount_options` may add to a bind.
const ALLOWED_EXTRA_OPTIONS: [&str; 7] = [
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
];

/// What [`plan`] reads.
#[derive(Debug)]
pub(crate) struct MountInput<'a> {
    pub cri_mounts: &'a [cri::Mount],
    /// The mounted image volumes, by index in `cri_mounts`.
    pub image_volumes: &'a BTreeMap<usize, PathBuf>,
    pub pod_files: &'a PodFiles,
    /// The pod shares the host's IPC namespace, hence its `/dev/shm`.
    pub host_ipc: bool,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    /// The container has its own cgroup namespace.
    pub cgroupns: bool,
    pub mountinfo: &'a str,
}

#[derive(Debug)]
pub(crate) struct MountPlan {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Propagation {
    Private,
    Slave,
    Shared,
}

/// A bind mount before its source is prepared.
#[derive(Debug, Clone)]
struct Bind {
    /// The CRI field it came from, for errors.
    field: String,
    destination: String,
    source: PathBuf,
    readonly: bool,
    recursive_readonly: bool,
    propagation: Propagation,
    extra_options: Vec<String>,
}

pub(crate) fn plan(input: &MountInput<'_>) -> Result<MountPlan, SpecError> {
    let mut binds = input
        .cri_mounts
        .iter()
        .enumerate()
        .map(|(i, m)| cri_bind(i, m, input.image_volumes.get(&i)))
        .collect::<Result<Vec<_>, _>>()?;

    let files = input.pod_files;
    let shm = if input.host_ipc {
        Some(PathBuf::from("/dev/shm"))
    } else {
        files.shm.clone()
    };
    for (destination, source, readonly) in [
        ("/etc/hostname", &files.hostname, input.readonly_rootfs),
        ("/etc/hosts", &files.hosts, input.readonly_rootfs),
        (
            "/etc/resolv.conf",
            &files.resolv_conf,
            input.readonly_rootfs,
        ),
        ("/dev/shm", &shm, false),
    ] {
        let Some(source) = source else { continue };
        if binds.iter().any(|b| b.destination == destination) {
            continue;
        }
        binds.push(Bind {
            field: format!("pod file {destination}"),
            destination: destination.to_owned(),
            source: source.clone(),
            readonly,
            recursive_readonly: false,
            propagation: Propagation::Private,
            extra_options: Vec::new(),
        });
    }
    binds.sort_by_key(|b| b.destination.matches('/').count());

    let dev_bound = binds.iter().any(|b| b.destination == "/dev");
    let mut mounts: Vec<Mount> = default_mounts(input)
        .into_iter()
        .filter(|m| {
            let destination = m.destination().to_string_lossy();
            let replaced = binds.iter().any(|b| b.destination == destination);
            let under_bound_dev = dev_bound && destination.starts_with("/dev/");
            !replaced && !under_bound_dev
        })
        .collect();

    let mut rootfs_propagation = None;
    for bind in binds {
        let source = prepare_source(&bind)?;
        let mut options = vec!["rbind".to_owned()];
        match bind.propagation {
            // runc's default root propagation is already rprivate.
            Propagation::Private => options.push("rprivate".to_owned()),
            Propagation::Slave => {
                require_propagation(&bind, &source, input.mountinfo, |m| {
                    m.is_shared() || m.is_slave()
                })?;
                options.push("rslave".to_owned());
                if rootfs_propagation.is_none() {
                    rootfs_propagation = Some("rslave".to_owned());
                }
            }
            Propagation::Shared => {
                require_propagation(&bind, &source, input.mountinfo, MountInfo::is_shared)?;
                options.push("rshared".to_owned());
                rootfs_propagation = Some("rshared".to_owned());
            }
        }
        options.push(if bind.readonly { "ro" } else { "rw" }.to_owned());
        if bind.recursive_readonly {
            options.push("rro".to_owned());
        }
        options.extend(bind.extra_options);
        mounts.push(mount(&bind.destination, "bind", source, options));
    }
    Ok(MountPlan {
        mounts,
        rootfs_propagation,
    })
}

/// The bind of CRI mount `index`; `image_volume` is where its image is
/// mounted when it is an image volume.
fn cri_bind(
    index: usize,
    m: &cri::Mount,
    image_volume: Option<&PathBuf>,
) -> Result<Bind, SpecError> {
    let field = format!("mounts[{index}]");
    let invalid =
        |part: &str, reason: String| SpecError::invalid(format!("{field}.{part}"), reason);
    let wants_image = m.image.as_ref().is_some_and(|i| !i.image.is_empty());
    let source = match (wants_image, image_volume) {
        (true, Some(dir)) => dir.clone(),
        (true, None) => {
            return Err(invalid(
                "image",
                "the image volume was not mounted".to_owned(),
            ))
        }
        (false, _) => PathBuf::from(&m.host_path),
    };
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::Unsupported {
            field: format!("{field}.uidMappings"),
            what: "an idmapped mount",
        });
    }
    if !m.container_path.starts_with('/') {
        return Err(invalid(
            "container_path",
            format!("{:?} is not an absolute path", m.container_path),
        ));
    }
    if !source.is_absolute() {
        return Err(invalid(
            "host_path",
            format!("{:?} is not an absolute path", m.host_path),
        ));
    }
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::Slave,
        Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Shared,
        Err(_) => {
            // containerd treats an unknown mode as private; so does berth.
            tracing::warn!(
                host_path = %m.host_path,
                propagation = m.propagation,
                "unknown mount propagation, using private"
            );
            Propagation::Private
        }
    };
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(
                "recursive_read_only",
                "needs readonly (a read-write mount cannot be recursively read-only)".to_owned(),
            ));
        }
        if propagation != Propagation::Private {
            return Err(invalid(
                "recursive_read_only",
                "needs private propagation".to_owned(),
            ));
        }
    }
    for option in &m.mount_options {
        if !ALLOWED_EXTRA_OPTIONS.contains(&option.as_str()) {
            return Err(invalid(
                "mount_options",
                format!("option {option:?} is not one of {ALLOWED_EXTRA_OPTIONS:?}"),
            ));
        }
    }
    Ok(Bind {
        field,
        destination: clean(&m.container_path),
        source,
        readonly: m.readonly,
        recursive_readonly: m.recursive_read_only,
        propagation,
        extra_options: m.mount_options.clone(),
    })
}

/// Creates a missing source directory and resolves symlinks.
fn prepare_source(bind: &Bind) -> Result<PathBuf, SpecError> {
    let error = |source| SpecError::HostPath {
        field: format!("{}.host_path", bind.field),
        path: bind.source.clone(),
        source,
    };
    match std::fs::metadata(&bind.source) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&bind.source)
                .map_err(error)?;
        }
        Err(e) => return Err(error(e)),
    }
    std::fs::canonicalize(&bind.source).map_err(error)
}

fn require_propagation(
    bind: &Bind,
    source: &Path,
    mountinfo: &str,
    ok: impl Fn(&MountInfo) -> bool,
) -> Result<(), SpecError> {
    let (wanted, needs) = match bind.propagation {
        Propagation::Shared => ("bidirectional", "a shared"),
        _ => ("host-to-container", "a shared or slave"),
    };
    match host::mount_of(mountinfo, source) {
        Some(m) if ok(&m) => Ok(()),
        Some(m) => Err(SpecError::invalid(
            format!("{}.propagation", bind.field),
            format!(
                "{wanted} propagation needs {needs} mount, but {} is on {}, which is not",
                source.display(),
                m.mount_point.display()
            ),
        )),
        None => Err(SpecError::invalid(
            format!("{}.propagation", bind.field),
            format!("{} is on no mount of the host", source.display()),
        )),
    }
}

fn default_mounts(input: &MountInput<'_>) -> Vec<Mount> {
    let rw_if_privileged = if input.privileged { "rw" } else { "ro" };
    let mut cgroup_options = vec!["nosuid", "noexec", "nodev", "relatime", rw_if_privileged];
    // Mounting cgroup2 in the host's cgroup namespace changes the options of
    // the one shared superblock: keep the host's (containerd does the same).
    if !input.cgroupns {
        if let Some(host) = host::mount_of(input.mountinfo, Path::new("/sys/fs/cgroup")) {
            for option in ["nsdelegate", "memory_recursiveprot"] {
                if host.mount_point == Path::new("/sys/fs/cgroup")
                    && host.super_options.iter().any(|o| o == option)
                {
                    cgroup_options.push(option);
                }
            }
        }
    }
    let strings = |options: &[&str]| options.iter().map(|o| (*o).to_owned()).collect();
    vec![
        mount(
            "/proc",
            "proc",
            "proc",
            strings(&["nosuid", "noexec", "nodev"]),
        ),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            strings(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            strings(&[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ]),
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            strings(&["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            strings(&["nosuid", "noexec", "nodev"]),
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            strings(&["nosuid", "noexec", "nodev", rw_if_privileged]),
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            strings(&cgroup_options),
        ),
    ]
}

fn mount(destination: &str, typ: &str, source: impl Into<PathBuf>, options: Vec<String>) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_owned()))
        .set_source(Some(source.into()))
        .set_options(Some(options))
        .set_uid_mappings(None)
        .set_gid_mappings(None);
    m
}

/// Lexically cleans an absolute path, like Go's `filepath.Clean`.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
";

    static NO_IMAGE_VOLUMES: BTreeMap<usize, PathBuf> = BTreeMap::new();

    #[test]
    fn image_volumes_bind_their_mounted_image_read_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image_root = dir.path().join("volumes/0");
        std::fs::create_dir_all(&image_root).expect("mkdir");
        let mounts = [cri::Mount {
            container_path: "/mnt/image".into(),
            readonly: true,
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let volumes = BTreeMap::from([(0, image_root.clone())]);
        let plan = plan(&MountInput {
            image_volumes: &volumes,
            ..input(&mounts, &PodFiles::default(), MOUNTINFO)
        })
        .expect("plan");
        let bind = plan
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new("/mnt/image"))
            .expect("the image volume is mounted");
        assert_eq!(
            bind.source().as_deref(),
            Some(
                std::fs::canonicalize(&image_root)
                    .expect("canonical")
                    .as_path()
            )
        );
        assert_eq!(options_of(&plan, "/mnt/image"), ["rbind", "rprivate", "ro"]);
    }

    fn input<'a>(
        mounts: &'a [cri::Mount],
        files: &'a PodFiles,
        mountinfo: &'a str,
    ) -> MountInput<'a> {
        MountInput {
            cri_mounts: mounts,
            image_volumes: &NO_IMAGE_VOLUMES,
            pod_files: files,
            host_ipc: false,
            readonly_rootfs: false,
            privileged: false,
            cgroupns: false,
            mountinfo,
        }
    }

    fn cri_mount(container: &str, host: &Path) -> cri::Mount {
        cri::Mount {
            container_path: container.to_owned(),
            host_path: host.to_string_lossy().into_owned(),
            ..Default::default()
        }
    }

    fn destinations(plan: &MountPlan) -> Vec<String> {
        plan.mounts
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect()
    }

    fn options_of<'p>(plan: &'p MountPlan, destination: &str) -> &'p [String] {
        plan.mounts
            .iter()
            .find(|m| m.destination() == Path::new(destination))
            .and_then(|m| m.options().as_deref())
            .unwrap_or_else(|| panic!("no mount at {destination}"))
    }

    fn pod_files(dir: &Path) -> PodFiles {
        for name in ["hostname", "hosts", "resolv.conf", "shm"] {
            std::fs::write(dir.join(name), "").expect("pod file");
        }
        PodFiles {
            hostname: Some(dir.join("hostname")),
            hosts: Some(dir.join("hosts")),
            resolv_conf: Some(dir.join("resolv.conf")),
            shm: Some(dir.join("shm")),
        }
    }

    #[test]
    fn defaults_then_pod_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = pod_files(dir.path());
        let plan = plan(&input(&[], &files, MOUNTINFO)).expect("plan");
        assert_eq!(
            destinations(&plan),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
            ]
        );
        assert_eq!(
            options_of(&plan, "/sys"),
            ["nosuid", "noexec", "nodev", "ro"]
        );
        assert_eq!(options_of(&plan, "/etc/hosts"), ["rbind", "rprivate", "rw"]);
        assert_eq!(options_of(&plan, "/dev/shm"), ["rbind", "rprivate", "rw"]);
        assert_eq!(plan.rootfs_propagation, None);
    }

    #[test]
    fn readonly_rootfs_privileged_and_host_ipc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = pod_files(dir.path());
        let plan = plan(&MountInput {
            readonly_rootfs: true,
            privileged: true,
            host_ipc: true,
            ..input(&[], &files, MOUNTINFO)
        })
        .expect("plan");
        assert_eq!(
            options_of(&plan, "/etc/resolv.conf"),
            ["rbind", "rprivate", "ro"]
        );
        assert_eq!(options_of(&plan, "/dev/shm"), ["rbind", "rprivate", "rw"]);
        let shm = plan
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new("/dev/shm"))
            .and_then(|m| m.source().clone());
        assert_eq!(
            shm,
            Some(PathBuf::from("/dev/shm")),
            "host IPC uses the host's /dev/shm"
        );
        assert_eq!(
            options_of(&plan, "/sys"),
            ["nosuid", "noexec", "nodev", "rw"]
        );
        assert!(options_of(&plan, "/sys/fs/cgroup").contains(&"rw".to_owned()));
    }

    #[test]
    fn cri_mounts_override_sort_and_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = pod_files(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let mounts = [
            cri::Mount {
                readonly: true,
                ..cri_mount("/var/lib/app/cache", &data)
            },
            cri::Mount {
                mount_options: vec!["noexec".into()],
                ..cri_mount("/var/lib", &data)
            },
            cri_mount("/etc/hosts/", &data.join("hosts-file")),
            cri::Mount {
                readonly: true,
                recursive_read_only: true,
                ..cri_mount("/ro", &data)
            },
        ];
        let plan = plan(&input(&mounts, &files, MOUNTINFO)).expect("plan");
        let names = destinations(&plan);
        let binds = &names[6..];
        assert_eq!(
            binds,
            [
                "/ro",
                "/var/lib",
                "/etc/hosts",
                "/etc/hostname",
                "/etc/resolv.conf",
                "/dev/shm",
                "/var/lib/app/cache",
            ],
            "binds sorted by depth, stable"
        );
        assert_eq!(
            names.iter().filter(|n| *n == "/etc/hosts").count(),
            1,
            "CRI mount replaces the pod's"
        );
        assert_eq!(
            options_of(&plan, "/var/lib/app/cache"),
            ["rbind", "rprivate", "ro"]
        );
        assert_eq!(
            options_of(&plan, "/var/lib"),
            ["rbind", "rprivate", "rw", "noexec"]
        );
        assert_eq!(options_of(&plan, "/ro"), ["rbind", "rprivate", "ro", "rro"]);
        assert!(
            data.join("hosts-file").is_dir(),
            "a missing source is created"
        );
    }

    #[test]
    fn dev_mount_replaces_default_dev_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounts = [cri_mount("/dev", dir.path())];
        let plan = plan(&input(&mounts, &PodFiles::default(), MOUNTINFO)).expect("plan");
        assert_eq!(
            destinations(&plan),
            ["/proc", "/sys", "/sys/fs/cgroup", "/dev"]
        );
    }

    #[test]
    fn symlinked_host_path_is_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::create_dir(&target).expect("mkdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let mounts = [cri_mount("/data", &link)];
        let plan = plan(&input(&mounts, &PodFiles::default(), MOUNTINFO)).expect("plan");
        let source = plan.mounts.last().and_then(|m| m.source().clone());
        assert_eq!(
            source,
            Some(std::fs::canonicalize(&target).expect("canonical"))
        );
    }

    #[test]
    fn propagation_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = std::fs::canonicalize(dir.path()).expect("canonical");
        let line = |optional: &str| {
            format!(
                "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n99 27 0:99 / {} rw {optional} - tmpfs tmpfs rw\n",
                src.display()
            )
        };
        let shared = line("shared:5");
        let slave = line("master:5");
        let private = line("");
        use cri::MountPropagation as P;
        type Case<'a> = (
            &'a str,
            P,
            &'a str,
            Result<(&'a str, Option<&'a str>), String>,
        );
        let cases: Vec<Case> = vec![
            ("private", P::PropagationPrivate, private.as_str(), Ok(("rprivate", None))),
            ("slave on shared", P::PropagationHostToContainer, shared.as_str(), Ok(("rslave", Some("rslave")))),
            ("slave on slave", P::PropagationHostToContainer, slave.as_str(), Ok(("rslave", Some("rslave")))),
            ("shared on shared", P::PropagationBidirectional, shared.as_str(), Ok(("rshared", Some("rshared")))),
            (
                "shared on slave",
                P::PropagationBidirectional,
                slave.as_str(),
                Err(format!("mounts[0].propagation: bidirectional propagation needs a shared mount, but {0} is on {0}, which is not", src.display())),
            ),
            (
                "slave on private",
                P::PropagationHostToContainer,
                private.as_str(),
                Err(format!("mounts[0].propagation: host-to-container propagation needs a shared or slave mount, but {0} is on {0}, which is not", src.display())),
            ),
        ];
        for (name, propagation, mountinfo, want) in cases {
            let mounts = [cri::Mount {
                propagation: propagation as i32,
                ..cri_mount("/mnt", &src)
            }];
            let got = plan(&input(&mounts, &PodFiles::default(), mountinfo))
                .map(|p| {
                    let options = options_of(&p, "/mnt").to_vec();
                    (options[1].clone(), p.rootfs_propagation.clone())
                })
                .map_err(|e| e.to_string());
            let want = want.map(|(o, r)| (o.to_owned(), r.map(str::to_owned)));
            assert_eq!(got, want, "{name}");
        }

        // One shared bind makes the root rshared, whatever the order.
        let mounts = [
            cri::Mount {
                propagation: P::PropagationBidirectional as i32,
                ..cri_mount("/a", &src)
            },
            cri::Mount {
                propagation: P::PropagationHostToContainer as i32,
                ..cri_mount("/b", &src)
            },
        ];
        let plan = plan(&input(&mounts, &PodFiles::default(), &shared)).expect("plan");
        assert_eq!(plan.rootfs_propagation.as_deref(), Some("rshared"));
    }

    #[test]
    fn invalid_cri_mounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = cri_mount("/x", dir.path());
        let cases: Vec<(cri::Mount, &str)> = vec![
            (cri::Mount { container_path: "x".into(), ..ok.clone() }, "mounts[0].container_path: \"x\" is not an absolute path"),
            (cri::Mount { host_path: String::new(), ..ok.clone() }, "mounts[0].host_path: \"\" is not an absolute path"),
            (cri::Mount { recursive_read_only: true, ..ok.clone() }, "mounts[0].recursive_read_only: needs readonly (a read-write mount cannot be recursively read-only)"),
            (
                cri::Mount { recursive_read_only: true, readonly: true, propagation: cri::MountPropagation::PropagationHostToContainer as i32, ..ok.clone() },
                "mounts[0].recursive_read_only: needs private propagation",
            ),
            (cri::Mount { mount_options: vec!["bind".into()], ..ok.clone() }, "mounts[0].mount_options: option \"bind\" is not one of"),
            (
                cri::Mount { image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }), ..ok.clone() },
                "mounts[0].image: the image volume was not mounted",
            ),
            (
                cri::Mount { uid_mappings: vec![cri::IdMapping { host_id: 1000, container_id: 0, length: 1 }], ..ok.clone() },
                "mounts[0].uidMappings: an idmapped mount is not supported by berth",
            ),
        ];
        for (mount, want) in cases {
            let err = plan(&input(
                std::slice::from_ref(&mount),
                &PodFiles::default(),
                MOUNTINFO,
            ))
            .expect_err(want);
            assert!(err.to_string().starts_with(want), "{err} / {want}");
            assert!(err.is_invalid_argument());
        }
    }

    #[test]
    fn cgroup_options_follow_the_host_without_cgroupns() {
        let mountinfo = "27 1 254:0 / / rw - ext4 /dev/vda rw\n30 27 0:25 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let plan_with = |cgroupns| {
            plan(&MountInput {
                cgroupns,
                ..input(&[], &PodFiles::default(), mountinfo)
            })
            .expect("plan")
        };
        assert_eq!(
            options_of(&plan_with(false), "/sys/fs/cgroup"),
            [
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                "ro",
                "nsdelegate",
                "memory_recursiveprot"
            ]
        );
        assert_eq!(
            options_of(&plan_with(true), "/sys/fs/cgroup"),
            ["nosuid", "noexec", "nodev", "relatime", "ro"]
        );
    }

    #[test]
    fn clean_paths() {
        for (raw, want) in [
            ("/a/b/", "/a/b"),
            ("//a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/..", "/"),
            ("/", "/"),
        ] {
            assert_eq!(clean(raw), want, "{raw}");
        }
    }
}
