//! The files a pod gives its containers: `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf` and a sized `/dev/shm`.
//!
//! They live in the sandbox's state directory and are bind-mounted into
//! every container of the pod (see `container::PodFiles`). Each file is
//! written to a temporary name and renamed, so a crash never leaves a
//! half-written one.

use berth_proto::cri::v1 as cri;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The default size of a pod's `/dev/shm`, as Docker and containerd use.
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Why a pod file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the host's {path}: {source}")]
    ReadHost {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount the pod's /dev/shm at {path}: {source}")]
    Shm { path: PathBuf, source: nix::Error },
    #[error("dns_config.{field}: {message}")]
    Dns {
        field: &'static str,
        message: String,
    },
}

/// The paths of a pod's files inside its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFilePaths {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub shm: PathBuf,
}

impl PodFilePaths {
    pub fn under(dir: &Path) -> Self {
        Self {
            hostname: dir.join("hostname"),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            shm: dir.join("shm"),
        }
    }
}

/// The `/etc/hosts` of a pod in its own network namespace; kubelet adds
/// the pod's own entries through its managed hosts file when it wants them.
pub fn hosts_file() -> String {
    "127.0.0.1\tlocalhost\n\
     ::1\tlocalhost ip6-localhost ip6-loopback\n\
     fe00::0\tip6-localnet\n\
     fe00::0\tip6-mcastprefix\n\
     fe00::1\tip6-allnodes\n\
     fe00::2\tip6-allrouters\n"
        .to_owned()
}

/// `resolv.conf` from the pod's DNS config; `None` when the pod gives no
/// DNS config, in which case the host's file is used.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<Option<String>, FilesError> {
    let Some(dns) = dns else {
        return Ok(None);
    };
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return Ok(None);
    }
    for server in &dns.servers {
        if server.parse::<std::net::IpAddr>().is_err() {
            return Err(FilesError::Dns {
                field: "servers",
                message: format!("{server:?} is not an IP address"),
            });
        }
    }
    for (field, values) in [("searches", &dns.searches), ("options", &dns.options)] {
        if let Some(bad) = values
            .iter()
            .find(|v| v.is_empty() || v.contains(char::is_whitespace))
        {
            return Err(FilesError::Dns {
                field,
                message: format!("{bad:?} is empty or contains white space"),
            });
        }
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(Some(text))
}

/// The mode of the pod's hostname, hosts and resolv.conf: the container's
/// user, whoever it is, reads them through their bind mounts.
const POD_FILE_MODE: u32 = 0o644;

/// Writes `contents` to `path` through a temporary file and a rename; the
/// file gets exactly `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FilesError> {
    use std::os::unix::fs::PermissionsExt;
    let error = |source| FilesError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.as_file().sync_all().map_err(error)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(error)?;
    file.persist(path).map_err(|e| error(e.error))?;
    Ok(())
}

/// Writes the pod's hostname, hosts and resolv.conf files.
pub fn write_pod_files(
    paths: &PodFilePaths,
    hostname: &str,
    host_network: bool,
    dns: Option<&cri::DnsConfig>,
) -> Result<(), FilesError> {
    write_atomic(
        &paths.hostname,
        format!("{hostname}\n").as_bytes(),
        POD_FILE_MODE,
    )?;
    // A host-network pod sees the host's names, as with containerd.
    let hosts = if host_network {
        read_host(Path::new("/etc/hosts"))?
    } else {
        hosts_file()
    };
    write_atomic(&paths.hosts, hosts.as_bytes(), POD_FILE_MODE)?;
    let resolv = match resolv_conf(dns)? {
        Some(text) => text,
        None => read_host(Path::new("/etc/resolv.conf"))?,
    };
    write_atomic(&paths.resolv_conf, resolv.as_bytes(), POD_FILE_MODE)
}

fn read_host(path: &Path) -> Result<String, FilesError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        // A host without the file gives the pod an empty one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(FilesError::ReadHost {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Mounts a tmpfs of `size` bytes at `path` (created if missing) for the
/// pod's `/dev/shm`.
pub fn mount_shm(path: &Path, size: u64) -> Result<(), FilesError> {
    std::fs::create_dir_all(path).map_err(|source| FilesError::Write {
        path: path.to_owned(),
        source,
    })?;
    let options = format!("mode=1777,size={size}");
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|source| FilesError::Shm {
        path: path.to_owned(),
        source,
    })
}

/// Unmounts the pod's `/dev/shm`; an unmounted or missing one is fine.
pub fn unmount_shm(path: &Path) -> Result<(), FilesError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(FilesError::Shm {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> cri::DnsConfig {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        cri::DnsConfig {
            servers: owned(servers),
            searches: owned(searches),
            options: owned(options),
        }
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let text = resolv_conf(Some(&dns(
            &["10.0.0.10", "fd00::a"],
            &["default.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5", "timeout:2"],
        )))
        .expect("valid")
        .expect("some");
        assert_eq!(
            text,
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.0.0.10\nnameserver fd00::a\n\
             options ndots:5 timeout:2\n"
        );
    }

    #[test]
    fn no_dns_config_means_the_hosts_file() {
        assert_eq!(resolv_conf(None).expect("ok"), None);
        assert_eq!(resolv_conf(Some(&dns(&[], &[], &[]))).expect("ok"), None);
    }

    #[test]
    fn bad_dns_values_name_the_field() {
        let err = resolv_conf(Some(&dns(&["not-an-ip"], &[], &[]))).expect_err("bad server");
        assert!(err.to_string().starts_with("dns_config.servers:"), "{err}");
        let err = resolv_conf(Some(&dns(&[], &["a b"], &[]))).expect_err("bad search");
        assert!(err.to_string().starts_with("dns_config.searches:"), "{err}");
    }

    #[test]
    fn pod_files_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = PodFilePaths::under(dir.path());
        write_pod_files(&paths, "web-0", false, Some(&dns(&["1.1.1.1"], &[], &[]))).expect("write");
        assert_eq!(
            std::fs::read_to_string(&paths.hostname).expect("read"),
            "web-0\n"
        );
        assert!(std::fs::read_to_string(&paths.hosts)
            .expect("read")
            .starts_with("127.0.0.1\tlocalhost\n"));
        assert_eq!(
            std::fs::read_to_string(&paths.resolv_conf).expect("read"),
            "nameserver 1.1.1.1\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&paths.hosts)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn shm_is_a_sized_tmpfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shm = dir.path().join("shm");
        mount_shm(&shm, 16 * 1024 * 1024).expect("mount (tests run as root)");
        let stat = nix::sys::statvfs::statvfs(&shm).expect("statvfs");
        let size = stat.blocks() * stat.fragment_size();
        assert_eq!(size, 16 * 1024 * 1024);
        unmount_shm(&shm).expect("unmount");
        unmount_shm(&shm).expect("twice is fine");
        let table = berth_mount::mountinfo::read_self().expect("mountinfo");
        assert_eq!(berth_mount::mountinfo::under(&table, &shm).count(), 0);
    }
}
