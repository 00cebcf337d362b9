//! A pod's network interfaces, read from `/proc/thread-self/net/dev` on a
//! throw-away thread that joined the pod's network namespace (berth pins
//! the namespace without a process in it, so there may be no pid to read
//! `/proc/<pid>/net/dev` of; `/sys/class/net` shows the namespace sysfs was
//! mounted in, not the thread's).

use crate::network::netns::{run_in_network_namespace, NamespaceError};
use std::path::{Path, PathBuf};

/// The counters of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Why a pod's interfaces could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetworkStatsError {
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("cannot read /proc/thread-self/net/dev in network namespace {netns}: {source}")]
    Read {
        netns: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse /proc/net/dev line {line:?}")]
    Parse { line: String },
}

/// The interfaces of the network namespace pinned at `netns`.
pub fn read(netns: &Path) -> Result<Vec<InterfaceStats>, NetworkStatsError> {
    let text = run_in_network_namespace(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })?
    .map_err(|source| NetworkStatsError::Read {
        netns: netns.to_owned(),
        source,
    })?;
    parse(&text)
}

/// Parses `/proc/net/dev`: two header lines, then `name: ` and 16
/// counters, 8 received (bytes, packets, errs, drop, fifo, frame,
/// compressed, multicast) and 8 sent (bytes, packets, errs, drop, fifo,
/// colls, carrier, compressed).
pub fn parse(text: &str) -> Result<Vec<InterfaceStats>, NetworkStatsError> {
    text.lines()
        .skip(2)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let bad = || NetworkStatsError::Parse {
                line: line.to_owned(),
            };
            let (name, counters) = line.split_once(':').ok_or_else(bad)?;
            let counters: Vec<u64> = counters
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            if counters.len() < 16 {
                return Err(bad());
            }
            Ok(InterfaceStats {
                name: name.trim().to_owned(),
                rx_bytes: counters[0],
                rx_packets: counters[1],
                rx_errors: counters[2],
                rx_dropped: counters[3],
                tx_bytes: counters[8],
                tx_packets: counters[9],
                tx_errors: counters[10],
                tx_dropped: counters[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded in a pod's namespace on this project's development machine.
    const DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0: 1048576     731    3    1    0     0          0         0    52310     402    2    4    0     0       0          0
";

    #[test]
    fn parses_proc_net_dev() {
        let interfaces = parse(DEV).expect("parses");
        assert_eq!(interfaces.len(), 2);
        assert_eq!(
            interfaces[1],
            InterfaceStats {
                name: "eth0".to_owned(),
                rx_bytes: 1_048_576,
                rx_packets: 731,
                rx_errors: 3,
                rx_dropped: 1,
                tx_bytes: 52_310,
                tx_packets: 402,
                tx_errors: 2,
                tx_dropped: 4,
            }
        );
        assert_eq!(interfaces[0].name, "lo");
        assert!(parse("h\nh\n  eth0: 1 2 3\n").is_err(), "too few counters");
        assert!(parse("h\nh\n  eth0 1 2\n").is_err(), "no colon");
    }

    #[test]
    fn reads_inside_a_pinned_namespace() {
        use crate::network::netns::{create, remove, NamespaceKind};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("netns");
        create(NamespaceKind::Network, &path).expect("pin a network namespace");
        let interfaces = read(&path);
        remove(&path).expect("unpin");
        let names: Vec<String> = interfaces
            .expect("read")
            .into_iter()
            .map(|i| i.name)
            .collect();
        // A new namespace holds only its loopback, whatever the host has.
        assert_eq!(names, vec!["lo".to_owned()]);
    }
}
