//! Registry authentication: credentials from the CRI `AuthConfig`,
//! `WWW-Authenticate` challenges, and the token flow of the distribution
//! spec (`docs/spec/auth/token.md`, `oauth.md`).
//!
//! - Basic challenge: `Authorization: Basic` with username/password.
//! - Bearer challenge: a token from the realm for `repository:<name>:pull`
//!   (plus the challenge's own scope): `GET realm?service=&scope=` with
//!   Basic credentials or anonymously; with an identity (refresh) token,
//!   `POST realm` with `grant_type=refresh_token`. Tokens are cached until
//!   `expires_in` (default 60 s) runs out, keyed by realm, service, scopes
//!   and a fingerprint of the credentials, so two users never share a token.
//! - A CRI `registry_token` is sent as the bearer token directly.
//!
//! No secret (password, `auth`, tokens) reaches a log line, a `Debug`
//! output or an error message.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::{redact, RegistryError};
use crate::digest::Digest;

/// Credentials as the CRI's `AuthConfig` carries them. `Debug` shows no
/// secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Base64 of `user:password` (as in `~/.docker/config.json`).
    pub auth: String,
    /// The registry these credentials are for; empty: every endpoint.
    pub server_address: String,
    /// An OAuth2 refresh token for the registry's token server.
    pub identity_token: String,
    /// A bearer token to send to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &String| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("username", &set(&self.username))
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

/// Usable credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    Basic { username: String, password: String },
    IdentityToken(String),
    RegistryToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credentials::Basic { .. } => "Credentials::Basic(<redacted>)",
            Credentials::IdentityToken(_) => "Credentials::IdentityToken(<redacted>)",
            Credentials::RegistryToken(_) => "Credentials::RegistryToken(<redacted>)",
        })
    }
}

impl Credentials {
    /// Separates token-cache entries of different credentials without
    /// keeping the secret in the key.
    fn fingerprint(&self) -> String {
        let material = match self {
            Credentials::Basic { username, password } => format!("basic\0{username}\0{password}"),
            Credentials::IdentityToken(t) => format!("identity\0{t}"),
            Credentials::RegistryToken(t) => format!("registry\0{t}"),
        };
        Digest::sha256(material.as_bytes()).hex()[..16].to_owned()
    }

    fn basic_header(username: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
            .expect("base64 is a valid header value");
        value.set_sensitive(true);
        value
    }
}

fn bearer_header(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl AuthConfig {
    /// The credentials, in containerd's order of precedence (`ParseAuth`):
    /// username/password, identity token, `auth`, then registry token.
    pub(crate) fn credentials(&self) -> Result<Option<Credentials>, RegistryError> {
        if !self.username.is_empty() {
            return Ok(Some(Credentials::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            }));
        }
        if !self.identity_token.is_empty() {
            return Ok(Some(Credentials::IdentityToken(
                self.identity_token.clone(),
            )));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| RegistryError::Credentials("\"auth\" is not valid base64"))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| RegistryError::Credentials("decoded \"auth\" is not UTF-8"))?;
            let Some((username, password)) = decoded.split_once(':') else {
                return Err(RegistryError::Credentials(
                    "decoded \"auth\" is not of the form user:password",
                ));
            };
            return Ok(Some(Credentials::Basic {
                username: username.to_owned(),
                password: password.trim_end_matches('\0').to_owned(),
            }));
        }
        if !self.registry_token.is_empty() {
            return Ok(Some(Credentials::RegistryToken(
                self.registry_token.clone(),
            )));
        }
        Ok(None)
    }

    /// Whether the credentials may be sent to `endpoint_host` while pulling
    /// from `registry`: always without `server_address` (containerd sends
    /// them to mirrors too); otherwise only to the host it names, or to the
    /// upstream when it names the image's registry.
    pub(crate) fn applies_to(&self, endpoint_host: &str, registry: &str, upstream: bool) -> bool {
        if self.server_address.is_empty() {
            return true;
        }
        let address = self.server_address.trim();
        let without_scheme = address
            .strip_prefix("https://")
            .or_else(|| address.strip_prefix("http://"))
            .unwrap_or(address);
        let host = without_scheme.split('/').next().unwrap_or_default();
        let canonical = |h: &str| match h {
            "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
            other => other.to_lowercase(),
        };
        let host = canonical(host);
        host == canonical(endpoint_host) || (upstream && host == canonical(registry))
    }
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `WWW-Authenticate` values (RFC 7235: several challenges, quoted or
/// token parameters) into the challenges berth can answer.
pub(crate) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        for (scheme, params) in parse_header(value) {
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            match scheme.as_str() {
                "basic" => out.push(Challenge::Basic),
                "bearer" => {
                    if let Some(realm) = get("realm") {
                        out.push(Challenge::Bearer {
                            realm,
                            service: get("service"),
                            scope: get("scope"),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn parse_header(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let b = value.as_bytes();
    let mut i = 0;
    let is_token = |c: u8| !c.is_ascii_whitespace() && !matches!(c, b',' | b'=' | b'"');
    let skip = |i: &mut usize, also_comma: bool| {
        while *i < b.len() && (b[*i].is_ascii_whitespace() || (also_comma && b[*i] == b',')) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_token(b[*i]) {
            *i += 1;
        }
        value[start..*i].to_owned()
    };
    let mut challenges = Vec::new();
    loop {
        skip(&mut i, true);
        let scheme = token(&mut i);
        if scheme.is_empty() {
            // Stray '=' or '"': stop rather than loop.
            break;
        }
        let mut params = Vec::new();
        loop {
            skip(&mut i, true);
            let save = i;
            let key = token(&mut i);
            skip(&mut i, false);
            if key.is_empty() || i >= b.len() || b[i] != b'=' {
                i = save;
                break;
            }
            i += 1;
            skip(&mut i, false);
            let val = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut s = String::new();
                let mut chars = value[i..].char_indices();
                let mut end = value.len();
                while let Some((off, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                s.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + off + 1;
                            break;
                        }
                        c => s.push(c),
                    }
                }
                i = end;
                s
            } else {
                token(&mut i)
            };
            params.push((key.to_lowercase(), val));
        }
        challenges.push((scheme.to_lowercase(), params));
        if i >= b.len() {
            break;
        }
    }
    challenges
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    realm: String,
    service: String,
    scopes: String,
    credentials: String,
}

/// Challenges per endpoint and tokens, shared by all sessions of a client.
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
}

/// What a token request needs.
pub(crate) struct TokenRequest<'a> {
    pub http: &'a reqwest::Client,
    pub headers: &'a HeaderMap,
    pub scope: &'a str,
    pub credentials: Option<&'a Credentials>,
    pub response_timeout: Duration,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

/// Tokens shorter-lived than this are not worth caching; also the margin
/// before expiry at which a cached token is no longer used.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);
/// The spec's default lifetime when `expires_in` is missing.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

impl AuthCache {
    /// The challenge last seen from `endpoint` (its `scheme://host`).
    pub(super) fn challenge(&self, endpoint: &str) -> Option<Challenge> {
        self.challenges
            .lock()
            .expect("auth challenge lock poisoned")
            .get(endpoint)
            .cloned()
    }

    /// Remembers `endpoint`'s challenge, so later requests authenticate
    /// up front.
    pub(super) fn remember(&self, endpoint: &str, challenge: Challenge) {
        self.challenges
            .lock()
            .expect("auth challenge lock poisoned")
            .insert(endpoint.to_owned(), challenge);
    }

    /// The `Authorization` value answering `challenge`, or `None` when
    /// there is nothing to send (Basic without credentials). `refresh`
    /// drops a cached token first (it was just rejected).
    pub(super) async fn authorization(
        &self,
        challenge: &Challenge,
        request: &TokenRequest<'_>,
        refresh: bool,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        if let Some(Credentials::RegistryToken(token)) = request.credentials {
            return Ok(bearer_header(token));
        }
        let (realm, service, challenge_scope) = match challenge {
            Challenge::Basic => {
                return Ok(match request.credentials {
                    Some(Credentials::Basic { username, password }) => {
                        Some(Credentials::basic_header(username, password))
                    }
                    _ => None,
                })
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => (realm, service.clone().unwrap_or_default(), scope),
        };
        let mut scopes = vec![request.scope.to_owned()];
        if let Some(extra) = challenge_scope {
            scopes.extend(
                extra
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        scopes.sort();
        scopes.dedup();
        let key = TokenKey {
            realm: realm.clone(),
            service: service.clone(),
            scopes: scopes.join(" "),
            credentials: request
                .credentials
                .map(Credentials::fingerprint)
                .unwrap_or_default(),
        };
        {
            let mut tokens = self.tokens.lock().expect("token cache lock poisoned");
            if refresh {
                tokens.remove(&key);
            } else if let Some((token, expiry)) = tokens.get(&key) {
                if Instant::now() + TOKEN_MARGIN < *expiry {
                    return Ok(bearer_header(token));
                }
            }
        }
        let (token, lifetime) = fetch_token(realm, &service, &scopes, request).await?;
        let header = bearer_header(&token).ok_or_else(|| RegistryError::Token {
            realm: redact_str(realm),
            status: None,
            message: "the token is not a valid header value".into(),
        })?;
        if lifetime > TOKEN_MARGIN {
            let mut tokens = self.tokens.lock().expect("token cache lock poisoned");
            tokens.retain(|_, (_, expiry)| *expiry > Instant::now());
            tokens.insert(key, (token, Instant::now() + lifetime));
        }
        Ok(Some(header))
    }
}

fn redact_str(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| "<invalid URL>".to_owned(), |u| redact(&u))
}

async fn fetch_token(
    realm: &str,
    service: &str,
    scopes: &[String],
    request: &TokenRequest<'_>,
) -> Result<(String, Duration), RegistryError> {
    let shown = redact_str(realm);
    let token_err = |status: Option<u16>, message: String| RegistryError::Token {
        realm: shown.clone(),
        status,
        message,
    };
    let mut url = reqwest::Url::parse(realm)
        .map_err(|e| token_err(None, format!("invalid realm URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(token_err(None, "realm must be an http or https URL".into()));
    }
    let builder = match request.credentials {
        Some(Credentials::IdentityToken(refresh_token)) => {
            let mut form = reqwest::Url::parse("http://form.invalid/").expect("static URL parses");
            {
                let mut pairs = form.query_pairs_mut();
                pairs
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh_token)
                    .append_pair("client_id", "berth")
                    .append_pair("scope", &scopes.join(" "));
                if !service.is_empty() {
                    pairs.append_pair("service", service);
                }
            }
            let body = form.query().unwrap_or_default().to_owned();
            request
                .http
                .post(url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(body)
        }
        credentials => {
            {
                let mut pairs = url.query_pairs_mut();
                if !service.is_empty() {
                    pairs.append_pair("service", service);
                }
                for scope in scopes {
                    pairs.append_pair("scope", scope);
                }
            }
            let builder = request.http.get(url);
            match credentials {
                Some(Credentials::Basic { username, password }) => builder.header(
                    reqwest::header::AUTHORIZATION,
                    Credentials::basic_header(username, password),
                ),
                _ => builder,
            }
        }
    };
    let response = tokio::time::timeout(
        request.response_timeout,
        builder.headers(request.headers.clone()).send(),
    )
    .await
    .map_err(|_| {
        token_err(
            None,
            format!("no answer within {:?}", request.response_timeout),
        )
    })?
    .map_err(|e| token_err(None, super::error_chain(&e.without_url())))?;
    let status = response.status();
    let body = tokio::time::timeout(request.response_timeout, response.bytes())
        .await
        .map_err(|_| token_err(Some(status.as_u16()), "the answer stalled".into()))?
        .map_err(|e| token_err(Some(status.as_u16()), super::error_chain(&e.without_url())))?;
    if !status.is_success() {
        return Err(token_err(
            Some(status.as_u16()),
            super::error_message(&body),
        ));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        token_err(
            Some(status.as_u16()),
            format!("invalid token response: {e}"),
        )
    })?;
    let token = if parsed.token.is_empty() {
        parsed.access_token
    } else {
        parsed.token
    };
    if token.is_empty() {
        return Err(token_err(
            Some(status.as_u16()),
            "the response has no token".into(),
        ));
    }
    let lifetime = if parsed.expires_in == 0 {
        DEFAULT_TOKEN_LIFETIME
    } else {
        parsed.expires_in
    };
    Ok((token, Duration::from_secs(lifetime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let cases: Vec<(&str, Vec<Challenge>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
                vec![Challenge::Bearer {
                    realm: "https://auth.docker.io/token".into(),
                    service: Some("registry.docker.io".into()),
                    scope: Some("repository:library/busybox:pull".into()),
                }],
            ),
            (
                r#"bearer Realm = "https://x/token" , service=reg"#,
                vec![Challenge::Bearer {
                    realm: "https://x/token".into(),
                    service: Some("reg".into()),
                    scope: None,
                }],
            ),
            (r#"Basic realm="Registry Realm""#, vec![Challenge::Basic]),
            (
                r#"Basic realm="a, \"b\"", Bearer realm="https://t",scope="repository:a:pull repository:b:pull""#,
                vec![
                    Challenge::Basic,
                    Challenge::Bearer {
                        realm: "https://t".into(),
                        service: None,
                        scope: Some("repository:a:pull repository:b:pull".into()),
                    },
                ],
            ),
            ("Negotiate abc==, Bearer service=x", vec![]),
            ("", vec![]),
            ("=\"", vec![]),
            (
                "Bearer realm=\"unterminated",
                vec![Challenge::Bearer {
                    realm: "unterminated".into(),
                    service: None,
                    scope: None,
                }],
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_challenges([header]), expected, "{header}");
        }
    }

    #[test]
    fn credentials_from_auth_config() {
        let basic = |u: &str, p: &str| {
            Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cases = [
            (AuthConfig::default(), None),
            (
                AuthConfig {
                    username: "u".into(),
                    password: "p".into(),
                    identity_token: "id".into(),
                    ..AuthConfig::default()
                },
                basic("u", "p"),
            ),
            (
                AuthConfig {
                    auth: b64("user:pa:ss\0"),
                    ..AuthConfig::default()
                },
                basic("user", "pa:ss"),
            ),
            (
                AuthConfig {
                    identity_token: "refresh".into(),
                    auth: b64("a:b"),
                    ..AuthConfig::default()
                },
                Some(Credentials::IdentityToken("refresh".into())),
            ),
            (
                AuthConfig {
                    registry_token: "tok".into(),
                    ..AuthConfig::default()
                },
                Some(Credentials::RegistryToken("tok".into())),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(config.credentials().expect("valid"), expected, "{config:?}");
        }
        for bad in ["!!!notbase64", &b64("no-colon-secret")] {
            let config = AuthConfig {
                auth: bad.to_owned(),
                ..AuthConfig::default()
            };
            let err = config.credentials().expect_err(bad).to_string();
            assert!(!err.contains("secret") && !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let config = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            auth: "YWxpY2U6aHVudGVyMg==".into(),
            server_address: "registry.example".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
        };
        let shown = format!("{config:?} {:?}", config.credentials());
        for secret in [
            "alice",
            "hunter2",
            "YWxpY2U6aHVudGVyMg==",
            "idtok",
            "regtok",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("registry.example"));
    }

    #[test]
    fn server_address_scoping() {
        let config = |address: &str| AuthConfig {
            username: "u".into(),
            server_address: address.into(),
            ..AuthConfig::default()
        };
        // server_address, endpoint host, registry, upstream, applies
        let cases = [
            ("", "mirror:5000", "docker.io", false, true),
            (
                "https://index.docker.io/v1/",
                "registry-1.docker.io",
                "docker.io",
                true,
                true,
            ),
            (
                "https://index.docker.io/v1/",
                "mirror:5000",
                "docker.io",
                false,
                false,
            ),
            ("docker.io", "registry-1.docker.io", "docker.io", true, true),
            ("mirror:5000", "mirror:5000", "docker.io", false, true),
            ("gcr.io", "registry-1.docker.io", "docker.io", true, false),
            (
                "registry.k8s.io",
                "registry.k8s.io",
                "registry.k8s.io",
                true,
                true,
            ),
        ];
        for (address, host, registry, upstream, expected) in cases {
            assert_eq!(
                config(address).applies_to(host, registry, upstream),
                expected,
                "{address} -> {host}"
            );
        }
    }

    #[test]
    fn fingerprints_differ_and_hide() {
        let a = Credentials::Basic {
            username: "u".into(),
            password: "one".into(),
        };
        let b = Credentials::Basic {
            username: "u".into(),
            password: "two".into(),
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(!a.fingerprint().contains("one"));
    }
}
