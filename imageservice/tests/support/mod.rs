//! Test harness: a real Debian `docker-registry` on loopback with the shared
//! test images, and a scriptable in-process HTTP registry for auth, redirects,
//! stalls and corrupt content. Both stop when dropped; nothing outlives a test.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};

/// A `docker-registry serve` process on 127.0.0.1 with its storage in a
/// temp dir; killed (by PID) on drop.
pub struct DockerRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// TLS material for a registry: a CA, a server certificate for 127.0.0.1
/// and a client certificate, made with the `openssl` CLI.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("pki dir");
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("run openssl (apt-get install -y openssl)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=berth test CA",
        ]);
        run(&ca);
        for (name, ext) in [
            ("server", "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
            ("client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.path().join(format!("{name}.ext")), ext).expect("ext file");
            let mut csr = vec!["req"];
            csr.extend(ec);
            let (key, req, subj) = (format!("{name}.key"), format!("{name}.csr"), format!("/CN={name}"));
            csr.extend(["-keyout", &key, "-out", &req, "-subj", &subj]);
            run(&csr);
            let (pem, ext) = (format!("{name}.pem"), format!("{name}.ext"));
            run(&[
                "x509", "-req", "-in", &req, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", &pem, "-days", "2", "-extfile", &ext,
            ]);
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl DockerRegistry {
    /// Starts the registry on a free port and waits until it accepts
    /// connections.
    pub fn start() -> DockerRegistry {
        DockerRegistry::start_with(None, None)
    }

    /// A second registry over `storage`'s data (read only in practice),
    /// serving HTTPS (HTTP/2) with `pki`'s server certificate and requiring
    /// a client certificate from `pki`'s CA. Its access log is on.
    pub fn start_tls(storage: &DockerRegistry, pki: &Pki) -> DockerRegistry {
        DockerRegistry::start_with(Some(storage.dir.path().join("storage")), Some(pki))
    }

    fn start_with(storage: Option<PathBuf>, pki: Option<&Pki>) -> DockerRegistry {
        let binary = "/usr/bin/docker-registry";
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: apt-get install -y docker-registry (hack/install.sh does)"
        );
        let dir = tempfile::tempdir().expect("registry temp dir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let storage = storage.unwrap_or_else(|| dir.path().join("storage"));
        let tls = pki.map_or(String::new(), |pki| {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
                pki.path("server.pem").display(),
                pki.path("server.key").display(),
                pki.path("ca.pem").display()
            )
        });
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{tls}",
                pki.is_none(),
                storage.display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = DockerRegistry { addr, child, dir };
        let started = Instant::now();
        while TcpStream::connect(&registry.addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {} within 20 s; log:\n{}",
                registry.addr,
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Builds (cached under the target dir) and pushes the shared test
    /// images whose upstream names match `only`. Returns `images.txt`:
    /// upstream name, type, digest, local name per line.
    pub fn push_test_images(&self, only: &str) -> String {
        let shared = std::env::var_os("BERTH_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let script = shared.join("testimages/build-and-push.sh");
        assert!(
            script.exists(),
            "{} not found (set BERTH_SHARED)",
            script.display()
        );
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("berth-imageservice-testimages");
        let output = Command::new("bash")
            .arg(&script)
            .arg(&self.addr)
            .env("OUT", &out)
            .env("LARGE_MIB", "0")
            .env("ONLY", only)
            .stdin(Stdio::null())
            .output()
            .expect("run build-and-push.sh");
        assert!(
            output.status.success(),
            "build-and-push.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(out.join("images.txt")).expect("images.txt")
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A request as the fake registry saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of query parameter `key` (percent-decoding `%3A` and `+`,
    /// enough for scopes and services).
    pub fn param(&self, key: &str) -> Option<String> {
        params(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// `a=b&c=d` with the little decoding tests need.
pub fn params(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let v = v
                .replace('+', " ")
                .replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%20", " ");
            (k.to_owned(), v)
        })
        .collect()
}

pub type Reply = Response<BoxBody<Bytes, Infallible>>;
type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A scriptable HTTP/1.1 server on 127.0.0.1; `handler` answers each
/// request. Stops accepting on drop.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake registry");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        break;
                    };
                    let (seen, handler) = (seen.clone(), handler.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (seen, handler) = (seen.clone(), handler.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let request = Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_owned(),
                                    query: parts.uri.query().unwrap_or_default().to_owned(),
                                    headers: parts.headers,
                                    body,
                                };
                                seen.lock().expect("seen lock").push(request.clone());
                                Ok::<_, Infallible>(handler(&request))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        FakeRegistry { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn seen_path(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reply with `status`, `headers` and `body`.
pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    for (name, value) in headers {
        response.headers_mut().append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    response
}

/// A registry-style 404.
pub fn not_found() -> Reply {
    reply(
        404,
        &[("content-type", "application/json")],
        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
    )
}

/// Headers, then `first` bytes of a body of `length`, then nothing, ever.
pub fn stalling(length: u64, first: &'static [u8]) -> Reply {
    let mut response = Response::new(
        Stall {
            first: Some(Bytes::from_static(first)),
        }
        .boxed(),
    );
    response.headers_mut().insert(
        "content-length",
        length.to_string().parse().expect("header value"),
    );
    response
}

struct Stall {
    first: Option<Bytes>,
}

impl Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            None => Poll::Pending,
        }
    }
}

/// A hosts directory for tests: `write(registry, toml)`.
pub struct HostsDir {
    pub dir: tempfile::TempDir,
}

impl HostsDir {
    pub fn new() -> HostsDir {
        HostsDir {
            dir: tempfile::tempdir().expect("hosts dir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Writes `<dir>/<name>/hosts.toml`.
    pub fn write(&self, name: &str, toml: &str) {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("host dir");
        std::fs::write(dir.join("hosts.toml"), toml).expect("hosts.toml");
    }
}

/// The Display, Debug and source chain of an error, to search for secrets.
pub fn everything_about(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error} {error:?}");
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(" | {e} {e:?}"));
        source = e.source();
    }
    text
}
