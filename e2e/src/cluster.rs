//! A one-node Kubernetes cluster on loopback around a harness [`Berthd`]:
//! etcd, kube-apiserver (serving certificate from a CA the harness makes
//! with openssl, static bearer tokens), kube-scheduler,
//! kube-controller-manager and a [`Kubelet`] registered as the node
//! [`NODE_NAME`], with `kubectl` against it.
//!
//! Everything listens on 127.0.0.1 on free ports and keeps its files in
//! one temporary directory; every process is stopped by its PID.
//! Authorization is AlwaysAllow: nothing but the test reaches loopback.
//! kubelet refuses a loopback node IP, so its InternalIP is the host's; the
//! API server reaches it by its Hostname address, the node name
//! `localhost`.

use crate::kubelet::{kube_binary, Kubelet, KubeletOptions};

/// The node's name: its Hostname address, which the API server connects
/// to for logs, resolves to loopback, where kubelet listens.
pub const NODE_NAME: &str = "localhost";
use crate::{wait_until, Berthd, TestResult};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running control plane and its kubelet.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    /// etcd, apiserver, scheduler, controller-manager, in start order.
    processes: Vec<(&'static str, Child)>,
    kubelet: Option<Kubelet>,
}

const TOKEN: &str = "berth-e2e-admin-token";

impl Cluster {
    /// Starts the control plane, then kubelet against `berthd`, and waits
    /// until the node is registered.
    pub fn start(berthd: &Berthd) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-cluster-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut cluster = Self {
            dir,
            processes: Vec::new(),
            kubelet: None,
        };
        cluster.make_certificates()?;
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let d = cluster.dir.path().to_owned();
        let path = |name: &str| d.join(name).to_string_lossy().into_owned();
        cluster.spawn(
            "etcd",
            &[
                "--name=berth-e2e",
                &format!("--data-dir={}", path("etcd")),
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                &format!("--initial-cluster=berth-e2e=http://127.0.0.1:{etcd_peer_port}"),
                "--listen-metrics-urls=",
            ],
        )?;
        std::fs::write(
            d.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )
        .map_err(|e| e.to_string())?;
        cluster.spawn(
            "kube-apiserver",
            &[
                &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--tls-cert-file={}", path("apiserver.crt")),
                &format!("--tls-private-key-file={}", path("apiserver.key")),
                &format!("--client-ca-file={}", path("ca.crt")),
                &format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=AlwaysAllow",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", path("sa.key")),
                &format!("--service-account-signing-key-file={}", path("sa.key")),
                "--api-audiences=https://kubernetes.default.svc",
                &format!("--cert-dir={}", path("apiserver-certs")),
                "--kubelet-preferred-address-types=Hostname",
                "--enable-priority-and-fairness=false",
                // Loopback is no address for the kubernetes Service endpoints.
                "--endpoint-reconciler-type=none",
            ],
        )?;
        let kubeconfig = cluster.kubeconfig();
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "berth-e2e", "cluster": {
                "server": format!("https://127.0.0.1:{api_port}"),
                "certificate-authority": path("ca.crt"),
            }}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "berth-e2e", "context": {"cluster": "berth-e2e", "user": "admin"}}],
            "current-context": "berth-e2e",
        });
        std::fs::write(&kubeconfig, config.to_string()).map_err(|e| e.to_string())?;
        let mut last = String::new();
        let up = wait_until(Duration::from_secs(120), || {
            match cluster.kubectl_ok(&["get", "--raw", "/readyz"]) {
                Ok(body) => body.trim() == "ok",
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        if !up {
            return Err(format!(
                "the API server is not ready after 120 s: {last}\n{}",
                cluster.logs()
            ));
        }
        let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig.display());
        cluster.spawn(
            "kube-scheduler",
            &[
                &kubeconfig_arg,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()?),
            ],
        )?;
        cluster.spawn(
            "kube-controller-manager",
            &[
                &kubeconfig_arg,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()?),
                &format!("--root-ca-file={}", path("ca.crt")),
                &format!("--service-account-private-key-file={}", path("sa.key")),
                "--use-service-account-credentials=false",
            ],
        )?;
        let kubelet = Kubelet::start(
            berthd,
            KubeletOptions {
                kubeconfig: Some(kubeconfig),
                node_name: Some(NODE_NAME.to_owned()),
                ..KubeletOptions::default()
            },
        )?;
        cluster.kubelet = Some(kubelet);
        let registered = wait_until(Duration::from_secs(60), || {
            cluster.kubectl_ok(&["get", "node", NODE_NAME]).is_ok()
        });
        if !registered {
            return Err(format!(
                "node {NODE_NAME} did not register within 60 s\n{}",
                cluster.kubelet().log_tail()
            ));
        }
        Ok(cluster)
    }

    /// The kubelet of the node.
    pub fn kubelet(&self) -> &Kubelet {
        self.kubelet.as_ref().expect("the cluster has a kubelet")
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A `kubectl` command against the cluster, not yet run.
    pub fn kubectl_command(&self, args: &[&str]) -> Result<Command, String> {
        let mut command = Command::new(kube_binary("kubectl")?);
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=60s")
            .args(args)
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Runs kubectl.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output, String> {
        self.kubectl_command(args)?
            .output()
            .map_err(|e| format!("cannot run kubectl: {e}"))
    }

    /// Runs kubectl and returns its stdout, failing on a non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, String> {
        let output = self.kubectl(args)?;
        if !output.status.success() {
            return Err(format!(
                "kubectl {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl apply -f -` of one object.
    pub fn apply(&self, object: &serde_json::Value) -> TestResult {
        let path = self.dir.path().join("apply.json");
        std::fs::write(&path, object.to_string()).map_err(|e| e.to_string())?;
        self.kubectl_ok(&["apply", "-f", &path.to_string_lossy()])
            .map(drop)
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl_ok(&all)?;
        serde_json::from_str(&out).map_err(|e| format!("kubectl {all:?} is not JSON ({e})"))
    }

    /// The last lines of each control-plane log.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (name, _) in &self.processes {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            all.push_str(&format!(
                "--- {name}:\n{}\n",
                lines[lines.len().saturating_sub(20)..].join("\n")
            ));
        }
        all
    }

    /// Stops kubelet (undoing its host changes), then the control plane.
    pub fn stop(mut self) -> TestResult {
        let stopped = self.kubelet.take().map_or(Ok(()), Kubelet::stop);
        self.stop_processes();
        stopped
    }

    fn stop_processes(&mut self) {
        while let Some((_, mut child)) = self.processes.pop() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if !wait_until(Duration::from_secs(20), || {
                child.try_wait().ok().flatten().is_some()
            }) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> TestResult {
        let binary = kube_binary(name)?;
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        self.processes.push((name, child));
        Ok(())
    }

    /// A CA, the API server's certificate for 127.0.0.1 signed by it, and
    /// the service-account signing key.
    fn make_certificates(&self) -> TestResult {
        let d = self.dir.path();
        std::fs::write(
            d.join("apiserver.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default\n",
        )
        .map_err(|e| e.to_string())?;
        let steps: &[&[&str]] = &[
            &["genrsa", "-out", "ca.key", "2048"],
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/CN=berth-e2e-ca",
                "-days",
                "2",
                "-out",
                "ca.crt",
            ],
            &["genrsa", "-out", "apiserver.key", "2048"],
            &[
                "req",
                "-new",
                "-key",
                "apiserver.key",
                "-subj",
                "/CN=kube-apiserver",
                "-out",
                "apiserver.csr",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "apiserver.ext",
                "-out",
                "apiserver.crt",
            ],
            &["genrsa", "-out", "sa.key", "2048"],
        ];
        for args in steps {
            openssl(d, args)?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.kubelet.take());
        self.stop_processes();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> TestResult {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    crate::kubelet::free_port()
}
