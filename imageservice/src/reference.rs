//! Image references, normalised the way docker and containerd do.
//!
//! Grammar (distribution/reference, `reference.go`):
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] path-component ['/' path-component]*
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | '[' IPv6address ']'
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! path-component   := /[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" hex       (checked by [`Digest`])
//! ```
//!
//! Normalisation (`ParseNormalizedNamed`): the first path element is a
//! registry only if it contains `.` or `:`, is `localhost`, or has an upper
//! case letter; otherwise the registry is `docker.io`, and a one-element
//! docker.io path gets `library/`. `index.docker.io` becomes `docker.io`. A
//! reference without tag or digest gets the tag `latest`. A reference with
//! both keeps both; it is pulled by digest. The full name is at most 255
//! bytes.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

const DEFAULT_REGISTRY: &str = "docker.io";
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A normalised image reference: `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A reference that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The rejected reference, as given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// The registry host, with port if any: `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry: `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the reference named neither tag nor
    /// digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The CRI "repo tag", `docker.io/library/busybox:latest`, if the
    /// reference has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}:{tag}", self.name()))
    }

    /// The CRI "repo digest" of this name with `digest` (normally the digest
    /// of the manifest or index that the reference resolved to):
    /// `docker.io/library/busybox@sha256:…`.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What `/v2/<name>/manifests/<object>` names: the digest if there is
    /// one, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// Docker's short form: `busybox:latest`, `gcr.io/x/y:1`.
    pub fn familiar(&self) -> String {
        let mut out = if self.registry == DEFAULT_REGISTRY {
            match self.repository.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_owned(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        };
        self.push_suffix(&mut out);
        out
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input).map_err(|reason| ReferenceError {
            reference: input.to_owned(),
            reason,
        })
    }
}

fn parse(input: &str) -> Result<Reference, String> {
    if input.is_empty() {
        return Err("repository name must have at least one component".into());
    }
    if input.len() == 64
        && input
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("cannot specify 64-byte hexadecimal strings".into());
    }
    let (name_tag, digest) = match input.split_once('@') {
        Some((name_tag, digest)) => {
            let digest = digest.parse::<Digest>().map_err(|e| e.reason.to_owned())?;
            (name_tag, Some(digest))
        }
        None => (input, None),
    };
    // A ':' after the last '/' starts the tag; an earlier one is a port.
    let (name, tag) = match name_tag.rfind(':') {
        Some(colon) if name_tag.rfind('/').is_none_or(|slash| colon > slash) => {
            (&name_tag[..colon], Some(&name_tag[colon + 1..]))
        }
        _ => (name_tag, None),
    };
    if name.is_empty() {
        return Err("repository name must have at least one component".into());
    }
    let (mut registry, mut repository) = split_docker_domain(name);
    if repository.to_lowercase() != repository {
        return Err(format!("repository name ({repository}) must be lowercase"));
    }
    if !valid_domain(&registry) {
        return Err(format!("invalid registry host {registry:?}"));
    }
    if registry == LEGACY_DEFAULT_REGISTRY {
        registry = DEFAULT_REGISTRY.to_owned();
    }
    if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        repository = format!("{OFFICIAL_REPO_PREFIX}{repository}");
    }
    if let Some(bad) = repository.split('/').find(|c| !valid_path_component(c)) {
        return Err(format!(
            "invalid path component {bad:?}: lower-case letters and digits, separated by '.', '_', '__' or dashes"
        ));
    }
    if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(format!(
            "repository name must not be longer than {NAME_TOTAL_LENGTH_MAX} characters"
        ));
    }
    let tag = match tag {
        Some(tag) if !valid_tag(tag) => {
            return Err(format!(
                "invalid tag {tag:?}: up to {TAG_MAX} of letters, digits, '_', '.', '-', not starting with '.' or '-'"
            ));
        }
        Some(tag) => Some(tag.to_owned()),
        None if digest.is_none() => Some("latest".to_owned()),
        None => None,
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// distribution/reference `splitDockerDomain`.
fn split_docker_domain(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
    }
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = domain.starts_with('[')
        || (!host.is_empty()
            && host.split('.').all(|c| {
                let bytes = c.as_bytes();
                !bytes.is_empty()
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                    && bytes[0] != b'-'
                    && bytes[bytes.len() - 1] != b'-'
            }));
    port_ok && host_ok
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' if b.get(i + 1) == Some(&b'_') => i += 2,
            b'_' => i += 1,
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "6e9f67fde26a5a7a5f3c5b0a5d8e7f9a6b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e";

    #[test]
    fn normalises() {
        let d = format!("sha256:{HEX}");
        // input, Display, repo_tag, familiar
        let cases: Vec<(String, String, Option<String>, String)> = vec![
            (
                "busybox".into(),
                "docker.io/library/busybox:latest".into(),
                Some("docker.io/library/busybox:latest".into()),
                "busybox:latest".into(),
            ),
            (
                "busybox:1.36".into(),
                "docker.io/library/busybox:1.36".into(),
                Some("docker.io/library/busybox:1.36".into()),
                "busybox:1.36".into(),
            ),
            (
                "library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
                Some("docker.io/library/busybox:latest".into()),
                "busybox:latest".into(),
            ),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
                Some("docker.io/library/busybox:latest".into()),
                "busybox:latest".into(),
            ),
            (
                "index.docker.io/foo/bar:v1".into(),
                "docker.io/foo/bar:v1".into(),
                Some("docker.io/foo/bar:v1".into()),
                "foo/bar:v1".into(),
            ),
            (
                "gcr.io/x/y".into(),
                "gcr.io/x/y:latest".into(),
                Some("gcr.io/x/y:latest".into()),
                "gcr.io/x/y:latest".into(),
            ),
            (
                "host:5000/a/b:tag".into(),
                "host:5000/a/b:tag".into(),
                Some("host:5000/a/b:tag".into()),
                "host:5000/a/b:tag".into(),
            ),
            (
                "localhost/x".into(),
                "localhost/x:latest".into(),
                Some("localhost/x:latest".into()),
                "localhost/x:latest".into(),
            ),
            (
                "localhost:5000/x".into(),
                "localhost:5000/x:latest".into(),
                Some("localhost:5000/x:latest".into()),
                "localhost:5000/x:latest".into(),
            ),
            (
                "localhost:5000".into(),
                "docker.io/library/localhost:5000".into(),
                Some("docker.io/library/localhost:5000".into()),
                "localhost:5000".into(),
            ),
            (
                "127.0.0.1:5000/bench/multiarch:1".into(),
                "127.0.0.1:5000/bench/multiarch:1".into(),
                Some("127.0.0.1:5000/bench/multiarch:1".into()),
                "127.0.0.1:5000/bench/multiarch:1".into(),
            ),
            (
                "[::1]:5000/a:b".into(),
                "[::1]:5000/a:b".into(),
                Some("[::1]:5000/a:b".into()),
                "[::1]:5000/a:b".into(),
            ),
            (
                "Foo/bar".into(),
                "Foo/bar:latest".into(),
                Some("Foo/bar:latest".into()),
                "Foo/bar:latest".into(),
            ),
            (
                format!("busybox@{d}"),
                format!("docker.io/library/busybox@{d}"),
                None,
                format!("busybox@{d}"),
            ),
            (
                format!("registry.k8s.io/pause:3.9@{d}"),
                format!("registry.k8s.io/pause:3.9@{d}"),
                Some("registry.k8s.io/pause:3.9".into()),
                format!("registry.k8s.io/pause:3.9@{d}"),
            ),
            ("a/b__c/d-_x".into(), String::new(), None, String::new()),
            (
                "x/a.b-c__d---e_f:_T.t-1".into(),
                "docker.io/x/a.b-c__d---e_f:_T.t-1".into(),
                Some("docker.io/x/a.b-c__d---e_f:_T.t-1".into()),
                "x/a.b-c__d---e_f:_T.t-1".into(),
            ),
        ];
        for (input, display, repo_tag, familiar) in cases {
            let parsed = input.parse::<Reference>();
            if display.is_empty() {
                assert!(parsed.is_err(), "{input} should be rejected");
                continue;
            }
            let reference = parsed.unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(reference.to_string(), display, "{input}");
            assert_eq!(reference.repo_tag(), repo_tag, "{input}");
            assert_eq!(reference.familiar(), familiar, "{input}");
            assert_eq!(
                display.parse::<Reference>().as_ref(),
                Ok(&reference),
                "Display of {input} parses back to the same reference"
            );
        }
    }

    #[test]
    fn parts_and_object() {
        let d: Digest = format!("sha256:{HEX}").parse().expect("digest");
        let r: Reference = "registry.k8s.io/pause:3.9".parse().expect("valid");
        assert_eq!(r.registry(), "registry.k8s.io");
        assert_eq!(r.repository(), "pause");
        assert_eq!(r.tag(), Some("3.9"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.object(), "3.9");
        assert_eq!(r.repo_digest(&d), format!("registry.k8s.io/pause@{d}"));

        let both: Reference = format!("busybox:1@{d}").parse().expect("valid");
        assert_eq!(both.tag(), Some("1"));
        assert_eq!(both.digest(), Some(&d));
        assert_eq!(both.object(), d.to_string(), "pulled by digest");
        assert_eq!(both.name(), "docker.io/library/busybox");
    }

    #[test]
    fn rejects_malformed() {
        let long = format!("a/{}", "b".repeat(250));
        let long_tag = format!("busybox:{}", "t".repeat(129));
        let cases = [
            ("", "at least one component"),
            (HEX, "64-byte hexadecimal"),
            ("Busybox", "must be lowercase"),
            ("docker.io/Library/busybox", "must be lowercase"),
            ("busybox:", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("busybox:.x", "invalid tag"),
            ("busybox:a+b", "invalid tag"),
            (long_tag.as_str(), "invalid tag"),
            ("busybox@sha256:abc", "wrong length"),
            (
                "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
                "unsupported",
            ),
            ("busybox@", "missing ':'"),
            (":tag", "at least one component"),
            ("a//b", "invalid path component"),
            ("a/b/", "invalid path component"),
            ("a..b", "invalid path component"),
            ("a___b", "invalid path component"),
            ("a-_b", "invalid path component"),
            ("-a", "invalid path component"),
            ("a b", "invalid path component"),
            ("host:port/a", "invalid registry host"),
            ("host:/a", "invalid registry host"),
            ("-host.io/a", "invalid registry host"),
            ("ho_st.io/a", "invalid registry host"),
            ("[zz]:5000/a", "invalid registry host"),
            (long.as_str(), "longer than 255"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Reference>().expect_err(input);
            let text = err.to_string();
            assert!(text.contains(reason), "{input}: {text}");
            assert!(
                text.contains(&format!("{input:?}")),
                "names the input: {text}"
            );
        }
    }
}
