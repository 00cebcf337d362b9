//! An in-process berthd for integration tests: a temporary root, state dir
//! and socket, a private CNI network (its own bridge, subnet and host-local
//! data dir) and a CRI client on the real socket. Needs root.
#![allow(dead_code)]

use berth_agent::config::Config;
use berth_proto::cri::v1 as cri;
use berth_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

// The same leak probes as the e2e suite's.
pub use berth_e2e::leaks::{mounts_under, processes_referring_to};

/// A running berthd and a client.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub client: RuntimeServiceClient<Channel>,
    pub subnet: String,
    pub bridge: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<berth_agent::Result<()>>>,
    finished: bool,
}

/// What a test may change about the daemon.
#[derive(Default, Clone)]
pub struct Options {
    /// The CNI plugin binaries (default: the system's).
    pub bin_dirs: Option<Vec<PathBuf>>,
    /// Replaces the generated network config (`None`: a bridge network).
    pub conflist: Option<String>,
    /// The hosts.toml directory (`registry.config_path`).
    pub registry_config_path: Option<PathBuf>,
    /// RuntimeClass handlers added to the defaults.
    pub handlers: Vec<(String, berth_agent::config::HandlerConfig)>,
}

impl Daemon {
    /// Starts a daemon whose network is 10.252.`net`.0/24 on its own bridge.
    pub async fn start(net: u8, options: Options) -> Daemon {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| CapturedLog)
            .with_ansi(false)
            // ttrpc logs through the `log` crate: its errors are berthd's.
            .with_env_filter("berth_agent=debug,ttrpc=info")
            .try_init();
        let dir = tempfile::Builder::new()
            .prefix("berth-it-")
            .tempdir()
            .expect("tempdir");
        let bridge = format!("bit{}x{net}", std::process::id() % 10000);
        let subnet = format!("10.252.{net}.0/24");
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).expect("net.d");
        let conflist = options.conflist.unwrap_or_else(|| {
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": format!("berth-it-{net}"),
                "plugins": [
                    {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                     "hairpinMode": true,
                     "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                              "ranges": [[{"subnet": subnet}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            })
            .to_string()
        });
        std::fs::write(conf_dir.join("10-test.conflist"), conflist).expect("conflist");
        let mut config = Config {
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            ..Config::default()
        };
        config.grpc.socket = dir.path().join("berth.sock");
        config.metrics.enabled = false;
        config.cni.conf_dir = conf_dir;
        if let Some(bin_dirs) = options.bin_dirs {
            config.cni.bin_dirs = bin_dirs;
        }
        config.runtime.handlers.extend(options.handlers);
        config.registry.config_path = options
            .registry_config_path
            .unwrap_or_else(|| dir.path().join("certs.d"));
        let mut daemon = Daemon {
            client: placeholder_client(),
            dir,
            config,
            subnet,
            bridge,
            stop: None,
            task: None,
            finished: false,
        };
        daemon.restart().await;
        daemon
    }

    /// Starts the daemon (again) on the same directories.
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "still running");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = self.config.clone();
        self.task = Some(tokio::spawn(berth_agent::daemon::run(config, async {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
        let socket = self.config.socket_path();
        for _ in 0..400 {
            // An answer, not just a connection: the socket accepts before
            // recovery has finished and the server serves.
            if let Ok(mut client) = connect(&socket).await {
                if client.version(cri::VersionRequest::default()).await.is_ok() {
                    self.client = client;
                    return;
                }
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().expect("task").await.expect("join");
                panic!("berthd stopped at start-up: {result:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("berthd did not answer on {}", socket.display());
    }

    /// Shuts the daemon down gracefully (pods and containers keep running).
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("clean shutdown");
        }
    }

    /// Shuts down and checks that nothing is left mounted under the
    /// daemon's directories, then deletes the test bridge.
    pub async fn finish(mut self) {
        self.finished = true;
        self.shutdown().await;
        let mounts = mounts_under(self.dir.path());
        assert!(mounts.is_empty(), "left mounted: {mounts:?}");
        let processes = processes_referring_to(self.dir.path());
        assert!(processes.is_empty(), "left running: {processes:?}");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state
    }

    /// The host-local reservations of the test network.
    pub fn reserved_ips(&self, net: u8) -> Vec<String> {
        let dir = self.dir.path().join("ipam").join(format!("berth-it-{net}"));
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }
}

impl Drop for Daemon {
    /// A test that failed before `finish`: end by force what it left, so
    /// one failure does not leak into the host (shims and containers, pod
    /// inits, mounts, the bridge).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let dir = self.dir.path().to_owned();
        for process in processes_referring_to(&dir) {
            if let Some(pid) = process
                .strip_prefix("pid ")
                .and_then(|p| p.split(':').next())
                .and_then(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let root = self.config.state.join("runc");
        let ids = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines() {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .status();
        }
        let sandboxes = self.config.state.join("sandboxes");
        for entry in std::fs::read_dir(sandboxes).into_iter().flatten().flatten() {
            let pid = std::fs::read_to_string(entry.path().join("init.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("berth-init") {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let mut mounts = mounts_under(&dir);
        mounts.sort();
        for mount in mounts.iter().rev() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Everything berthd logged in this test process (every daemon's).
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// The log writer: into [`LOG`], and to the test's output as
/// `with_test_writer` does.
struct CapturedLog;

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .expect("the log lock is never poisoned")
            .extend_from_slice(buf);
        print!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lines logged so far that contain every one of `needles`.
pub fn logged_lines(needles: &[&str]) -> Vec<String> {
    let log = LOG.lock().expect("the log lock is never poisoned");
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// A client that is replaced before use.
fn placeholder_client() -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(Endpoint::from_static("http://placeholder").connect_lazy())
}

/// A CRI client on a unix socket.
pub async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>, String> {
    Ok(RuntimeServiceClient::new(channel(socket).await?)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024))
}

/// A gRPC channel on the unix socket `socket`.
async fn channel(socket: &Path) -> Result<Channel, String> {
    let socket = socket.to_owned();
    Endpoint::try_from("http://berth.invalid")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .map_err(|e| e.to_string())
}

/// A pod config with the given name.
pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "berth-it".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: String::new(),
        ..Default::default()
    }
}

/// Sets the pod's namespace options.
pub fn with_namespaces(
    mut config: cri::PodSandboxConfig,
    options: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(options);
    config
}

/// Runs a pod and returns its id.
pub async fn run_pod(
    client: &mut RuntimeServiceClient<Channel>,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

pub async fn pod_status(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<cri::PodSandboxStatus, tonic::Status> {
    client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner().status.expect("status"))
}

pub async fn stop_pod(client: &mut RuntimeServiceClient<Channel>, id: &str) {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .expect("stop pod");
}

pub async fn remove_pod(client: &mut RuntimeServiceClient<Channel>, id: &str) {
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .expect("remove pod");
}

/// Runs `f` on a thread inside the namespace file at `path` of `flag`.
pub fn inside<T: Send + 'static>(
    path: &Path,
    flag: nix::sched::CloneFlags,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        nix::sched::setns(&file, flag).expect("setns");
        f()
    })
    .join()
    .expect("thread")
}

/// The loopback registry with the test images: the e2e harness's, which
/// takes a free port and builds the images in a directory of its own.
pub use berth_e2e::Registry;

/// The busybox image critest uses; the tests' default image.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// Starts a registry serving only the busybox test image.
pub fn busybox_registry() -> Registry {
    Registry::start(Some("e2e-test-images/busybox")).expect("start the loopback registry")
}

/// Pulls `image` through the daemon's ImageService.
pub async fn pull(daemon: &Daemon, image: &str) {
    use berth_proto::cri::v1::image_service_client::ImageServiceClient;
    let channel = channel(&daemon.config.socket_path())
        .await
        .expect("connect");
    ImageServiceClient::new(channel)
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
}

/// Removes `image` through the daemon's ImageService.
pub async fn remove_image(daemon: &Daemon, image: &str) -> Result<(), tonic::Status> {
    use berth_proto::cri::v1::image_service_client::ImageServiceClient;
    let channel = channel(&daemon.config.socket_path())
        .await
        .expect("connect");
    ImageServiceClient::new(channel)
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
        })
        .await
        .map(drop)
}

/// A container config running `command` in busybox, logging to `log`.
pub fn container_config(name: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}
