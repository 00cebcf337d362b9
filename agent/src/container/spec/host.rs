//! Facts about the host that shape a container's spec.

use super::capabilities;
use super::SpecError;
use crate::cgroups::CgroupLayout;
use berth_mount::MountInfo;
use oci_spec::runtime::Capability;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What [`build_container_spec`](super::build_container_spec) needs to know
/// about the host. [`HostFacts::detect`] reads them; it is cheap (a few small
/// files of `/proc` and `/sys`), and the mount table changes as clients mount
/// things, so detect them for each container rather than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's name: `HOSTNAME` of containers in pods without a hostname.
    pub hostname: String,
    /// berthd's effective capabilities: what "all capabilities" means for
    /// `add: ALL` and privileged containers.
    pub capabilities: Vec<Capability>,
    /// berthd's own `oom_score_adj`. Without `CAP_SYS_RESOURCE` nobody can go
    /// below it, so containers' values are raised to it.
    pub min_oom_score_adj: i32,
    /// cgroup v2 only: containers get a cgroup namespace.
    pub cgroup_unified: bool,
    /// The memory controller accounts swap (`memory.memsw.*` on v1,
    /// `memory.swap.max` on v2), so `memory.swap` may be set.
    pub swap_limit: bool,
    /// The hugetlb controller is available where containers' resources live.
    pub hugetlb: bool,
    /// `/proc/self/mountinfo`: the propagation of bind sources, and the
    /// options of the host's cgroup2 mount.
    pub mountinfo: String,
    /// AppArmor and SELinux: what the host enforces.
    pub security_modules: SecurityModules,
}

impl HostFacts {
    /// Reads the facts of this host, given its cgroup layout.
    pub fn detect(layout: &CgroupLayout) -> Result<Self, SpecError> {
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|source| SpecError::Host {
                path: PathBuf::from(path),
                source,
            })
        };
        let hostname = nix::unistd::gethostname()
            .map_err(|e| SpecError::Host {
                path: PathBuf::from("/proc/sys/kernel/hostname"),
                source: e.into(),
            })?
            .to_string_lossy()
            .into_owned();
        let status = read("/proc/self/status")?;
        let oom = read("/proc/self/oom_score_adj")?;
        let invalid = |path: &str, what: &str| SpecError::Host {
            path: PathBuf::from(path),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
        };
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| invalid("/proc/self/status", "no CapEff line"))?;
        let min_oom_score_adj = oom
            .trim()
            .parse()
            .map_err(|_| invalid("/proc/self/oom_score_adj", "not a number"))?;
        let support = layout.resource_support().map_err(SpecError::HostCgroups)?;
        let (swap_limit, hugetlb) = (support.swap_limit, support.hugetlb);
        Ok(Self {
            hostname,
            capabilities: capabilities::from_bitmap(cap_eff),
            min_oom_score_adj,
            cgroup_unified: layout.is_unified(),
            swap_limit,
            hugetlb,
            mountinfo: read("/proc/self/mountinfo")?,
            security_modules: SecurityModules::detect(),
        })
    }
}

/// The mount that `path` (absolute, symlinks resolved) lives on, in the
/// text of a mountinfo file (berth-mount's [`containing`]); `None` also
/// when the text is no mountinfo.
///
/// [`containing`]: berth_mount::mountinfo::containing
pub(crate) fn mount_of(mountinfo: &str, path: &Path) -> Option<MountInfo> {
    let table = berth_mount::mountinfo::parse(mountinfo.as_bytes()).ok()?;
    berth_mount::mountinfo::containing(&table, path).cloned()
}

/// Which Linux security modules the host enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityModules {
    /// `None`: AppArmor is not enabled. Otherwise the names of the profiles
    /// loaded in the kernel.
    pub apparmor: Option<BTreeSet<String>>,
    /// SELinux is enabled (selinuxfs is mounted).
    pub selinux: bool,
}

impl SecurityModules {
    /// Reads this host's modules. AppArmor counts as enabled the way runc
    /// decides it: securityfs shows `apparmor` and the module says `Y`.
    pub fn detect() -> Self {
        let apparmor_enabled = Path::new("/sys/kernel/security/apparmor").is_dir()
            && std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|v| v.starts_with('Y'));
        let apparmor = apparmor_enabled.then(|| {
            std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
                .map(|list| parse_apparmor_profiles(&list))
                .unwrap_or_default()
        });
        Self {
            apparmor,
            selinux: Path::new("/sys/fs/selinux/enforce").exists(),
        }
    }
}

/// Profile names of `/sys/kernel/security/apparmor/profiles`, whose lines
/// read `name (mode)`; a name may contain spaces.
fn parse_apparmor_profiles(list: &str) -> BTreeSet<String> {
    list.lines()
        .filter_map(|line| line.rsplit_once(" (").map(|(name, _)| name.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The cases of the lookup are berth-mount's (`mountinfo::containing`).
    #[test]
    fn finds_the_mount_in_mountinfo_text() {
        let text = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
42 27 0:42 / /mnt/with\\040space rw shared:12 - tmpfs tmpfs rw
";
        let m = mount_of(text, Path::new("/mnt/with space/dir")).expect("mount");
        assert_eq!(m.mount_point, PathBuf::from("/mnt/with space"));
        assert!(m.is_shared());
        assert_eq!(mount_of("not mountinfo\n", Path::new("/")), None);
    }

    #[test]
    fn parses_the_kernel_profile_list() {
        let list =
            "cri-containerd.apparmor.d (enforce)\n/usr/bin/man (complain)\nwith space (enforce)\n";
        let names = parse_apparmor_profiles(list);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["/usr/bin/man", "cri-containerd.apparmor.d", "with space"]
        );
    }

    #[test]
    fn detect_reads_this_host() {
        let layout = CgroupLayout::detect().expect("cgroup layout");
        let facts = HostFacts::detect(&layout).expect("host facts");
        assert!(!facts.hostname.is_empty());
        assert!(
            facts.capabilities.contains(&Capability::SysAdmin),
            "tests run as root"
        );
        assert!((-1000..=1000).contains(&facts.min_oom_score_adj));
        assert!(facts.mountinfo.contains(" / / "));
    }
}
