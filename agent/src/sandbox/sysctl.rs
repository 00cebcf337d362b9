//! Pod sysctls, set inside the pod's own namespaces.
//!
//! Only namespaced sysctls can belong to a pod (the kernel scopes them to a
//! namespace, so setting one cannot touch the host): `net.*` lives in the
//! network namespace; `kernel.shm*`, `kernel.msg*`, `kernel.sem` and
//! `fs.mqueue.*` in the IPC namespace (Kubernetes' list, as kubelet
//! validates it). Each is written to `/proc/sys/...` on a throw-away thread
//! that joined the namespace ([`netns::run_in_namespace`]). A sysctl of a
//! namespace the pod shares with the host is refused, as is any other name.
//!
//! Names use `.` or `/` as separators (`net.ipv4.ip_forward`,
//! `net/ipv4/conf/eth0.100/rp_filter`); with a `/` the dots are part of the
//! components, as in sysctl(8).

use super::SandboxError;
use crate::network::netns::{self, NamespaceKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which namespace a sysctl belongs to; `None` for a sysctl that is not
/// namespaced (or not known to be).
pub fn namespace_of(name: &str) -> Option<NamespaceKind> {
    let dotted = name.replace('/', ".");
    if dotted.starts_with("net.") {
        return Some(NamespaceKind::Network);
    }
    let ipc = dotted == "kernel.sem"
        || dotted.starts_with("kernel.shm")
        || dotted.starts_with("kernel.msg")
        || dotted.starts_with("fs.mqueue.");
    ipc.then_some(NamespaceKind::Ipc)
}

/// The file of a sysctl under `/proc/sys`, or `None` for a malformed name.
pub fn proc_path(name: &str) -> Option<PathBuf> {
    let components: Vec<&str> = if name.contains('/') {
        name.split('/').collect()
    } else {
        name.split('.').collect()
    };
    let bad = |c: &&str| {
        c.is_empty()
            || *c == "."
            || *c == ".."
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_-.:".contains(ch))
    };
    if components.len() < 2 || components.iter().any(bad) {
        return None;
    }
    Some(Path::new("/proc/sys").join(components.join("/")))
}

/// Checks the pod's sysctls against its namespaces; returns the reason for
/// the first one that cannot be set, as `(name, reason)`.
pub fn validate(
    sysctls: &HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<(), (String, String)> {
    let mut names: Vec<&String> = sysctls.keys().collect();
    names.sort();
    for name in names {
        if proc_path(name).is_none() {
            return Err((name.clone(), "is not a valid sysctl name".to_owned()));
        }
        match namespace_of(name) {
            None => {
                return Err((
                    name.clone(),
                    "is not a namespaced sysctl, so a pod cannot set it".to_owned(),
                ))
            }
            Some(NamespaceKind::Network) if host_network => {
                return Err((
                    name.clone(),
                    "is in the network namespace, which this pod shares with the host".to_owned(),
                ))
            }
            Some(NamespaceKind::Ipc) if host_ipc => {
                return Err((
                    name.clone(),
                    "is in the IPC namespace, which this pod shares with the host".to_owned(),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Sets validated sysctls inside the pod's network and IPC namespaces.
pub fn apply(
    sysctls: &HashMap<String, String>,
    netns: Option<&Path>,
    ipcns: Option<&Path>,
) -> Result<(), SandboxError> {
    for kind in [NamespaceKind::Network, NamespaceKind::Ipc] {
        let ns = match kind {
            NamespaceKind::Network => netns,
            _ => ipcns,
        };
        let batch: Vec<(String, PathBuf, String)> = sysctls
            .iter()
            .filter(|(name, _)| namespace_of(name) == Some(kind))
            .filter_map(|(name, value)| Some((name.clone(), proc_path(name)?, value.clone())))
            .collect();
        if batch.is_empty() {
            continue;
        }
        let Some(ns) = ns else {
            // validate() refuses these; never write the host's values.
            let (name, path, _) = batch.into_iter().next().expect("not empty");
            return Err(SandboxError::Sysctl {
                name,
                path,
                source: std::io::Error::other("the pod shares this namespace with the host"),
            });
        };
        let written = netns::run_in_namespace(kind, ns, move || {
            for (name, path, value) in batch {
                if let Err(source) = std::fs::write(&path, value.as_bytes()) {
                    return Err(SandboxError::Sysctl { name, path, source });
                }
            }
            Ok(())
        })?;
        written?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_sysctls() {
        for (name, want) in [
            ("net.ipv4.ip_forward", Some(NamespaceKind::Network)),
            (
                "net/ipv4/conf/eth0.100/rp_filter",
                Some(NamespaceKind::Network),
            ),
            ("kernel.shm_rmid_forced", Some(NamespaceKind::Ipc)),
            ("kernel.shmmax", Some(NamespaceKind::Ipc)),
            ("kernel.msgmax", Some(NamespaceKind::Ipc)),
            ("kernel.sem", Some(NamespaceKind::Ipc)),
            ("fs.mqueue.msg_max", Some(NamespaceKind::Ipc)),
            ("kernel.hostname", None),
            ("vm.swappiness", None),
            ("kernel.semx", None),
        ] {
            assert_eq!(namespace_of(name), want, "{name}");
        }
    }

    #[test]
    fn proc_paths() {
        assert_eq!(
            proc_path("net.ipv4.ip_forward").as_deref(),
            Some(Path::new("/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/rp_filter").as_deref(),
            Some(Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"))
        );
        for bad in [
            "", "net", "net..x", "net/../x", "net.a b", "/net/x", "net.x/",
        ] {
            assert_eq!(proc_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn validation_names_the_sysctl() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            validate(&map(&[("kernel.shm_rmid_forced", "1")]), false, false),
            Ok(())
        );
        let (name, reason) =
            validate(&map(&[("net.ipv4.ip_forward", "1")]), true, false).expect_err("host net");
        assert_eq!(name, "net.ipv4.ip_forward");
        assert!(reason.contains("network namespace"), "{reason}");
        assert!(validate(&map(&[("fs.mqueue.msg_max", "1")]), false, true).is_err());
        assert!(validate(&map(&[("vm.swappiness", "1")]), false, false).is_err());
        assert!(validate(&map(&[("net..x", "1")]), false, false).is_err());
    }

    #[test]
    fn sysctls_land_in_the_pod_namespaces_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = dir.path().join("net");
        let ipc = dir.path().join("ipc");
        netns::create(NamespaceKind::Network, &net).expect("netns");
        netns::create(NamespaceKind::Ipc, &ipc).expect("ipcns");
        let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
        let host_rmid = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").expect("read");
        let wanted_forward = if host_forward.trim() == "1" { "0" } else { "1" };
        let wanted_rmid = if host_rmid.trim() == "1" { "0" } else { "1" };
        let sysctls: HashMap<String, String> = [
            ("net.ipv4.ip_forward".to_owned(), wanted_forward.to_owned()),
            ("kernel.shm_rmid_forced".to_owned(), wanted_rmid.to_owned()),
        ]
        .into();
        apply(&sysctls, Some(&net), Some(&ipc)).expect("apply");
        let inside = netns::run_in_namespace(NamespaceKind::Network, &net, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read")
        })
        .expect("inside");
        assert_eq!(inside.trim(), wanted_forward);
        let inside = netns::run_in_namespace(NamespaceKind::Ipc, &ipc, || {
            std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").expect("read")
        })
        .expect("inside");
        assert_eq!(inside.trim(), wanted_rmid);
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read"),
            host_forward,
            "the host is untouched"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").expect("read"),
            host_rmid
        );
        let err = apply(&sysctls, None, Some(&ipc)).expect_err("no netns");
        assert!(err.to_string().contains("net.ipv4.ip_forward"), "{err}");
        netns::remove(&net).expect("remove");
        netns::remove(&ipc).expect("remove");
    }
}
