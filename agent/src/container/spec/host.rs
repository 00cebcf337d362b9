//! Facts about the host that shape a container's spec.

use super::capabilities;
use super::SpecError;
use crate::cgroups::CgroupLayout;
use oci_spec::runtime::Capability;
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
        })
    }
}

/// One line of a mountinfo file, the parts berth uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountinfoEntry {
    pub mount_point: PathBuf,
    /// The optional fields: `shared:N`, `master:N`, ...
    pub optional: Vec<String>,
    pub super_options: Vec<String>,
}

impl MountinfoEntry {
    fn parse(line: &str) -> Option<Self> {
        // id parent major:minor root mount-point options [optional...] -
        // fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mount_point = unescape(fields.get(4)?);
        let optional = fields.get(6..)?.iter().map(|s| (*s).to_owned()).collect();
        let super_options = right
            .split(' ')
            .nth(2)
            .unwrap_or("")
            .split(',')
            .map(str::to_owned)
            .collect();
        Some(Self {
            mount_point: PathBuf::from(mount_point),
            optional,
            super_options,
        })
    }

    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }

    pub fn is_slave(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("master:"))
    }
}

/// The mount that `path` (absolute, symlinks resolved) lives on: the
/// deepest mount point above it, and of several mounts stacked there, the
/// last one listed (the one on top).
pub(crate) fn mount_of(mountinfo: &str, path: &Path) -> Option<MountinfoEntry> {
    let mut best: Option<MountinfoEntry> = None;
    for entry in mountinfo.lines().filter_map(MountinfoEntry::parse) {
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let deeper = best.as_ref().is_none_or(|b| {
            entry.mount_point.components().count() >= b.mount_point.components().count()
        });
        if deeper {
            best = Some(entry);
        }
    }
    best
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:25 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 27 0:40 / /mnt/shared rw shared:12 - tmpfs tmpfs rw
41 40 0:41 / /mnt/shared/slave rw master:12 - tmpfs tmpfs rw
42 27 0:42 / /mnt/with\\040space rw - tmpfs tmpfs rw
43 40 0:43 / /mnt/shared rw - tmpfs tmpfs rw
";

    #[test]
    fn finds_the_deepest_topmost_mount() {
        let at = |p: &str| mount_of(MOUNTINFO, Path::new(p)).map(|m| m.mount_point);
        assert_eq!(at("/etc/hosts"), Some(PathBuf::from("/")));
        assert_eq!(
            at("/mnt/shared/slave/x"),
            Some(PathBuf::from("/mnt/shared/slave"))
        );
        assert_eq!(
            at("/mnt/with space/dir"),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(
            at("/mnt/sharedx"),
            Some(PathBuf::from("/")),
            "prefix by component"
        );
        // Mount 43 is stacked on 40 and is private.
        let top = mount_of(MOUNTINFO, Path::new("/mnt/shared/a")).expect("mount");
        assert!(!top.is_shared());
        let slave = mount_of(MOUNTINFO, Path::new("/mnt/shared/slave")).expect("mount");
        assert!(slave.is_slave() && !slave.is_shared());
        let cgroup = mount_of(MOUNTINFO, Path::new("/sys/fs/cgroup")).expect("mount");
        assert!(cgroup.super_options.iter().any(|o| o == "nsdelegate"));
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
