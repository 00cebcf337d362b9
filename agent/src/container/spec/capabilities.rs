//! The container's capability set (bounding = effective = permitted).
//!
//! Start from the default set (containerd's and Docker's 14), then, as
//! containerd does: `add: ALL` takes every capability the host grants, `drop:
//! ALL` empties the set, and only then are the named capabilities added and
//! dropped, so `add: [ALL], drop: [CHOWN]` is "all but CHOWN" and `add:
//! [NET_ADMIN], drop: [ALL]` is "only NET_ADMIN". A privileged container gets
//! every capability the host grants, whatever it asked for.
//!
//! "Every capability" means berthd's own effective set ([`HostFacts`]
//! `::capabilities`), not every capability the kernel knows: a runtime
//! cannot grant what it lacks (on these machines root has no
//! `CAP_SYS_RESOURCE`), and containerd uses its own set for the same reason.
//!
//! Names may carry the `CAP_` prefix or not, in any case. An unknown name is
//! an error rather than being passed to the runtime.
//!
//! [`HostFacts`]: super::HostFacts

use super::SpecError;
use berth_proto::cri::v1 as cri;
use oci_spec::runtime::Capability;
use std::str::FromStr;

const FIELD_ADD: &str = "linux.security_context.capabilities.add_capabilities";
const FIELD_DROP: &str = "linux.security_context.capabilities.drop_capabilities";

/// The default capabilities of a container.
pub(crate) const DEFAULT: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Capabilities by their kernel number (`linux/capability.h`), to decode
/// the bitmaps of `/proc/<pid>/status`.
const BY_NUMBER: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The capabilities of a bitmap such as `CapEff` (bits the kernel added
/// after `CAP_CHECKPOINT_RESTORE` are ignored).
pub(crate) fn from_bitmap(bits: u64) -> Vec<Capability> {
    BY_NUMBER
        .iter()
        .enumerate()
        .filter(|(number, _)| bits & (1 << number) != 0)
        .map(|(_, cap)| *cap)
        .collect()
}

/// The capability set of a container; see the module doc. `host` is what
/// "all" means.
pub(crate) fn resolve(
    sc: &cri::LinuxContainerSecurityContext,
    host: &[Capability],
) -> Result<Vec<Capability>, SpecError> {
    if sc.privileged {
        return Ok(host.to_vec());
    }
    let mut caps = DEFAULT.to_vec();
    let Some(requested) = &sc.capabilities else {
        return Ok(caps);
    };
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    if requested.add_capabilities.iter().any(is_all) {
        caps = host.to_vec();
    }
    if requested.drop_capabilities.iter().any(is_all) {
        caps.clear();
    }
    for name in requested.add_capabilities.iter().filter(|n| !is_all(n)) {
        let cap = parse(FIELD_ADD, name)?;
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    for name in requested.drop_capabilities.iter().filter(|n| !is_all(n)) {
        let cap = parse(FIELD_DROP, name)?;
        caps.retain(|c| *c != cap);
    }
    Ok(caps)
}

fn parse(field: &'static str, name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| SpecError::UnknownCapability {
        field,
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn all() -> Vec<Capability> {
        BY_NUMBER.to_vec()
    }

    /// The host of these machines: everything but CAP_SYS_RESOURCE.
    fn host() -> Vec<Capability> {
        from_bitmap(0x1fffeffffff)
    }

    fn request(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| (*s).to_owned()).collect(),
                drop_capabilities: drop.iter().map(|s| (*s).to_owned()).collect(),
                add_ambient_capabilities: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn set(caps: impl IntoIterator<Item = Capability>) -> HashSet<Capability> {
        caps.into_iter().collect()
    }

    #[test]
    fn bitmap_of_this_machine_lacks_sys_resource() {
        let caps = host();
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&Capability::SysResource));
        assert!(caps.contains(&Capability::CheckpointRestore));
        assert_eq!(from_bitmap(u64::MAX).len(), 41);
        assert_eq!(from_bitmap(0), []);
    }

    #[test]
    fn capability_table() {
        let without = |caps: Vec<Capability>, gone: &[Capability]| {
            set(caps.into_iter().filter(|c| !gone.contains(c)))
        };
        let cases: Vec<(
            &str,
            cri::LinuxContainerSecurityContext,
            HashSet<Capability>,
        )> = vec![
            ("no request: defaults", Default::default(), set(DEFAULT)),
            (
                "add one, drop one",
                request(&["NET_ADMIN", "cap_sys_admin"], &["CHOWN"]),
                without(
                    DEFAULT
                        .into_iter()
                        .chain([Capability::NetAdmin, Capability::SysAdmin])
                        .collect(),
                    &[Capability::Chown],
                ),
            ),
            (
                "add ALL is the host's set",
                request(&["ALL"], &[]),
                set(host()),
            ),
            (
                "add ALL then drop one",
                request(&["ALL"], &["CHOWN"]),
                without(host(), &[Capability::Chown]),
            ),
            ("drop ALL empties", request(&[], &["ALL"]), set([])),
            (
                "drop ALL keeps the ones added by name",
                request(&["NET_RAW"], &["all"]),
                set([Capability::NetRaw]),
            ),
            (
                "privileged ignores the request",
                cri::LinuxContainerSecurityContext {
                    privileged: true,
                    ..request(&[], &["ALL"])
                },
                set(host()),
            ),
        ];
        for (name, sc, want) in cases {
            let got = resolve(&sc, &host()).expect(name);
            assert_eq!(set(got), want, "{name}");
        }
        assert_eq!(set(all()).len(), 41);
    }

    #[test]
    fn unknown_capability_names_the_field() {
        let err = resolve(&request(&["NET_ADMIN", "FLY"], &[]), &host()).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "linux.security_context.capabilities.add_capabilities: unknown capability \"FLY\""
        );
        let err = resolve(&request(&[], &["CAP_NOPE"]), &host()).expect_err("unknown");
        assert!(err.to_string().starts_with(FIELD_DROP));
    }
}
