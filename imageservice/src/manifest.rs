//! Manifests and indexes: OCI image manifest and index, Docker schema 2
//! manifest and manifest list (which share the OCI JSON shape).
//!
//! Own minimal serde structs rather than `oci-spec`: they accept the Docker
//! media types and unknown fields, and keep a third-party crate's types out of
//! berth's API. Docker schema 1 is rejected (containerd 2.0 dropped it too).

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::platform::Platform;

/// Media types berth knows.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker schema 2 manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker schema 1 (signed or not): rejected.
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker schema 1, signed.
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// OCI layer, uncompressed tar.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI layer, gzip.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI layer, zstd.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker layer (gzip by name; containerd sniffs the real compression).
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker foreign layer (Windows base layers).
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// The `Accept` header for manifest requests, as containerd sends it.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json, */*";

    /// Whether `media_type` names a manifest or an index berth can parse.
    pub fn is_manifest(media_type: &str) -> bool {
        matches!(
            media_type,
            OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
        )
    }

    /// Whether `media_type` is an index or manifest list.
    pub fn is_index(media_type: &str) -> bool {
        matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
    }
}

/// A pointer to content: media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Descriptor {
    /// The content's media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The content's digest.
    pub digest: Digest,
    /// The content's size in bytes.
    pub size: u64,
    /// The platform, for index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Alternative locations (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ImageManifest {
    /// The media type the manifest was served or declared as.
    #[serde(skip)]
    pub media_type: String,
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ImageIndex {
    /// The media type the index was served or declared as.
    #[serde(skip)]
    pub media_type: String,
    /// The entries; choose one with [`crate::platform::PlatformMatcher::select`].
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image.
    Image(Box<ImageManifest>),
    /// A multi-platform index.
    Index(ImageIndex),
}

/// Manifest, index or image config content that berth cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON, or not the expected shape.
    #[error("invalid {what} {digest}: {source}")]
    Json {
        /// `manifest`, `index`, `image config`.
        what: &'static str,
        /// The content's digest.
        digest: Digest,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A media type berth does not handle.
    #[error("{what} {digest} has unsupported media type {media_type:?}{hint}")]
    UnsupportedMediaType {
        /// What kind of content.
        what: &'static str,
        /// The content's digest.
        digest: Digest,
        /// The media type.
        media_type: String,
        /// Extra advice.
        hint: &'static str,
    },
    /// The served media type and the `mediaType` field disagree.
    #[error("manifest {digest} was served as {served:?} but declares {declared:?}")]
    MediaTypeMismatch {
        /// The content's digest.
        digest: Digest,
        /// Content-Type or descriptor media type.
        served: String,
        /// The JSON's `mediaType`.
        declared: String,
    },
    /// `schemaVersion` is not 2.
    #[error("manifest {digest} has schemaVersion {version}, expected 2")]
    SchemaVersion {
        /// The content's digest.
        digest: Digest,
        /// The version found.
        version: i64,
    },
    /// No index entry matches the platform.
    #[error("no manifest in index {digest} matches platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The index digest.
        digest: Digest,
        /// The wanted platform.
        platform: String,
        /// The platforms the index has.
        available: String,
    },
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde::de::IgnoredAny>,
}

impl Manifest {
    /// Parses manifest or index `bytes` (whose digest is `digest`, for
    /// messages) served as `media_type` (the Content-Type or the descriptor's
    /// media type; may be empty or generic such as `application/json`, then
    /// the JSON's `mediaType` field or its shape decides).
    pub fn parse(
        media_type: &str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Manifest, ManifestError> {
        let json_err = |source| ManifestError::Json {
            what: "manifest",
            digest: digest.clone(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(json_err)?;
        let served = media_type.split(';').next().unwrap_or_default().trim();
        let declared = probe.media_type.as_str();
        if !served.is_empty()
            && !declared.is_empty()
            && media_type::is_manifest(served)
            && served != declared
        {
            return Err(ManifestError::MediaTypeMismatch {
                digest: digest.clone(),
                served: served.to_owned(),
                declared: declared.to_owned(),
            });
        }
        let effective = if media_type::is_manifest(served) {
            served
        } else if !declared.is_empty() {
            declared
        } else if probe.fs_layers.is_some() || probe.schema_version == Some(1) {
            media_type::DOCKER_SCHEMA1
        } else if probe.manifests.is_some() {
            media_type::OCI_INDEX
        } else if probe.config.is_some() {
            media_type::OCI_MANIFEST
        } else {
            served
        };
        if !media_type::is_manifest(effective) {
            let schema1 = matches!(
                effective,
                media_type::DOCKER_SCHEMA1 | media_type::DOCKER_SCHEMA1_SIGNED
            );
            return Err(ManifestError::UnsupportedMediaType {
                what: "manifest",
                digest: digest.clone(),
                media_type: effective.to_owned(),
                hint: if schema1 {
                    ": Docker schema 1 is no longer supported, rebuild the image as OCI or schema 2"
                } else {
                    ""
                },
            });
        }
        if let Some(version) = probe.schema_version.filter(|&v| v != 2) {
            return Err(ManifestError::SchemaVersion {
                digest: digest.clone(),
                version,
            });
        }
        if media_type::is_index(effective) {
            let mut index: ImageIndex = serde_json::from_slice(bytes).map_err(json_err)?;
            index.media_type = effective.to_owned();
            Ok(Manifest::Index(index))
        } else {
            let mut manifest: ImageManifest = serde_json::from_slice(bytes).map_err(json_err)?;
            manifest.media_type = effective.to_owned();
            Ok(Manifest::Image(Box::new(manifest)))
        }
    }
}

impl ImageIndex {
    /// The entry for `matcher`'s platform, or [`ManifestError::NoMatchingPlatform`]
    /// naming what the index offers. `digest` is this index's digest.
    pub fn select(
        &self,
        matcher: &crate::platform::PlatformMatcher,
        digest: &Digest,
    ) -> Result<&Descriptor, ManifestError> {
        matcher.select(&self.manifests).ok_or_else(|| {
            let available: Vec<String> = self
                .manifests
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or("(none)".to_owned(), |p| p.to_string())
                })
                .collect();
            ManifestError::NoMatchingPlatform {
                digest: digest.clone(),
                platform: matcher.wanted().to_string(),
                available: available.join(", "),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256(&[n])
    }

    fn oci_manifest() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":7}},
            "layers":[{{"mediaType":"{}","digest":"{}","size":100,"annotations":{{"a":"b"}}}},
                      {{"mediaType":"{}","digest":"{}","size":200}}],
            "unknownField":true}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            d(1),
            media_type::OCI_LAYER_GZIP,
            d(2),
            media_type::OCI_LAYER_ZSTD,
            d(3)
        )
    }

    #[test]
    fn parses_oci_manifest() {
        let text = oci_manifest();
        for served in [
            media_type::OCI_MANIFEST,
            "",
            "application/json; charset=utf-8",
        ] {
            let Manifest::Image(m) =
                Manifest::parse(served, &d(0), text.as_bytes()).expect("valid")
            else {
                panic!("not an image manifest");
            };
            assert_eq!(m.media_type, media_type::OCI_MANIFEST);
            assert_eq!(m.config.digest, d(1));
            assert_eq!(m.config.size, 7);
            assert_eq!(m.layers.len(), 2);
            assert_eq!(m.layers[0].annotations["a"], "b");
            assert_eq!(m.layers[1].media_type, media_type::OCI_LAYER_ZSTD);
        }
    }

    #[test]
    fn parses_docker_list_and_oci_index() {
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
                {{"mediaType":"{}","digest":"{}","size":527,"platform":{{"architecture":"amd64","os":"linux"}}}},
                {{"mediaType":"{}","digest":"{}","size":527,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#,
            media_type::DOCKER_MANIFEST_LIST,
            media_type::DOCKER_MANIFEST,
            d(1),
            media_type::DOCKER_MANIFEST,
            d(2)
        );
        let Manifest::Index(index) =
            Manifest::parse(media_type::DOCKER_MANIFEST_LIST, &d(0), list.as_bytes())
                .expect("valid")
        else {
            panic!("not an index");
        };
        assert_eq!(index.media_type, media_type::DOCKER_MANIFEST_LIST);
        let amd64 = crate::platform::PlatformMatcher::new(&Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Platform::default()
        });
        assert_eq!(index.select(&amd64, &d(0)).expect("amd64").digest, d(1));
        let s390x = crate::platform::PlatformMatcher::new(&Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            ..Platform::default()
        });
        let err = index
            .select(&s390x, &d(0))
            .expect_err("no s390x")
            .to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm/v7"),
            "{err}"
        );

        // An OCI index without mediaType, served as generic JSON: the shape decides.
        let oci = r#"{"schemaVersion":2,"manifests":[]}"#;
        let parsed =
            Manifest::parse("application/octet-stream", &d(0), oci.as_bytes()).expect("ok");
        assert!(matches!(parsed, Manifest::Index(i) if i.media_type == media_type::OCI_INDEX));
    }

    #[test]
    fn rejects_bad_manifests() {
        let text = oci_manifest();
        let cases: Vec<(&str, String, &str)> = vec![
            (media_type::OCI_INDEX, text.clone(), "served as"),
            ("", "{".into(), "invalid manifest"),
            (
                "",
                r#"{"schemaVersion":2,"config":{"digest":"sha256:1","size":1}}"#.into(),
                "invalid manifest",
            ),
            (
                media_type::DOCKER_SCHEMA1_SIGNED,
                r#"{"schemaVersion":1,"fsLayers":[]}"#.into(),
                "schema 1 is no longer supported",
            ),
            (
                "",
                r#"{"schemaVersion":1,"fsLayers":[]}"#.into(),
                "schema 1",
            ),
            (
                "",
                r#"{"schemaVersion":3,"manifests":[]}"#.into(),
                "schemaVersion 3",
            ),
            (
                "text/html",
                "{}".into(),
                "unsupported media type \"text/html\"",
            ),
        ];
        for (served, body, message) in cases {
            let err = Manifest::parse(served, &d(9), body.as_bytes())
                .expect_err(&body)
                .to_string();
            assert!(err.contains(message), "{body}: {err}");
            assert!(err.contains(&d(9).to_string()), "names the digest: {err}");
        }
    }
}
