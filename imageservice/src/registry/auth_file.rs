//! Node-level registry credentials: a Docker `config.json`-style file
//! (`registry.auth_file`, as CRI-O's `global_auth_file`), used for a pull
//! when kubelet passes no credentials.
//!
//! ```json
//! {"auths": {"registry.example.com": {"auth": "base64(user:password)"},
//!            "https://index.docker.io/v1/": {"username": "u", "password": "p"},
//!            "quay.io": {"identitytoken": "…"}}}
//! ```
//!
//! A key may carry a scheme and a path (Docker writes
//! `https://index.docker.io/v1/` for Docker Hub); only its host (and port)
//! is matched, exactly, against the image's registry, and Docker Hub's names
//! (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one. The
//! file is read at every pull that needs it, so edits apply at once; a
//! missing file means no credentials, a malformed one fails the pull with
//! an error naming it (never its contents).

use super::AuthConfig;
use std::path::{Path, PathBuf};

/// Why the file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("registry auth file {path}: {message}")]
pub struct AuthFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (never a secret).
    pub message: String,
}

/// The host a key or registry names, Docker Hub's aliases folded.
fn host_of(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        host => host,
    }
}

/// The credentials `path` holds for `registry`; `None` when the file does
/// not exist or names no such registry. Blocking: reads the file.
pub(crate) fn lookup(path: &Path, registry: &str) -> Result<Option<AuthConfig>, AuthFileError> {
    let error = |message: String| AuthFileError {
        path: path.to_owned(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e.to_string())),
    };
    // serde_json's messages name a position, never the content.
    let document: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| error(format!("not JSON: {e}")))?;
    let Some(auths) = document.get("auths") else {
        return Ok(None);
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| error("`auths` is not an object".to_owned()))?;
    let wanted = host_of(registry);
    let Some((key, entry)) = auths.iter().find(|(key, _)| host_of(key) == wanted) else {
        return Ok(None);
    };
    let field = |name: &str| -> Result<String, AuthFileError> {
        match entry.get(name) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(error(format!("`auths.{key}.{name}` is not a string"))),
        }
    };
    Ok(Some(AuthConfig {
        username: field("username")?,
        password: field("password")?,
        auth: field("auth")?,
        server_address: String::new(),
        identity_token: field("identitytoken")?,
        registry_token: field("registrytoken")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        file
    }

    #[test]
    fn credentials_are_found_by_host() {
        let f = file(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"username": "hub", "password": "p1"},
                "registry.example.com:5000": {"auth": "YTpi"},
                "quay.io": {"identitytoken": "tok"}
            }}"#,
        );
        let hub = lookup(f.path(), "docker.io").expect("ok").expect("hub");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "p1")
        );
        let example = lookup(f.path(), "registry.example.com:5000")
            .expect("ok")
            .expect("found");
        assert_eq!(example.auth, "YTpi");
        assert_eq!(
            lookup(f.path(), "quay.io")
                .expect("ok")
                .expect("quay")
                .identity_token,
            "tok"
        );
        // Exact host and port only.
        assert!(lookup(f.path(), "registry.example.com")
            .expect("ok")
            .is_none());
        assert!(lookup(f.path(), "example.com:5000").expect("ok").is_none());
    }

    #[test]
    fn a_missing_file_has_no_credentials_and_a_bad_one_is_named_without_secrets() {
        assert!(lookup(Path::new("/nonexistent/auth.json"), "docker.io")
            .expect("ok")
            .is_none());
        let f = file(r#"{"auths": {"docker.io": {"auth": "c2VjcmV0", "password": 7}}"#);
        let err = lookup(f.path(), "docker.io")
            .expect_err("malformed")
            .to_string();
        assert!(err.contains(&*f.path().to_string_lossy()), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
        let f = file(r#"{"auths": {"docker.io": {"auth": "c2VjcmV0", "password": 7}}}"#);
        let err = lookup(f.path(), "docker.io")
            .expect_err("bad field")
            .to_string();
        assert!(err.contains("auths.docker.io.password"), "{err}");
    }
}
