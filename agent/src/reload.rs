//! SIGHUP: applying a re-read configuration to a running berthd.
//!
//! Only what can change under running pods and calls in flight is applied
//! ([`RELOADABLE`]): the log level (by `main.rs`, which owns the log
//! subscriber), the registry hosts directory, the node's registry auth
//! file and the pinned images (through
//! [`berth_imageservice::Images::reload`]), and the CNI configuration
//! directory (read by the next RunPodSandbox and Status). Every other key
//! that differs is logged as needing a restart and keeps its running value,
//! so the effective configuration ([`Runtime::effective_config`]) is always
//! one that berthd really runs with. Nothing is stopped and the socket
//! stays bound: a reload never drops a connection.

use crate::config::Config;
use crate::runtime::Runtime;
use crate::Result;
use std::sync::Arc;

/// The keys a reload applies; every other key needs a restart.
pub const RELOADABLE: [&str; 5] = [
    "log.level",
    "registry.config_path",
    "registry.auth_file",
    "cni.conf_dir",
    "image.pinned_images",
];

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Keys whose new value is now in effect.
    pub applied: Vec<String>,
    /// Keys that changed in the file but keep their running value until
    /// berthd restarts.
    pub need_restart: Vec<String>,
}

/// Applies the reloadable keys of `new` to `runtime` and reports what
/// changed. `new` has been validated by [`Config::validate`].
pub async fn apply(runtime: &Runtime, new: &Config) -> Result<Outcome> {
    let current = runtime.effective_config();
    let next = Arc::new(with_reloadable(&current, new));
    let outcome = Outcome {
        applied: changed_keys(&current, &next),
        need_restart: changed_keys(&next, new),
    };
    if current.registry != next.registry || current.image.pinned_images != next.image.pinned_images
    {
        runtime
            .images
            .reload(
                Some(next.registry.config_path.clone()),
                next.registry.auth_file(),
                &next.image.pinned_images,
            )
            .await?;
    }
    runtime.set_effective_config(next);
    Ok(outcome)
}

/// `current` with the [`RELOADABLE`] keys taken from `new`.
fn with_reloadable(current: &Config, new: &Config) -> Config {
    let mut next = current.clone();
    next.log.level.clone_from(&new.log.level);
    next.registry
        .config_path
        .clone_from(&new.registry.config_path);
    next.registry.auth_file.clone_from(&new.registry.auth_file);
    next.cni.conf_dir.clone_from(&new.cni.conf_dir);
    next.image
        .pinned_images
        .clone_from(&new.image.pinned_images);
    next
}

/// The full keys (`cni.conf_dir`, `runtime.handlers.kata.shim`) whose
/// values differ between `a` and `b`, in key order. A table present in one
/// only counts as its leaf keys.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let a = toml::Value::try_from(a).expect("the config is plain data");
    let b = toml::Value::try_from(b).expect("the config is plain data");
    let mut keys = Vec::new();
    diff("", Some(&a), Some(&b), &mut keys);
    keys
}

fn diff(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, keys: &mut Vec<String>) {
    use toml::Value::Table;
    let empty = toml::Table::new();
    match (a, b) {
        (Some(Table(_)), _) | (_, Some(Table(_))) => {
            let a = match a {
                Some(Table(t)) => t,
                _ => &empty,
            };
            let b = match b {
                Some(Table(t)) => t,
                _ => &empty,
            };
            let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                diff(&key, a.get(name), b.get(name), keys);
            }
        }
        (a, b) if a != b => keys.push(prefix.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn reloadable_keys_are_applied_and_the_others_need_a_restart() {
        let current = Config::default();
        let mut new = Config::default();
        new.log.level = "debug".to_owned();
        new.cni.conf_dir = PathBuf::from("/etc/cni/other.d");
        new.registry.config_path = PathBuf::from("/etc/berth/mirrors.d");
        new.registry.auth_file = PathBuf::from("/etc/berth/auth.json");
        new.image.pinned_images = vec!["registry.k8s.io/pause:3.10".to_owned()];
        new.grpc.socket = PathBuf::from("/run/other.sock");
        new.runtime.handlers.remove("crun");
        let next = with_reloadable(&current, &new);
        assert_eq!(changed_keys(&current, &next), RELOADABLE_SORTED.to_vec());
        assert_eq!(
            changed_keys(&next, &new),
            vec!["grpc.socket", "runtime.handlers.crun.runtime_path"]
        );
        assert!(changed_keys(&next, &next).is_empty());
    }

    /// [`RELOADABLE`] in key order.
    const RELOADABLE_SORTED: [&str; 5] = [
        "cni.conf_dir",
        "image.pinned_images",
        "log.level",
        "registry.auth_file",
        "registry.config_path",
    ];

    #[test]
    fn every_reloadable_key_is_a_config_key() {
        let mut sorted = RELOADABLE.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, RELOADABLE_SORTED);
        let config = toml::Value::try_from(Config::default()).expect("plain data");
        for key in RELOADABLE {
            let found = key
                .split('.')
                .try_fold(&config, |value, part| value.get(part));
            assert!(found.is_some(), "{key} is not a config key");
        }
    }
}
