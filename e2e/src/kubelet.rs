//! A standalone kubelet (no API server) driving a harness [`Berthd`]:
//! static pods from a manifest directory, read back through kubelet's own
//! HTTP endpoints.
//!
//! Layout: [`Kubelet::start`] writes a `KubeletConfiguration` into a
//! directory of its own (root dir, manifests, volume plugins, pod logs,
//! certificates all inside it) and starts the binary that
//! `hack/install-kube.sh` built; [`Kubelet::stop`] ends it by PID and undoes
//! what kubelet changes on the host whatever its flags ([`HostChanges`]).
//! The cgroups of its pods live under a cgroup root of its own, removed
//! after it stops.
//!
//! kubelet serves on loopback only: `/pods` on its read-only port, and
//! `/containerLogs` on its main port, HTTPS with the certificate it makes
//! itself, anonymous requests allowed (nothing but this test reaches
//! 127.0.0.1).

use crate::{wait_until, Berthd, TestResult};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Kubernetes release the suites run (`hack/install-kube.sh`).
pub const KUBE_VERSION: &str = "v1.37.2";
/// The node name of a standalone kubelet, which its static pods' names end
/// with.
pub const NODE_NAME: &str = "berth-e2e";

/// Where `hack/install-kube.sh` puts the binaries: `$BERTH_KUBE_BINDIR`,
/// else `/var/cache/berth/kube-<version>/bin`.
pub fn kube_bindir() -> PathBuf {
    std::env::var_os("BERTH_KUBE_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/cache/berth/kube-{KUBE_VERSION}/bin")))
}

/// A Kubernetes binary from [`kube_bindir`].
pub fn kube_binary(name: &str) -> Result<PathBuf, String> {
    let path = kube_bindir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: run hack/install-kube.sh",
            path.display()
        ))
    }
}

/// Options for a [`Kubelet`].
#[derive(Debug, Default, Clone)]
pub struct KubeletOptions {
    /// `podCIDR` of the configuration, which a standalone kubelet sends to
    /// the runtime with UpdateRuntimeConfig.
    pub pod_cidr: Option<String>,
    /// A kubeconfig of an API server: kubelet registers its node and runs
    /// the pods the API server gives it.
    pub kubeconfig: Option<PathBuf>,
    /// The node name (default [`NODE_NAME`]).
    pub node_name: Option<String>,
}

/// A running kubelet.
#[derive(Debug)]
pub struct Kubelet {
    child: Option<Child>,
    dir: tempfile::TempDir,
    read_only_port: u16,
    port: u16,
    cgroup_root: String,
    node_name: String,
    host: HostChanges,
    /// Held while this kubelet runs (see [`HOST_LOCK`]); dropped after
    /// [`HostChanges::restore`].
    _host_lock: std::fs::File,
}

/// kubelets share the host state they change (sysctls, the device-plugin
/// directory, `/var/log/containers`): one runs at a time on a machine, the
/// next one waits for this lock.
pub const HOST_LOCK: &str = "/run/berth-e2e/kubelet.lock";

fn lock_host() -> Result<std::fs::File, String> {
    let path = Path::new(HOST_LOCK);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{HOST_LOCK}: {e}"))?;
    file.lock().map_err(|e| format!("lock {HOST_LOCK}: {e}"))?;
    Ok(file)
}

impl Kubelet {
    /// Starts kubelet against `berthd` and waits until its read-only port
    /// answers `/healthz`.
    pub fn start(berthd: &Berthd, options: KubeletOptions) -> Result<Self, String> {
        let binary = kube_binary("kubelet")?;
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-kubelet-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        for sub in ["manifests", "root", "volume-plugins", "pod-logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).map_err(|e| e.to_string())?;
        }
        let read_only_port = free_port()?;
        let port = free_port()?;
        let healthz_port = free_port()?;
        let cgroup_root = format!(
            "/{}",
            dir.path()
                .file_name()
                .expect("a tempdir has a name")
                .to_string_lossy()
        );
        let mut config = serde_json::json!({
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "containerRuntimeEndpoint": berthd.endpoint(),
            "imageServiceEndpoint": berthd.endpoint(),
            "staticPodPath": dir.path().join("manifests"),
            "fileCheckFrequency": "1s",
            "syncFrequency": "5s",
            "address": "127.0.0.1",
            "port": port,
            "readOnlyPort": read_only_port,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            // This host has cgroup v1 and no systemd.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": cgroup_root,
            "failSwapOn": false,
            "volumePluginDir": dir.path().join("volume-plugins"),
            "podLogsDir": dir.path().join("pod-logs"),
            "makeIPTablesUtilChains": false,
            "resolvConf": "",
            "serializeImagePulls": false,
            "imagePullProgressDeadline": "2m",
            "runtimeRequestTimeout": "2m",
            "shutdownGracePeriod": "0s",
            "shutdownGracePeriodCriticalPods": "0s",
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        });
        if let Some(cidr) = &options.pod_cidr {
            config["podCIDR"] = serde_json::Value::String(cidr.clone());
        }
        make_cgroup_root(&cgroup_root)?;
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).map_err(|e| e.to_string())?;
        let node_name = options
            .node_name
            .clone()
            .unwrap_or_else(|| NODE_NAME.to_owned());
        let host_lock = lock_host()?;
        let host = HostChanges::record();
        let log =
            std::fs::File::create(dir.path().join("kubelet.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(&binary);
        if let Some(kubeconfig) = &options.kubeconfig {
            command.arg("--kubeconfig").arg(kubeconfig);
        }
        let child = command
            .arg("--config")
            .arg(&config_path)
            .arg("--root-dir")
            .arg(dir.path().join("root"))
            .arg("--cert-dir")
            .arg(dir.path().join("pki"))
            .arg("--hostname-override")
            .arg(&node_name)
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut kubelet = Self {
            child: Some(child),
            dir,
            read_only_port,
            port,
            cgroup_root,
            node_name,
            host,
            _host_lock: host_lock,
        };
        let healthz = format!("127.0.0.1:{healthz_port}");
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(60), || {
            if let Some(Ok(Some(status))) = kubelet.child.as_mut().map(Child::try_wait) {
                exited = Some(status);
                return true;
            }
            crate::http_get(&healthz, "/healthz").is_ok_and(|body| body.trim() == "ok")
                && crate::http_get(&kubelet.read_only_address(), "/pods").is_ok()
        });
        if let Some(status) = exited {
            kubelet.child = None;
            return Err(format!(
                "kubelet exited at start-up ({status}):\n{}",
                kubelet.log_tail()
            ));
        }
        if !ready {
            return Err(format!(
                "kubelet did not answer within 60 s:\n{}",
                kubelet.log_tail()
            ));
        }
        Ok(kubelet)
    }

    /// `127.0.0.1:PORT` of the read-only port.
    pub fn read_only_address(&self) -> String {
        format!("127.0.0.1:{}", self.read_only_port)
    }

    /// The static pod manifest directory.
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Writes `pod` as the manifest `name.json` (through a hidden temporary
    /// file kubelet ignores, so it never reads half a file).
    pub fn put_manifest(&self, name: &str, pod: &serde_json::Value) -> TestResult {
        let tmp = self.manifests().join(format!(".{name}.json.tmp"));
        std::fs::write(&tmp, pod.to_string()).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, self.manifests().join(format!("{name}.json")))
            .map_err(|e| e.to_string())
    }

    /// Removes the manifest `name.json`: kubelet deletes the pod.
    pub fn remove_manifest(&self, name: &str) -> TestResult {
        std::fs::remove_file(self.manifests().join(format!("{name}.json")))
            .map_err(|e| format!("remove manifest {name}: {e}"))
    }

    /// Every pod kubelet runs (`/pods`), static pods with their status.
    pub fn pods(&self) -> Result<Vec<serde_json::Value>, String> {
        let body = crate::http_get(&self.read_only_address(), "/pods")?;
        let list: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("/pods is not JSON ({e}): {body}"))?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// The static pod of manifest pod name `name` (kubelet names it
    /// `<name>-<node name>`).
    pub fn pod(&self, name: &str) -> Result<Option<serde_json::Value>, String> {
        let full = format!("{name}-{}", self.node_name);
        Ok(self
            .pods()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str()))
    }

    /// Waits up to `timeout` until the pod `name` satisfies `ready`; returns
    /// it, or the last state seen in the error.
    pub fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, String> {
        let mut last = None;
        let mut error = String::new();
        wait_until(timeout, || match self.pod(name) {
            Ok(Some(pod)) => {
                let done = ready(&pod);
                last = Some(pod);
                done
            }
            Ok(None) => false,
            Err(e) => {
                error = e;
                false
            }
        });
        match last {
            Some(pod) if ready(&pod) => Ok(pod),
            last => Err(format!(
                "pod {name}: not {what} within {} s; last seen: {}{error}\nkubelet log:\n{}",
                timeout.as_secs(),
                last.map(|p| p["status"].to_string())
                    .unwrap_or_else(|| "nothing".into()),
                self.log_tail()
            )),
        }
    }

    /// `GET /containerLogs/<namespace>/<pod>/<container>` on the main port.
    pub fn container_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<String, String> {
        let url = format!(
            "https://127.0.0.1:{}/containerLogs/{namespace}/{pod}-{}/{container}",
            self.port, self.node_name
        );
        let output = Command::new("curl")
            .args(["-sSk", "--fail-with-body", "--max-time", "10", &url])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        let body = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(format!(
                "GET {url}: {} {body}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(body)
    }

    /// kubelet's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    /// The last 60 lines of kubelet's log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The lines of kubelet's log that report an `rpc error` (a failed CRI
    /// call, as kubelet's CRI client logs it), each with its line number.
    pub fn rpc_errors(&self) -> Vec<(usize, String)> {
        self.log()
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("rpc error"))
            .map(|(n, l)| (n, l.to_owned()))
            .collect()
    }

    /// How many lines kubelet's log has now.
    pub fn log_lines(&self) -> usize {
        self.log().lines().count()
    }

    /// The pod cgroups left under kubelet's cgroup root (`pod<uid>`
    /// directories of any QoS class, in any controller).
    pub fn pod_cgroups(&self) -> Vec<String> {
        let mut found = Vec::new();
        for root in self.cgroup_dirs() {
            walk(&root, &mut |dir| {
                let name = dir.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with("pod") {
                    found.push(dir.display().to_string());
                }
            });
        }
        found
    }

    /// kubelet's cgroup root in each mounted hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join(self.cgroup_root.trim_start_matches('/')))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Sends SIGTERM and waits for kubelet to exit (SIGKILL after 30 s),
    /// then undoes its changes to the host. Its pods keep running.
    pub fn stop(mut self) -> TestResult {
        self.terminate()
    }

    fn terminate(&mut self) -> TestResult {
        let mut outcome = Ok(());
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let exited = wait_until(Duration::from_secs(30), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
                outcome = Err("kubelet ignored SIGTERM for 30 s".to_owned());
            }
            let _ = child.wait();
        }
        // kubelet bind-mounts its root dir onto itself (and pod volumes
        // below it); everything under its directory goes.
        for mount in crate::leaks::mounts_under(self.dir.path())
            .into_iter()
            .rev()
        {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for root in self.cgroup_dirs() {
            remove_cgroup_tree(&root);
        }
        self.host.restore();
        outcome
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// A free loopback TCP port (bound, then released for kubelet to take).
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn walk(dir: &Path, visit: &mut impl FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            visit(&path);
            walk(&path, visit);
        }
    }
}

/// Creates `root` in every mounted hierarchy, as kubelet requires; a new
/// v1 cpuset gets its parent's CPUs and memory nodes (it has none).
fn make_cgroup_root(root: &str) -> TestResult {
    let entries =
        std::fs::read_dir("/sys/fs/cgroup").map_err(|e| format!("/sys/fs/cgroup: {e}"))?;
    for hierarchy in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let dir = hierarchy.join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim())
                    .map_err(|e| format!("{}/{file}: {e}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Removes a cgroup directory and its children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    let mut dirs = vec![dir.to_owned()];
    walk(dir, &mut |d| dirs.push(d.to_owned()));
    for d in dirs.iter().rev() {
        if let Err(e) = std::fs::remove_dir(d) {
            eprintln!("cannot remove kubelet's cgroup {}: {e}", d.display());
        }
    }
}

/// The sysctls kubelet sets at start-up (its "kernel defaults").
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Host paths kubelet creates whatever its root dir: the symlink dir of
/// container logs and the device-plugin directory with its socket.
const HOST_PATHS: &[&str] = &[
    "/var/log/containers",
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
];

/// What kubelet changes on the host that its flags cannot keep it from,
/// recorded before it starts and put back after it stops.
#[derive(Debug)]
pub struct HostChanges {
    sysctls: Vec<(&'static str, String)>,
    /// The [`HOST_PATHS`] that did not exist before kubelet started.
    absent: Vec<&'static str>,
}

impl HostChanges {
    /// Records the current state.
    pub fn record() -> Self {
        Self {
            sysctls: SYSCTLS
                .iter()
                .filter_map(|s| Some((*s, std::fs::read_to_string(sysctl_path(s)).ok()?)))
                .collect(),
            absent: HOST_PATHS
                .iter()
                .copied()
                .filter(|p| !Path::new(p).exists())
                .collect(),
        }
    }

    /// Writes back the recorded sysctls and removes the host paths kubelet
    /// created (the device-plugin socket with its directory).
    pub fn restore(&mut self) {
        for (name, value) in std::mem::take(&mut self.sysctls) {
            let path = sysctl_path(name);
            if std::fs::read_to_string(&path).is_ok_and(|now| now != value) {
                if let Err(e) = std::fs::write(&path, value.trim()) {
                    eprintln!("cannot restore {}: {e}", path.display());
                }
            }
        }
        for path in std::mem::take(&mut self.absent) {
            let path = Path::new(path);
            if path.exists() {
                if let Err(e) = std::fs::remove_dir_all(path) {
                    eprintln!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}
