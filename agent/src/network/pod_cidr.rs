//! The node's pod CIDRs, as kubelet sends them with UpdateRuntimeConfig.
//!
//! kubelet calls UpdateRuntimeConfig with `network_config.pod_cidr` (one
//! CIDR, or an IPv4 and an IPv6 one separated by a comma) once the node has
//! its range. berth keeps the CIDRs in the store (table `node`, key
//! `pod_cidr`: `{"version":1,"cidrs":["10.1.0.0/24"]}`), so a restart keeps
//! them; `Status` shows them in its verbose info
//! (`runtimeConfig`: `{"podCIDRs":[...]}`); and a pod
//! network plugin that declares the `ipRanges` capability gets them as
//! `runtimeConfig.ipRanges`, one range set per CIDR
//! (`[[{"subnet":"10.1.0.0/24"}]]`), which `host-local` allocates from
//! instead of the ranges in its own config. A pod keeps the CIDRs it was
//! attached with (in its network record) for CHECK and DEL.
//!
//! An empty `pod_cidr` changes nothing, as in containerd: kubelet sends the
//! field only when it knows the node's range.

use crate::store::{Store, StoreError, Table};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::RwLock;

/// The request field, as errors name it.
pub const FIELD: &str = "runtime_config.network_config.pod_cidr";
/// The CNI capability the CIDRs are given to.
pub const CAPABILITY: &str = "ipRanges";
const KEY: &str = "pod_cidr";
const RECORD_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct PodCidrRecord {
    version: u32,
    cidrs: Vec<String>,
}

/// The pod CIDRs berthd knows: in memory, written through to the store.
#[derive(Debug, Default)]
pub struct PodCidrs {
    cidrs: RwLock<Vec<String>>,
}

impl PodCidrs {
    /// The CIDRs recorded in `store`; none when kubelet never sent any.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let record: Option<PodCidrRecord> = store.get(Table::Node, KEY)?;
        Ok(Self {
            cidrs: RwLock::new(record.map(|r| r.cidrs).unwrap_or_default()),
        })
    }

    /// The CIDRs, IPv4 and IPv6 as kubelet ordered them.
    pub fn get(&self) -> Vec<String> {
        self.cidrs
            .read()
            .expect("the pod CIDR lock is never poisoned")
            .clone()
    }

    /// Records `cidrs` (from [`parse`]) in the store, then in memory.
    pub fn set(&self, store: &Store, cidrs: Vec<String>) -> Result<(), StoreError> {
        let mut current = self
            .cidrs
            .write()
            .expect("the pod CIDR lock is never poisoned");
        if *current == cidrs {
            return Ok(());
        }
        let record = PodCidrRecord {
            version: RECORD_VERSION,
            cidrs,
        };
        store.put(Table::Node, KEY, &record)?;
        *current = record.cidrs;
        Ok(())
    }
}

/// The CIDRs of a `pod_cidr` field: comma-separated `address/prefix`
/// items, at most one per address family.
pub fn parse(text: &str) -> Result<Vec<String>> {
    let mut cidrs: Vec<String> = Vec::new();
    let mut families = Vec::new();
    for item in text.split(',').map(str::trim) {
        let invalid = |reason: String| Error::invalid(FIELD, format!("{item:?}: {reason}"));
        let (address, prefix) = item
            .split_once('/')
            .ok_or_else(|| invalid("is not a CIDR (address/prefix)".to_owned()))?;
        let address: IpAddr = address
            .parse()
            .map_err(|e| invalid(format!("bad address: {e}")))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| invalid(format!("the prefix length must be 0 to {max}")))?;
        if families.contains(&address.is_ipv4()) {
            return Err(invalid(
                "a second CIDR of the same address family".to_owned(),
            ));
        }
        families.push(address.is_ipv4());
        cidrs.push(format!("{address}/{prefix}"));
    }
    Ok(cidrs)
}

/// The `ipRanges` runtime config of `cidrs`: one range set per CIDR.
pub fn ip_ranges(cidrs: &[String]) -> Value {
    Value::Array(
        cidrs
            .iter()
            .map(|cidr| json!([{ "subnet": cidr }]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_dual_stack_cidrs_parse() {
        assert_eq!(parse("10.1.0.0/24").expect("v4"), ["10.1.0.0/24"]);
        assert_eq!(
            parse("10.1.0.0/24, fd00:10::/64").expect("dual"),
            ["10.1.0.0/24", "fd00:10::/64"]
        );
    }

    #[test]
    fn bad_cidrs_name_the_field_and_the_item() {
        for (text, says) in [
            ("10.1.0.0", "is not a CIDR"),
            ("10.1.0/24", "bad address"),
            ("10.1.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.1.0.0/24,10.2.0.0/24", "same address family"),
            ("10.1.0.0/24,", "is not a CIDR"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.starts_with(FIELD), "{text}: {err}");
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn ip_ranges_hold_one_range_set_per_cidr() {
        let ranges = ip_ranges(&["10.1.0.0/24".to_owned(), "fd00::/64".to_owned()]);
        assert_eq!(
            ranges,
            json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]])
        );
    }

    #[test]
    fn cidrs_survive_a_reopen_of_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let cidrs = PodCidrs::load(&store).expect("load");
            assert!(cidrs.get().is_empty());
            cidrs
                .set(&store, vec!["10.1.0.0/24".to_owned()])
                .expect("set");
            assert_eq!(cidrs.get(), ["10.1.0.0/24"]);
        }
        let store = Store::open(dir.path()).expect("reopen");
        let cidrs = PodCidrs::load(&store).expect("load");
        assert_eq!(cidrs.get(), ["10.1.0.0/24"]);
    }
}
