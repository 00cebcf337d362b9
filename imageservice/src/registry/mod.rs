//! An OCI distribution client (pull side) over HTTP/1.1 and HTTP/2.
//!
//! A [`Client`] lives as long as the daemon: it owns the HTTP connection
//! pools (one per distinct TLS setup), the auth challenges seen per endpoint
//! and the token cache. A [`Session`] is one pull of one reference: it reads
//! the hosts directory when created (so edits apply to the next pull) and
//! carries the credentials, deadline and cancellation token.
//!
//! Endpoint order (see [`crate::hosts`]): resolving a tag uses the endpoints
//! with both `pull` and `resolve`, resolving a digest and fetching content
//! those with `pull`, in order, the upstream last. Any failure of one
//! endpoint (404, 401, 5xx, refused connection, stall) falls through to the
//! next; cancellation and the deadline do not. When all fail, the error is
//! the most telling one (containerd's order): an integrity failure, else an
//! HTTP error status, else NotFound naming every endpoint that answered 404,
//! else a transport error. Requests to a mirror carry `?ns=<registry>` as
//! containerd's do.
//!
//! Limits: manifests over `max_manifest_size` (4 MiB, containerd's
//! `MaxManifestSize`) are refused; waits for response headers end after
//! `response_timeout`; a body that delivers nothing for `stall_timeout`
//! fails with [`RegistryError::Stalled`]. Redirects (blob storage) are
//! followed, up to 10; `Authorization` is dropped when one leaves the
//! origin. URLs in errors and logs carry no credentials and no query string
//! (presigned redirect URLs hold signatures).

mod auth;
mod auth_file;
mod body;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use auth::AuthConfig;
pub use auth_file::AuthFileError;
pub(crate) use body::Blob;

use crate::content::{Info, Ingest, Store};
use crate::digest::{Digest, Hasher};
use crate::hosts::{Capabilities, Endpoint, Hosts};
use crate::manifest::{media_type, Descriptor, Manifest};
use crate::reference::Reference;
use auth::{AuthCache, Challenge, Credentials, TokenRequest};
use body::{Guard, Wait};

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// containerd-style hosts directory (`config_path`); `None`: defaults.
    pub hosts_dir: Option<PathBuf>,
    /// Node-level credentials (Docker `config.json` format), used when a
    /// pull brings none; `None`: anonymous.
    pub auth_file: Option<PathBuf>,
    /// `User-Agent` of every request.
    pub user_agent: String,
    /// TCP+TLS connect timeout, unless an endpoint sets `dial_timeout`.
    pub connect_timeout: Duration,
    /// How long to wait for response headers.
    pub response_timeout: Duration,
    /// How long a body may deliver nothing before the transfer is aborted
    /// (containerd's `image_pull_progress_timeout`).
    pub stall_timeout: Duration,
    /// Largest manifest or index accepted.
    pub max_manifest_size: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            hosts_dir: None,
            auth_file: None,
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(5 * 60),
            max_manifest_size: 4 << 20,
        }
    }
}

/// Per-pull settings of a [`Session`].
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials (CRI `AuthConfig`); `None`: anonymous.
    pub auth: Option<AuthConfig>,
    /// Every network wait of the session fails with
    /// `RegistryError::DeadlineExceeded` after this instant.
    pub deadline: Option<Instant>,
    /// Cancelling it fails every wait with `RegistryError::Cancelled`.
    /// Dropping a session's future cancels too; this is for work shared by
    /// several callers.
    pub cancel: Option<CancellationToken>,
    /// Every body byte the session receives (manifests and blobs) is added
    /// to it as it arrives; `None`: a counter of its own.
    pub received: Option<Arc<AtomicU64>>,
}

/// Failures talking to a registry. URLs have no credentials or query.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: registry answered {status}{message}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// `: CODE: message` from the registry's error body, or empty.
        message: String,
    },
    /// Every endpoint answered 404.
    #[error("{what} not found: {tried}")]
    NotFound {
        /// `manifest registry.k8s.io/x:1`, `blob sha256:…`.
        what: String,
        /// The requests that answered 404.
        tried: String,
    },
    /// The registry refused the credentials, or wants some.
    #[error("{method} {url}: registry answered {status} ({credentials}){message}")]
    Unauthorized {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// `no credentials were given` or `credentials were rejected`.
        credentials: &'static str,
        /// The registry's error message, if any.
        message: String,
    },
    /// The token server failed.
    #[error("token request to {realm} failed{}: {message}", status.map(|s| format!(" with {s}")).unwrap_or_default())]
    Token {
        /// The realm URL (no query).
        realm: String,
        /// HTTP status, if there was an answer.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// The request failed below HTTP (connect, TLS, reset).
    #[error("{method} {url}: {}", error_chain(source))]
    Http {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// The transport error (its URL removed).
        source: reqwest::Error,
    },
    /// No response headers within `response_timeout`.
    #[error("{url}: no answer within {after:?}")]
    Timeout {
        /// Request URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The body delivered nothing for `stall_timeout`.
    #[error("{url}: download stalled, no data for {after:?}")]
    Stalled {
        /// Request URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The session's deadline passed.
    #[error("{url}: deadline exceeded")]
    DeadlineExceeded {
        /// The request under way.
        url: String,
    },
    /// The session was cancelled.
    #[error("{url}: cancelled")]
    Cancelled {
        /// The request under way.
        url: String,
    },
    /// The body was longer or shorter than the descriptor's size.
    #[error("{url}: expected {expected} bytes of {digest}, got {actual}")]
    Size {
        /// Request URL.
        url: String,
        /// The content asked for.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// `more`, `only 12`, `Content-Length 12`.
        actual: String,
    },
    /// The content does not match its digest.
    #[error("{url}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// Request URL.
        url: String,
        /// The digest asked for.
        expected: Digest,
        /// What arrived.
        actual: Digest,
    },
    /// A manifest larger than `max_manifest_size`.
    #[error("{url}: manifest of {size} bytes is larger than the limit of {limit}")]
    TooLarge {
        /// Request URL.
        url: String,
        /// Its size (announced or received so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A header the registry sent is malformed.
    #[error("{url}: invalid {header} header: {message}")]
    BadHeader {
        /// Request URL.
        url: String,
        /// Header name.
        header: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The hosts configuration leaves no endpoint for the operation.
    #[error("no endpoint of {registry} has the {capability} capability")]
    NoEndpoint {
        /// The registry.
        registry: String,
        /// `pull` or `pull and resolve`.
        capability: &'static str,
    },
    /// The credentials given are malformed (the secret is not shown).
    #[error("invalid registry credentials: {0}")]
    Credentials(&'static str),
    /// An endpoint's TLS or URL setup is unusable.
    #[error("endpoint {endpoint}: {message}")]
    Endpoint {
        /// The endpoint's API root.
        endpoint: String,
        /// What is wrong (a file that cannot be read, a bad certificate).
        message: String,
    },
}

impl RegistryError {
    /// Where it stands in the choice of the error to report after every
    /// endpoint failed (containerd's `firstErrPriority`).
    fn priority(&self) -> u8 {
        match self {
            RegistryError::Http { .. }
            | RegistryError::Timeout { .. }
            | RegistryError::Stalled { .. }
            | RegistryError::Endpoint { .. } => 1,
            RegistryError::Status { status: 404, .. } | RegistryError::NotFound { .. } => 2,
            RegistryError::Status { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::Token { .. }
            | RegistryError::BadHeader { .. } => 3,
            _ => 4,
        }
    }

    fn is_final(&self) -> bool {
        matches!(
            self,
            RegistryError::Cancelled { .. } | RegistryError::DeadlineExceeded { .. }
        )
    }

    pub(crate) fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            RegistryError::Status { status, .. } => match status {
                404 => K::NotFound,
                401 => K::Unauthenticated,
                403 => K::PermissionDenied,
                429 | 500..=599 => K::Unavailable,
                _ => K::InvalidArgument,
            },
            RegistryError::NotFound { .. } => K::NotFound,
            RegistryError::Unauthorized { status: 403, .. } => K::PermissionDenied,
            RegistryError::Unauthorized { .. } => K::Unauthenticated,
            RegistryError::Token {
                status: Some(401 | 403),
                ..
            } => K::Unauthenticated,
            RegistryError::Token { .. } => K::Unavailable,
            RegistryError::Http { .. }
            | RegistryError::Timeout { .. }
            | RegistryError::Stalled { .. } => K::Unavailable,
            RegistryError::DeadlineExceeded { .. } => K::DeadlineExceeded,
            RegistryError::Cancelled { .. } => K::Cancelled,
            RegistryError::Size { .. } | RegistryError::DigestMismatch { .. } => K::DataLoss,
            RegistryError::TooLarge { .. } | RegistryError::BadHeader { .. } => K::InvalidArgument,
            RegistryError::Credentials(_) => K::InvalidArgument,
            RegistryError::NoEndpoint { .. } | RegistryError::Endpoint { .. } => {
                K::FailedPrecondition
            }
        }
    }
}

/// A URL fit for messages: no user info, no query, no fragment.
pub(crate) fn redact(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// An error and its sources on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// `CODE: message` from a distribution error body, else a short excerpt.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<Body>(body) {
        let items: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        if !items.is_empty() {
            return items.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    line.chars().take(120).collect()
}

/// The registry client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    config: ClientConfig,
    hosts: Hosts,
    http: Mutex<HashMap<String, reqwest::Client>>,
    auth: AuthCache,
}

/// An endpoint ready for requests.
#[derive(Debug)]
struct Remote {
    endpoint: Endpoint,
    /// `scheme://host`, the key of the auth challenge cache.
    origin: String,
    api_root: String,
    http: reqwest::Client,
    headers: HeaderMap,
    credentials: Option<Credentials>,
    /// Not the registry itself: requests carry `?ns=`.
    proxy: bool,
}

impl Client {
    /// A client; no I/O happens until a session is made.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                hosts: Hosts::new(config.hosts_dir.clone()),
                config,
                http: Mutex::new(HashMap::new()),
                auth: AuthCache::default(),
            }),
        }
    }

    /// Starts a pull of `reference`: reads the hosts directory for its
    /// registry and prepares the endpoints.
    pub async fn session(
        &self,
        reference: &Reference,
        options: PullOptions,
    ) -> Result<Session, crate::Error> {
        let client = self.clone();
        let registry = reference.registry().to_owned();
        let given = options.auth;
        let remotes = tokio::task::spawn_blocking(move || {
            let auth = match (given, &client.inner.config.auth_file) {
                (Some(auth), _) => auth,
                (None, Some(file)) => auth_file::lookup(file, &registry)?.unwrap_or_default(),
                (None, None) => AuthConfig::default(),
            };
            let credentials = auth.credentials()?;
            client.remotes(&registry, &auth, credentials)
        })
        .await
        .expect("endpoint setup task panicked")?;
        Ok(Session {
            inner: Arc::new(SessionInner {
                client: self.clone(),
                reference: reference.clone(),
                remotes,
                guard: Guard {
                    deadline: options.deadline,
                    cancel: options.cancel.unwrap_or_default(),
                    received: options.received.unwrap_or_default(),
                },
                manifests: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Blocking: reads hosts.toml, CA and client certificate files.
    fn remotes(
        &self,
        registry: &str,
        auth: &AuthConfig,
        credentials: Option<Credentials>,
    ) -> Result<Vec<Remote>, crate::Error> {
        let endpoints = self.inner.hosts.endpoints(registry)?;
        let last = endpoints.len().saturating_sub(1);
        let mut remotes = Vec::with_capacity(endpoints.len());
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let api_root = endpoint.api_root();
            let http = self.http_client(&endpoint)?;
            let mut headers = HeaderMap::new();
            for (name, values) in &endpoint.headers {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                    RegistryError::Endpoint {
                        endpoint: api_root.clone(),
                        message: format!("header {name:?}: {e}"),
                    }
                })?;
                for value in values {
                    let value =
                        HeaderValue::from_str(value).map_err(|e| RegistryError::Endpoint {
                            endpoint: api_root.clone(),
                            message: format!("header {name}: {e}"),
                        })?;
                    headers.append(name.clone(), value);
                }
            }
            let upstream = i == last;
            let credentials = credentials
                .clone()
                .filter(|_| auth.applies_to(&endpoint.host, registry, upstream));
            let proxy = endpoint.host != registry
                && !(registry == "docker.io" && endpoint.host == "registry-1.docker.io");
            remotes.push(Remote {
                origin: format!("{}://{}", endpoint.scheme, endpoint.host),
                api_root,
                http,
                headers,
                credentials,
                proxy,
                endpoint,
            });
        }
        Ok(remotes)
    }

    /// One HTTP client per distinct TLS/dial setup, rebuilt when a
    /// certificate file changes.
    fn http_client(&self, endpoint: &Endpoint) -> Result<reqwest::Client, RegistryError> {
        let stamp = |path: &PathBuf| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        };
        let files: Vec<_> = endpoint
            .ca
            .iter()
            .chain(
                endpoint
                    .client
                    .iter()
                    .flat_map(|(c, k)| std::iter::once(c).chain(k)),
            )
            .map(|p| (p.clone(), stamp(p)))
            .collect();
        let key = format!(
            "{:?}",
            (endpoint.skip_verify, endpoint.dial_timeout, &files)
        );
        if let Some(client) = self
            .inner
            .http
            .lock()
            .expect("http client lock poisoned")
            .get(&key)
        {
            return Ok(client.clone());
        }
        let client = build_http_client(&self.inner.config, endpoint)?;
        self.inner
            .http
            .lock()
            .expect("http client lock poisoned")
            .insert(key, client.clone());
        Ok(client)
    }
}

fn build_http_client(
    config: &ClientConfig,
    endpoint: &Endpoint,
) -> Result<reqwest::Client, RegistryError> {
    let fail = |message: String| RegistryError::Endpoint {
        endpoint: endpoint.api_root(),
        message,
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))
    };
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(config.user_agent.clone())
        .connect_timeout(endpoint.dial_timeout.unwrap_or(config.connect_timeout))
        .redirect(reqwest::redirect::Policy::limited(10))
        .danger_accept_invalid_certs(endpoint.skip_verify);
    for path in &endpoint.ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read(path)?).map_err(|e| {
            fail(format!(
                "invalid CA file {}: {}",
                path.display(),
                error_chain(&e)
            ))
        })?;
        if certs.is_empty() {
            return Err(fail(format!(
                "no certificate in CA file {}",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = endpoint.client.first() {
        let mut pem = read(cert)?;
        if let Some(key) = key {
            pem.push(b'\n');
            pem.extend(read(key)?);
        }
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            fail(format!(
                "invalid client certificate {}: {}",
                cert.display(),
                error_chain(&e)
            ))
        })?;
        builder = builder.identity(identity);
        if endpoint.client.len() > 1 {
            tracing::warn!(endpoint = %endpoint.api_root(), "only the first client certificate is used");
        }
    }
    builder
        .build()
        .map_err(|e| fail(format!("cannot set up HTTP client: {}", error_chain(&e))))
}

/// One pull of one reference. Cheap to clone; clones share the manifest
/// cache, so layers can be fetched from several tasks.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

#[derive(Debug)]
struct SessionInner {
    client: Client,
    reference: Reference,
    remotes: Vec<Remote>,
    guard: Guard,
    /// Manifests read while resolving, verified, by digest.
    manifests: Mutex<HashMap<Digest, Bytes>>,
}

impl Session {
    /// The reference being pulled.
    pub fn reference(&self) -> &Reference {
        &self.inner.reference
    }

    /// `GET /v2/` on the pull endpoints until one answers 200 (after
    /// authenticating if it asks to).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.each_endpoint(
            Capabilities::PULL,
            "the /v2/ API".into(),
            |remote| async move {
                let url = parse_url(remote, format!("{}/", remote.api_root))?;
                let response = self.send(remote, Method::GET, &url, None).await?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(self.status_error(remote, "GET", &url, response).await)
                }
            },
        )
        .await
    }

    /// Resolves the reference to the descriptor of its manifest or index
    /// (`HEAD`, then `GET` when the registry does not tell digest, size and
    /// a manifest media type).
    pub async fn resolve(&self) -> Result<Descriptor, RegistryError> {
        let by_digest = self.inner.reference.digest().is_some();
        let caps = if by_digest {
            Capabilities::PULL
        } else {
            Capabilities::PULL | Capabilities::RESOLVE
        };
        let what = format!("manifest {}", self.inner.reference);
        self.each_endpoint(caps, what, |remote| self.resolve_at(remote))
            .await
    }

    async fn resolve_at(&self, remote: &Remote) -> Result<Descriptor, RegistryError> {
        let object = self.inner.reference.object();
        let url = self.url(remote, "manifests", &object)?;
        let shown = redact(&url);
        let response = self
            .send(
                remote,
                Method::HEAD,
                &url,
                Some(media_type::MANIFEST_ACCEPT),
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(remote, "HEAD", &url, response).await);
        }
        let headers = response.headers();
        let content_type = content_type(headers);
        let size = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let header_digest = match headers.get("docker-content-digest") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<Digest>().ok())
                    .ok_or_else(|| RegistryError::BadHeader {
                        url: shown.clone(),
                        header: "Docker-Content-Digest",
                        message: "not a valid digest".into(),
                    })?,
            ),
        };
        let limit = self.inner.client.inner.config.max_manifest_size;
        let digest = self.inner.reference.digest().cloned().or(header_digest);
        if let (Some(digest), Some(size)) = (&digest, size) {
            if media_type::is_manifest(&content_type) && size > 0 {
                if size > limit {
                    return Err(RegistryError::TooLarge {
                        url: shown,
                        size,
                        limit,
                    });
                }
                return Ok(Descriptor {
                    media_type: content_type,
                    digest: digest.clone(),
                    size,
                    platform: None,
                    urls: Vec::new(),
                    annotations: Default::default(),
                });
            }
        }
        // GET it: the body tells what HEAD did not.
        let (bytes, served) = self
            .get_manifest(remote, &url, media_type::MANIFEST_ACCEPT, None)
            .await?;
        let actual = hash(&bytes, digest.as_ref());
        if let Some(expected) = &digest {
            if &actual != expected {
                return Err(RegistryError::DigestMismatch {
                    url: shown,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let media_type = match Manifest::parse(&served, &actual, &bytes) {
            Ok(Manifest::Image(m)) => m.media_type,
            Ok(Manifest::Index(i)) => i.media_type,
            // Not parsable: report it when the caller parses the manifest.
            Err(_) => served,
        };
        let descriptor = Descriptor {
            media_type,
            digest: actual.clone(),
            size: bytes.len() as u64,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        };
        self.inner
            .manifests
            .lock()
            .expect("manifest cache lock poisoned")
            .insert(actual, bytes);
        Ok(descriptor)
    }

    /// The manifest or index `descriptor` points to, verified against its
    /// digest and size.
    pub async fn fetch_manifest(&self, descriptor: &Descriptor) -> Result<Bytes, RegistryError> {
        if let Some(bytes) = self
            .inner
            .manifests
            .lock()
            .expect("manifest cache lock poisoned")
            .get(&descriptor.digest)
        {
            return Ok(bytes.clone());
        }
        let limit = self.inner.client.inner.config.max_manifest_size;
        if descriptor.size > limit {
            return Err(RegistryError::TooLarge {
                url: format!("manifest {}", descriptor.digest),
                size: descriptor.size,
                limit,
            });
        }
        let accept = if descriptor.media_type.is_empty() {
            media_type::MANIFEST_ACCEPT.to_owned()
        } else {
            format!("{}, {}", descriptor.media_type, media_type::MANIFEST_ACCEPT)
        };
        let what = format!(
            "manifest {}@{}",
            self.inner.reference.name(),
            descriptor.digest
        );
        self.each_endpoint(Capabilities::PULL, what, |remote| {
            let accept = accept.clone();
            async move {
                let url = self.url(remote, "manifests", &descriptor.digest.to_string())?;
                let (bytes, _) = self
                    .get_manifest(remote, &url, &accept, Some(descriptor))
                    .await?;
                verify(&url, descriptor, &bytes)?;
                Ok(bytes)
            }
        })
        .await
    }

    /// Starts downloading the blob `descriptor` points to (a config or a
    /// layer). See [`Blob`].
    pub async fn fetch_blob(&self, descriptor: &Descriptor) -> Result<Blob, RegistryError> {
        let what = format!("blob {}@{}", self.inner.reference.name(), descriptor.digest);
        self.each_endpoint(Capabilities::PULL, what, |remote| async move {
            let url = self.url(remote, "blobs", &descriptor.digest.to_string())?;
            let shown = redact(&url);
            let response = self.send(remote, Method::GET, &url, None).await?;
            if !response.status().is_success() {
                return Err(self.status_error(remote, "GET", &url, response).await);
            }
            if let Some(length) = response.content_length() {
                if length != descriptor.size {
                    return Err(RegistryError::Size {
                        url: shown,
                        digest: descriptor.digest.clone(),
                        expected: descriptor.size,
                        actual: format!("Content-Length {length}"),
                    });
                }
            }
            Ok(Blob::new(
                response,
                shown,
                descriptor.digest.clone(),
                descriptor.size,
                self.inner.client.inner.config.stall_timeout,
                self.inner.guard.clone(),
            ))
        })
        .await
    }

    /// Downloads `descriptor` into `store`, verified, unless it is there;
    /// concurrent calls for one digest share one download.
    pub async fn fetch_to_store(
        &self,
        store: &Store,
        descriptor: &Descriptor,
    ) -> Result<Info, crate::Error> {
        let mut writer = match store.writer(&descriptor.digest, descriptor.size).await? {
            Ingest::Exists(info) => return Ok(info),
            Ingest::New(writer) => writer,
        };
        let mut blob = self.fetch_blob(descriptor).await?;
        while let Some(chunk) = blob.chunk().await? {
            writer.write(&chunk).await?;
        }
        Ok(writer.commit().await?)
    }

    /// Tries `attempt` on each endpoint with `caps`, in order (see the
    /// module doc for the fall-through rules).
    async fn each_endpoint<'a, T, F, Fut>(
        &'a self,
        caps: Capabilities,
        what: String,
        mut attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(&'a Remote) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut best: Option<RegistryError> = None;
        let mut not_found = Vec::new();
        let mut any = false;
        for remote in self
            .inner
            .remotes
            .iter()
            .filter(|r| r.endpoint.capabilities.contains(caps))
        {
            any = true;
            match attempt(remote).await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_final() => return Err(e),
                Err(e) => {
                    tracing::info!(endpoint = %remote.api_root, error = %e, "{what}: trying the next endpoint");
                    if let RegistryError::Status {
                        status: 404,
                        url,
                        message,
                        ..
                    } = &e
                    {
                        not_found.push(format!("{url} answered 404{message}"));
                    }
                    if best.as_ref().is_none_or(|b| e.priority() > b.priority()) {
                        best = Some(e);
                    }
                }
            }
        }
        if !any {
            return Err(RegistryError::NoEndpoint {
                registry: self.inner.reference.registry().to_owned(),
                capability: if caps.contains(Capabilities::RESOLVE) {
                    "pull and resolve"
                } else {
                    "pull"
                },
            });
        }
        let best = best.expect("an endpoint was tried and failed");
        if best.priority() == 2 {
            return Err(RegistryError::NotFound {
                what,
                tried: not_found.join(", "),
            });
        }
        Err(best)
    }

    fn url(
        &self,
        remote: &Remote,
        kind: &str,
        object: &str,
    ) -> Result<reqwest::Url, RegistryError> {
        let mut text = format!(
            "{}/{}/{kind}/{object}",
            remote.api_root,
            self.inner.reference.repository()
        );
        if remote.proxy {
            text.push_str("?ns=");
            text.push_str(self.inner.reference.registry());
        }
        parse_url(remote, text)
    }

    /// Sends a request, answering an auth challenge once.
    async fn send(
        &self,
        remote: &Remote,
        method: Method,
        url: &reqwest::Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let config = &self.inner.client.inner.config;
        let auth = &self.inner.client.inner.auth;
        let scope = format!("repository:{}:pull", self.inner.reference.repository());
        let token_request = TokenRequest {
            http: &remote.http,
            headers: &remote.headers,
            scope: &scope,
            credentials: remote.credentials.as_ref(),
            response_timeout: config.response_timeout,
        };
        let shown = redact(url);
        let method_name = method_name(&method);
        // Authenticate up front when the endpoint challenged before.
        let mut authorization = match (auth.challenge(&remote.origin), &remote.credentials) {
            (_, Some(Credentials::RegistryToken(_))) => {
                auth.authorization(&Challenge::Basic, &token_request, false)
                    .await?
            }
            (Some(challenge), _) => {
                self.inner
                    .guard
                    .run(
                        &shown,
                        config.response_timeout,
                        Wait::Response,
                        auth.authorization(&challenge, &token_request, false),
                    )
                    .await??
            }
            (None, _) => None,
        };
        let mut retried = false;
        loop {
            let mut request = remote
                .http
                .request(method.clone(), url.clone())
                .headers(remote.headers.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(value) = &authorization {
                request = request.header(reqwest::header::AUTHORIZATION, value.clone());
            }
            let response = self
                .inner
                .guard
                .run(
                    &shown,
                    config.response_timeout,
                    Wait::Response,
                    request.send(),
                )
                .await?
                .map_err(|e| RegistryError::Http {
                    method: method_name,
                    url: shown.clone(),
                    source: e.without_url(),
                })?;
            if response.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(response);
            }
            let challenges = auth::parse_challenges(
                response
                    .headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let Some(challenge) = challenges
                .iter()
                .find(|c| matches!(c, Challenge::Bearer { .. }))
                .or_else(|| challenges.first())
                .cloned()
            else {
                return Ok(response);
            };
            auth.remember(&remote.origin, challenge.clone());
            let refresh = authorization.is_some();
            authorization = self
                .inner
                .guard
                .run(
                    &shown,
                    config.response_timeout,
                    Wait::Response,
                    auth.authorization(&challenge, &token_request, refresh),
                )
                .await??;
            if authorization.is_none() {
                return Ok(response);
            }
            retried = true;
        }
    }

    /// GETs a manifest: bytes (at most `expected` or the limit) and the
    /// served media type.
    async fn get_manifest(
        &self,
        remote: &Remote,
        url: &reqwest::Url,
        accept: &str,
        expected: Option<&Descriptor>,
    ) -> Result<(Bytes, String), RegistryError> {
        let config = &self.inner.client.inner.config;
        let shown = redact(url);
        let mut response = self.send(remote, Method::GET, url, Some(accept)).await?;
        if !response.status().is_success() {
            return Err(self.status_error(remote, "GET", url, response).await);
        }
        let served = content_type(response.headers());
        let limit = expected.map_or(config.max_manifest_size, |d| d.size);
        let too_long = |size| match expected {
            Some(d) => RegistryError::Size {
                url: shown.clone(),
                digest: d.digest.clone(),
                expected: d.size,
                actual: format!("at least {size}"),
            },
            None => RegistryError::TooLarge {
                url: shown.clone(),
                size,
                limit,
            },
        };
        if let Some(length) = response.content_length().filter(|&l| l > limit) {
            return Err(too_long(length));
        }
        let mut body = Vec::new();
        loop {
            let chunk = self
                .inner
                .guard
                .run(&shown, config.stall_timeout, Wait::Body, response.chunk())
                .await?
                .map_err(|e| RegistryError::Http {
                    method: "GET",
                    url: shown.clone(),
                    source: e.without_url(),
                })?;
            let Some(chunk) = chunk else { break };
            self.inner.guard.received(chunk.len());
            body.extend_from_slice(&chunk);
            if body.len() as u64 > limit {
                return Err(too_long(body.len() as u64));
            }
        }
        Ok((Bytes::from(body), served))
    }

    /// The error for a non-success response; reads a little of the body.
    async fn status_error(
        &self,
        remote: &Remote,
        method: &'static str,
        url: &reqwest::Url,
        mut response: reqwest::Response,
    ) -> RegistryError {
        let status = response.status();
        let mut body = Vec::new();
        let read = async {
            while let Ok(Some(chunk)) = response.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() > 4096 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
        let text = error_message(&body);
        let message = if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        };
        let url = redact(url);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                method,
                url,
                status: status.as_u16(),
                credentials: if remote.credentials.is_some() {
                    "credentials were rejected"
                } else {
                    "no credentials were given"
                },
                message,
            },
            _ => RegistryError::Status {
                method,
                url,
                status: status.as_u16(),
                message,
            },
        }
    }
}

fn parse_url(remote: &Remote, text: String) -> Result<reqwest::Url, RegistryError> {
    reqwest::Url::parse(&text).map_err(|e| RegistryError::Endpoint {
        endpoint: remote.api_root.clone(),
        message: format!("invalid URL: {e}"),
    })
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        _ => "GET",
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The digest of `bytes` with `like`'s algorithm (sha256 without one).
fn hash(bytes: &[u8], like: Option<&Digest>) -> Digest {
    let mut hasher = Hasher::new(like.map_or(crate::digest::Algorithm::Sha256, Digest::algorithm));
    hasher.update(bytes);
    hasher.finish()
}

fn verify(url: &reqwest::Url, descriptor: &Descriptor, bytes: &[u8]) -> Result<(), RegistryError> {
    if bytes.len() as u64 != descriptor.size {
        return Err(RegistryError::Size {
            url: redact(url),
            digest: descriptor.digest.clone(),
            expected: descriptor.size,
            actual: bytes.len().to_string(),
        });
    }
    let actual = hash(bytes, Some(&descriptor.digest));
    if actual != descriptor.digest {
        return Err(RegistryError::DigestMismatch {
            url: redact(url),
            expected: descriptor.digest.clone(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_urls() {
        let url =
            reqwest::Url::parse("https://user:secret@host:5000/v2/x/blobs/y?X-Amz-Signature=abc#f")
                .expect("valid");
        assert_eq!(redact(&url), "https://host:5000/v2/x/blobs/y");
    }

    #[test]
    fn error_messages() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(error_message(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(error_message(b"\n<html>\n<body>oops</body>"), "<html>");
        assert_eq!(error_message(b""), "");
        assert_eq!(error_message(&[b'x'; 500]).len(), 120);
    }

    #[test]
    fn kinds() {
        use crate::ErrorKind as K;
        let status = |status| RegistryError::Status {
            method: "GET",
            url: "u".into(),
            status,
            message: String::new(),
        };
        assert_eq!(status(404).kind(), K::NotFound);
        assert_eq!(status(503).kind(), K::Unavailable);
        assert_eq!(status(400).kind(), K::InvalidArgument);
        assert_eq!(
            RegistryError::Stalled {
                url: "u".into(),
                after: Duration::from_secs(1)
            }
            .kind(),
            K::Unavailable
        );
        assert_eq!(
            RegistryError::DeadlineExceeded { url: "u".into() }.kind(),
            K::DeadlineExceeded
        );
        assert!(status(404).priority() < status(500).priority());
    }
}
