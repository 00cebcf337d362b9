//! The registry client against a real `docker-registry` on loopback (with
//! the shared test images) and against in-process registries that script
//! auth, redirects, stalls and corrupt content. Everything stays on
//! 127.0.0.1.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use berth_imageservice::testing::{
    decompress, media_type, Client, ClientConfig, DiffIdReader, Ingest, Manifest, Platform,
    PlatformMatcher, PullOptions, Reference, Session, Store,
};
use berth_imageservice::{AuthConfig, Digest, ErrorKind, ImageConfig};
use bytes::Bytes;
use support::{everything_about, not_found, reply, stalling, FakeRegistry, HostsDir, Reply, Seen};

/// A one-layer OCI image served by the fake registries as `team/app:1`.
#[derive(Clone)]
struct TestImage {
    manifest: Bytes,
    manifest_digest: Digest,
    config: Bytes,
    config_digest: Digest,
    layer: Bytes,
    layer_digest: Digest,
}

impl TestImage {
    fn new() -> TestImage {
        let tar: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        TestImage::with_layer(tar)
    }

    /// An image whose one layer is `tar`, uncompressed.
    fn with_layer(tar: Vec<u8>) -> TestImage {
        let diff_id = Digest::sha256(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let layer = Bytes::from(gz.finish().expect("gzip"));
        let layer_digest = Digest::sha256(&layer);
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        ));
        let config_digest = Digest::sha256(&config);
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{layer_digest}","size":{}}}]}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            config.len(),
            media_type::OCI_LAYER_GZIP,
            layer.len()
        ));
        let manifest_digest = Digest::sha256(&manifest);
        TestImage {
            manifest,
            manifest_digest,
            config,
            config_digest,
            layer,
            layer_digest,
        }
    }

    /// Answers `<prefix>/team/app/{manifests,blobs}/…`, else `None`.
    fn route(&self, prefix: &str, req: &Seen) -> Option<Reply> {
        let rest = req.path.strip_prefix(prefix)?.strip_prefix("/team/app/")?;
        let content = |ct: &str, body: &Bytes, digest: &Digest| {
            reply(
                200,
                &[
                    ("content-type", ct),
                    ("docker-content-digest", &digest.to_string()),
                    ("content-length", &body.len().to_string()),
                ],
                if req.method == "HEAD" {
                    Bytes::new()
                } else {
                    body.clone()
                },
            )
        };
        let manifest_refs = [
            "manifests/1".to_owned(),
            format!("manifests/{}", self.manifest_digest),
        ];
        if manifest_refs.iter().any(|r| r == rest) {
            return Some(content(
                media_type::OCI_MANIFEST,
                &self.manifest,
                &self.manifest_digest,
            ));
        }
        if rest == format!("blobs/{}", self.config_digest) {
            return Some(content(
                "application/octet-stream",
                &self.config,
                &self.config_digest,
            ));
        }
        if rest == format!("blobs/{}", self.layer_digest) {
            return Some(content(
                "application/octet-stream",
                &self.layer,
                &self.layer_digest,
            ));
        }
        None
    }

    fn manifest_descriptor(&self) -> berth_imageservice::testing::Descriptor {
        descriptor(
            media_type::OCI_MANIFEST,
            &self.manifest_digest,
            self.manifest.len(),
        )
    }

    fn layer_descriptor(&self) -> berth_imageservice::testing::Descriptor {
        descriptor(
            media_type::OCI_LAYER_GZIP,
            &self.layer_digest,
            self.layer.len(),
        )
    }
}

fn descriptor(mt: &str, digest: &Digest, size: usize) -> berth_imageservice::testing::Descriptor {
    serde_json::from_value(serde_json::json!({
        "mediaType": mt, "digest": digest.to_string(), "size": size
    }))
    .expect("descriptor")
}

fn client(hosts: &HostsDir) -> Client {
    client_with(hosts, |_| {})
}

fn client_with(hosts: &HostsDir, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut config = ClientConfig {
        hosts_dir: Some(hosts.path()),
        response_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    tweak(&mut config);
    Client::new(config)
}

async fn session(client: &Client, reference: &str, auth: Option<AuthConfig>) -> Session {
    let reference: Reference = reference.parse().expect("reference");
    client
        .session(
            &reference,
            PullOptions {
                auth,
                ..PullOptions::default()
            },
        )
        .await
        .expect("session")
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn assert_no_secret(error: &(dyn std::error::Error + 'static), secrets: &[&str]) {
    let text = everything_about(error);
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "secret {secret:?} leaked into: {text}"
        );
    }
}

/// A pull without credentials uses the node's auth file; credentials a
/// pull brings win over it.
#[tokio::test]
async fn node_auth_file_is_used_when_a_pull_brings_no_credentials() {
    let image = TestImage::new();
    let registry = FakeRegistry::start(move |req| {
        if req.header("authorization") != Some(&format!("Basic {}", basic("node", "n0de"))) {
            return reply(401, &[("www-authenticate", r#"Basic realm="fake""#)], "");
        }
        if req.path == "/v2/" {
            return reply(200, &[("content-type", "application/json")], "{}");
        }
        image.route("/v2", req).unwrap_or_else(not_found)
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let auth_file = auth_dir.path().join("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths": {{"https://fake.test/v1/": {{"auth": "{}"}}}}}}"#,
            basic("node", "n0de")
        ),
    )
    .expect("write the auth file");
    let with_file = client_with(&hosts, |c| c.auth_file = Some(auth_file.clone()));
    let resolved = session(&with_file, "fake.test/team/app:1", None)
        .await
        .resolve()
        .await
        .expect("the node's credentials are accepted");
    assert_eq!(resolved.digest, TestImage::new().manifest_digest);
    let wrong = AuthConfig {
        username: "node".into(),
        password: "wrong".into(),
        ..AuthConfig::default()
    };
    let err = session(&with_file, "fake.test/team/app:1", Some(wrong))
        .await
        .resolve()
        .await
        .expect_err("the pull's own credentials win");
    assert_eq!(
        berth_imageservice::Error::from(err).kind(),
        ErrorKind::Unauthenticated
    );
    let without = client(&hosts);
    let err = session(&without, "fake.test/team/app:1", None)
        .await
        .resolve()
        .await
        .expect_err("no auth file: anonymous");
    assert_eq!(
        berth_imageservice::Error::from(err).kind(),
        ErrorKind::Unauthenticated
    );
}

#[tokio::test]
async fn basic_auth() {
    let image = TestImage::new();
    let registry = FakeRegistry::start(move |req| {
        if req.header("authorization") != Some(&format!("Basic {}", basic("alice", "s3cret"))) {
            return reply(401, &[("www-authenticate", r#"Basic realm="fake""#)], "");
        }
        if req.path == "/v2/" {
            return reply(200, &[("content-type", "application/json")], "{}");
        }
        image.route("/v2", req).unwrap_or_else(not_found)
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    let client = client(&hosts);
    let good = [
        AuthConfig {
            username: "alice".into(),
            password: "s3cret".into(),
            ..AuthConfig::default()
        },
        AuthConfig {
            auth: basic("alice", "s3cret"),
            ..AuthConfig::default()
        },
        AuthConfig {
            auth: basic("alice", "s3cret"),
            server_address: "fake.test".into(),
            ..AuthConfig::default()
        },
    ];
    for auth in good {
        let s = session(&client, "fake.test/team/app:1", Some(auth.clone())).await;
        let resolved = s
            .resolve()
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        assert_eq!(resolved.digest, TestImage::new().manifest_digest);
        s.ping().await.expect("ping with credentials");
    }

    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrongpass".into(),
        ..AuthConfig::default()
    };
    let err = session(&client, "fake.test/team/app:1", Some(wrong))
        .await
        .resolve()
        .await
        .expect_err("bad password");
    let err = berth_imageservice::Error::from(err);
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(
        err.to_string().contains("credentials were rejected"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&registry.url()),
        "names the registry: {err}"
    );
    assert_no_secret(&err, &["wrongpass", &basic("alice", "wrongpass")]);

    for auth in [
        None,
        Some(AuthConfig {
            username: "alice".into(),
            password: "s3cret".into(),
            server_address: "other.registry".into(),
            ..AuthConfig::default()
        }),
    ] {
        let err = session(&client, "fake.test/team/app:1", auth)
            .await
            .resolve()
            .await
            .expect_err("anonymous");
        assert!(
            err.to_string().contains("no credentials were given"),
            "{err}"
        );
        assert_no_secret(&err, &["s3cret"]);
    }

    let bad = AuthConfig {
        auth: {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode("no-colon-secret")
        },
        ..AuthConfig::default()
    };
    let reference: Reference = "fake.test/team/app:1".parse().expect("reference");
    let err = client
        .session(
            &reference,
            PullOptions {
                auth: Some(bad.clone()),
                ..PullOptions::default()
            },
        )
        .await
        .expect_err("malformed auth");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_no_secret(&err, &["no-colon-secret", &bad.auth]);
}

/// Token server + registry + blob storage on three origins.
struct BearerSetup {
    token: FakeRegistry,
    registry: FakeRegistry,
    storage: FakeRegistry,
    hosts: HostsDir,
}

async fn bearer_setup(storage_status: u16) -> BearerSetup {
    let image = TestImage::new();
    let token = FakeRegistry::start(|req| {
        let scope_ok = req
            .param("scope")
            .is_some_and(|s| s.contains("repository:team/app:pull"))
            || (req.method == "POST"
                && support::params(&String::from_utf8_lossy(&req.body))
                    .iter()
                    .any(|(k, v)| k == "scope" && v.contains("repository:team/app:pull")));
        let form = support::params(&String::from_utf8_lossy(&req.body));
        let refresh_ok = req.method == "POST"
            && form
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token")
            && form
                .iter()
                .any(|(k, v)| k == "refresh_token" && v == "refresh-xyz")
            && form.iter().any(|(k, v)| k == "service" && v == "fake.test");
        let basic_ok = req.method == "GET"
            && req.param("service").as_deref() == Some("fake.test")
            && req.header("authorization") == Some(&format!("Basic {}", basic("alice", "s3cret")));
        if !scope_ok || !(refresh_ok || basic_ok) {
            return reply(
                401,
                &[("content-type", "application/json")],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            );
        }
        let body = if req.method == "POST" {
            r#"{"access_token":"tok-123","expires_in":300}"#
        } else {
            r#"{"token":"tok-123","expires_in":300}"#
        };
        reply(200, &[("content-type", "application/json")], body)
    })
    .await;
    let layer = image.layer.clone();
    let storage = FakeRegistry::start(move |_| {
        if storage_status == 200 {
            reply(200, &[], layer.clone())
        } else {
            reply(storage_status, &[], "storage is down")
        }
    })
    .await;
    let realm = format!("{}/token", token.url());
    let storage_url = storage.url();
    let registry = FakeRegistry::start(move |req| {
        let auth = req.header("authorization");
        if auth != Some("Bearer tok-123") && auth != Some("Bearer direct-789") {
            let challenge = format!(
                r#"Bearer realm="{realm}",service="fake.test",scope="repository:team/app:pull""#
            );
            return reply(401, &[("www-authenticate", &challenge)], "");
        }
        if req.path == format!("/v2/team/app/blobs/{}", image.layer_digest) {
            let location = format!("{storage_url}/bucket/layer?X-Sig=SECRETSIG");
            return reply(307, &[("location", &location)], "");
        }
        image.route("/v2", req).unwrap_or_else(not_found)
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    BearerSetup {
        token,
        registry,
        storage,
        hosts,
    }
}

#[tokio::test]
async fn bearer_token_flow() {
    let setup = bearer_setup(200).await;
    let image = TestImage::new();
    let client = client(&setup.hosts);
    let alice = AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..AuthConfig::default()
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).await.expect("store");

    let s = session(&client, "fake.test/team/app:1", Some(alice.clone())).await;
    let resolved = s.resolve().await.expect("resolve");
    assert_eq!(resolved.digest, image.manifest_digest);
    assert_eq!(resolved.media_type, media_type::OCI_MANIFEST);
    let bytes = s.fetch_manifest(&resolved).await.expect("manifest");
    let Manifest::Image(manifest) =
        Manifest::parse(&resolved.media_type, &resolved.digest, &bytes).expect("parse")
    else {
        panic!("expected an image manifest");
    };
    s.fetch_to_store(&store, &manifest.config)
        .await
        .expect("config");
    // The layer is redirected to another origin: followed, without our token.
    let info = s
        .fetch_to_store(&store, &manifest.layers[0])
        .await
        .expect("layer");
    assert_eq!(info.digest, image.layer_digest);
    let storage_requests = setup.storage.seen();
    assert_eq!(storage_requests.len(), 1);
    assert_eq!(
        storage_requests[0].header("authorization"),
        None,
        "token not sent across origins"
    );

    // A second pull reuses the cached token and challenge: no 401, no token request.
    let anonymous_before = setup
        .registry
        .seen()
        .iter()
        .filter(|r| r.header("authorization").is_none())
        .count();
    let s2 = session(&client, "fake.test/team/app:1", Some(alice.clone())).await;
    s2.resolve().await.expect("resolve again");
    let anonymous_after = setup
        .registry
        .seen()
        .iter()
        .filter(|r| r.header("authorization").is_none())
        .count();
    assert_eq!(
        anonymous_before, 1,
        "only the very first request went without a token"
    );
    assert_eq!(anonymous_after, 1);
    let token_requests = setup.token.seen();
    assert_eq!(token_requests.len(), 1, "token cached: {token_requests:?}");

    // Identity (refresh) token: OAuth2 POST.
    let fresh = crate::client(&setup.hosts);
    let s3 = session(
        &fresh,
        "fake.test/team/app:1",
        Some(AuthConfig {
            identity_token: "refresh-xyz".into(),
            ..AuthConfig::default()
        }),
    )
    .await;
    s3.resolve().await.expect("resolve with identity token");
    assert_eq!(
        setup
            .token
            .seen()
            .last()
            .map(|r| r.method.clone())
            .as_deref(),
        Some("POST")
    );

    // Registry token: sent as is, no token server.
    let before = setup.token.seen().len();
    let s4 = session(
        &crate::client(&setup.hosts),
        "fake.test/team/app:1",
        Some(AuthConfig {
            registry_token: "direct-789".into(),
            ..AuthConfig::default()
        }),
    )
    .await;
    s4.resolve().await.expect("resolve with registry token");
    assert_eq!(setup.token.seen().len(), before);

    // Rejected credentials: Unauthenticated, and no secret in the error.
    for auth in [
        Some(AuthConfig {
            username: "alice".into(),
            password: "wrongpass".into(),
            ..AuthConfig::default()
        }),
        None,
    ] {
        let err = session(&crate::client(&setup.hosts), "fake.test/team/app:1", auth)
            .await
            .resolve()
            .await
            .expect_err("rejected");
        let err = berth_imageservice::Error::from(err);
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        assert!(
            err.to_string().contains(&setup.token.url()),
            "names the token server: {err}"
        );
        assert!(err.to_string().contains("401"), "{err}");
        assert_no_secret(
            &err,
            &["wrongpass", &basic("alice", "wrongpass"), "tok-123"],
        );
    }
}

#[tokio::test]
async fn redirect_errors_hide_signatures() {
    let setup = bearer_setup(500).await;
    let client = client(&setup.hosts);
    let s = session(
        &client,
        "fake.test/team/app:1",
        Some(AuthConfig {
            username: "alice".into(),
            password: "s3cret".into(),
            ..AuthConfig::default()
        }),
    )
    .await;
    let err = s
        .fetch_blob(&TestImage::new().layer_descriptor())
        .await
        .expect_err("storage fails");
    let err = berth_imageservice::Error::from(err);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("500"), "{err}");
    assert_no_secret(&err, &["SECRETSIG", "s3cret", "tok-123"]);
}

#[tokio::test]
async fn corrupt_content_is_rejected_and_leaves_nothing() {
    let image = TestImage::new();
    let served = image.clone();
    let registry = FakeRegistry::start(move |req| {
        let mut tampered = served.clone();
        let mut layer = tampered.layer.to_vec();
        let middle = layer.len() / 2;
        layer[middle] ^= 0xff;
        tampered.layer = layer.into();
        let mut manifest = tampered.manifest.to_vec();
        manifest.push(b' ');
        tampered.manifest = manifest.into();
        // Keep the digests of the original: the registry lies about content.
        tampered.route("/v2", req).unwrap_or_else(not_found)
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    let client = client(&hosts);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).await.expect("store");
    let s = session(&client, "fake.test/team/app:1", None).await;

    let err = s
        .fetch_to_store(&store, &image.layer_descriptor())
        .await
        .expect_err("tampered layer");
    assert_eq!(err.kind(), ErrorKind::DataLoss, "{err}");
    assert!(
        err.to_string().contains(&image.layer_digest.to_string()),
        "{err}"
    );
    assert!(
        store.info(&image.layer_digest).await.is_err(),
        "no blob visible"
    );
    assert!(!store.blob_path(&image.layer_digest).exists());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("ingest"))
            .expect("ingest")
            .count(),
        0
    );

    // A manifest one byte longer than its descriptor, or with other content.
    let err = s
        .fetch_manifest(&image.manifest_descriptor())
        .await
        .expect_err("tampered manifest");
    assert_eq!(
        berth_imageservice::Error::from(err).kind(),
        ErrorKind::DataLoss
    );
    // Resolving by digest trusts the reference; fetching verifies.
    let pinned = format!("fake.test/team/app@{}", image.manifest_digest);
    let s = session(&client, &pinned, None).await;
    let resolved = s.resolve().await.expect("HEAD answers for the digest");
    let err =
        berth_imageservice::Error::from(s.fetch_manifest(&resolved).await.expect_err("tampered"));
    assert_eq!(err.kind(), ErrorKind::DataLoss, "{err}");
}

#[tokio::test]
async fn stalls_deadlines_and_cancellation() {
    let image = TestImage::new();
    let layer_path = format!("/v2/team/app/blobs/{}", image.layer_digest);
    let registry = FakeRegistry::start(move |req| {
        if req.path == layer_path {
            return stalling(image.layer.len() as u64, b"first bytes");
        }
        not_found()
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    let layer = TestImage::new().layer_descriptor();

    let quick = client_with(&hosts, |c| c.stall_timeout = Duration::from_secs(1));
    let s = session(&quick, "fake.test/team/app:1", None).await;
    let started = std::time::Instant::now();
    let mut blob = s.fetch_blob(&layer).await.expect("headers arrive");
    assert_eq!(
        blob.chunk().await.expect("first chunk").as_deref(),
        Some(&b"first bytes"[..])
    );
    let err = blob.chunk().await.expect_err("stalls");
    assert!(err.to_string().contains("stalled"), "{err}");
    assert!(err.to_string().contains(&registry.url()), "{err}");
    assert_eq!(
        berth_imageservice::Error::from(err).kind(),
        ErrorKind::Unavailable
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The store's writer sees the same error, and keeps nothing.
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).await.expect("store");
    let err = s.fetch_to_store(&store, &layer).await.expect_err("stalls");
    assert!(err.to_string().contains("stalled"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("ingest"))
            .expect("ingest")
            .count(),
        0
    );

    // A deadline cuts the stall short.
    let patient = client_with(&hosts, |c| c.stall_timeout = Duration::from_secs(60));
    let reference: Reference = "fake.test/team/app:1".parse().expect("reference");
    let deadline = PullOptions {
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(1)),
        ..PullOptions::default()
    };
    let s = patient
        .session(&reference, deadline)
        .await
        .expect("session");
    let mut blob = s.fetch_blob(&layer).await.expect("headers");
    blob.chunk().await.expect("first chunk");
    let err = berth_imageservice::Error::from(blob.chunk().await.expect_err("deadline"));
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");

    // A registry that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    hosts.write(
        "silent.test",
        &format!("server = \"http://{silent_addr}\"\n"),
    );
    let impatient = client_with(&hosts, |c| c.response_timeout = Duration::from_millis(300));
    let s = session(&impatient, "silent.test/team/app:1", None).await;
    let err = berth_imageservice::Error::from(s.resolve().await.expect_err("no answer"));
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("no answer within 300ms"), "{err}");
    assert!(err.to_string().contains(&silent_addr.to_string()), "{err}");

    // Cancellation, while waiting for response headers.
    let cancel = tokio_util::sync::CancellationToken::new();
    let options = PullOptions {
        cancel: Some(cancel.clone()),
        ..PullOptions::default()
    };
    let slow: Reference = "silent.test/team/app:1".parse().expect("reference");
    let s = patient.session(&slow, options).await.expect("session");
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let err = berth_imageservice::Error::from(s.resolve().await.expect_err("cancelled"));
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancelled without waiting for an answer"
    );
    canceller.await.expect("canceller");
    hold.abort();
}

#[tokio::test]
async fn mirrors_fall_through_in_order() {
    let image = TestImage::new();
    let missing = FakeRegistry::start(|_| not_found()).await;
    let served = image.clone();
    let prefixed =
        FakeRegistry::start(move |req| served.route("/custom/api", req).unwrap_or_else(not_found))
            .await;
    let served = image.clone();
    let upstream =
        FakeRegistry::start(move |req| served.route("/v2", req).unwrap_or_else(not_found)).await;
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let hosts = HostsDir::new();
    hosts.write(
        "fake.test",
        &format!(
            r#"server = "{upstream}"

[host."{dead}"]
  capabilities = ["pull", "resolve"]

[host."{missing}"]
  capabilities = ["pull", "resolve"]

[host."{prefixed}/custom/api"]
  capabilities = ["pull"]
  override_path = true
"#,
            upstream = upstream.url(),
            missing = missing.url(),
            prefixed = prefixed.url(),
        ),
    );
    let client = client(&hosts);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).await.expect("store");

    // By tag: the dead mirror and the 404 mirror fall through; the pull-only
    // mirror may not resolve tags; the upstream answers.
    let s = session(&client, "fake.test/team/app:1", None).await;
    let resolved = s.resolve().await.expect("resolve");
    assert_eq!(resolved.digest, image.manifest_digest);
    let tried = missing.seen_path("/v2/team/app/manifests/1");
    assert!(!tried.is_empty());
    assert_eq!(
        tried[0].param("ns").as_deref(),
        Some("fake.test"),
        "mirrors get ?ns="
    );
    assert!(prefixed
        .seen_path("/custom/api/team/app/manifests/1")
        .is_empty());

    // By digest (content): the pull-only mirror with override_path serves it.
    let upstream_before = upstream.seen().len();
    s.fetch_to_store(&store, &image.layer_descriptor())
        .await
        .expect("layer");
    assert_eq!(
        prefixed
            .seen_path(&format!(
                "/custom/api/team/app/blobs/{}",
                image.layer_digest
            ))
            .len(),
        1
    );
    assert_eq!(
        upstream.seen().len(),
        upstream_before,
        "upstream not needed for the blob"
    );

    // Nowhere: NotFound naming every endpoint that answered 404.
    let s = session(&client, "fake.test/team/nothing:1", None).await;
    let err = berth_imageservice::Error::from(s.resolve().await.expect_err("missing"));
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let text = err.to_string();
    assert!(text.contains("fake.test/team/nothing:1"), "{text}");
    assert!(
        text.contains(&missing.url()) && text.contains(&upstream.url()),
        "{text}"
    );
}

#[tokio::test]
async fn resolve_gets_and_hashes_when_head_is_vague() {
    let image = TestImage::new();
    let manifest = image.manifest.clone();
    let registry = FakeRegistry::start(move |req| match (req.method.as_str(), req.path.as_str()) {
        ("HEAD", "/v2/team/app/manifests/1") => {
            reply(200, &[("content-type", "application/json")], "")
        }
        ("GET", "/v2/team/app/manifests/1") => reply(
            200,
            &[("content-type", "application/json; charset=utf-8")],
            manifest.clone(),
        ),
        _ => not_found(),
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    let s = session(&client(&hosts), "fake.test/team/app:1", None).await;
    let resolved = s.resolve().await.expect("resolve");
    assert_eq!(
        resolved.digest, image.manifest_digest,
        "hashed from the body"
    );
    assert_eq!(
        resolved.media_type,
        media_type::OCI_MANIFEST,
        "from the body's mediaType"
    );
    assert_eq!(resolved.size, image.manifest.len() as u64);
    let bytes = s
        .fetch_manifest(&resolved)
        .await
        .expect("from the session cache");
    assert_eq!(bytes, image.manifest);
    assert_eq!(
        registry.seen().iter().filter(|r| r.method == "GET").count(),
        1,
        "no second GET"
    );
}

#[tokio::test]
async fn plain_http_only_when_configured() {
    let image = TestImage::new();
    let registry =
        FakeRegistry::start(move |req| image.route("/v2", req).unwrap_or_else(not_found)).await;
    let addr = registry.addr.to_string();
    // No hosts.toml: https://<registry>, which a plain HTTP server cannot answer.
    let hosts = HostsDir::new();
    let s = session(&client(&hosts), &format!("{addr}/team/app:1"), None).await;
    let err =
        berth_imageservice::Error::from(s.resolve().await.expect_err("https to an http server"));
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("https://{addr}/v2/team/app/manifests/1")),
        "{err}"
    );
    // host_port_ directory with an http server: works.
    hosts.write(
        &format!("{}_", addr.replace(':', "_")),
        &format!("server = \"http://{addr}\"\n"),
    );
    let s = session(&client(&hosts), &format!("{addr}/team/app:1"), None).await;
    s.resolve()
        .await
        .expect("plain http when hosts.toml says so");
    assert!(
        registry.seen().iter().all(|r| r.query.is_empty()),
        "no ?ns= for the registry itself"
    );
}

/// The shared test images in a real docker-registry, through hosts.toml
/// mirrors as berth will use them.
#[test]
fn real_registry() {
    let registry = support::DockerRegistry::start();
    let images = registry.push_test_images(
        r"e2e-test-images/busybox:1\.29-2$|bench/multiarch:1$|bench/uncompressed:1$",
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(real_registry_scenarios(&registry.addr, &images));

    // The same content over HTTPS with client certificates (mTLS), HTTP/2.
    let pki = support::Pki::new();
    let tls = support::DockerRegistry::start_tls(&registry, &pki);
    runtime.block_on(tls_scenarios(&tls.addr, &pki));
    let log = tls.log();
    assert!(
        log.contains("HTTP/2.0"),
        "requests over HTTP/2; registry log:\n{log}"
    );
    drop(runtime);
    drop(tls);
    drop(registry);
}

async fn tls_scenarios(addr: &str, pki: &support::Pki) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).await.expect("store");
    let reference = format!("{addr}/e2e-test-images/busybox:1.29-2");
    let dir = format!("{}_", addr.replace(':', "_"));
    let ca = pki.path("ca.pem");
    let client_pair = format!(
        "[[\"{}\", \"{}\"]]",
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    // (hosts.toml, expected to work)
    let cases = [
        (
            format!(
                "server = \"https://{addr}\"\nca = \"{}\"\nclient = {client_pair}\n",
                ca.display()
            ),
            true,
        ),
        (
            format!("server = \"https://{addr}\"\nskip_verify = true\nclient = {client_pair}\n"),
            true,
        ),
        (
            format!("server = \"{addr}\"\nca = [\"{}\"]\n", ca.display()),
            false,
        ),
        (
            format!("server = \"https://{addr}\"\nclient = {client_pair}\n"),
            false,
        ),
    ];
    for (toml, works) in cases {
        let hosts = HostsDir::new();
        hosts.write(&dir, &toml);
        let s = session(&client(&hosts), &reference, None).await;
        if works {
            pull(&s, &store).await;
        } else {
            let err = berth_imageservice::Error::from(s.resolve().await.expect_err(&toml));
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{toml}: {err}");
            assert!(
                err.to_string().contains(&format!("https://{addr}/v2/")),
                "{err}"
            );
        }
    }
    // A CA file that is not a certificate: a configuration error naming it.
    let hosts = HostsDir::new();
    hosts.write(
        &dir,
        &format!(
            "server = \"https://{addr}\"\nca = \"{}\"\n",
            pki.path("server.ext").display()
        ),
    );
    let reference: Reference = reference.parse().expect("reference");
    let err = client(&hosts)
        .session(&reference, PullOptions::default())
        .await
        .expect_err("bad CA file");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("server.ext"), "{err}");
}

/// Resolves, picks the host platform, fetches config and layers into the
/// store (layers concurrently), and checks every layer's diff ID.
async fn pull(
    session: &Session,
    store: &Store,
) -> (
    Digest,
    berth_imageservice::testing::ImageManifest,
    ImageConfig,
) {
    let top = session.resolve().await.expect("resolve");
    let mut descriptor = top.clone();
    let manifest = loop {
        let bytes = session.fetch_manifest(&descriptor).await.expect("manifest");
        store
            .write_all(&descriptor.digest, &bytes)
            .await
            .expect("store manifest");
        match Manifest::parse(&descriptor.media_type, &descriptor.digest, &bytes).expect("parse") {
            Manifest::Index(index) => {
                descriptor = index
                    .select(&PlatformMatcher::host(), &descriptor.digest)
                    .expect("host platform")
                    .clone();
            }
            Manifest::Image(image) => break *image,
        }
    };
    session
        .fetch_to_store(store, &manifest.config)
        .await
        .expect("config");
    let config_bytes = store
        .read(&manifest.config.digest, 1 << 20)
        .await
        .expect("read config");
    let config = ImageConfig::parse(&manifest.config.digest, &config_bytes).expect("config parses");
    assert_eq!(config.rootfs.diff_ids.len(), manifest.layers.len());

    let mut tasks = tokio::task::JoinSet::new();
    for layer in manifest.layers.clone() {
        let (session, store) = (session.clone(), store.clone());
        tasks.spawn(async move { session.fetch_to_store(&store, &layer).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("join").expect("layer download");
    }
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let path = store.blob_path(&layer.digest);
        let (mt, digest, diff_id) = (
            layer.media_type.clone(),
            layer.digest.clone(),
            diff_id.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let data = std::fs::read(&path).expect("blob");
            assert_eq!(
                Digest::sha256(&data),
                digest,
                "stored blob matches its name"
            );
            let reader = DiffIdReader::new(
                decompress(&mt, &digest, std::io::Cursor::new(data)).expect("layer type"),
            );
            reader.verify(&diff_id).expect("diff id");
        })
        .await
        .expect("verify layer");
    }
    (top.digest, manifest, config)
}

fn listed_digest(images: &str, upstream: &str) -> Digest {
    images
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&upstream))
                .then(|| fields.iter().find_map(|f| f.parse::<Digest>().ok()))
                .flatten()
        })
        .unwrap_or_else(|| panic!("{upstream} not in images.txt:\n{images}"))
}

async fn real_registry_scenarios(addr: &str, images: &str) {
    let hosts = HostsDir::new();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    // registry.k8s.io: the loopback registry as mirror, a dead upstream (no internet).
    hosts.write(
        "registry.k8s.io",
        &format!("server = \"{dead}\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    );
    hosts.write(
        &format!("{}_", addr.replace(':', "_")),
        &format!("server = \"http://{addr}\"\n"),
    );
    let client = client(&hosts);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).await.expect("store");

    // Docker manifest list through the mirror.
    let name = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
    let s = session(&client, name, None).await;
    s.ping().await.expect("ping");
    let top = s.resolve().await.expect("resolve");
    assert_eq!(top.media_type, media_type::DOCKER_MANIFEST_LIST);
    assert_eq!(
        top.digest,
        listed_digest(images, name),
        "the digest build-and-push.sh pushed"
    );
    let (index_digest, manifest, config) = pull(&s, &store).await;
    assert_eq!(
        s.reference().repo_digest(&index_digest),
        format!("registry.k8s.io/e2e-test-images/busybox@{index_digest}")
    );
    assert_eq!(s.reference().repo_tag().as_deref(), Some(name));
    assert_eq!(manifest.media_type, media_type::DOCKER_MANIFEST);
    if Platform::host().architecture == "amd64" {
        assert_eq!(config.architecture, "amd64");
    }
    assert_eq!(config.config.cmd, Some(vec!["sh".to_owned()]));
    assert!(
        config.config.env.iter().any(|e| e.starts_with("PATH=")),
        "{:?}",
        config.config.env
    );

    // Pinned by digest: only the pull capability is needed, same answer.
    let pinned = session(
        &client,
        &format!("registry.k8s.io/e2e-test-images/busybox@{index_digest}"),
        None,
    )
    .await;
    assert_eq!(
        pinned.resolve().await.expect("resolve digest").digest,
        index_digest
    );

    // Two pulls of the same layer at once share one download.
    let other = tempfile::tempdir().expect("tempdir");
    let other_store = Store::open(other.path()).await.expect("store");
    let layer = manifest.layers[0].clone();
    let (a, b) = tokio::join!(
        s.fetch_to_store(&other_store, &layer),
        s.fetch_to_store(&other_store, &layer)
    );
    assert_eq!(a.expect("first"), b.expect("second"));
    assert!(matches!(
        other_store
            .writer(&layer.digest, layer.size)
            .await
            .expect("writer"),
        Ingest::Exists(_)
    ));

    // OCI index on the registry itself (host_port_ directory).
    let multiarch = format!("{addr}/bench/multiarch:1");
    let s = session(&client, &multiarch, None).await;
    assert_eq!(
        s.resolve().await.expect("resolve").media_type,
        media_type::OCI_INDEX
    );
    let (_, manifest, _) = pull(&s, &store).await;
    assert_eq!(manifest.media_type, media_type::OCI_MANIFEST);
    if Platform::host().architecture == "amd64" {
        // The amd64 image's marker layer names its platform.
        let marker = manifest.layers.last().expect("marker layer");
        let file = std::fs::File::open(store.blob_path(&marker.digest)).expect("blob");
        let mut tar = Vec::new();
        decompress(&marker.media_type, &marker.digest, file)
            .expect("decompress")
            .read_to_end(&mut tar)
            .expect("read");
        assert!(
            tar.windows(11).any(|w| w == b"linux/amd64"),
            "marker layer of linux/amd64"
        );
    }

    // Uncompressed OCI layers: diff ID = layer digest.
    let s = session(&client, &format!("{addr}/bench/uncompressed:1"), None).await;
    let (_, manifest, config) = pull(&s, &store).await;
    assert!(manifest
        .layers
        .iter()
        .all(|l| l.media_type == media_type::OCI_LAYER));
    let digests: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(digests, config.rootfs.diff_ids);

    // Missing image: NotFound naming the registry that answered 404.
    let s = session(
        &client,
        "registry.k8s.io/e2e-test-images/no-such-image:1",
        None,
    )
    .await;
    let err = berth_imageservice::Error::from(s.resolve().await.expect_err("missing image"));
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let text = err.to_string();
    assert!(text.contains(addr) && text.contains("404"), "{text}");
    assert!(
        text.contains("registry.k8s.io/e2e-test-images/no-such-image:1"),
        "{text}"
    );
    let s = session(
        &client,
        &format!("{addr}/bench/multiarch:no-such-tag"),
        None,
    )
    .await;
    let err = berth_imageservice::Error::from(s.resolve().await.expect_err("missing tag"));
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// RemoveImage's rule: an image a container's snapshot stands on stays
/// (FailedPrecondition, naming the snapshot); once the snapshot is gone the
/// image goes, and removing it again finds nothing.
#[tokio::test]
async fn images_in_use_are_not_removed() {
    // Two zero blocks: an empty tar archive, which unpacks to nothing.
    let image = TestImage::with_layer(vec![0; 1024]);
    let served = image.clone();
    let registry = FakeRegistry::start(move |req| {
        if req.path == "/v2/" {
            return reply(200, &[("content-type", "application/json")], "{}");
        }
        served.route("/v2", req).unwrap_or_else(not_found)
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    let root = tempfile::tempdir().expect("tempdir");
    let images = berth_imageservice::Images::open(berth_imageservice::ImagesConfig {
        root: root.path().to_owned(),
        hosts_dir: Some(hosts.path()),
        auth_file: None,
        max_concurrent_downloads: 3,
        stall_timeout: Duration::from_secs(10),
        pinned: Vec::new(),
        keep_layer_blobs: false,
    })
    .await
    .expect("open the image service");
    let name = "fake.test/team/app:1";
    let record = images.pull(name, None, None).await.expect("pull");
    let top = record.chain_ids.last().expect("one layer").clone();
    let snapshotter = images.snapshotter().clone();
    snapshotter
        .prepare("container-rootfs", Some(&top))
        .expect("a container's snapshot on the image");

    let refused = images.remove(name).await.expect_err("the image is in use");
    assert_eq!(refused.kind(), ErrorKind::FailedPrecondition, "{refused}");
    let message = refused.to_string();
    assert!(message.contains(&record.id), "{message}");
    assert!(message.contains(name), "{message}");
    assert!(message.contains("container-rootfs"), "{message}");
    assert!(images.status(name).await.expect("status").is_some());

    snapshotter
        .remove("container-rootfs")
        .expect("remove the snapshot");
    let removed = images.remove(name).await.expect("remove");
    assert_eq!(removed.map(|r| r.id), Some(record.id));
    assert!(images.status(name).await.expect("status").is_none());
    assert!(images.remove(name).await.expect("remove again").is_none());
}

/// `pull_counted` adds every body byte a pull received: manifest, config
/// and layer the first time; a second pull of the same image downloads
/// no blob again.
#[tokio::test]
async fn pulls_count_the_bytes_they_received() {
    // Two zero blocks: an empty tar archive.
    let image = TestImage::with_layer(vec![0; 1024]);
    let served = image.clone();
    let registry = FakeRegistry::start(move |req| {
        if req.path == "/v2/" {
            return reply(200, &[("content-type", "application/json")], "{}");
        }
        served.route("/v2", req).unwrap_or_else(not_found)
    })
    .await;
    let hosts = HostsDir::new();
    hosts.write("fake.test", &format!("server = \"{}\"\n", registry.url()));
    let root = tempfile::tempdir().expect("tempdir");
    let images = berth_imageservice::Images::open(berth_imageservice::ImagesConfig {
        root: root.path().to_owned(),
        hosts_dir: Some(hosts.path()),
        max_concurrent_downloads: 3,
        stall_timeout: Duration::from_secs(10),
        pinned: Vec::new(),
        keep_layer_blobs: false,
        auth_file: None,
    })
    .await
    .expect("open the image service");
    let name = "fake.test/team/app:1";
    let first = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    images
        .pull_counted(name, None, None, first.clone())
        .await
        .expect("pull");
    let whole = (image.manifest.len() + image.config.len() + image.layer.len()) as u64;
    assert_eq!(first.load(std::sync::atomic::Ordering::Relaxed), whole);
    let again = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    images
        .pull_counted(name, None, None, again.clone())
        .await
        .expect("pull again");
    let again = again.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        again <= image.manifest.len() as u64,
        "{again} bytes for an image already present"
    );
}
