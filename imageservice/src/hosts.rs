//! Registry endpoints from containerd's hosts directory (`certs.d`).
//!
//! Format (containerd `core/remotes/docker/config/hosts.go`), so operators'
//! files work unchanged:
//!
//! ```text
//! <config dir>/<registry host>/hosts.toml      e.g. registry.k8s.io/hosts.toml
//! <config dir>/<host>_<port>_/hosts.toml       127.0.0.1:5000 -> 127.0.0.1_5000_ (tried first)
//! <config dir>/<host>:<port>/hosts.toml        127.0.0.1:5000
//! <config dir>/_default/hosts.toml             any registry without a directory
//! ```
//!
//! ```toml
//! server = "https://registry.k8s.io"        # the upstream; default https://<host>
//! capabilities = ["pull", "resolve"]        # root keys apply to `server`
//!
//! [host."http://127.0.0.1:5000"]            # mirrors, tried in file order
//!   capabilities = ["pull", "resolve"]      # pull, resolve, push, referrers; default all
//!   skip_verify = false
//!   ca = "ca.pem"                           # or a list; relative to the host directory
//!   client = [["client.cert", "client.key"]] # or "both.pem", or ["a.pem", "b.pem"]
//!   header = { x-custom = "1", x-list = ["a", "b"] }
//!   override_path = false                   # true: the URL path is the API root (no /v2)
//!   dial_timeout = "5s"                     # Go duration
//! ```
//!
//! The result for a registry is the `[host]` entries in file order, then the
//! `server` (default `https://<host>`; `https://registry-1.docker.io` for
//! docker.io). A URL without scheme gets `https://`; a path that does not end
//! in `/v2` gets `/v2` appended unless `override_path` is set. Plain HTTP is
//! used only where a URL says `http://`. A directory without `hosts.toml` is
//! read the Docker way: `*.crt` are CAs, `*.cert` + `*.key` client pairs.
//!
//! Where berth differs from containerd, on purpose:
//! - a malformed `hosts.toml` is an error naming the file and line
//!   (containerd logs it and falls back to the certificate files);
//! - a `localhost`/loopback registry without a `hosts.toml` is tried over
//!   https only (containerd also tries plain http there): plain HTTP must be
//!   written down.
//!
//! Unknown keys are ignored, as containerd (go-toml without strict mode)
//! does, and logged at `warn`. Files are read on every call: a pull costs a
//! few `stat`s and one small read, and edits apply without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{fmt, fs, io, ops};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What an endpoint may be used for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Capabilities(u8);

impl Capabilities {
    /// Fetch content by digest.
    pub(crate) const PULL: Capabilities = Capabilities(1);
    /// Resolve a tag to a digest (trusting the endpoint for the mapping).
    pub(crate) const RESOLVE: Capabilities = Capabilities(2);
    /// Push (parsed, unused by berth).
    pub(crate) const PUSH: Capabilities = Capabilities(4);
    /// The referrers API (parsed, unused by berth).
    pub(crate) const REFERRERS: Capabilities = Capabilities(8);
    /// Every capability: the default when a file names none.
    pub(crate) const ALL: Capabilities = Capabilities(15);

    /// Whether every capability in `other` is in `self`.
    pub(crate) fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }
}

impl ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::PULL, "pull"),
            (Self::RESOLVE, "resolve"),
            (Self::PUSH, "push"),
            (Self::REFERRERS, "referrers"),
        ];
        f.debug_list()
            .entries(
                names
                    .iter()
                    .filter(|(c, _)| self.contains(*c))
                    .map(|(_, n)| n),
            )
            .finish()
    }
}

/// One place to talk to for a registry: a mirror or the upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// Host with port if any: `127.0.0.1:5000`.
    pub host: String,
    /// The API root path: `/v2`, or the URL's path with `override_path`.
    pub path: String,
    /// What the endpoint may be used for.
    pub capabilities: Capabilities,
    /// `skip_verify`: accept any server certificate.
    pub skip_verify: bool,
    /// CA certificate files (PEM), absolute.
    pub ca: Vec<PathBuf>,
    /// Client certificate files: certificate, and key if separate.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra request headers, in file order.
    pub headers: Vec<(String, Vec<String>)>,
    /// `dial_timeout`.
    pub dial_timeout: Option<Duration>,
}

impl Endpoint {
    /// `scheme://host/path`, e.g. `http://127.0.0.1:5000/v2`.
    pub(crate) fn api_root(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path)
    }
}

/// A hosts directory that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// An I/O error on a file of the hosts directory.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `hosts.toml` is not valid TOML or has a bad value.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// containerd's registry hosts configuration directory (`config_path`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Hosts {
    dir: Option<PathBuf>,
}

impl Hosts {
    /// Reads from `dir` (e.g. `/etc/berth/certs.d`); `None` gives every
    /// registry its default endpoint only. A missing directory is not an
    /// error: it is the same as an empty one.
    pub(crate) fn new(dir: Option<PathBuf>) -> Hosts {
        Hosts { dir }
    }

    /// Reads every registry's configuration once and returns the errors,
    /// so that a malformed file is reported at start-up and not only at
    /// the first pull from that registry.
    pub(crate) fn check_all(&self) -> Vec<HostsError> {
        let Some(root) = &self.dir else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(root) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs.iter()
            .filter_map(|dir| load_host_dir(dir).err())
            .collect()
    }

    /// The endpoints for `registry` (as in [`crate::reference::Reference::registry`]),
    /// mirrors first, the server last. Blocking: reads the directory.
    pub(crate) fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
        let mut hosts = match self.host_dir(registry)? {
            Some(dir) => load_host_dir(&dir)?,
            None => vec![HostConfig::default()],
        };
        let server = hosts
            .last_mut()
            .expect("load_host_dir always returns the server entry last");
        if server.host.is_empty() {
            server.scheme = "https".into();
            server.host = if registry == "docker.io" {
                "registry-1.docker.io".into()
            } else {
                registry.into()
            };
            server.path = "/v2".into();
        }
        Ok(hosts
            .into_iter()
            .map(|h| Endpoint {
                scheme: h.scheme,
                host: h.host,
                path: h.path,
                capabilities: h.capabilities,
                skip_verify: h.skip_verify,
                ca: h.ca,
                client: h.client,
                headers: h.headers,
                dial_timeout: h.dial_timeout,
            })
            .collect())
    }

    fn host_dir(&self, registry: &str) -> Result<Option<PathBuf>, HostsError> {
        let Some(root) = &self.dir else {
            return Ok(None);
        };
        let mut candidates = Vec::with_capacity(3);
        if let Some(idx) = registry.rfind(':').filter(|&i| i > 0) {
            candidates.push(root.join(format!("{}_{}_", &registry[..idx], &registry[idx + 1..])));
        }
        candidates.push(root.join(registry));
        candidates.push(root.join("_default"));
        for path in candidates {
            match fs::metadata(&path) {
                Ok(_) => return Ok(Some(path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(HostsError::Read { path, source }),
            }
        }
        Ok(None)
    }
}

#[derive(Debug, Clone)]
struct HostConfig {
    scheme: String,
    host: String,
    path: String,
    capabilities: Capabilities,
    skip_verify: bool,
    ca: Vec<PathBuf>,
    client: Vec<(PathBuf, Option<PathBuf>)>,
    headers: Vec<(String, Vec<String>)>,
    dial_timeout: Option<Duration>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            scheme: String::new(),
            host: String::new(),
            path: String::new(),
            capabilities: Capabilities::ALL,
            skip_verify: false,
            ca: Vec::new(),
            client: Vec::new(),
            headers: Vec::new(),
            dial_timeout: None,
        }
    }
}

fn load_host_dir(dir: &Path) -> Result<Vec<HostConfig>, HostsError> {
    let path = dir.join("hosts.toml");
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(HostsError::Read { path, source }),
    };
    if text.is_empty() {
        return load_cert_files(dir);
    }
    let text = String::from_utf8(text).map_err(|e| HostsError::Parse {
        line: line_of(
            &String::from_utf8_lossy(e.as_bytes()),
            e.utf8_error().valid_up_to(),
        ),
        path: path.clone(),
        message: "not valid UTF-8".into(),
    })?;
    Parser {
        path: &path,
        text: &text,
        base: dir,
    }
    .parse()
}

/// Parses the text of a `hosts.toml` as if it were `dir/hosts.toml` and
/// returns how many endpoints it gives (mirrors and the server): the fuzz
/// target's entry (through `testing`), the parser without the file system.
pub fn parse_hosts_toml(dir: &Path, text: &str) -> Result<usize, HostsError> {
    let path = dir.join("hosts.toml");
    Parser {
        path: &path,
        text,
        base: dir,
    }
    .parse()
    .map(|hosts| hosts.len())
}

/// Docker's `certs.d` layout, used when a directory has no `hosts.toml`.
fn load_cert_files(dir: &Path) -> Result<Vec<HostConfig>, HostsError> {
    let read_err = |source| HostsError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if !entry.file_type().map_err(read_err)?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let mut host = HostConfig::default();
    for name in &names {
        if name.ends_with(".crt") {
            host.ca.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            let key = names.contains(&key).then(|| dir.join(key));
            host.client.push((dir.join(name), key));
        }
    }
    Ok(vec![host])
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Parser<'a> {
    path: &'a Path,
    text: &'a str,
    base: &'a Path,
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Parser<'_> {
    fn error(&self, offset: usize, message: impl Into<String>) -> HostsError {
        HostsError::Parse {
            path: self.path.to_owned(),
            line: line_of(self.text, offset),
            message: message.into(),
        }
    }

    fn parse(&self) -> Result<Vec<HostConfig>, HostsError> {
        let doc = DeTable::parse(self.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            self.error(offset, e.message().trim().to_owned())
        })?;
        let doc = doc.into_inner();
        let mut server: Option<(String, usize)> = None;
        let mut mirrors: Vec<(usize, String, &DeTable<'_>)> = Vec::new();
        let mut root = Vec::new();
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "server" => {
                    let s = self.string(value, "server")?;
                    server = Some((s, value.span().start));
                }
                "host" => {
                    let DeValue::Table(table) = value.get_ref() else {
                        return Err(self.error(value.span().start, "\"host\" must be a table"));
                    };
                    for (url, config) in table.iter() {
                        let DeValue::Table(config) = config.get_ref() else {
                            return Err(self.error(
                                config.span().start,
                                format!("host {:?} must be a table", url.get_ref()),
                            ));
                        };
                        mirrors.push((url.span().start, url.get_ref().to_string(), config));
                    }
                }
                _ => root.push((key, value)),
            }
        }
        // The map is sorted by key; file order is the order of the keys' spans.
        mirrors.sort_by_key(|(offset, _, _)| *offset);
        let mut hosts = Vec::with_capacity(mirrors.len() + 1);
        for (offset, url, config) in mirrors {
            let entries: Vec<_> = config.iter().collect();
            hosts.push(self.host_config(Some((url, offset)), &entries)?);
        }
        hosts.push(self.host_config(server, &root)?);
        Ok(hosts)
    }

    fn host_config(
        &self,
        server: Option<(String, usize)>,
        entries: &[(&Spanned<std::borrow::Cow<'_, str>>, &Value<'_>)],
    ) -> Result<HostConfig, HostsError> {
        let mut config = HostConfig::default();
        let mut override_path = false;
        let mut capabilities = None;
        for (key, value) in entries {
            let name = key.get_ref().as_ref();
            match name {
                "capabilities" => {
                    let mut caps = Capabilities(0);
                    for (cap, span) in self.strings(value, name)? {
                        caps = caps
                            | match cap.to_lowercase().as_str() {
                                "pull" => Capabilities::PULL,
                                "resolve" => Capabilities::RESOLVE,
                                "push" => Capabilities::PUSH,
                                "referrers" => Capabilities::REFERRERS,
                                _ => {
                                    return Err(
                                        self.error(span, format!("unknown capability {cap:?}"))
                                    )
                                }
                            };
                    }
                    capabilities = Some(caps);
                }
                "skip_verify" => config.skip_verify = self.boolean(value, name)?,
                "override_path" => override_path = self.boolean(value, name)?,
                "ca" => {
                    config.ca = self
                        .string_or_strings(value, name)?
                        .into_iter()
                        .map(|p| self.base.join(p))
                        .collect();
                }
                "client" => config.client = self.client(value)?,
                "header" => config.headers = self.headers(value)?,
                "dial_timeout" => {
                    let text = self.string(value, name)?;
                    let timeout = parse_go_duration(&text).ok_or_else(|| {
                        self.error(
                            value.span().start,
                            format!("invalid dial_timeout {text:?} (a Go duration such as \"5s\")"),
                        )
                    })?;
                    config.dial_timeout = Some(timeout);
                }
                _ => tracing::warn!(
                    file = %self.path.display(),
                    line = line_of(self.text, key.span().start),
                    key = name,
                    "ignoring unknown key in hosts.toml"
                ),
            }
        }
        config.capabilities = capabilities.unwrap_or(Capabilities::ALL);
        if let Some((url, offset)) = server {
            self.set_url(&mut config, &url, override_path)
                .map_err(|message| self.error(offset, message))?;
        }
        Ok(config)
    }

    fn set_url(
        &self,
        config: &mut HostConfig,
        url: &str,
        override_path: bool,
    ) -> Result<(), String> {
        if let Some((scheme, _)) = url.split_once("://") {
            if !matches!(scheme, "http" | "https") {
                return Err(format!("{url:?}: scheme must be http or https"));
            }
        }
        let full = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("https://{url}")
        };
        let parsed = reqwest::Url::parse(&full)
            .map_err(|e| format!("unable to parse server {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("server {url:?}: scheme must be http or https"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("server {url:?} has no host"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!(
                "server {:?}: credentials in the URL are not supported",
                format!("{}://{host}", parsed.scheme())
            ));
        }
        config.scheme = parsed.scheme().to_owned();
        config.host = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let mut path = clean_path(parsed.path());
        if !override_path && !path.ends_with("/v2") {
            path.push_str("/v2");
        }
        config.path = path;
        Ok(())
    }

    fn string(&self, value: &Value<'_>, key: &str) -> Result<String, HostsError> {
        match value.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.error(value.span().start, format!("{key:?} must be a string"))),
        }
    }

    fn boolean(&self, value: &Value<'_>, key: &str) -> Result<bool, HostsError> {
        match value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.error(value.span().start, format!("{key:?} must be true or false"))),
        }
    }

    /// An array of strings, each with its offset.
    fn strings(&self, value: &Value<'_>, key: &str) -> Result<Vec<(String, usize)>, HostsError> {
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.error(
                value.span().start,
                format!("{key:?} must be an array of strings"),
            ));
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Ok((s.to_string(), item.span().start)),
                _ => Err(self.error(
                    item.span().start,
                    format!("{key:?} must be an array of strings"),
                )),
            })
            .collect()
    }

    fn string_or_strings(&self, value: &Value<'_>, key: &str) -> Result<Vec<String>, HostsError> {
        match value.get_ref() {
            DeValue::String(s) => Ok(vec![s.to_string()]),
            DeValue::Array(_) => Ok(self
                .strings(value, key)?
                .into_iter()
                .map(|(s, _)| s)
                .collect()),
            _ => Err(self.error(
                value.span().start,
                format!("{key:?} must be a string or an array of strings"),
            )),
        }
    }

    fn client(&self, value: &Value<'_>) -> Result<Vec<(PathBuf, Option<PathBuf>)>, HostsError> {
        let bad = |offset| {
            self.error(
                offset,
                "\"client\" must be a file, a list of files, or a list of [cert, key] pairs",
            )
        };
        match value.get_ref() {
            DeValue::String(s) => Ok(vec![(self.base.join(s.as_ref()), None)]),
            DeValue::Array(items) => items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Ok((self.base.join(s.as_ref()), None)),
                    DeValue::Array(pair) => match &pair[..] {
                        [cert, key] => match (cert.get_ref(), key.get_ref()) {
                            (DeValue::String(c), DeValue::String(k)) => Ok((
                                self.base.join(c.as_ref()),
                                (!k.is_empty()).then(|| self.base.join(k.as_ref())),
                            )),
                            _ => Err(bad(item.span().start)),
                        },
                        _ => Err(bad(item.span().start)),
                    },
                    _ => Err(bad(item.span().start)),
                })
                .collect(),
            _ => Err(bad(value.span().start)),
        }
    }

    fn headers(&self, value: &Value<'_>) -> Result<Vec<(String, Vec<String>)>, HostsError> {
        let DeValue::Table(table) = value.get_ref() else {
            return Err(self.error(value.span().start, "\"header\" must be a table"));
        };
        let mut headers: Vec<_> = table.iter().collect();
        headers.sort_by_key(|(key, _)| key.span().start);
        headers
            .into_iter()
            .map(|(key, value)| {
                let name = key.get_ref().to_string();
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(
                        self.error(key.span().start, format!("invalid header name {name:?}"))
                    );
                }
                let values = self.string_or_strings(value, &format!("header.{name}"))?;
                if let Some(v) = values
                    .iter()
                    .find(|v| reqwest::header::HeaderValue::from_str(v).is_err())
                {
                    return Err(self.error(
                        value.span().start,
                        format!("invalid value {v:?} for header {name:?}"),
                    ));
                }
                Ok((name, values))
            })
            .collect()
    }
}

/// `path.Clean` for a URL path, with `/` and `` both becoming ``.
fn clean_path(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            if let Some(i) = out.rfind('/') {
                out.truncate(i);
            }
        } else {
            out.push('/');
            out.push_str(part);
        }
    }
    out
}

/// Go's `time.ParseDuration` for non-negative values: `300ms`, `1m30s`, `0`.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod check_all_tests {
    use super::*;

    #[test]
    fn check_all_reports_each_malformed_file() {
        let root = tempfile::tempdir().expect("tempdir");
        for (host, text) in [
            ("good.example", "server = \"https://good.example\"\n"),
            (
                "bad.example",
                "server = \"https://bad.example\"\n[host.\"x\"\ncapabilities = 1\n",
            ),
        ] {
            let dir = root.path().join(host);
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("hosts.toml"), text).expect("write");
        }
        let errors = Hosts::new(Some(root.path().to_owned())).check_all();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("bad.example/hosts.toml:"),
            "{}",
            errors[0]
        );
        assert!(Hosts::new(None).check_all().is_empty());
        assert!(Hosts::new(Some(root.path().join("missing")))
            .check_all()
            .is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, dir: &str, text: &str) -> PathBuf {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).expect("create host dir");
        fs::write(dir.join("hosts.toml"), text).expect("write hosts.toml");
        dir
    }

    fn urls(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(Endpoint::api_root).collect()
    }

    #[test]
    fn defaults_without_config() {
        let hosts = Hosts::new(None);
        let cases = [
            ("docker.io", "https://registry-1.docker.io/v2"),
            ("registry.k8s.io", "https://registry.k8s.io/v2"),
            ("127.0.0.1:5000", "https://127.0.0.1:5000/v2"),
            ("localhost", "https://localhost/v2"),
        ];
        for (registry, url) in cases {
            let endpoints = hosts.endpoints(registry).expect("defaults");
            assert_eq!(urls(&endpoints), [url], "{registry}");
            assert_eq!(endpoints[0].capabilities, Capabilities::ALL);
        }
        let missing = Hosts::new(Some("/nonexistent/berth/certs.d".into()));
        assert_eq!(
            urls(&missing.endpoints("gcr.io").expect("defaults")),
            ["https://gcr.io/v2"]
        );
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = write(
            tmp.path(),
            "registry.k8s.io",
            r#"
server = "https://registry.k8s.io"
capabilities = ["pull"]
ca = "root.pem"

[host."http://zz.local:5000"]
  capabilities = ["pull", "resolve"]
  future_key = 1

[host."https://aa.local/prefix/"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["/abs/ca.pem", "rel/ca.pem"]
  client = [["c.cert", "c.key"], "both.pem"]
  dial_timeout = "1m30s"
  [host."https://aa.local/prefix/".header]
    x-b = "1"
    x-a = ["2", "3"]

[host."mm.local/custom/api"]
  override_path = true
"#,
        );
        let endpoints = Hosts::new(Some(tmp.path().into()))
            .endpoints("registry.k8s.io")
            .expect("valid");
        assert_eq!(
            urls(&endpoints),
            [
                "http://zz.local:5000/v2",
                "https://aa.local/prefix/v2",
                "https://mm.local/custom/api",
                "https://registry.k8s.io/v2",
            ]
        );
        assert_eq!(
            endpoints[0].capabilities,
            Capabilities::PULL | Capabilities::RESOLVE
        );
        assert!(!endpoints[0].skip_verify);
        let aa = &endpoints[1];
        assert_eq!(aa.capabilities, Capabilities::PULL);
        assert!(aa.skip_verify);
        assert_eq!(
            aa.ca,
            [PathBuf::from("/abs/ca.pem"), dir.join("rel/ca.pem")]
        );
        assert_eq!(
            aa.client,
            [
                (dir.join("c.cert"), Some(dir.join("c.key"))),
                (dir.join("both.pem"), None)
            ]
        );
        assert_eq!(aa.dial_timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            aa.headers,
            [
                ("x-b".to_owned(), vec!["1".to_owned()]),
                ("x-a".to_owned(), vec!["2".to_owned(), "3".to_owned()])
            ]
        );
        assert_eq!(endpoints[2].capabilities, Capabilities::ALL);
        let server = &endpoints[3];
        assert_eq!(
            server.capabilities,
            Capabilities::PULL,
            "root keys apply to server"
        );
        assert_eq!(server.ca, [dir.join("root.pem")]);
    }

    #[test]
    fn server_defaults_and_paths() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(
            tmp.path(),
            "docker.io",
            "[host.\"http://127.0.0.1:5000\"]\n",
        );
        write(tmp.path(), "a.io", "server = \"a.io:8443/api/v2/\"\n");
        write(
            tmp.path(),
            "b.io",
            "server = \"http://b.io/root\"\noverride_path = true\n",
        );
        write(tmp.path(), "c.io", "server = \"http://c.io:80\"\n");
        let hosts = Hosts::new(Some(tmp.path().into()));
        let cases = [
            (
                "docker.io",
                vec![
                    "http://127.0.0.1:5000/v2",
                    "https://registry-1.docker.io/v2",
                ],
            ),
            ("a.io", vec!["https://a.io:8443/api/v2"]),
            ("b.io", vec!["http://b.io/root"]),
            ("c.io", vec!["http://c.io/v2"]),
        ];
        for (registry, expected) in cases {
            assert_eq!(
                urls(&hosts.endpoints(registry).expect(registry)),
                expected,
                "{registry}"
            );
        }
    }

    #[test]
    fn host_directory_lookup() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let hosts = Hosts::new(Some(tmp.path().into()));
        write(tmp.path(), "_default", "server = \"http://fallback:1\"\n");
        assert_eq!(
            urls(&hosts.endpoints("x.io").expect("ok")),
            ["http://fallback:1/v2"]
        );
        write(
            tmp.path(),
            "127.0.0.1:5000",
            "server = \"http://colon:1\"\n",
        );
        assert_eq!(
            urls(&hosts.endpoints("127.0.0.1:5000").expect("ok")),
            ["http://colon:1/v2"]
        );
        write(
            tmp.path(),
            "127.0.0.1_5000_",
            "server = \"http://underscore:1\"\n",
        );
        assert_eq!(
            urls(&hosts.endpoints("127.0.0.1:5000").expect("ok")),
            ["http://underscore:1/v2"],
            "host_port_ wins, as in containerd"
        );
    }

    #[test]
    fn rereads_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let hosts = Hosts::new(Some(tmp.path().into()));
        write(tmp.path(), "x.io", "server = \"http://one\"\n");
        assert_eq!(
            urls(&hosts.endpoints("x.io").expect("ok")),
            ["http://one/v2"]
        );
        write(tmp.path(), "x.io", "server = \"http://two\"\n");
        assert_eq!(
            urls(&hosts.endpoints("x.io").expect("ok")),
            ["http://two/v2"]
        );
    }

    #[test]
    fn docker_cert_files_without_hosts_toml() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("x.io");
        fs::create_dir_all(&dir).expect("mkdir");
        for name in [
            "ca.crt",
            "client.cert",
            "client.key",
            "other.cert",
            "readme",
        ] {
            fs::write(dir.join(name), "").expect("write");
        }
        let endpoints = Hosts::new(Some(tmp.path().into()))
            .endpoints("x.io")
            .expect("ok");
        assert_eq!(urls(&endpoints), ["https://x.io/v2"]);
        assert_eq!(endpoints[0].ca, [dir.join("ca.crt")]);
        assert_eq!(
            endpoints[0].client,
            [
                (dir.join("client.cert"), Some(dir.join("client.key"))),
                (dir.join("other.cert"), None)
            ]
        );
    }

    #[test]
    fn malformed_files_name_file_and_line() {
        let cases = [
            ("server = \"a\"\n[host.\"x\"\ncapabilities = []\n", 2, ""),
            ("server = 1\n", 1, "\"server\" must be a string"),
            (
                "\n\n[host.\"http://m\"]\n  capabilities = [\"pull\", \"fly\"]\n",
                4,
                "unknown capability \"fly\"",
            ),
            (
                "[host.\"http://m\"]\n  capabilities = \"pull\"\n",
                2,
                "array of strings",
            ),
            (
                "[host.\"http://m\"]\nskip_verify = \"yes\"\n",
                2,
                "true or false",
            ),
            ("[host.\"http://m\"]\nca = 3\n", 2, "string or an array"),
            (
                "[host.\"http://m\"]\nclient = [[\"a\"]]\n",
                2,
                "[cert, key] pairs",
            ),
            ("[host.\"http://m\"]\nheader = { x = 1 }\n", 2, "header.x"),
            (
                "[host.\"http://m\"]\ndial_timeout = \"5 parsecs\"\n",
                2,
                "invalid dial_timeout",
            ),
            ("host = 1\n", 1, "\"host\" must be a table"),
            ("\n[host.\"ftp://m\"]\n", 2, "scheme must be http or https"),
            (
                "server = \"https://user:hunter2@m\"\n",
                1,
                "credentials in the URL",
            ),
        ];
        for (text, line, message) in cases {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = write(tmp.path(), "x.io", text);
            let err = Hosts::new(Some(tmp.path().into()))
                .endpoints("x.io")
                .expect_err(text);
            let shown = err.to_string();
            let prefix = format!("{}:{line}: ", dir.join("hosts.toml").display());
            assert!(shown.starts_with(&prefix), "{text:?}: {shown}");
            assert!(shown.contains(message), "{text:?}: {shown}");
            assert!(!shown.contains("hunter2"), "no password in {shown}");
        }
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("0", Some(Duration::ZERO)),
            ("5s", Some(Duration::from_secs(5))),
            ("300ms", Some(Duration::from_millis(300))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("1h2m3s", Some(Duration::from_secs(3723))),
            ("10us", Some(Duration::from_micros(10))),
            ("5", None),
            ("s", None),
            ("-5s", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), expected, "{text}");
        }
    }
}
