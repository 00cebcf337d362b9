//! `berthd doctor`: what the node needs before berthd can run pods, each
//! finding with how to fix it.
//!
//! The same checks run at start-up (logged, never fatal where berthd can
//! still serve) and, the quick ones, on every CRI `Status` call, which
//! turns a problem into a false `RuntimeReady` or `NetworkReady` with a
//! reason and message ([`condition`]). Host files are read below
//! [`Host::proc`] so tests can plant a problem in a temp dir; everything
//! else (binaries, the root dir's filesystem, sockets) is read for real.

use crate::binaries;
use crate::cgroups::CgroupLayout;
use crate::config::Config;
use crate::network::cni_config::{self, CniConfigError};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the host's kernel facts are read.
#[derive(Debug, Clone)]
pub struct Host {
    /// procfs: `filesystems`, `self/mountinfo`, `self/ns/*`,
    /// `sys/kernel/osrelease`, `sys/net/ipv4/ip_forward`.
    pub proc: PathBuf,
}

impl Host {
    /// This machine.
    pub fn real() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    /// berthd works, with something missing or unusual.
    Warning,
    /// Pods or containers fail until it is fixed.
    Problem,
}

/// Which `Status` condition a problem makes false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affects {
    Runtime,
    Network,
    /// Reported by `doctor` and at start-up only.
    Neither,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short name of the check (`overlayfs`, `runtime runc`).
    pub check: String,
    pub severity: Severity,
    /// What was found.
    pub message: String,
    /// How to fix it; empty when there is nothing to fix.
    pub fix: String,
    pub affects: Affects,
    /// The `Status` reason when it is a problem (`OverlayfsMissing`).
    pub reason: &'static str,
}

impl Finding {
    fn ok(check: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            severity: Severity::Ok,
            message: message.into(),
            fix: String::new(),
            affects: Affects::Neither,
            reason: "",
        }
    }

    fn bad(
        severity: Severity,
        affects: Affects,
        reason: &'static str,
        check: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            check: check.into(),
            severity,
            message: message.into(),
            fix: fix.into(),
            affects,
            reason,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Problem => "PROBLEM",
        };
        write!(f, "{label:<8} {:<22} {}", self.check, self.message)?;
        if !self.fix.is_empty() {
            write!(f, "\n{:<31}fix: {}", "", self.fix)?;
        }
        Ok(())
    }
}

/// The oldest kernel berth supports: cgroup namespaces (4.6) and
/// overlayfs with several lower layers.
const MIN_KERNEL: (u32, u32) = (4, 6);
/// Less free space than this in the root dir is a problem: pulls and
/// container writes fail.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// Fewer free inodes than this in the root dir is a problem.
const MIN_FREE_INODES: u64 = 100_000;
/// Sockets of other CRI runtimes kubelet may still be pointed at.
const OTHER_RUNTIMES: [(&str, &str); 3] = [
    ("containerd", "/run/containerd/containerd.sock"),
    ("CRI-O", "/run/crio/crio.sock"),
    ("CRI-O", "/var/run/crio/crio.sock"),
];

/// Every check, in the order `berthd doctor` prints them.
pub fn check_all(host: &Host, config: &Config) -> Vec<Finding> {
    let mut findings = vec![kernel(host), overlayfs(host)];
    findings.extend(cgroups(host));
    findings.extend(namespaces(host));
    findings.extend(runtimes(config, true));
    findings.push(helpers());
    findings.push(cni(config));
    findings.push(ip_forward(host));
    findings.extend(disk(&config.root));
    findings.push(socket(config));
    findings.extend(other_runtimes(config));
    findings
}

/// The checks cheap enough for every `Status` call, which decide
/// `RuntimeReady` and `NetworkReady`.
pub fn quick(host: &Host, config: &Config) -> Vec<Finding> {
    let mut findings = vec![overlayfs(host)];
    findings.extend(namespaces(host));
    findings.extend(runtimes(config, false));
    findings.push(helpers());
    findings.push(cni(config));
    findings
}

/// The first problem that makes the condition of `affects` false; `None`
/// when the condition holds.
pub fn condition(findings: &[Finding], affects: Affects) -> Option<&Finding> {
    findings
        .iter()
        .find(|f| f.severity == Severity::Problem && f.affects == affects)
}

fn read(host: &Host, file: &str) -> std::io::Result<String> {
    std::fs::read_to_string(host.proc.join(file))
}

/// `major.minor` of a kernel release such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn kernel(host: &Host) -> Finding {
    let release = read(host, "sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    match kernel_version(release) {
        Some(version) if version >= MIN_KERNEL => Finding::ok("kernel", format!("Linux {release}")),
        _ => Finding::bad(
            Severity::Problem,
            Affects::Neither,
            "KernelTooOld",
            "kernel",
            format!(
                "Linux {release:?} is older than {}.{} or unreadable",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "boot a kernel of 4.6 or later (5.x recommended)",
        ),
    }
}

fn overlayfs(host: &Host) -> Finding {
    let filesystems = read(host, "filesystems").unwrap_or_default();
    if filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        Finding::ok("overlayfs", "overlay is available")
    } else {
        Finding::bad(
            Severity::Problem,
            Affects::Runtime,
            "OverlayfsMissing",
            "overlayfs",
            format!(
                "overlay is not in {}: container root filesystems cannot be mounted",
                host.proc.join("filesystems").display()
            ),
            "modprobe overlay, and list it in /etc/modules-load.d/berth.conf to load it at boot",
        )
    }
}

fn cgroups(host: &Host) -> Vec<Finding> {
    let path = host.proc.join("self/mountinfo");
    let layout = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|text| CgroupLayout::from_mountinfo(&text).map_err(|e| e.to_string()));
    let layout = match layout {
        Ok(layout) => layout,
        Err(e) => {
            return vec![Finding::bad(
                Severity::Problem,
                Affects::Runtime,
                "CgroupsMissing",
                "cgroups",
                e,
                "mount cgroup2 at /sys/fs/cgroup (or the v1 hierarchies), as systemd does at boot",
            )]
        }
    };
    let (version, controllers): (&str, Vec<String>) = match &layout {
        CgroupLayout::Unified { mount } => (
            "v2",
            std::fs::read_to_string(mount.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        ),
        CgroupLayout::Legacy {
            hierarchies,
            unified,
        } => (
            if unified.is_some() {
                "v1 (hybrid)"
            } else {
                "v1"
            },
            hierarchies
                .iter()
                .flat_map(|(_, cs)| cs.iter().cloned())
                .collect(),
        ),
    };
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !controllers.iter().any(|have| have == c))
        .collect();
    let mut findings = vec![Finding::ok(
        "cgroups",
        format!("cgroup {version}, controllers {}", controllers.join(" ")),
    )];
    if !missing.is_empty() {
        findings.push(Finding::bad(
            Severity::Problem,
            Affects::Neither,
            "CgroupControllersMissing",
            "cgroup controllers",
            format!("controllers {} are not available", missing.join(", ")),
            "enable them on the kernel command line (e.g. cgroup_enable=memory) or in the root cgroup's cgroup.subtree_control",
        ));
    }
    findings
}

fn namespaces(host: &Host) -> Vec<Finding> {
    let ns = host.proc.join("self/ns");
    let missing = |names: &[&'static str]| -> Vec<&'static str> {
        names
            .iter()
            .copied()
            .filter(|n| !ns.join(n).exists())
            .collect()
    };
    let required = missing(&["mnt", "uts", "ipc", "net", "pid"]);
    let optional = missing(&["user", "cgroup"]);
    let mut findings = Vec::new();
    if !required.is_empty() {
        findings.push(Finding::bad(
            Severity::Problem,
            Affects::Runtime,
            "NamespacesMissing",
            "namespaces",
            format!("the kernel lacks {} namespaces", required.join(", ")),
            "boot a kernel built with CONFIG_NAMESPACES and each *_NS option",
        ));
    }
    if !optional.is_empty() {
        findings.push(Finding::bad(
            Severity::Warning,
            Affects::Neither,
            "",
            "namespaces",
            format!(
                "no {} namespaces: pods that ask for them fail",
                optional.join(", ")
            ),
            "boot a kernel with CONFIG_USER_NS and CONFIG_CGROUPS namespaces",
        ));
    }
    if findings.is_empty() {
        findings.push(Finding::ok("namespaces", "mnt uts ipc net pid user cgroup"));
    }
    findings
}

/// The first line of `program --version`.
fn version_of(program: &Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".to_owned())
}

fn runtimes(config: &Config, versions: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (name, handler) in &config.runtime.handlers {
        let default = *name == config.runtime.default_handler;
        let check = format!("runtime {name}");
        let mut programs = vec![("runtime", &handler.runtime_path)];
        programs.extend(handler.shim.iter().map(|shim| ("shim", shim)));
        let mut missing = None;
        let mut found = Vec::new();
        for (what, program) in programs {
            match binaries::find_program(program) {
                Some(path) if versions => {
                    found.push(format!("{} ({})", path.display(), version_of(&path)))
                }
                Some(path) => found.push(path.display().to_string()),
                None => {
                    missing = Some((what, program));
                    break;
                }
            }
        }
        findings.push(match missing {
            None => Finding::ok(check, found.join(", ")),
            Some((what, program)) => Finding::bad(
                if default {
                    Severity::Problem
                } else {
                    Severity::Warning
                },
                if default {
                    Affects::Runtime
                } else {
                    Affects::Neither
                },
                "RuntimeBinaryMissing",
                check,
                format!(
                    "the {what} {} of handler `{name}`{} is not an executable file or on PATH",
                    program.display(),
                    if default { " (the default)" } else { "" }
                ),
                format!(
                    "install it (Debian: apt install {}) or set runtime.handlers.{name}.{} to its path",
                    program
                        .file_name()
                        .map_or("runc".into(), |n| n.to_string_lossy()),
                    if what == "shim" { "shim" } else { "runtime_path" }
                ),
            ),
        });
    }
    findings
}

fn helpers() -> Finding {
    let missing: Vec<&str> = [binaries::SHIM, binaries::INIT]
        .into_iter()
        .filter(|name| binaries::find(name).is_none())
        .collect();
    if missing.is_empty() {
        Finding::ok(
            "berth binaries",
            format!("{} {}", binaries::SHIM, binaries::INIT),
        )
    } else {
        Finding::bad(
            Severity::Problem,
            Affects::Runtime,
            "ShimMissing",
            "berth binaries",
            format!("{} not beside berthd or on PATH", missing.join(", ")),
            "install them beside berthd (cargo build puts them in the same target dir)",
        )
    }
}

fn cni(config: &Config) -> Finding {
    match cni_config::load_network(&config.cni.conf_dir, &config.cni.bin_dirs) {
        Ok(network) => Finding::ok(
            "CNI",
            format!(
                "network `{}` from {} ({})",
                network.name,
                network.source.display(),
                network.plugin_types.join(", ")
            ),
        ),
        Err(e) => {
            let fix = match &e {
                CniConfigError::NoConfig(dir) | CniConfigError::ReadDir { dir, .. } => format!(
                    "write a network configuration (*.conflist) into {} (hack/cni-config.sh writes a bridge network)",
                    dir.display()
                ),
                CniConfigError::MissingPlugin { plugin, dirs, .. } => format!(
                    "install the CNI plugin `{plugin}` into one of {dirs} (Debian: apt install containernetworking-plugins), or set cni.bin_dirs"
                ),
            };
            Finding::bad(
                Severity::Problem,
                Affects::Network,
                "NetworkPluginNotReady",
                "CNI",
                format!("network plugin is not ready: {e}"),
                fix,
            )
        }
    }
}

fn ip_forward(host: &Host) -> Finding {
    match read(host, "sys/net/ipv4/ip_forward")
        .as_deref()
        .map(str::trim)
    {
        Ok("1") => Finding::ok("IP forwarding", "net.ipv4.ip_forward = 1"),
        _ => Finding::bad(
            Severity::Warning,
            Affects::Neither,
            "",
            "IP forwarding",
            "net.ipv4.ip_forward is off: pods cannot reach beyond the node",
            "sysctl -w net.ipv4.ip_forward=1, and persist it in /etc/sysctl.d/99-berth.conf",
        ),
    }
}

/// `path` or its nearest ancestor that exists.
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn disk(root: &Path) -> Vec<Finding> {
    let on = existing_ancestor(root);
    let stat = match nix::sys::statvfs::statvfs(on) {
        Ok(stat) => stat,
        Err(e) => {
            return vec![Finding::bad(
                Severity::Problem,
                Affects::Neither,
                "",
                "disk",
                format!("cannot statvfs {}: {e}", on.display()),
                "check that the root dir's filesystem is mounted",
            )]
        }
    };
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    let inodes = stat.files_available() as u64;
    let total_inodes = stat.files() as u64;
    let mut findings = Vec::new();
    let mib = |b: u64| b >> 20;
    if free < MIN_FREE_BYTES {
        findings.push(Finding::bad(
            Severity::Problem,
            Affects::Neither,
            "",
            "disk",
            format!(
                "{} MiB free on {} (root {}): pulls and containers' writes fail",
                mib(free),
                on.display(),
                root.display()
            ),
            "free space there (crictl rmi --prune removes unused images) or move `root` to a larger filesystem",
        ));
    } else {
        findings.push(Finding::ok(
            "disk",
            format!("{} MiB free on {}", mib(free), on.display()),
        ));
    }
    // A filesystem without an inode limit (total 0) cannot run out.
    if total_inodes > 0 && inodes < MIN_FREE_INODES {
        findings.push(Finding::bad(
            Severity::Problem,
            Affects::Neither,
            "",
            "inodes",
            format!("{inodes} inodes free on {}", on.display()),
            "remove files there (crictl rmi --prune) or move `root` to a filesystem with more inodes",
        ));
    } else {
        findings.push(Finding::ok(
            "inodes",
            format!("{inodes} inodes free on {}", on.display()),
        ));
    }
    findings
}

/// Whether a process answers on the unix socket `path`.
fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

fn socket(config: &Config) -> Finding {
    let socket = config.socket_path();
    let dir = socket.parent().unwrap_or(Path::new("/"));
    if answers(&socket) {
        return Finding::bad(
            Severity::Problem,
            Affects::Neither,
            "",
            "socket",
            format!("a process already serves {}", socket.display()),
            "stop it (another berthd, containerd or CRI-O) or set grpc.socket to another path",
        );
    }
    let base = existing_ancestor(dir);
    let writable = nix::unistd::access(base, nix::unistd::AccessFlags::W_OK).is_ok();
    let is_dir = std::fs::metadata(base).is_ok_and(|m| m.is_dir());
    if !is_dir || !writable {
        return Finding::bad(
            Severity::Problem,
            Affects::Neither,
            "",
            "socket",
            format!(
                "{} cannot be created: {} is not a writable directory",
                socket.display(),
                base.display()
            ),
            "run berthd as root, or set grpc.socket under a writable directory",
        );
    }
    Finding::ok("socket", format!("{} can be bound", socket.display()))
}

fn other_runtimes(config: &Config) -> Vec<Finding> {
    let own = config.socket_path();
    OTHER_RUNTIMES
        .iter()
        .filter(|(_, path)| Path::new(path) != own && answers(Path::new(path)))
        .map(|(name, path)| {
            Finding::bad(
                Severity::Warning,
                Affects::Neither,
                "",
                "other runtimes",
                format!("{name} serves CRI on {path}"),
                format!(
                    "point kubelet's containerRuntimeEndpoint at unix://{} and stop {name} if nothing else needs it",
                    own.display()
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(findings: &[Finding]) -> Vec<&Finding> {
        findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .collect()
    }

    /// A fake procfs: this host's files, with `overrides` written over.
    fn fake_proc(overrides: &[(&str, &str)]) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in [
            "filesystems",
            "sys/kernel/osrelease",
            "sys/net/ipv4/ip_forward",
            "self/mountinfo",
        ] {
            let target = dir.path().join(file);
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            let text = std::fs::read_to_string(Path::new("/proc").join(file)).expect("read /proc");
            std::fs::write(&target, text).expect("write");
        }
        std::os::unix::fs::symlink("/proc/self/ns", dir.path().join("self/ns")).expect("ns");
        for (file, text) in overrides {
            std::fs::write(dir.path().join(file), text).expect("override");
        }
        let host = Host {
            proc: dir.path().to_owned(),
        };
        (dir, host)
    }

    #[test]
    fn this_host_runs_containers() {
        let config = Config::default();
        let findings = check_all(&Host::real(), &config);
        for check in [
            "kernel",
            "overlayfs",
            "cgroups",
            "runtime runc",
            "berth binaries",
        ] {
            let finding = findings
                .iter()
                .find(|f| f.check == check)
                .unwrap_or_else(|| panic!("no {check} in {findings:?}"));
            assert_eq!(finding.severity, Severity::Ok, "{finding}");
        }
        let runc = findings
            .iter()
            .find(|f| f.check == "runtime runc")
            .expect("runc");
        assert!(runc.message.contains("runc version"), "{runc}");
        assert!(condition(&quick(&Host::real(), &config), Affects::Runtime).is_none());
    }

    #[test]
    fn a_missing_default_runtime_makes_the_runtime_not_ready() {
        let mut config = Config::default();
        let missing = PathBuf::from("/nonexistent/berth-test/runc");
        config
            .runtime
            .handlers
            .get_mut("runc")
            .expect("runc handler")
            .runtime_path = missing.clone();
        let findings = quick(&Host::real(), &config);
        let problem = condition(&findings, Affects::Runtime).expect("a runtime problem");
        assert_eq!(problem.reason, "RuntimeBinaryMissing");
        assert!(
            problem.message.contains("/nonexistent/berth-test/runc"),
            "{problem}"
        );
        assert!(
            problem.fix.contains("runtime.handlers.runc.runtime_path"),
            "{problem}"
        );
        // A missing non-default handler is only a warning.
        config.runtime.default_handler = "crun".to_owned();
        assert!(condition(&quick(&Host::real(), &config), Affects::Runtime).is_none());
    }

    #[test]
    fn a_missing_cni_plugin_or_config_makes_the_network_not_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.cni.conf_dir = dir.path().to_owned();
        let empty = cni(&config);
        assert_eq!(empty.affects, Affects::Network);
        assert!(
            empty.fix.contains(&*dir.path().to_string_lossy()),
            "{empty}"
        );
        std::fs::write(
            dir.path().join("10-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"},{"type":"berth-no-such-plugin"}]}"#,
        )
        .expect("write conflist");
        let missing = cni(&config);
        assert_eq!(missing.severity, Severity::Problem);
        assert!(
            missing.message.contains("berth-no-such-plugin"),
            "{missing}"
        );
        assert!(
            missing.fix.contains("containernetworking-plugins"),
            "{missing}"
        );
    }

    #[test]
    fn no_overlayfs_and_ip_forwarding_off_are_found() {
        let (_dir, host) = fake_proc(&[
            ("filesystems", "nodev\tsysfs\nnodev\ttmpfs\n\text4\n"),
            ("sys/net/ipv4/ip_forward", "0\n"),
            ("sys/kernel/osrelease", "3.10.0-1160.el7.x86_64\n"),
        ]);
        let findings = check_all(&host, &Config::default());
        let overlay = findings
            .iter()
            .find(|f| f.check == "overlayfs")
            .expect("overlay");
        assert_eq!(overlay.severity, Severity::Problem);
        assert!(overlay.fix.contains("modprobe overlay"), "{overlay}");
        assert_eq!(
            condition(&findings, Affects::Runtime).map(|f| f.reason),
            Some("OverlayfsMissing")
        );
        let forward = findings
            .iter()
            .find(|f| f.check == "IP forwarding")
            .expect("forward");
        assert_eq!(forward.severity, Severity::Warning);
        assert!(forward.fix.contains("net.ipv4.ip_forward=1"), "{forward}");
        let kernel = findings
            .iter()
            .find(|f| f.check == "kernel")
            .expect("kernel");
        assert_eq!(kernel.severity, Severity::Problem, "{kernel}");
    }

    #[test]
    fn a_full_disk_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4m,nr_inodes=64"),
        )
        .expect("mount a small tmpfs");
        let root = dir.path().join("var/lib/berth");
        let findings = disk(&root);
        nix::mount::umount(dir.path()).expect("umount");
        let space = findings.iter().find(|f| f.check == "disk").expect("disk");
        assert_eq!(space.severity, Severity::Problem, "{space}");
        assert!(space.fix.contains("crictl rmi --prune"), "{space}");
        let inodes = findings
            .iter()
            .find(|f| f.check == "inodes")
            .expect("inodes");
        assert_eq!(inodes.severity, Severity::Problem, "{inodes}");
        assert_eq!(
            problems(&disk(Path::new("/"))).len(),
            0,
            "this host's / has room"
        );
    }

    #[test]
    fn a_served_socket_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("busy.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let mut config = Config::default();
        config.grpc.socket = path.clone();
        let found = socket(&config);
        assert_eq!(found.severity, Severity::Problem, "{found}");
        config.grpc.socket = dir.path().join("sub/free.sock");
        assert_eq!(socket(&config).severity, Severity::Ok);
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(kernel_version("4.6"), Some((4, 6)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
