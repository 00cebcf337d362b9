//! Everything berth knows about cgroups.
//!
//! Layout: this file detects the layout and chooses the driver; `path.rs`
//! names the cgroups of pods and containers for both drivers and maps them
//! to directories; a [`Cgroup`] is one cgroup's directories under a layout;
//! `stats.rs` reads its counters ([`CgroupStats`]) on v1 and v2, `oom.rs`
//! its OOM kills; `remove.rs` kills and removes what a runtime left;
//! `shims.rs` keeps shims out of berthd's own cgroup;
//! `files.rs` parses the kernel's file formats.
//!
//! berth supports the three layouts found on nodes: legacy v1 (one mount per
//! controller), hybrid (v1 controllers plus an empty cgroup2 mount, as on
//! this project's development machines) and unified v2 (production nodes).
//! The layout is read from `/proc/self/mountinfo`, so tests can feed recorded
//! files from each kind of machine. In a hybrid layout containers' resources
//! live in the v1 hierarchies, so the cgroup2 mount is not read.
//!
//! Tests of v2 and of the systemd driver read recorded trees in
//! `testdata/` (written from the kernel's documented formats, as this
//! project's machines run v1); v1 is also tested live.

mod files;
mod oom;
mod path;
mod remove;
mod shims;
mod stats;

pub use files::IoDeviceStats;
pub use oom::oom_killed;
pub use path::{cgroup_dir, container_cgroups_path, pod_cgroup_dir, CgroupPathError};
pub use remove::kill_and_remove;
pub use shims::{ShimCgroup, SHIMS_CGROUP};
pub use stats::{CgroupStats, CpuStats, CpuThrottling, MemoryStats, PidsStats, SwapStats};

use crate::config::CgroupDriverSetting;
use std::path::{Path, PathBuf};

/// How the cgroup hierarchy is mounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// cgroup v2 only: `/sys/fs/cgroup` is a cgroup2 mount.
    Unified { mount: PathBuf },
    /// cgroup v1 controllers, with or without a cgroup2 mount beside them.
    Legacy {
        /// Each v1 hierarchy: its mount point and the controllers on it.
        hierarchies: Vec<(PathBuf, Vec<String>)>,
        /// The cgroup2 mount of a hybrid layout, if any.
        unified: Option<PathBuf>,
    },
}

/// The driver that places containers' cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// Why the layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mountinfo(#[from] berth_mount::Error),
    #[error("no cgroup filesystem is mounted")]
    NotMounted,
    #[error(
        "cgroup driver systemd was configured, but systemd is not running (no /run/systemd/system)"
    )]
    NoSystemd,
    #[error("cgroup {path} does not exist")]
    Gone { path: PathBuf },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {line:?}")]
    Parse { path: PathBuf, line: String },
    #[error(transparent)]
    Path(#[from] CgroupPathError),
}

impl CgroupLayout {
    /// Reads the layout of this process's mount namespace.
    pub fn detect() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_mountinfo(&text)
    }

    /// Parses the text of a mountinfo file.
    pub fn from_mountinfo(text: &str) -> Result<Self, CgroupError> {
        let mut hierarchies = Vec::new();
        let mut unified = None;
        for mount in berth_mount::mountinfo::parse(text.as_bytes())? {
            match mount.fs_type.as_str() {
                // The unified mount at the cgroup root wins over any other.
                "cgroup2"
                    if unified.is_none() || mount.mount_point == Path::new("/sys/fs/cgroup") =>
                {
                    unified = Some(mount.mount_point);
                }
                "cgroup" => {
                    let controllers = mount
                        .super_options
                        .into_iter()
                        .filter(|o| !matches!(o.as_str(), "rw" | "ro") && !o.contains('='))
                        .collect();
                    hierarchies.push((mount.mount_point, controllers));
                }
                _ => {}
            }
        }
        match (hierarchies.is_empty(), unified) {
            (true, Some(mount)) => Ok(Self::Unified { mount }),
            (true, None) => Err(CgroupError::NotMounted),
            (false, unified) => Ok(Self::Legacy {
                hierarchies,
                unified,
            }),
        }
    }

    /// True when containers' resources live in cgroup v2.
    pub fn is_unified(&self) -> bool {
        matches!(self, Self::Unified { .. })
    }

    /// Reads which optional limits the host's controllers take.
    pub fn resource_support(&self) -> Result<ResourceSupport, CgroupError> {
        match self {
            Self::Unified { mount } => {
                // Swap accounting shows as `memory.swap.max` in any
                // non-root cgroup with memory enabled: berthd's own.
                let path = Path::new("/proc/self/cgroup");
                let own = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let own = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap_or("/")
                    .trim_start_matches('/');
                let controllers =
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
                Ok(ResourceSupport {
                    swap_limit: mount.join(own).join("memory.swap.max").exists(),
                    hugetlb: controllers.split_whitespace().any(|c| c == "hugetlb"),
                })
            }
            Self::Legacy { hierarchies, .. } => {
                let mount = |controller: &str| {
                    hierarchies
                        .iter()
                        .find(|(_, cs)| cs.iter().any(|c| c == controller))
                        .map(|(mount, _)| mount.as_path())
                };
                Ok(ResourceSupport {
                    swap_limit: mount("memory")
                        .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists()),
                    hugetlb: mount("hugetlb").is_some(),
                })
            }
        }
    }
}

/// Which optional limits a container's spec may set on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceSupport {
    /// The memory controller accounts swap (`memory.memsw.*` on v1,
    /// `memory.swap.max` on v2), so `memory.swap` may be set.
    pub swap_limit: bool,
    /// The hugetlb controller is available where containers' resources live.
    pub hugetlb: bool,
}

/// One cgroup under a layout: its directory in each hierarchy. Resolving
/// touches no file, so a handle can be made before the cgroup exists and
/// kept after it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dirs: CgroupDirs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CgroupDirs {
    /// v2: one directory holds every controller's files.
    Unified(PathBuf),
    /// v1: each hierarchy's controllers, and the cgroup's directory in it.
    Legacy(Vec<(Vec<String>, PathBuf)>),
}

impl CgroupDirs {
    /// The directory to name in errors.
    fn first(&self) -> &Path {
        match self {
            Self::Unified(dir) => dir,
            Self::Legacy(dirs) => dirs.first().map_or(Path::new(""), |(_, dir)| dir),
        }
    }
}

impl Cgroup {
    /// The cgroup at `dir` (relative to each hierarchy's root, see
    /// [`cgroup_dir`] and [`pod_cgroup_dir`]). berthd runs in the host's
    /// cgroup namespace, where a hierarchy's mount point is its root.
    pub fn new(layout: &CgroupLayout, dir: &Path) -> Self {
        let dirs = match layout {
            CgroupLayout::Unified { mount } => CgroupDirs::Unified(mount.join(dir)),
            CgroupLayout::Legacy { hierarchies, .. } => CgroupDirs::Legacy(
                hierarchies
                    .iter()
                    // A named hierarchy (`name=systemd`) has no counters.
                    .filter(|(_, controllers)| !controllers.is_empty())
                    .map(|(mount, controllers)| (controllers.clone(), mount.join(dir)))
                    .collect(),
            ),
        };
        Self { dirs }
    }

    /// The cgroup of a container, from its `linux.cgroupsPath` (either
    /// driver's form).
    pub fn of_container(layout: &CgroupLayout, cgroups_path: &str) -> Result<Self, CgroupError> {
        Ok(Self::new(layout, &cgroup_dir(cgroups_path)?))
    }

    /// The directory holding `controller`'s files.
    fn dir(&self, controller: &str) -> Option<&Path> {
        match &self.dirs {
            CgroupDirs::Unified(dir) => Some(dir),
            CgroupDirs::Legacy(dirs) => dirs
                .iter()
                .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
                .map(|(_, dir)| dir.as_path()),
        }
    }

    /// The processes in the cgroup (its `cgroup.procs`; on v1 the first
    /// hierarchy's, which every hierarchy of a container's cgroup shares).
    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        let path = self.dirs.first().join("cgroup.procs");
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.trim().parse().map_err(|_| CgroupError::Parse {
                    path: path.clone(),
                    line: l.to_owned(),
                })
            })
            .collect()
    }

    /// True when the cgroup exists (in any hierarchy, on v1).
    fn exists(&self) -> bool {
        match &self.dirs {
            CgroupDirs::Unified(dir) => dir.is_dir(),
            CgroupDirs::Legacy(dirs) => dirs.iter().any(|(_, dir)| dir.is_dir()),
        }
    }
}

/// A recorded tree of `testdata/`.
#[cfg(test)]
fn testdata(tree: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/cgroups/testdata")
        .join(tree)
}

/// Chooses the driver: an explicit setting wins; `auto` picks systemd only
/// when systemd is the init system, as kubelet's own detection expects.
pub fn choose_driver(
    setting: CgroupDriverSetting,
    systemd_running: bool,
) -> Result<CgroupDriver, CgroupError> {
    match (setting, systemd_running) {
        (CgroupDriverSetting::Cgroupfs, _) => Ok(CgroupDriver::Cgroupfs),
        (CgroupDriverSetting::Systemd, true) => Ok(CgroupDriver::Systemd),
        (CgroupDriverSetting::Systemd, false) => Err(CgroupError::NoSystemd),
        (CgroupDriverSetting::Auto, true) => Ok(CgroupDriver::Systemd),
        (CgroupDriverSetting::Auto, false) => Ok(CgroupDriver::Cgroupfs),
    }
}

/// systemd's own test for "booted with systemd" (sd_booted(3)).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded on this project's development machine (hybrid v1).
    const HYBRID: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    // A production node: systemd with the unified hierarchy.
    const UNIFIED: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    // An old node: v1 with co-mounted controllers and no cgroup2.
    const LEGACY: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_layout() {
        let layout = CgroupLayout::from_mountinfo(HYBRID).expect("layout");
        let CgroupLayout::Legacy {
            hierarchies,
            unified,
        } = &layout
        else {
            panic!("expected legacy, got {layout:?}");
        };
        assert_eq!(
            unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(hierarchies.len(), 4);
        assert_eq!(
            hierarchies[0],
            (PathBuf::from("/sys/fs/cgroup/cpu"), vec!["cpu".to_owned()])
        );
        assert_eq!(
            hierarchies[3].1,
            Vec::<String>::new(),
            "name=systemd is no controller"
        );
        assert!(!layout.is_unified());
    }

    #[test]
    fn unified_layout() {
        let layout = CgroupLayout::from_mountinfo(UNIFIED).expect("layout");
        assert_eq!(
            layout,
            CgroupLayout::Unified {
                mount: PathBuf::from("/sys/fs/cgroup")
            }
        );
    }

    #[test]
    fn legacy_layout_with_comounted_controllers() {
        let layout = CgroupLayout::from_mountinfo(LEGACY).expect("layout");
        let CgroupLayout::Legacy {
            hierarchies,
            unified,
        } = layout
        else {
            panic!("expected legacy");
        };
        assert_eq!(unified, None);
        assert_eq!(
            hierarchies[0].1,
            vec!["cpu".to_owned(), "cpuacct".to_owned()]
        );
    }

    #[test]
    fn no_cgroups_is_an_error() {
        assert!(matches!(
            CgroupLayout::from_mountinfo("24 1 254:0 / / rw - ext4 /dev/vda rw\n"),
            Err(CgroupError::NotMounted)
        ));
    }

    #[test]
    fn escaped_mount_points() {
        let line = "40 30 0:40 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,pids\n";
        let CgroupLayout::Legacy { hierarchies, .. } =
            CgroupLayout::from_mountinfo(line).expect("layout")
        else {
            panic!("expected legacy");
        };
        assert_eq!(hierarchies[0].0, PathBuf::from("/sys/fs/cgroup/with space"));
    }

    #[test]
    fn resource_support_of_v1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = dir.path().join("memory");
        std::fs::create_dir(&memory).expect("mkdir");
        let layout = |hugetlb: bool| CgroupLayout::Legacy {
            hierarchies: [
                Some((memory.clone(), vec!["memory".to_owned()])),
                hugetlb.then(|| (dir.path().join("hugetlb"), vec!["hugetlb".to_owned()])),
            ]
            .into_iter()
            .flatten()
            .collect(),
            unified: None,
        };
        let none = ResourceSupport {
            swap_limit: false,
            hugetlb: false,
        };
        assert_eq!(layout(false).resource_support().expect("support"), none);
        std::fs::write(
            memory.join("memory.memsw.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("write");
        assert_eq!(
            layout(true).resource_support().expect("support"),
            ResourceSupport {
                swap_limit: true,
                hugetlb: true
            }
        );
    }

    #[test]
    fn driver_choice() {
        use CgroupDriverSetting::*;
        assert_eq!(
            choose_driver(Auto, false).expect("auto"),
            CgroupDriver::Cgroupfs
        );
        assert_eq!(
            choose_driver(Auto, true).expect("auto"),
            CgroupDriver::Systemd
        );
        assert_eq!(
            choose_driver(Cgroupfs, true).expect("cgroupfs"),
            CgroupDriver::Cgroupfs
        );
        assert!(matches!(
            choose_driver(Systemd, false),
            Err(CgroupError::NoSystemd)
        ));
    }

    #[test]
    fn this_machine_has_a_layout() {
        CgroupLayout::detect().expect("every Linux test machine mounts cgroups");
    }
}
