//! The image config (OCI `application/vnd.oci.image.config.v1+json`, Docker
//! `application/vnd.docker.container.image.v1+json`: the same JSON) and
//! chain IDs.
//!
//! JSON `null` is accepted wherever a list or map is expected (Go writes
//! nil slices as `null`). `Entrypoint` and `Cmd` keep `None` apart from an
//! empty list, because the CRI distinguishes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::digest::Digest;
use crate::manifest::ManifestError;

/// An image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// `architecture`.
    #[serde(default)]
    pub architecture: String,
    /// `os`.
    #[serde(default)]
    pub os: String,
    /// `variant`.
    #[serde(default)]
    pub variant: Option<String>,
    /// `created` (RFC 3339), as written.
    #[serde(default)]
    pub created: Option<String>,
    /// `author`.
    #[serde(default)]
    pub author: Option<String>,
    /// The container defaults.
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerConfig,
    /// `rootfs`.
    pub rootfs: RootFs,
    /// `history`.
    #[serde(default, deserialize_with = "null_default")]
    pub history: Vec<History>,
}

/// The defaults a container of the image starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `User`: `uid`, `name`, `uid:gid`, `name:group`.
    #[serde(default)]
    pub user: Option<String>,
    /// `Env`: `KEY=value`.
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `StopSignal`: `SIGTERM`, `15`.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `Volumes`: the paths.
    #[serde(default, deserialize_with = "map_keys")]
    pub volumes: Vec<String>,
    /// `ExposedPorts`: `80/tcp`.
    #[serde(default, deserialize_with = "map_keys")]
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// `rootfs`: the uncompressed layer digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    /// `type`, always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digest of each layer's uncompressed tar, base first.
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct History {
    /// `created`.
    #[serde(default)]
    pub created: Option<String>,
    /// `created_by`.
    #[serde(default)]
    pub created_by: Option<String>,
    /// `author`.
    #[serde(default)]
    pub author: Option<String>,
    /// `comment`.
    #[serde(default)]
    pub comment: Option<String>,
    /// `empty_layer`: this step made no layer.
    #[serde(default)]
    pub empty_layer: bool,
}

fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn map_keys<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let map: Option<BTreeMap<String, serde::de::IgnoredAny>> = Option::deserialize(deserializer)?;
    Ok(map.map(|m| m.into_keys().collect()).unwrap_or_default())
}

impl ImageConfig {
    /// Parses config `bytes` whose digest is `digest` (for messages).
    pub fn parse(digest: &Digest, bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "image config",
            digest: digest.clone(),
            source,
        })
    }

    /// The chain ID of each layer (see the free function `chain_ids`).
    pub fn chain_ids(&self) -> Vec<Digest> {
        chain_ids(&self.rootfs.diff_ids)
    }
}

/// Chain IDs, the snapshot keys: the first is the first diff ID, each next
/// one `sha256(parent_chain_id + " " + diff_id)` (OCI image spec, config.md).
pub(crate) fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const B: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    #[test]
    fn parses_docker_config() {
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
            "config":{{"User":"1000:1000","Env":["PATH=/bin","A=b"],"Entrypoint":null,"Cmd":["sh"],
                "WorkingDir":"/w","StopSignal":"SIGWINCH","Volumes":{{"/data":{{}},"/cache":{{}}}},
                "ExposedPorts":{{"80/tcp":{{}}}},"Labels":{{"k":"v"}},"Hostname":"ignored"}},
            "container_config":{{"Cmd":["ignored"]}},
            "rootfs":{{"type":"layers","diff_ids":["{A}","{B}"]}},
            "history":[{{"created_by":"ADD file"}},{{"created_by":"ENV A=b","empty_layer":true}}]}}"#
        );
        let config = ImageConfig::parse(&Digest::sha256(b"x"), json.as_bytes()).expect("valid");
        assert_eq!(config.architecture, "amd64");
        let c = &config.config;
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.env, ["PATH=/bin", "A=b"]);
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.cmd, Some(vec!["sh".to_owned()]));
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGWINCH"));
        assert_eq!(c.volumes, ["/cache", "/data"]);
        assert_eq!(c.exposed_ports, ["80/tcp"]);
        assert_eq!(c.labels["k"], "v");
        assert_eq!(config.rootfs.kind, "layers");
        assert_eq!(config.rootfs.diff_ids.len(), 2);
        assert!(config.history[1].empty_layer);
        assert_eq!(config.history[0].created_by.as_deref(), Some("ADD file"));
    }

    #[test]
    fn tolerates_nulls_and_missing() {
        let json = r#"{"config":null,"rootfs":{"type":"layers","diff_ids":null},"history":null}"#;
        let config = ImageConfig::parse(&Digest::sha256(b"x"), json.as_bytes()).expect("valid");
        assert_eq!(config.config, ContainerConfig::default());
        assert!(config.rootfs.diff_ids.is_empty());
        let json = r#"{"config":{"Env":null,"Volumes":null,"Labels":null,"Cmd":[]},"rootfs":{}}"#;
        let config = ImageConfig::parse(&Digest::sha256(b"x"), json.as_bytes()).expect("valid");
        assert_eq!(config.config.cmd, Some(Vec::new()));
    }

    #[test]
    fn rejects_bad_config() {
        let digest = Digest::sha256(b"x");
        for json in [
            "{}",
            r#"{"rootfs":{"diff_ids":["sha256:00"]}}"#,
            r#"{"rootfs":{},"config":{"Env":"A=b"}}"#,
        ] {
            let err = ImageConfig::parse(&digest, json.as_bytes())
                .expect_err(json)
                .to_string();
            assert!(
                err.starts_with(&format!("invalid image config {digest}")),
                "{err}"
            );
        }
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a: Digest = A.parse().expect("digest");
        let b: Digest = B.parse().expect("digest");
        assert!(chain_ids(&[]).is_empty());
        // Computed independently with sha256sum:
        //   C=$(printf '%s' "$A $B" | sha256sum); printf '%s' "sha256:$C $A" | sha256sum
        let expected = [
            a.clone(),
            "sha256:71dec89dc33c1a1cd5f73cd1e0885ec74b73b03fb9d5a98fddb6486563565072"
                .parse()
                .expect("digest"),
            "sha256:6ce63e42bcb01bc5db0fa83359c7f44d4a85d4f9dc0d8c225a7264a999912ec8"
                .parse()
                .expect("digest"),
        ];
        assert_eq!(chain_ids(&[a.clone(), b, a]), expected);
    }
}
