//! The end-to-end harness: a real `berthd`, a real registry, real clients.
//!
//! Layout: [`Berthd`] starts a fresh daemon on a temporary root, state dir
//! and socket and stops it by PID; [`Registry`] runs Debian's
//! `docker-registry` on loopback through `hack/registry.sh` with the test
//! images of `../shared/testimages` and writes the hosts.toml mirrors;
//! [`Suite`] runs named tests in order and prints the closing
//! `N passed, N failed` line; [`leaks`] finds what a daemon left behind;
//! [`failpoints`] serves the crash suites;
//! [`network::Network`] gives each daemon a CNI bridge and subnet of its own;
//! [`kubelet::Kubelet`] runs a kubelet against a daemon, and
//! [`cluster::Cluster`] a one-node cluster around it.
//!
//! Everything a test starts is stopped by the PID it was given, and every
//! daemon is checked for leaks after it stops.

pub mod cluster;
pub mod failpoints;
pub mod kubelet;
pub mod leaks;
pub mod network;
pub mod stall;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A test's failure, as a message.
pub type TestResult = Result<(), String>;

/// `Ok` when `condition` holds, else the failure `message` describes.
pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> TestResult {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits inside the repository")
        .to_owned()
}

/// The `berthd` binary under test: `$BERTHD`, else the workspace's debug
/// build (the test script builds it first).
pub fn berthd_binary() -> PathBuf {
    built_binary("BERTHD", "berthd")
}

/// The load generator `berth-load`: `$BERTH_LOAD`, else the workspace's
/// debug build (`cargo build -p berth-loadgen`).
pub fn berth_load_binary() -> PathBuf {
    built_binary("BERTH_LOAD", "berth-load")
}

/// `$VAR`, else `name` in the workspace's debug target dir.
fn built_binary(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(name)
}

/// A tool installed by `hack/install.sh` (crictl, critest), found on PATH
/// or in /usr/local/bin.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_dirs)
        .chain(std::iter::once(PathBuf::from("/usr/local/bin")))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} not found on PATH or in /usr/local/bin: run hack/install.sh")
        })
}

/// Polls `ready` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Options for a [`Berthd`].
#[derive(Debug, Default, Clone)]
pub struct BerthdOptions {
    /// The hosts.toml directory (`registry.config_path`).
    pub registry_config_path: Option<PathBuf>,
    /// CNI config dir; `None` writes a network of the daemon's own (its own
    /// bridge and subnet, see [`network::Network`]) into a private directory.
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin dirs (`cni.bin_dirs`); `None` keeps berthd's default.
    pub cni_bin_dirs: Option<Vec<PathBuf>>,
    /// `cni.plugin_timeout_seconds`; `None` keeps berthd's default.
    pub cni_plugin_timeout_seconds: Option<u64>,
    /// With the harness's network (`cni_conf_dir` unset): addresses come
    /// from the node's pod CIDR that a client sends with
    /// UpdateRuntimeConfig, not from a range of its own
    /// ([`network::Network::pod_cidr_conflist`]).
    pub pod_cidr_network: bool,
    /// Extra TOML appended to the generated config file.
    pub extra_config: String,
    /// Put the root on a tmpfs of this many MiB, to run out of disk.
    pub root_size_mib: Option<u64>,
    /// Start berthd with these (soft, hard) limits of open files, as
    /// systemd's defaults would (`prlimit --nofile`).
    pub open_files_limit: Option<(u64, u64)>,
    /// Environment variables berthd starts with (see [`Berthd::set_env`]).
    pub env: Vec<(String, String)>,
}

/// A running berthd on a private root, state dir and socket.
#[derive(Debug)]
pub struct Berthd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The daemon's own CNI network, when the harness wrote the config.
    network: Option<network::Network>,
    /// The root is a tmpfs the harness mounted (and unmounts).
    root_mounted: bool,
    open_files_limit: Option<(u64, u64)>,
    env: Vec<(String, String)>,
}

impl Berthd {
    /// Starts berthd and waits until its socket answers.
    pub fn start(options: BerthdOptions) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let (cni_conf_dir, network) = match options.cni_conf_dir {
            Some(dir) => (dir, None),
            None => {
                let conf = dir.path().join("net.d");
                let network = network::Network::claim(&dir.path().join("cni-ipam"))?;
                if options.pod_cidr_network {
                    network.write_pod_cidr_conf(&conf)?;
                } else {
                    network.write_conf(&conf)?;
                }
                (conf, Some(network))
            }
        };
        let registry = options
            .registry_config_path
            .unwrap_or_else(|| dir.path().join("certs.d"));
        let bin_dirs = match &options.cni_bin_dirs {
            Some(dirs) => {
                let quoted: Vec<String> = dirs
                    .iter()
                    .map(|d| format!("{:?}", d.display().to_string()))
                    .collect();
                format!("bin_dirs = [{}]\n", quoted.join(", "))
            }
            None => String::new(),
        };
        let bin_dirs = match options.cni_plugin_timeout_seconds {
            Some(seconds) => format!("{bin_dirs}plugin_timeout_seconds = {seconds}\n"),
            None => bin_dirs,
        };
        let config = format!(
            "root = \"{root}\"\nstate = \"{state}\"\n\n[grpc]\nsocket = \"{socket}\"\n\n\
             [log]\nlevel = \"debug\"\n\n[metrics]\naddress = \"127.0.0.1:0\"\n\n\
             [cni]\nconf_dir = \"{cni}\"\n{bin_dirs}\n[registry]\nconfig_path = \"{registry}\"\n{extra}",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = dir.path().join("berth.sock").display(),
            cni = cni_conf_dir.display(),
            registry = registry.display(),
            extra = options.extra_config,
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let mut berthd = Self {
            child: None,
            dir,
            network,
            root_mounted: false,
            open_files_limit: options.open_files_limit,
            env: options.env,
        };
        if let Some(mib) = options.root_size_mib {
            let root = berthd.root_dir();
            std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
            nix::mount::mount(
                Some("tmpfs"),
                &root,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={mib}m,mode=0700").as_str()),
            )
            .map_err(|e| format!("cannot mount a {mib} MiB tmpfs root: {e}"))?;
            berthd.root_mounted = true;
        }
        berthd.restart()?;
        Ok(berthd)
    }

    /// Starts the daemon (again) on the same directories, as after a crash
    /// or a reboot of the agent, and waits until it answers.
    pub fn restart(&mut self) -> TestResult {
        if self.child.is_some() {
            return Err("berthd is still running".to_owned());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))
            .map_err(|e| e.to_string())?;
        // prlimit sets the limits and execs berthd: the PID stays the same.
        let mut command = match self.open_files_limit {
            Some((soft, hard)) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(berthd_binary());
                prlimit
            }
            None => Command::new(berthd_binary()),
        };
        let child = command
            .arg("--config")
            .arg(self.config_path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", berthd_binary().display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Stops the daemon with SIGTERM (its containers keep running, as on a
    /// restart of the agent) and starts it again with `env`: one daemon
    /// serves a group of tests that each arm a failpoint of their own.
    pub fn restart_with_env(&mut self, env: Vec<(String, String)>) -> TestResult {
        let status = self.terminate()?;
        if !status.success() {
            return Err(format!(
                "berthd exited with {status} on SIGTERM:\n{}",
                self.log()
            ));
        }
        self.env = env;
        self.restart()
    }

    /// Replaces the environment variables of the next [`Berthd::restart`].
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// Waits up to `timeout` for the daemon to exit by itself (say at a
    /// failpoint) and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let child = self.child.as_mut().ok_or("berthd is not running")?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(status) => {
                self.child = None;
                Ok(status)
            }
            None => Err(format!(
                "berthd still runs after {} s:\n{}",
                timeout.as_secs(),
                self.log()
            )),
        }
    }

    /// What the daemon's pods hold on its own CNI network (interfaces on
    /// its bridge, reserved IPs); empty when the harness wrote no network.
    pub fn network_leaks(&self) -> Vec<String> {
        self.network
            .as_ref()
            .map(network::Network::leaks)
            .unwrap_or_default()
    }

    /// The subnet of the daemon's own CNI network (`10.88.N.0/24`), when
    /// the harness wrote the config.
    pub fn subnet(&self) -> Option<String> {
        self.network.as_ref().map(network::Network::subnet)
    }

    /// The config file the harness wrote.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn wait_ready(&mut self) -> TestResult {
        let socket = self.socket();
        let metrics_file = self.state_dir().join("metrics-address");
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
            }
            UnixStream::connect(&socket).is_ok() && metrics_file.exists()
        });
        if let Some(status) = exited {
            self.child = None;
            return Err(format!(
                "berthd exited at start-up ({status}):\n{}",
                self.log()
            ));
        }
        if !ready {
            return Err(format!(
                "berthd did not answer within 30 s:\n{}",
                self.log()
            ));
        }
        Ok(())
    }

    /// The PID of the daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temporary directory that holds everything of this daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("berth.sock")
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The CRI endpoint as crictl and critest take it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// Runs crictl against this daemon.
    pub fn crictl(&self, args: &[&str]) -> Result<Output, String> {
        let endpoint = self.endpoint();
        Command::new(tool("crictl")?)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["--timeout", "60s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run crictl: {e}"))
    }

    /// Runs crictl and returns its stdout, failing on a non-zero exit.
    pub fn crictl_ok(&self, args: &[&str]) -> Result<String, String> {
        let output = self.crictl(args)?;
        if !output.status.success() {
            return Err(format!(
                "crictl {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The text of the daemon's `/metrics` endpoint.
    pub fn metrics(&self) -> Result<String, String> {
        let address = std::fs::read_to_string(self.state_dir().join("metrics-address"))
            .map_err(|e| format!("metrics-address: {e}"))?;
        http_get(address.trim(), "/metrics")
    }

    /// The CRI calls this daemon has answered since it started, by
    /// (method, code), from `berth_cri_requests_total` of [`Berthd::metrics`].
    pub fn cri_calls(&self) -> Result<std::collections::BTreeMap<(String, String), u64>, String> {
        let mut calls = std::collections::BTreeMap::new();
        for line in self.metrics()?.lines() {
            let Some(labels) = line.strip_prefix("berth_cri_requests_total{") else {
                continue;
            };
            let Some((labels, value)) = labels.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let count: f64 = value.trim().parse().unwrap_or(0.0);
            calls.insert((label("method"), label("code")), count as u64);
        }
        Ok(calls)
    }

    /// Sends SIGTERM, waits for a clean exit, then checks for leaks.
    pub fn stop(mut self) -> TestResult {
        let status = self.terminate()?;
        if !status.success() {
            return Err(format!(
                "berthd exited with {status} on SIGTERM:\n{}",
                self.log()
            ));
        }
        if self.socket().exists() {
            return Err("berthd left its socket behind after SIGTERM".to_owned());
        }
        self.unmount_root();
        let mut found = leaks::find(self.dir.path());
        if let Some(network) = &self.network {
            found.extend(network.leaks());
        }
        if !found.is_empty() {
            return Err(format!("berthd leaked:\n  {}", found.join("\n  ")));
        }
        Ok(())
    }

    /// SIGTERM to the daemon's PID, SIGKILL if it has not exited in 30 s.
    fn terminate(&mut self) -> Result<ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("berthd is not running".to_owned());
        };
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        let mut status = None;
        wait_until(Duration::from_secs(30), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(status) => Ok(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("berthd ignored SIGTERM for 30 s:\n{}", self.log()))
            }
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) -> TestResult {
        let mut child = self.child.take().ok_or("berthd is not running")?;
        child.kill().map_err(|e| e.to_string())?;
        child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Berthd {
    fn unmount_root(&mut self) {
        if std::mem::take(&mut self.root_mounted) {
            let root = self.root_dir();
            if let Err(e) = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cannot unmount the test root {}: {e}", root.display());
            }
        }
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A test that failed before stop(): end the daemon it started.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.unmount_root();
    }
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, signal);
}

/// Writes `value` as `name` in the daemon's directory and returns the path,
/// for crictl's JSON arguments.
pub fn write_json(berthd: &Berthd, name: &str, value: serde_json::Value) -> Result<String, String> {
    let path = berthd.dir().join(name);
    std::fs::write(&path, value.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// The state crictl shows for container `id` (`CONTAINER_RUNNING`, ...).
pub fn container_state(berthd: &Berthd, id: &str) -> Result<String, String> {
    crictl_state(berthd, "inspect", id)
}

/// The state crictl shows for pod `id` (`SANDBOX_READY`, `SANDBOX_NOTREADY`).
pub fn pod_state(berthd: &Berthd, id: &str) -> Result<String, String> {
    crictl_state(berthd, "inspectp", id)
}

fn crictl_state(berthd: &Berthd, inspect: &str, id: &str) -> Result<String, String> {
    let template = ["-o", "go-template", "--template", "{{.status.state}}"];
    let mut args = vec![inspect];
    args.extend(template);
    args.push(id);
    Ok(berthd.crictl_ok(&args)?.trim().to_owned())
}

/// A bare HTTP/1.0 GET on loopback, returning the body of a 200 answer.
pub fn http_get(address: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("connect {address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer from {address}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_owned())
}

/// The loopback registry with the test images, run by `hack/registry.sh`
/// on a port it picks (5000 when free), in a directory of its own.
#[derive(Debug)]
pub struct Registry {
    /// Holds the registry's dir (`registry/`) and the mirrors (`certs.d/`).
    work: tempfile::TempDir,
    port: u16,
}

impl Registry {
    /// As [`Registry::start`], for a suite whose tests need it: a registry
    /// that cannot start is reported and `None`, so those tests fail with
    /// the reason while the others still run.
    pub fn start_or_report(only: Option<&str>) -> Option<Self> {
        Self::start(only)
            .map_err(|e| println!("cannot start the loopback registry: {e}"))
            .ok()
    }

    /// Starts the registry on a free loopback port, pushes the test images
    /// (`only`: a regex of upstream names, as build-and-push.sh's ONLY) and
    /// writes hosts.toml mirrors for every upstream registry.
    pub fn start(only: Option<&str>) -> Result<Self, String> {
        Self::start_with_large(only, 0)
    }

    /// As [`Registry::start`], with `bench/large:1` of `large_mib` MiB
    /// (0 leaves it out).
    pub fn start_with_large(only: Option<&str>, large_mib: u32) -> Result<Self, String> {
        let work = tempfile::Builder::new()
            .prefix("berth-e2e-registry-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let dir = work.path().join("registry");
        let run = |args: &[&str], env: &[(&str, &str)]| -> Result<String, String> {
            registry_script(&dir, args, env)
        };
        // Without --port the script takes a free port and records it.
        run(&["start"], &[])?;
        let port = run(&["port"], &[])?;
        let port = port
            .trim()
            .parse()
            .map_err(|e| format!("hack/registry.sh port printed {port:?}: {e}"))?;
        let registry = Self { work, port };
        let large_mib = large_mib.to_string();
        // A private build directory: the default one in /tmp is shared with
        // every other user of build-and-push.sh on the machine, and a
        // concurrent build there rewrites the layout under our push.
        let images = dir.join("images").to_string_lossy().into_owned();
        let mut env = vec![("LARGE_MIB", large_mib.as_str()), ("OUT", images.as_str())];
        if let Some(only) = only {
            env.push(("ONLY", only));
        }
        run(&["push-images"], &env)?;
        run(&["mirrors", &registry.mirrors_dir().to_string_lossy()], &[])?;
        Ok(registry)
    }

    /// The hosts.toml directory that points every upstream at this registry.
    pub fn mirrors_dir(&self) -> PathBuf {
        self.work.path().join("certs.d")
    }

    /// `127.0.0.1:PORT`, the registry's own name in image references.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let dir = self.work.path().join("registry");
        if let Err(e) = registry_script(&dir, &["stop"], &[]) {
            eprintln!("{e}");
        }
    }
}

/// Runs `hack/registry.sh ARGS --dir DIR` (the port is the one DIR records)
/// and returns its stdout.
fn registry_script(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let script = repo_root().join("hack/registry.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "hack/registry.sh {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Runs tests in order and reports like a test runner. A failed test runs
/// once more: passing then, it counts as passed and is reported as flaky
/// (in the summary and in [`flaky_file`]); failing twice, it fails.
#[derive(Debug)]
pub struct Suite {
    passed: usize,
    failed: Vec<String>,
    /// "name (1 of 2 attempts failed)" for each test that passed on retry.
    flaky: Vec<String>,
    attempts: u32,
}

impl Default for Suite {
    fn default() -> Self {
        Self {
            passed: 0,
            failed: Vec::new(),
            flaky: Vec::new(),
            attempts: 2,
        }
    }
}

/// Where the suites append their flaky tests, one line each, for CI to
/// print: `$BERTH_E2E_FLAKY`, else `e2e-flaky.txt` in the target dir.
pub fn flaky_file() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_E2E_FLAKY") {
        return PathBuf::from(path);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("e2e-flaky.txt")
}

impl Suite {
    pub fn new() -> Self {
        Self::default()
    }

    /// A suite whose tests run once: for a test that retries inside itself
    /// (critest's `--ginkgo.flake-attempts`) and takes minutes.
    pub fn without_retry() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// Runs one test, again after a failure; a panic counts as a failure.
    pub fn run(&mut self, name: &str, mut test: impl FnMut() -> TestResult) {
        let mut failures = 0;
        for attempt in 1..=self.attempts {
            let label = if attempt == 1 {
                name.to_owned()
            } else {
                format!("{name} (attempt {attempt} of {})", self.attempts)
            };
            eprintln!("test {label} ...");
            let started = Instant::now();
            let outcome = run_catching(&mut test);
            let seconds = started.elapsed().as_secs_f64();
            match outcome {
                Ok(()) => {
                    println!("test {label} ... ok ({seconds:.1} s)");
                    self.passed += 1;
                    if failures > 0 {
                        self.flaky
                            .push(format!("{name} ({failures} of {attempt} attempts failed)"));
                    }
                    return;
                }
                Err(message) => {
                    println!("test {label} ... FAILED ({seconds:.1} s)\n{message}\n");
                    failures += 1;
                }
            }
        }
        self.failed.push(name.to_owned());
    }

    /// Prints the flaky tests and the closing line, appends the flaky ones
    /// to [`flaky_file`], and exits non-zero when a test failed.
    pub fn finish(self) -> ! {
        if !self.flaky.is_empty() {
            let suite = suite_name();
            println!("flaky (passed on retry):");
            let mut lines = String::new();
            for test in &self.flaky {
                println!("    flaky: {test}");
                lines.push_str(&format!("{suite}: flaky: {test}\n"));
            }
            let path = flaky_file();
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(lines.as_bytes()));
            if let Err(e) = appended {
                println!("cannot append to {}: {e}", path.display());
            }
        }
        if !self.failed.is_empty() {
            println!("failures:");
            for name in &self.failed {
                println!("    {name}");
            }
        }
        println!("{} passed, {} failed", self.passed, self.failed.len());
        std::process::exit(if self.failed.is_empty() { 0 } else { 1 })
    }
}

/// Runs a test, turning a panic into its failure message.
fn run_catching(test: &mut impl FnMut() -> TestResult) -> TestResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(test)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned());
        Err(format!("panicked: {message}"))
    })
}

/// The test binary's name without cargo's hash: `crictl`, `images`, ...
fn suite_name() -> String {
    let exe = std::env::args().next().unwrap_or_default();
    let stem = Path::new(&exe)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_that_fails_once_passes_as_flaky_and_one_that_fails_twice_fails() {
        let mut suite = Suite::new();
        let mut calls = 0;
        suite.run("flaky_one", || {
            calls += 1;
            if calls == 1 {
                Err("first attempt".to_owned())
            } else {
                Ok(())
            }
        });
        let mut broken_calls = 0;
        suite.run("broken_one", || {
            broken_calls += 1;
            Err("always".to_owned())
        });
        suite.run("good_one", || Ok(()));
        assert_eq!(calls, 2);
        assert_eq!(broken_calls, 2);
        assert_eq!(suite.passed, 2);
        assert_eq!(suite.failed, ["broken_one"]);
        assert_eq!(suite.flaky, ["flaky_one (1 of 2 attempts failed)"]);
    }

    #[test]
    fn without_retry_runs_a_failed_test_once() {
        let mut suite = Suite::without_retry();
        let mut calls = 0;
        suite.run("once", || {
            calls += 1;
            Err("no".to_owned())
        });
        assert_eq!(calls, 1);
        assert_eq!(suite.failed, ["once"]);
        assert!(suite.flaky.is_empty());
    }
}
