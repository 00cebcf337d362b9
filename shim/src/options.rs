//! Which OCI runtime the shim drives, and how.
//!
//! The agent chooses per container in `CreateTaskRequest.options`: an `Any`
//! holding containerd's `containerd.runc.v1.Options` (type URL
//! `containerd.runc.v1.Options`, with or without a host prefix), the message
//! containerd's runc shims take. Fields berth reads:
//!
//! - `binary_name`: the runtime, a name looked up in `PATH` or an absolute
//!   path; empty means `runc`. `crun` selects crun.
//! - `root`: the runtime's state directory (`--root`); empty means
//!   `/run/berth/runc/<namespace>`.
//! - `systemd_cgroup`, `no_pivot_root`, `no_new_keyring`: the runtime flags
//!   of the same names.
//!
//! The other fields (`shim_cgroup`, `io_uid`, `io_gid`, CRIU paths, task API
//! fields) are ignored. No options at all means all defaults. `create`
//! persists the result as `options.json` in the bundle, so the `delete`
//! action can still find the runtime after the shim died.

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::Options;
use serde::{Deserialize, Serialize};

use crate::bundle;
use crate::error::{Error, Result};

/// The type of `CreateTaskRequest.options` berth accepts.
pub const OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

const DEFAULT_BINARY: &str = "runc";
const DEFAULT_ROOT: &str = "/run/berth/runc";
const VERSION: u32 = 1;

/// The runtime settings of one container, as persisted in `options.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    pub version: u32,
    pub binary_name: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    /// Whether the shim mounted `CreateTaskRequest.rootfs` on
    /// `<bundle>/rootfs`, and so unmounts it on delete.
    pub mounted_rootfs: bool,
}

impl RuntimeOptions {
    pub fn defaults(namespace: &str) -> Self {
        Self {
            version: VERSION,
            binary_name: DEFAULT_BINARY.to_string(),
            root: Path::new(DEFAULT_ROOT).join(namespace),
            systemd_cgroup: false,
            no_pivot_root: false,
            no_new_keyring: false,
            mounted_rootfs: false,
        }
    }

    /// Reads the task options of a create request.
    pub fn from_any(any: Option<&Any>, namespace: &str) -> Result<Self> {
        let mut options = Self::defaults(namespace);
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(options);
        };
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        if name != OPTIONS_TYPE {
            return Err(Error::InvalidArgument(format!(
                "task options of type {:?}: berth takes {OPTIONS_TYPE}",
                any.type_url
            )));
        }
        let o = Options::parse_from_bytes(&any.value).map_err(|source| Error::Decode {
            what: OPTIONS_TYPE,
            source,
        })?;
        if !o.binary_name.is_empty() {
            options.binary_name = o.binary_name;
        }
        if !o.root.is_empty() {
            options.root = PathBuf::from(o.root);
        }
        options.systemd_cgroup = o.systemd_cgroup;
        options.no_pivot_root = o.no_pivot_root;
        options.no_new_keyring = o.no_new_keyring;
        Ok(options)
    }

    pub fn write(&self, bundle: &Path) -> Result<()> {
        bundle::write_json(&bundle.join(bundle::OPTIONS), self)
    }

    pub fn read(bundle: &Path) -> Result<Option<Self>> {
        bundle::read_json(&bundle.join(bundle::OPTIONS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, o: &Options) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: o.write_to_bytes().expect("encode"),
            ..Default::default()
        }
    }

    #[test]
    fn reads_task_options() {
        let crun = Options {
            binary_name: "crun".into(),
            root: "/run/x".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        let defaults = RuntimeOptions::defaults("k8s.io");
        let cases = [
            ("none", None, Ok(defaults.clone())),
            ("empty any", Some(Any::default()), Ok(defaults.clone())),
            (
                "bare type name",
                Some(any(OPTIONS_TYPE, &crun)),
                Ok(RuntimeOptions {
                    binary_name: "crun".into(),
                    root: "/run/x".into(),
                    systemd_cgroup: true,
                    ..defaults.clone()
                }),
            ),
            (
                "host-prefixed type",
                Some(any(
                    "type.googleapis.com/containerd.runc.v1.Options",
                    &Options::default(),
                )),
                Ok(defaults.clone()),
            ),
            (
                "other type",
                Some(any("x.Other", &crun)),
                Err("berth takes"),
            ),
        ];
        for (name, input, want) in cases {
            let got = RuntimeOptions::from_any(input.as_ref(), "k8s.io");
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(defaults.root, Path::new("/run/berth/runc/k8s.io"));
        assert_eq!(defaults.binary_name, "runc");
    }

    #[test]
    fn round_trips_in_the_bundle() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(RuntimeOptions::read(dir.path()).expect("read"), None);
        let mut o = RuntimeOptions::defaults("ns");
        o.mounted_rootfs = true;
        o.write(dir.path()).expect("write");
        assert_eq!(RuntimeOptions::read(dir.path()).expect("read"), Some(o));
    }
}
