//! Platforms (`linux/arm64/v8`) and choosing one from an index, the way
//! containerd's `platforms.Default()` does (github.com/containerd/platforms,
//! `compare.go`, `database.go`).
//!
//! Values are normalised before comparison: `x86_64` is `amd64` (variant
//! `v1` dropped), `aarch64` is `arm64` (variant `v8` dropped), `armhf` is
//! `arm/v7`, `arm` without variant is `arm/v7`. The host platform also
//! accepts older ones, best first: `amd64/vN` then `vN-1` … `v1`, then `386`;
//! `arm/vN` then down to `v5`; `arm64/v8.x` then `v8.(x-1)` … `v8`, then
//! `arm/v8` … `arm/v5`. Index entries without a platform match, after all
//! the others; among equals the first entry in the index wins.

use std::fs;

use crate::manifest::Descriptor;

/// An OCI platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// CPU architecture, GOARCH style: `amd64`, `arm64`.
    pub architecture: String,
    /// Operating system, GOOS style: `linux`.
    pub os: String,
    /// `os.version` (Windows only in practice).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    /// `os.features`.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant: `v7`, `v8`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// The platform berth runs on, with the ARM variant from `/proc/cpuinfo`.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "x86" => ("386", ""),
            "aarch64" => ("arm64", ""),
            "arm" => ("arm", "cpuinfo"),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", ""),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", ""),
            "mips" if cfg!(target_endian = "little") => ("mipsle", ""),
            "loongarch64" => ("loong64", ""),
            other => (other, ""),
        };
        let variant = if variant == "cpuinfo" {
            fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|text| arm_variant(&text))
                .unwrap_or_default()
        } else {
            variant.to_owned()
        };
        Platform {
            architecture: architecture.to_owned(),
            os: std::env::consts::OS.to_owned(),
            variant,
            ..Platform::default()
        }
        .normalize()
    }

    /// The canonical form used for comparisons.
    pub fn normalize(&self) -> Platform {
        let os = match self.os.to_lowercase().as_str() {
            "" => std::env::consts::OS.to_owned(),
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let arch = self.architecture.to_lowercase();
        let variant = self.variant.to_lowercase();
        let (architecture, variant) = match arch.as_str() {
            "i386" => ("386".to_owned(), String::new()),
            "x86_64" | "x86-64" | "amd64" => (
                "amd64".to_owned(),
                if variant == "v1" {
                    String::new()
                } else {
                    variant
                },
            ),
            "aarch64" | "arm64" => (
                "arm64".to_owned(),
                match variant.as_str() {
                    "8" | "v8" | "v8.0" => String::new(),
                    "9" | "9.0" | "v9.0" => "v9".to_owned(),
                    _ => variant,
                },
            ),
            "armhf" => ("arm".to_owned(), "v7".to_owned()),
            "armel" => ("arm".to_owned(), "v6".to_owned()),
            "arm" => (
                "arm".to_owned(),
                match variant.as_str() {
                    "" | "7" => "v7".to_owned(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                },
            ),
            _ => (arch, variant),
        };
        Platform {
            architecture,
            os,
            variant,
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// `CPU architecture: 7` in `/proc/cpuinfo` -> `v7`.
fn arm_variant(cpuinfo: &str) -> Option<String> {
    let value = cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("cpu architecture")
            .then(|| value.trim().to_owned())
    })?;
    Some(match value.as_str() {
        "AArch64" => "v8".to_owned(),
        v if v.len() == 1 && v.as_bytes()[0].is_ascii_digit() => format!("v{v}"),
        _ => "unknown".to_owned(),
    })
}

/// Matches and ranks platforms against a wanted one (`platforms.Only`).
#[derive(Debug, Clone)]
pub struct PlatformMatcher {
    wanted: Platform,
    /// Acceptable platforms, normalised, best first.
    vector: Vec<Platform>,
}

impl PlatformMatcher {
    /// Accepts `platform` and the platforms that can run on it.
    pub fn new(platform: &Platform) -> PlatformMatcher {
        PlatformMatcher {
            wanted: platform.normalize(),
            vector: platform_vector(platform.normalize())
                .into_iter()
                .map(|p| p.normalize())
                .collect(),
        }
    }

    /// The matcher for [`Platform::host`].
    pub fn host() -> PlatformMatcher {
        PlatformMatcher::new(&Platform::host())
    }

    /// The platform asked for, normalised.
    pub fn wanted(&self) -> &Platform {
        &self.wanted
    }

    /// Whether `platform` can run here.
    pub fn matches(&self, platform: &Platform) -> bool {
        self.rank(platform).is_some()
    }

    /// The best of `candidates` (an index's `manifests`), or `None`.
    pub fn select<'a>(&self, candidates: &'a [Descriptor]) -> Option<&'a Descriptor> {
        candidates
            .iter()
            .filter_map(|d| match &d.platform {
                None => Some((usize::MAX, d)),
                Some(p) => self.rank(p).map(|rank| (rank, d)),
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
    }

    fn rank(&self, platform: &Platform) -> Option<usize> {
        let p = platform.normalize();
        self.vector.iter().position(|want| {
            want.os == p.os
                && want.architecture == p.architecture
                && want.variant == p.variant
                && p.os_features.iter().all(|f| want.os_features.contains(f))
        })
    }
}

fn sibling(p: &Platform, architecture: &str, variant: String) -> Platform {
    Platform {
        architecture: architecture.to_owned(),
        variant,
        ..p.clone()
    }
}

/// containerd's `platformVector`.
fn platform_vector(p: Platform) -> Vec<Platform> {
    let version = |prefix_trimmed: &str| {
        prefix_trimmed
            .strip_prefix('v')
            .and_then(|v| v.parse::<u32>().ok())
    };
    let mut vector = vec![p.clone()];
    match p.architecture.as_str() {
        "amd64" => {
            if let Some(v) = version(&p.variant).filter(|&v| v > 1) {
                vector.extend((1..v).rev().map(|n| sibling(&p, "amd64", format!("v{n}"))));
            }
            vector.push(sibling(&p, "386", String::new()));
        }
        "arm" => {
            if let Some(v) = version(&p.variant).filter(|&v| v > 5) {
                vector.extend((5..v).rev().map(|n| sibling(&p, "arm", format!("v{n}"))));
            }
        }
        "arm64" => {
            let variant = if p.variant.is_empty() {
                "v8".to_owned()
            } else {
                p.variant.clone()
            };
            vector.clear();
            // An unknown arm64 variant matches nothing, as in containerd.
            let Some((majors, minors)) = arm64_versions(&variant) else {
                return vector;
            };
            for (major, minor) in majors.iter().zip(minors) {
                for m in (0..=minor).rev() {
                    let v = if m == 0 {
                        format!("v{major}")
                    } else {
                        format!("v{major}.{m}")
                    };
                    vector.push(sibling(&p, "arm64", v));
                }
            }
            let arm = if variant.starts_with("v8") || variant.starts_with("v9") {
                "v8".to_owned()
            } else {
                variant
            };
            vector.extend(platform_vector(sibling(&p, "arm", arm)));
        }
        _ => {}
    }
    vector
}

/// containerd's `arm64variantToVersion`.
fn arm64_versions(variant: &str) -> Option<(Vec<u32>, Vec<u32>)> {
    let (major, minor) = match variant.strip_prefix('v')?.split_once('.') {
        Some((major, minor)) => (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?),
        None => (variant[1..].parse::<u32>().ok()?, 0),
    };
    match (major, minor) {
        (8, 0..=9) => Some((vec![8], vec![minor])),
        (9, 0..=7) => Some((vec![9, 8], vec![minor, (minor + 5).min(9)])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Platform {
        let mut parts = text.split('/');
        Platform {
            os: parts.next().unwrap_or_default().to_owned(),
            architecture: parts.next().unwrap_or_default().to_owned(),
            variant: parts.next().unwrap_or_default().to_owned(),
            ..Platform::default()
        }
    }

    #[test]
    fn normalizes() {
        let cases = [
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v9.0", "linux/arm64/v9"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("Linux/AMD64", "linux/amd64"),
            ("macos/arm64", "darwin/arm64"),
        ];
        for (input, expected) in cases {
            assert_eq!(p(input).normalize().to_string(), expected, "{input}");
        }
    }

    #[test]
    fn matching_rules() {
        // wanted, candidate, matches
        let cases = [
            ("linux/amd64", "linux/amd64", true),
            ("linux/amd64", "linux/x86_64", true),
            ("linux/amd64", "linux/amd64/v1", true),
            ("linux/amd64", "linux/386", true),
            ("linux/amd64", "linux/amd64/v2", false),
            ("linux/amd64/v3", "linux/amd64/v2", true),
            ("linux/amd64", "linux/arm64", false),
            ("linux/amd64", "windows/amd64", false),
            ("linux/arm64", "linux/arm64/v8", true),
            ("linux/arm64", "linux/arm64", true),
            ("linux/arm64", "linux/arm/v7", true),
            ("linux/arm64", "linux/arm/v8", true),
            ("linux/arm64", "linux/arm64/v8.1", false),
            ("linux/arm64/v8.2", "linux/arm64/v8.1", true),
            ("linux/arm64/v9", "linux/arm64/v8.5", true),
            ("linux/arm64/v9", "linux/arm64/v8.6", false),
            ("linux/arm/v7", "linux/arm/v6", true),
            ("linux/arm/v7", "linux/arm/v5", true),
            ("linux/arm/v6", "linux/arm/v7", false),
            ("linux/arm", "linux/armhf", true),
            ("linux/s390x", "linux/s390x", true),
            ("linux/ppc64le", "linux/ppc64", false),
        ];
        for (wanted, candidate, expected) in cases {
            let matcher = PlatformMatcher::new(&p(wanted));
            assert_eq!(
                matcher.matches(&p(candidate)),
                expected,
                "{wanted} runs {candidate}"
            );
        }
    }

    fn descriptor(platform: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: crate::manifest::media_type::OCI_MANIFEST.to_owned(),
            digest: crate::Digest::sha256(&[n]),
            size: 1,
            platform: platform.map(p),
            urls: Vec::new(),
            annotations: Default::default(),
        }
    }

    #[test]
    fn selects_best_then_first() {
        let index = [
            descriptor(Some("linux/arm/v7"), 0),
            descriptor(None, 1),
            descriptor(Some("linux/386"), 2),
            descriptor(Some("linux/amd64"), 3),
            descriptor(Some("linux/amd64"), 4),
            descriptor(Some("unknown/unknown"), 5),
        ];
        let amd64 = PlatformMatcher::new(&p("linux/amd64"));
        assert_eq!(amd64.select(&index), Some(&index[3]));
        assert_eq!(
            amd64.select(&index[..3]),
            Some(&index[2]),
            "386 before no platform"
        );
        assert_eq!(
            amd64.select(&index[..2]),
            Some(&index[1]),
            "no platform matches last"
        );
        let arm64 = PlatformMatcher::new(&p("linux/arm64"));
        assert_eq!(arm64.select(&index), Some(&index[0]));
        assert_eq!(arm64.select(&index[2..]), None);
        let s390x = PlatformMatcher::new(&p("linux/s390x"));
        assert_eq!(s390x.select(&[descriptor(Some("linux/amd64"), 9)]), None);
    }

    #[test]
    fn host_is_linux_and_runs_itself() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(PlatformMatcher::host().matches(&host));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
    }

    #[test]
    fn cpuinfo_variant() {
        assert_eq!(
            arm_variant("processor\t: 0\nCPU architecture: 7\n"),
            Some("v7".into())
        );
        assert_eq!(
            arm_variant("CPU architecture: AArch64\n"),
            Some("v8".into())
        );
        assert_eq!(arm_variant("model name: x\n"), None);
    }

    #[test]
    fn serde_names() {
        let json = r#"{"architecture":"arm64","os":"linux","os.features":["a"],"variant":"v8"}"#;
        let platform: Platform = serde_json::from_str(json).expect("valid");
        assert_eq!(platform.variant, "v8");
        assert_eq!(platform.os_features, ["a"]);
        assert_eq!(serde_json::to_string(&platform).expect("serialize"), json);
    }
}
