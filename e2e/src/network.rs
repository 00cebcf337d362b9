//! A CNI network of its own for each harness berthd: its own bridge
//! (`berth-e2e<N>`), its own /24 of 10.88.0.0/16 and its own host-local
//! data dir, so that two runs (or a bridge an earlier run left behind)
//! never share state; the bridge is deleted when the [`Network`] is dropped.
//!
//! `N` is claimed with a file under [`CLAIMS`] that holds the claiming PID;
//! a claim whose process is gone is taken over. No masquerading and no
//! route off the machine: the pods reach the host's bridge and each other.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the claims of network numbers live (one file per number).
pub const CLAIMS: &str = "/run/berth-e2e/networks";
/// The CNI network name of every harness network.
pub const NAME: &str = "berth-e2e";

/// A claimed network number with its bridge, conf and IPAM directories.
#[derive(Debug)]
pub struct Network {
    number: u8,
    claim: PathBuf,
    ipam_dir: PathBuf,
}

impl Network {
    /// Claims a free network number; host-local keeps its reservations in
    /// `ipam_dir`.
    pub fn claim(ipam_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(CLAIMS).map_err(|e| format!("{CLAIMS}: {e}"))?;
        let addresses = host_ipv4_addresses();
        for number in 1..=254u8 {
            let claim = Path::new(CLAIMS).join(number.to_string());
            if !take_claim(&claim)? {
                continue;
            }
            let network = Self {
                number,
                claim,
                ipam_dir: ipam_dir.to_owned(),
            };
            // Ours now: a bridge of that name is a leftover of a dead run.
            network.delete_bridge();
            let prefix = format!("10.88.{number}.");
            if addresses.iter().any(|a| a.starts_with(&prefix)) {
                // Another user of the range on this host: leave it alone.
                continue;
            }
            return Ok(network);
        }
        Err(format!("no free network number under {CLAIMS}"))
    }

    /// The bridge this network's pods attach to.
    pub fn bridge(&self) -> String {
        format!("berth-e2e{}", self.number)
    }

    /// The subnet, `10.88.N.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.88.{}.0/24", self.number)
    }

    /// The CNI conflist of this network.
    pub fn conflist(&self) -> String {
        self.conflist_json().to_string()
    }

    /// The conflist of a network whose addresses come from the node's pod
    /// CIDR: the bridge plugin declares the `ipRanges` capability and
    /// host-local has no range of its own, so a pod gets an address only
    /// once a client (kubelet) has sent the CIDR with UpdateRuntimeConfig.
    pub fn pod_cidr_conflist(&self) -> String {
        let mut list = self.conflist_json();
        let bridge = &mut list["plugins"][0];
        bridge["capabilities"] = serde_json::json!({ "ipRanges": true });
        bridge["ipam"]
            .as_object_mut()
            .expect("the bridge plugin has an ipam object")
            .remove("ranges");
        list.to_string()
    }

    fn conflist_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NAME,
            "plugins": [
                {
                    "type": "bridge", "bridge": self.bridge(), "isGateway": true,
                    "ipMasq": false, "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": self.subnet(),
                            "gateway": format!("10.88.{}.1", self.number),
                        }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": self.ipam_dir,
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
    }

    /// Writes the conflist into `conf_dir` as `10-berth-e2e.conflist`.
    pub fn write_conf(&self, conf_dir: &Path) -> Result<(), String> {
        self.write_conflist(conf_dir, &self.conflist())
    }

    /// Writes [`Network::pod_cidr_conflist`] as [`Network::write_conf`] does.
    pub fn write_pod_cidr_conf(&self, conf_dir: &Path) -> Result<(), String> {
        self.write_conflist(conf_dir, &self.pod_cidr_conflist())
    }

    fn write_conflist(&self, conf_dir: &Path, conflist: &str) -> Result<(), String> {
        std::fs::create_dir_all(conf_dir).map_err(|e| format!("{}: {e}", conf_dir.display()))?;
        let path = conf_dir.join("10-berth-e2e.conflist");
        std::fs::write(&path, conflist).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// What the pods of this network left: interfaces still on the bridge
    /// (their veths) and addresses host-local still holds.
    pub fn leaks(&self) -> Vec<String> {
        let bridge = self.bridge();
        let mut found: Vec<String> =
            names_in(&Path::new("/sys/class/net").join(&bridge).join("brif"))
                .into_iter()
                .map(|i| format!("interface {i} on bridge {bridge}"))
                .collect();
        found.extend(
            names_in(&self.ipam_dir.join(NAME))
                .into_iter()
                .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
                .map(|ip| format!("IP {ip} reserved in {}", self.ipam_dir.display())),
        );
        found
    }

    fn delete_bridge(&self) {
        let bridge = self.bridge();
        if Path::new("/sys/class/net").join(&bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &bridge])
                .stdin(Stdio::null())
                .status();
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.delete_bridge();
        let _ = std::fs::remove_file(&self.claim);
    }
}

/// Creates the claim file with our PID; takes over a claim whose PID is
/// dead. False when a live process holds it.
fn take_claim(claim: &Path) -> Result<bool, String> {
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(claim)
        {
            Ok(mut file) => {
                write!(file, "{}", std::process::id())
                    .map_err(|e| format!("{}: {e}", claim.display()))?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(claim).unwrap_or_default();
                let alive = holder
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                // An empty file is a claim being written right now.
                if alive || holder.is_empty() {
                    return Ok(false);
                }
                let _ = std::fs::remove_file(claim);
            }
            Err(e) => return Err(format!("{}: {e}", claim.display())),
        }
    }
    Ok(false)
}

/// The IPv4 addresses on the host's interfaces, as text.
fn host_ipv4_addresses() -> Vec<String> {
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .stdin(Stdio::null())
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_owned)
        })
        .collect()
}

/// The entry names of a directory (none when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_cidr_conflist_declares_ip_ranges_and_has_no_range_of_its_own() {
        let network = Network {
            number: 7,
            claim: PathBuf::from("/nonexistent/claim"),
            ipam_dir: PathBuf::from("/x/ipam"),
        };
        let plain: serde_json::Value = serde_json::from_str(&network.conflist()).expect("JSON");
        let cidr: serde_json::Value =
            serde_json::from_str(&network.pod_cidr_conflist()).expect("JSON");
        assert_eq!(
            plain["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.88.7.0/24"
        );
        assert!(plain["plugins"][0].get("capabilities").is_none());
        assert_eq!(cidr["plugins"][0]["capabilities"]["ipRanges"], true);
        assert!(cidr["plugins"][0]["ipam"].get("ranges").is_none());
        assert_eq!(cidr["plugins"][0]["ipam"]["dataDir"], "/x/ipam");
        assert_eq!(cidr["plugins"][1], plain["plugins"][1]);
        // Not a claim of ours: dropping it must not delete another's bridge.
        std::mem::forget(network);
    }

    #[test]
    fn claims_are_taken_once_and_taken_over_from_dead_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let claim = dir.path().join("7");
        assert!(take_claim(&claim).expect("claim"));
        assert_eq!(
            std::fs::read_to_string(&claim).expect("read"),
            std::process::id().to_string()
        );
        // Held by a live process (us): not ours to take.
        assert!(!take_claim(&claim).expect("claim"));
        // Held by a PID that does not exist: taken over.
        std::fs::write(&claim, "0").expect("write");
        assert!(take_claim(&claim).expect("claim"));
    }
}
