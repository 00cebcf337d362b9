//! The container's seccomp profile.
//!
//! Which profile (containerd's rules):
//!
//! - privileged: none, whatever was asked;
//! - `seccomp` set: `RuntimeDefault` is berth's default profile below,
//!   `Unconfined` none, `Localhost` the OCI `LinuxSeccomp` JSON in the file
//!   `localhost_ref` (an absolute path; a `localhost/` prefix is tolerated);
//! - `seccomp` unset: the deprecated `seccomp_profile_path` of older
//!   kubelets, `runtime/default` or `docker/default` (default profile),
//!   `unconfined`, `localhost/<path>`; empty means unconfined, which is
//!   kubelet's default without the `SeccompDefault` feature.
//!
//! The default profile is the one containerd and Docker ship: `SCMP_ACT_ERRNO`
//! (EPERM) for everything but an allow-list, `socket` for every family but
//! `AF_ALG` and `AF_VSOCK`, a few `personality` values, and syscalls that only
//! make sense with a capability (`mount` and `sethostname` with
//! `CAP_SYS_ADMIN`, `ptrace` with `CAP_SYS_PTRACE`, ...) allowed when the
//! container's bounding set has that capability. Without `CAP_SYS_ADMIN`,
//! `clone` may not create namespaces and `clone3` fails with ENOSYS so that
//! libc falls back to `clone` (moby/moby#42681). Syscalls the runtime's
//! libseccomp does not know are skipped by runc, so the list may name newer
//! ones. `ptrace` is allowed to everyone since kernel 4.8 closed the seccomp
//! bypass; berth assumes a newer kernel.

use super::SpecError;
use berth_proto::cri::v1 as cri;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use std::path::{Path, PathBuf};

const FIELD: &str = "linux.security_context.seccomp";
const FIELD_PATH: &str = "linux.security_context.seccomp_profile_path";

const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;
/// CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID
/// | CLONE_NEWNET | CLONE_NEWCGROUP.
const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x0200_0000;

/// What the request asks for, once the deprecated form is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost { field: &'static str, path: PathBuf },
}

/// The seccomp profile of a container; `bounding` is its final capability
/// bounding set. `None` means unconfined.
pub(crate) fn resolve(
    sc: &cri::LinuxContainerSecurityContext,
    bounding: &[Capability],
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if sc.privileged {
        return Ok(None);
    }
    match choice(sc)? {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => Ok(Some(default_profile(bounding))),
        Choice::Localhost { field, path } => load(field, &path).map(Some),
    }
}

fn choice(sc: &cri::LinuxContainerSecurityContext) -> Result<Choice, SpecError> {
    let Some(profile) = &sc.seccomp else {
        // Deprecated, but older kubelets still send only this.
        #[allow(deprecated)]
        return from_profile_path(&sc.seccomp_profile_path);
    };
    let kind =
        cri::security_profile::ProfileType::try_from(profile.profile_type).map_err(|_| {
            SpecError::invalid(
                format!("{FIELD}.profile_type"),
                format!("unknown profile type {}", profile.profile_type),
            )
        })?;
    let field = "linux.security_context.seccomp.localhost_ref";
    match kind {
        cri::security_profile::ProfileType::Localhost => Ok(Choice::Localhost {
            field,
            path: localhost_path(field, &profile.localhost_ref)?,
        }),
        _ if !profile.localhost_ref.is_empty() => Err(SpecError::invalid(
            field,
            "set, but the profile type is not Localhost",
        )),
        cri::security_profile::ProfileType::RuntimeDefault => Ok(Choice::RuntimeDefault),
        cri::security_profile::ProfileType::Unconfined => Ok(Choice::Unconfined),
    }
}

fn from_profile_path(value: &str) -> Result<Choice, SpecError> {
    match value {
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        _ => match value.strip_prefix("localhost/") {
            Some(path) => Ok(Choice::Localhost {
                field: FIELD_PATH,
                path: localhost_path(FIELD_PATH, path)?,
            }),
            None => Err(SpecError::invalid(
                FIELD_PATH,
                format!("unknown profile {value:?}"),
            )),
        },
    }
}

fn localhost_path(field: &'static str, reference: &str) -> Result<PathBuf, SpecError> {
    let path = Path::new(reference.strip_prefix("localhost/").unwrap_or(reference));
    if !path.is_absolute() {
        return Err(SpecError::invalid(
            field,
            format!("{reference:?} is not an absolute path"),
        ));
    }
    Ok(path.to_owned())
}

fn load(field: &'static str, path: &Path) -> Result<LinuxSeccomp, SpecError> {
    let error = |reason: String| SpecError::SeccompProfile {
        field,
        path: path.to_owned(),
        reason,
    };
    let text = read_profile(path).map_err(error)?;
    serde_json::from_slice(&text).map_err(|e| error(format!("not an OCI seccomp profile: {e}")))
}

/// The largest profile read: real ones are tens of KiB, and the path comes
/// from the pod spec (`/dev/zero` would be read forever).
const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Reads a profile from a regular file only: opened non-blocking (a FIFO
/// would hang the request, and the pod's lock with it), at most
/// [`MAX_PROFILE_BYTES`].
fn read_profile(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut text = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(format!("larger than {MAX_PROFILE_BYTES} bytes"));
    }
    Ok(text)
}

/// The syscalls every container may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed when the bounding set holds a capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The architectures a filter covers: the native one and its compat ABIs.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
    } else if cfg!(target_arch = "s390x") {
        vec![Arch::ScmpArchS390, Arch::ScmpArchS390x]
    } else if cfg!(target_arch = "riscv64") {
        vec![Arch::ScmpArchRiscv64]
    } else if cfg!(target_arch = "powerpc64") {
        vec![Arch::ScmpArchPpc64le]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// Syscalls of the native architecture only.
fn arch_syscalls() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "aarch64") {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else if cfg!(target_arch = "s390x") {
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ]
    } else if cfg!(target_arch = "riscv64") {
        &["riscv_flush_icache", "riscv_hwprobe"]
    } else if cfg!(target_arch = "powerpc64") {
        &["sync_file_range2", "swapcontext"]
    } else {
        &[]
    }
}

fn rule(names: &[&str], action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| (*n).to_owned()).collect())
        .set_action(action)
        .set_errno_ret(None)
        .set_args((!args.is_empty()).then_some(args));
    rule
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    match value_two {
        Some(two) => builder.value_two(two),
        None => builder,
    }
    .build()
    .expect("every field of a seccomp argument is set or optional")
}

/// berth's default profile for a container whose bounding set is `bounding`.
pub(crate) fn default_profile(bounding: &[Capability]) -> LinuxSeccomp {
    use LinuxSeccompAction::ScmpActAllow as Allow;
    use LinuxSeccompOperator as Op;
    let mut syscalls = vec![rule(ALLOWED, Allow, Vec::new())];
    // socket(2) for every address family but AF_ALG and AF_VSOCK. Each rule
    // has one condition: runc turns several conditions on one argument into
    // separate rules, which would allow both (see containerd's profile).
    syscalls.push(rule(
        &["socket"],
        Allow,
        vec![arg(0, AF_ALG, None, Op::ScmpCmpLt)],
    ));
    syscalls.push(rule(
        &["socket"],
        Allow,
        vec![arg(0, AF_ALG + 1, None, Op::ScmpCmpEq)],
    ));
    syscalls.push(rule(
        &["socket"],
        Allow,
        vec![arg(0, AF_VSOCK, None, Op::ScmpCmpGt)],
    ));
    // personality(2): PER_LINUX, PER_LINUX32, UNAME26 variants and the query.
    for persona in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(rule(
            &["personality"],
            Allow,
            vec![arg(0, persona, None, Op::ScmpCmpEq)],
        ));
    }
    syscalls.push(rule(
        &["process_vm_readv", "process_vm_writev", "ptrace"],
        Allow,
        Vec::new(),
    ));
    let native = arch_syscalls();
    if !native.is_empty() {
        syscalls.push(rule(native, Allow, Vec::new()));
    }
    for (cap, names) in BY_CAPABILITY {
        if bounding.contains(cap) {
            syscalls.push(rule(names, Allow, Vec::new()));
        }
    }
    if !bounding.contains(&Capability::SysAdmin) {
        // clone without namespace flags; on s390 the flags are argument 1.
        let flags_arg = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        let no_namespaces = arg(
            flags_arg,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
            Op::ScmpCmpMaskedEq,
        );
        syscalls.push(rule(&["clone"], Allow, vec![no_namespaces]));
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno, Vec::new());
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(None)
        .set_architectures(Some(architectures()))
        .set_flags(None)
        .set_syscalls(Some(syscalls));
    profile
}

#[cfg(test)]
#[allow(deprecated)] // seccomp_profile_path is deprecated, and tested here
mod tests {
    use super::super::capabilities::DEFAULT;
    use super::*;

    fn with_seccomp(
        kind: cri::security_profile::ProfileType,
        reference: &str,
    ) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: kind as i32,
                localhost_ref: reference.to_owned(),
            }),
            ..Default::default()
        }
    }

    fn with_path(path: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp_profile_path: path.to_owned(),
            ..Default::default()
        }
    }

    /// The action the profile takes for a syscall without argument rules.
    fn allows(profile: &LinuxSeccomp, name: &str) -> bool {
        profile.syscalls().iter().flatten().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActAllow
                && r.args().is_none()
                && r.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn profile_selection_table() {
        use cri::security_profile::ProfileType as T;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("block-chmod.json");
        std::fs::write(
            &file,
            r#"{ "defaultAction": "SCMP_ACT_ALLOW",
                 "syscalls": [ { "names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO" } ] }"#,
        )
        .expect("write profile");
        let file_str = file.to_str().expect("utf-8 path");
        let localhost = format!("localhost/{file_str}");

        // What each case wants: the profile's default action, or an error.
        type Want = Result<Option<LinuxSeccompAction>, String>;
        let default: Want = Ok(Some(LinuxSeccompAction::ScmpActErrno));
        let from_file: Want = Ok(Some(LinuxSeccompAction::ScmpActAllow));
        let none: Want = Ok(None);
        let error = |message: &str| -> Want { Err(message.to_owned()) };
        let privileged = cri::LinuxContainerSecurityContext {
            privileged: true,
            ..with_seccomp(T::Localhost, file_str)
        };
        let both = cri::LinuxContainerSecurityContext {
            seccomp_profile_path: "runtime/default".into(),
            ..with_seccomp(T::Unconfined, "")
        };
        let unknown_type = cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: 9,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        };
        let cases: Vec<(&str, cri::LinuxContainerSecurityContext, Want)> = vec![
            ("nothing: unconfined", Default::default(), none.clone()),
            ("RuntimeDefault", with_seccomp(T::RuntimeDefault, ""), default.clone()),
            ("Unconfined", with_seccomp(T::Unconfined, ""), none.clone()),
            ("Localhost", with_seccomp(T::Localhost, file_str), from_file.clone()),
            ("Localhost, prefixed", with_seccomp(T::Localhost, &localhost), from_file.clone()),
            ("privileged ignores Localhost", privileged, none.clone()),
            ("path runtime/default", with_path("runtime/default"), default.clone()),
            ("path docker/default", with_path("docker/default"), default.clone()),
            ("path unconfined", with_path("unconfined"), none.clone()),
            ("path localhost/", with_path(&localhost), from_file.clone()),
            ("seccomp wins over the path", both, none.clone()),
            (
                "path unknown",
                with_path("apparmor/x"),
                error("linux.security_context.seccomp_profile_path: unknown profile \"apparmor/x\""),
            ),
            (
                "reference without Localhost",
                with_seccomp(T::RuntimeDefault, file_str),
                error("linux.security_context.seccomp.localhost_ref: set, but the profile type is not Localhost"),
            ),
            (
                "relative reference",
                with_seccomp(T::Localhost, "profiles/x.json"),
                error("linux.security_context.seccomp.localhost_ref: \"profiles/x.json\" is not an absolute path"),
            ),
            (
                "unknown type",
                unknown_type,
                error("linux.security_context.seccomp.profile_type: unknown profile type 9"),
            ),
        ];
        for (name, sc, want) in cases {
            let got = resolve(&sc, &DEFAULT)
                .map(|p| p.map(|p| p.default_action()))
                .map_err(|e| e.to_string());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn localhost_profile_errors_name_the_file() {
        use cri::security_profile::ProfileType as T;
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.json");
        let err = resolve(
            &with_seccomp(T::Localhost, missing.to_str().expect("utf-8")),
            &DEFAULT,
        )
        .expect_err("missing file");
        let message = err.to_string();
        assert!(
            message.starts_with("linux.security_context.seccomp.localhost_ref: seccomp profile "),
            "{message}"
        );
        assert!(
            message.contains("missing.json: cannot read it"),
            "{message}"
        );

        let garbage = dir.path().join("garbage.json");
        std::fs::write(&garbage, "{ not json").expect("write");
        let err = resolve(
            &with_path(&format!("localhost/{}", garbage.display())),
            &DEFAULT,
        )
        .expect_err("garbage");
        assert!(
            err.to_string()
                .contains("garbage.json: not an OCI seccomp profile"),
            "{err}"
        );
        assert!(err.is_invalid_argument());
    }

    #[test]
    fn localhost_profiles_are_read_from_regular_files_of_bounded_size() {
        use cri::security_profile::ProfileType as T;
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_PROFILE_BYTES as usize + 1]).expect("write");
        for (path, why) in [
            (fifo.as_path(), "not a regular file"),
            (Path::new("/dev/zero"), "not a regular file"),
            (dir.path(), "not a regular file"),
            (big.as_path(), "larger than"),
        ] {
            let started = std::time::Instant::now();
            let err = resolve(
                &with_seccomp(T::Localhost, path.to_str().expect("utf-8")),
                &DEFAULT,
            )
            .expect_err("refused");
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            assert!(err.is_invalid_argument(), "{err}");
            assert!(err.to_string().contains(why), "{}: {err}", path.display());
        }
    }

    #[test]
    fn default_profile_depends_on_capabilities() {
        let plain = default_profile(&DEFAULT);
        assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(allows(&plain, "read"));
        assert!(allows(&plain, "ptrace"));
        assert!(
            allows(&plain, "chroot"),
            "CAP_SYS_CHROOT is a default capability"
        );
        for denied in [
            "sethostname",
            "mount",
            "unshare",
            "reboot",
            "bpf",
            "open_by_handle_at",
            "settimeofday",
        ] {
            assert!(
                !allows(&plain, denied),
                "{denied} must not be allowed without its capability"
            );
        }
        // clone is allowed only without namespace flags; clone3 gets ENOSYS.
        let rules = plain.syscalls().clone().unwrap_or_default();
        let clone = rules
            .iter()
            .find(|r| r.names() == &["clone".to_owned()])
            .expect("clone rule");
        let condition = clone
            .args()
            .as_ref()
            .and_then(|a| a.first().copied())
            .expect("clone arg");
        assert_eq!(condition.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(
            (condition.value(), condition.value_two()),
            (0x7e02_0000, Some(0))
        );
        let clone3 = rules
            .iter()
            .find(|r| r.names() == &["clone3".to_owned()])
            .expect("clone3 rule");
        assert_eq!(
            (clone3.action(), clone3.errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(38))
        );

        let admin = default_profile(&[Capability::SysAdmin, Capability::SysTime]);
        assert!(allows(&admin, "sethostname"));
        assert!(allows(&admin, "clone"));
        assert!(allows(&admin, "settimeofday"));
        assert!(!allows(&admin, "chroot"));
        assert!(!admin
            .syscalls()
            .iter()
            .flatten()
            .any(|r| r.names() == &["clone3".to_owned()]
                && r.action() == LinuxSeccompAction::ScmpActErrno));
    }

    #[test]
    fn default_profile_lists_are_sane() {
        let mut names: Vec<&str> = ALLOWED.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            ALLOWED.len(),
            "duplicate names in the allow-list"
        );
        for risky in [
            "mount",
            "sethostname",
            "kexec_load",
            "init_module",
            "ptrace_attach",
            "open_by_handle_at",
            "socket",
            "personality",
            "clone",
        ] {
            assert!(
                !ALLOWED.contains(&risky),
                "{risky} must not be unconditionally allowed"
            );
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                architectures(),
                [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
            );
        }
    }
}
