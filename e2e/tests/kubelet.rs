//! A real kubelet (standalone: no API server, static pods from a manifest
//! directory) against a fresh berthd: pods reach Running with their IP from
//! the node's pod CIDR, crashing containers restart with back-off, probes
//! (exec liveness, httpGet readiness on the pod IP), init containers, an
//! emptyDir shared by two containers, `/containerLogs`, and a `kill -9` of
//! berthd under a running kubelet.
//!
//! Every test ends by removing its manifests: kubelet must then remove
//! every pod and container, the pods' cgroups must be gone, and berthd's
//! leak check (mounts, network namespaces, shims, veths, IPs) must find
//! nothing. kubelet's log may hold no `rpc error` from berth but the ones
//! listed in [`EXPECTED_RPC_ERRORS`]. At the end the suite prints the CRI
//! calls kubelet made (berthd's `/metrics`) by method and code.

use berth_e2e::kubelet::{Kubelet, KubeletOptions};
use berth_e2e::leaks::process_exited;
use berth_e2e::{ensure, wait_until, Berthd, BerthdOptions, Registry, Suite, TestResult};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const NAMESPACE: &str = "berth-e2e";

/// `rpc error` lines kubelet logs that are not a defect of berth;
/// anything else fails.
const EXPECTED_RPC_ERRORS: &[&str] = &[
    // Not berth's: kubelet's runtime manager caches Version for 60 s and
    // refreshes it with the context it was built with, which kubelet has
    // cancelled by then (kuberuntime_manager.go, versionCache); the call
    // never leaves kubelet.
    "\"Version from runtime service failed\" err=\"rpc error: code = Canceled desc = context canceled\"",
];

/// While berthd is down (the kill -9 test), kubelet's calls cannot connect.
const DOWNTIME_RPC_ERRORS: &[&str] = &["code = Unavailable desc = connection error"];

/// Once a pod's manifest is gone, kubelet asks for the status of the
/// containers it has just removed while it tears the pod down (its
/// ContainerStatus call and its container deletor both log the answer):
/// NotFound is the right answer.
const TEARDOWN_RPC_ERRORS: &[&str] = &["rpc error: code = NotFound desc = container "];

/// CRI calls by (method, code), summed over the suite's daemons.
static CALLS: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());
/// `rpc error` lines by expected pattern, summed over the suite.
static RPC_ERRORS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn main() {
    let mut suite = Suite::new();
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox|pause"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    let with_kubelet = |test: fn(&mut Berthd, &Kubelet) -> TestResult, downtime: bool| {
        let mirrors = mirrors.clone();
        move || {
            let mirrors = mirrors.clone().ok_or("no registry")?;
            run_with_kubelet(mirrors, downtime, test)
        }
    };
    suite.run(
        "static_pod_runs_with_an_ip_of_the_pod_cidr_and_passes_an_http_readiness_probe",
        with_kubelet(static_pod_runs, false),
    );
    suite.run(
        "crashing_container_restarts_with_back_off_and_its_exit_code",
        with_kubelet(crashing_container_restarts, false),
    );
    suite.run(
        "failing_exec_liveness_probe_restarts_the_container",
        with_kubelet(liveness_probe_restarts, false),
    );
    suite.run(
        "init_container_and_empty_dir_shared_by_two_containers_with_container_logs",
        with_kubelet(init_and_empty_dir, false),
    );
    suite.run(
        "kill_9_of_berthd_restarts_no_container_and_an_exit_meanwhile_is_seen",
        with_kubelet(kill_9_of_berthd, true),
    );
    drop(registry);
    print_totals();
    suite.finish();
}

/// The pod CIDR the tests give kubelet: the upper half of the daemon's own
/// /24. Its network has no range of its own
/// ([`BerthdOptions::pod_cidr_network`]): every pod address comes from
/// the CIDR kubelet sends with UpdateRuntimeConfig.
fn pod_cidr(berthd: &Berthd) -> Result<String, String> {
    let subnet = berthd.subnet().ok_or("the harness wrote no network")?;
    let base = subnet
        .strip_suffix(".0/24")
        .ok_or_else(|| format!("unexpected subnet {subnet}"))?;
    Ok(format!("{base}.128/25"))
}

/// Starts berthd and kubelet, runs `test`, then removes every manifest and
/// checks that kubelet removed everything, that its log holds only expected
/// `rpc error`s, and that berthd leaked nothing.
fn run_with_kubelet(
    mirrors: PathBuf,
    downtime: bool,
    test: fn(&mut Berthd, &Kubelet) -> TestResult,
) -> TestResult {
    let mut berthd = Berthd::start(BerthdOptions {
        registry_config_path: Some(mirrors),
        pod_cidr_network: true,
        extra_config: "\n[image]\npinned_images = [\"registry.k8s.io/pause:3.10\"]\n".to_owned(),
        ..BerthdOptions::default()
    })?;
    let cidr = pod_cidr(&berthd)?;
    let kubelet = match Kubelet::start(
        &berthd,
        KubeletOptions {
            pod_cidr: Some(cidr),
            ..KubeletOptions::default()
        },
    ) {
        Ok(kubelet) => kubelet,
        Err(e) => {
            let stopped = berthd.stop();
            return Err::<(), String>(e).and(stopped);
        }
    };
    let outcome = test(&mut berthd, &kubelet);
    let teardown = kubelet.log_lines();
    let removed = remove_everything(&berthd, &kubelet);
    let logged = check_rpc_errors(&kubelet, downtime, teardown);
    let counted = count_calls(&berthd);
    let kubelet_stopped = kubelet.stop();
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let stopped = berthd.stop();
    all([
        outcome,
        removed,
        logged,
        counted,
        kubelet_stopped,
        cleaned,
        stopped,
    ])
}

/// Every failure of `results`, one after another.
fn all<const N: usize>(results: [TestResult; N]) -> TestResult {
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    ensure(errors.is_empty(), || errors.join("\n--\n"))
}

/// Removes every manifest and waits until kubelet has removed every pod
/// and container from berthd and the pods' cgroups are gone.
fn remove_everything(berthd: &Berthd, kubelet: &Kubelet) -> TestResult {
    let manifests = std::fs::read_dir(kubelet.manifests()).map_err(|e| e.to_string())?;
    for entry in manifests.filter_map(|e| e.ok()) {
        std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
    }
    let mut left = String::new();
    let gone = wait_until(Duration::from_secs(120), || {
        // Once a second: crictl's calls count in berthd's metrics too.
        std::thread::sleep(Duration::from_secs(1));
        let pods = berthd.crictl_ok(&["pods", "-q"]).unwrap_or_else(|e| e);
        let containers = berthd.crictl_ok(&["ps", "-aq"]).unwrap_or_else(|e| e);
        let cgroups = kubelet.pod_cgroups();
        left = format!("pods: {pods:?}, containers: {containers:?}, pod cgroups: {cgroups:?}");
        pods.trim().is_empty() && containers.trim().is_empty() && cgroups.is_empty()
    });
    ensure(gone, || {
        format!(
            "kubelet did not remove everything within 120 s of the manifests' removal: {left}\n{}",
            kubelet.log_tail()
        )
    })
}

/// Fails on an `rpc error` line of kubelet's log that no expected pattern
/// covers; counts the expected ones. Lines from `teardown` on were logged
/// after the manifests' removal.
fn check_rpc_errors(kubelet: &Kubelet, downtime: bool, teardown: usize) -> TestResult {
    let mut expected: Vec<&str> = EXPECTED_RPC_ERRORS.to_vec();
    if downtime {
        expected.extend_from_slice(DOWNTIME_RPC_ERRORS);
    }
    let mut unexpected = Vec::new();
    let mut counts = RPC_ERRORS.lock().expect("not poisoned");
    for (number, line) in kubelet.rpc_errors() {
        let in_teardown = number >= teardown;
        let found = expected
            .iter()
            .chain(TEARDOWN_RPC_ERRORS.iter().filter(|_| in_teardown));
        match found.into_iter().find(|p| line.contains(**p)) {
            Some(pattern) => *counts.entry((*pattern).to_owned()).or_default() += 1,
            None => unexpected.push(format!(
                "{} {line}",
                if in_teardown { "(teardown)" } else { "(test)" }
            )),
        }
    }
    ensure(unexpected.is_empty(), || {
        format!(
            "kubelet logged {} unexpected rpc error(s):\n{}",
            unexpected.len(),
            unexpected.join("\n")
        )
    })
}

/// Adds berthd's `berth_cri_requests_total` counters to [`CALLS`].
fn count_calls(berthd: &Berthd) -> TestResult {
    let mut calls = CALLS.lock().expect("not poisoned");
    for (key, count) in berthd.cri_calls()? {
        *calls.entry(key).or_default() += count;
    }
    Ok(())
}

fn print_totals() {
    println!("CRI calls during the suite (method code count):");
    for ((method, code), count) in CALLS.lock().expect("not poisoned").iter() {
        println!("    {method} {code} {count}");
    }
    println!("expected rpc errors in kubelet's logs:");
    for (pattern, count) in RPC_ERRORS.lock().expect("not poisoned").iter() {
        println!("    {count} × {pattern}");
    }
}

/// A pod manifest in the test namespace.
fn pod(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["terminationGracePeriodSeconds"] = json!(2);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    })
}

fn container(name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "image": BUSYBOX,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
    })
}

fn container_status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn restart_count(pod: &Value, name: &str) -> u64 {
    container_status(pod, name)
        .and_then(|c| c["restartCount"].as_u64())
        .unwrap_or(0)
}

/// The CRI id of a container from its `containerID` (`berth://<id>`).
fn container_id(pod: &Value, name: &str) -> Result<String, String> {
    let id = container_status(pod, name)
        .and_then(|c| c["containerID"].as_str())
        .ok_or_else(|| format!("container {name} has no id yet: {}", pod["status"]))?;
    id.split_once("://")
        .map(|(_, id)| id.to_owned())
        .ok_or_else(|| format!("containerID {id:?} is not runtime://id"))
}

fn crictl_json(berthd: &Berthd, args: &[&str]) -> Result<Value, String> {
    let out = berthd.crictl_ok(args)?;
    serde_json::from_str(&out).map_err(|e| format!("crictl {args:?} is not JSON ({e}): {out}"))
}

fn static_pod_runs(berthd: &mut Berthd, kubelet: &Kubelet) -> TestResult {
    let mut web = container(
        "web",
        "mkdir -p /www && echo ready >/www/index.html && exec httpd -f -p 8080 -h /www",
    );
    web["readinessProbe"] = json!({
        "httpGet": {"path": "/index.html", "port": 8080},
        "periodSeconds": 1,
    });
    kubelet.put_manifest("web", &pod("web", json!({"containers": [web]})))?;
    let pod = kubelet.wait_pod("web", Duration::from_secs(120), "Running and ready", |p| {
        p["status"]["phase"] == "Running"
            && container_status(p, "web").is_some_and(|c| c["ready"] == true)
    })?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
    let cidr = pod_cidr(berthd)?;
    // 10.88.N.128/25: the fourth octet of every address in it is >= 128.
    let prefix = cidr.trim_end_matches("128/25");
    let in_cidr = ip
        .strip_prefix(prefix)
        .and_then(|last| last.parse::<u8>().ok())
        .is_some_and(|last| last >= 128);
    ensure(in_cidr, || {
        format!(
            "pod IP {ip:?} is not in the pod CIDR {cidr}: {}",
            pod["status"]
        )
    })?;
    // berthd shows the CIDR kubelet sent and gave the pod the same IP.
    let info = crictl_json(berthd, &["info"])?;
    ensure(info["runtimeConfig"]["podCIDRs"] == json!([cidr]), || {
        format!(
            "crictl info does not show the pod CIDR {cidr}: {}",
            info["runtimeConfig"]["podCIDRs"]
        )
    })?;
    let ids = berthd.crictl_ok(&["pods", "-q", "--name", "web"])?;
    let sandbox = ids.lines().next().ok_or("crictl pods lists no pod web")?;
    let status = crictl_json(berthd, &["inspectp", sandbox])?;
    ensure(status["status"]["network"]["ip"] == ip, || {
        format!(
            "berthd's pod IP differs from kubelet's {ip}: {}",
            status["status"]
        )
    })
}

fn crashing_container_restarts(_berthd: &mut Berthd, kubelet: &Kubelet) -> TestResult {
    let spec = json!({
        "restartPolicy": "Always",
        "containers": [container("crash", "echo crashing; exit 7")],
    });
    kubelet.put_manifest("crash", &pod("crash", spec))?;
    // kubelet's back-off starts at 10 s and doubles: two restarts take
    // about 30 s, and between them the container waits in CrashLoopBackOff.
    let mut backed_off = false;
    let pod = kubelet.wait_pod("crash", Duration::from_secs(150), "restarted twice", |p| {
        let status = container_status(p, "crash");
        backed_off |= status.is_some_and(|c| c["state"]["waiting"]["reason"] == "CrashLoopBackOff");
        restart_count(p, "crash") >= 2 && backed_off
    })?;
    let last = &container_status(&pod, "crash").ok_or("no status")?["lastState"]["terminated"];
    ensure(last["exitCode"] == 7, || {
        format!("the last exit is not code 7: {}", pod["status"])
    })?;
    ensure(last["reason"] == "Error", || {
        format!("the last exit's reason is not Error: {}", pod["status"])
    })
}

fn liveness_probe_restarts(_berthd: &mut Berthd, kubelet: &Kubelet) -> TestResult {
    // Healthy at first, then the probe's file goes and the probe fails.
    let mut probed = container(
        "probed",
        "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600",
    );
    probed["livenessProbe"] = json!({
        "exec": {"command": ["cat", "/tmp/healthy"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    kubelet.put_manifest("probed", &pod("probed", json!({"containers": [probed]})))?;
    let pod = kubelet.wait_pod(
        "probed",
        Duration::from_secs(120),
        "restarted by its probe",
        |p| restart_count(p, "probed") >= 1,
    )?;
    let last = &container_status(&pod, "probed").ok_or("no status")?["lastState"]["terminated"];
    // Killed by kubelet (SIGTERM to a shell's `sleep`, which ignores it as
    // PID 1, then SIGKILL after the grace period): 137 or 143.
    ensure(last["exitCode"] == 137 || last["exitCode"] == 143, || {
        format!(
            "the probe's restart did not kill the container: {}",
            pod["status"]
        )
    })?;
    ensure(kubelet.log().contains("failed liveness probe"), || {
        "kubelet's log does not say the liveness probe failed".to_owned()
    })
}

fn init_and_empty_dir(_berthd: &mut Berthd, kubelet: &Kubelet) -> TestResult {
    let mount = json!([{"name": "data", "mountPath": "/data"}]);
    let with_data = |mut c: Value| {
        c["volumeMounts"] = mount.clone();
        c
    };
    let spec = json!({
        "volumes": [{"name": "data", "emptyDir": {}}],
        "initContainers": [with_data(container("init", "echo from-init >/data/init"))],
        "containers": [
            with_data(container(
                "writer",
                "cat /data/init >/data/shared.tmp && echo from-writer >>/data/shared.tmp && mv /data/shared.tmp /data/shared && exec sleep 3600",
            )),
            with_data(container(
                "reader",
                "until [ -f /data/shared ]; do sleep 0.2; done; cat /data/shared; exec sleep 3600",
            )),
        ],
    });
    kubelet.put_manifest("shared", &pod("shared", spec))?;
    let pod = kubelet.wait_pod("shared", Duration::from_secs(120), "Running", |p| {
        p["status"]["phase"] == "Running"
            && ["writer", "reader"]
                .iter()
                .all(|c| container_status(p, c).is_some_and(|s| s["ready"] == true))
    })?;
    let init = pod["status"]["initContainerStatuses"][0]["state"]["terminated"].clone();
    ensure(
        init["exitCode"] == 0 && init["reason"] == "Completed",
        || format!("the init container did not complete: {}", pod["status"]),
    )?;
    let mut logs = String::new();
    let read = wait_until(Duration::from_secs(30), || {
        logs = kubelet
            .container_logs(NAMESPACE, "shared", "reader")
            .unwrap_or_else(|e| e);
        logs == "from-init\nfrom-writer\n"
    });
    ensure(read, || {
        format!("the reader's log through /containerLogs is {logs:?}")
    })
}

fn kill_9_of_berthd(berthd: &mut Berthd, kubelet: &Kubelet) -> TestResult {
    let spec = json!({
        "restartPolicy": "Always",
        "containers": [
            container("stay", "exec sleep 3600"),
            container("quit", "exec sleep 3600"),
        ],
    });
    kubelet.put_manifest("steady", &pod("steady", spec))?;
    let before = kubelet.wait_pod("steady", Duration::from_secs(120), "Running", |p| {
        ["stay", "quit"]
            .iter()
            .all(|c| container_status(p, c).is_some_and(|s| s["ready"] == true))
    })?;
    let stay = container_id(&before, "stay")?;
    let quit = container_id(&before, "quit")?;
    let sandboxes = berthd.crictl_ok(&["pods", "-q"])?;
    let inspect = crictl_json(berthd, &["inspect", &quit])?;
    let quit_pid = inspect["info"]["pid"]
        .as_i64()
        .ok_or_else(|| format!("crictl inspect shows no pid: {inspect}"))?
        as i32;

    // The counters start again with the new berthd.
    count_calls(berthd)?;
    berthd.kill9()?;
    // The container's process dies while berthd is down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(quit_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| format!("kill {quit_pid}: {e}"))?;
    ensure(
        wait_until(Duration::from_secs(10), || process_exited(quit_pid)),
        || format!("process {quit_pid} of container quit did not exit"),
    )?;
    berthd.restart()?;

    let after = kubelet.wait_pod("steady", Duration::from_secs(120), "restarted quit", |p| {
        restart_count(p, "quit") >= 1
            && container_status(p, "quit").is_some_and(|s| s["ready"] == true)
    })?;
    let last = &container_status(&after, "quit").ok_or("no status")?["lastState"]["terminated"];
    ensure(last["exitCode"] == 137, || {
        format!(
            "the exit during the downtime is not SIGKILL's 137: {}",
            after["status"]
        )
    })?;
    ensure(container_id(&after, "quit")? != quit, || {
        "quit was not replaced by a new container".to_owned()
    })?;
    ensure(
        container_id(&after, "stay")? == stay && restart_count(&after, "stay") == 0,
        || format!("stay was restarted: {}", after["status"]),
    )?;
    ensure(berthd.crictl_ok(&["pods", "-q"])? == sandboxes, || {
        "kubelet made a new sandbox for the pod".to_owned()
    })?;
    // The pod CIDR kubelet sent before the crash is still known.
    let info = crictl_json(berthd, &["info"])?;
    ensure(
        info["runtimeConfig"]["podCIDRs"] == json!([pod_cidr(berthd)?]),
        || {
            format!(
                "the pod CIDR did not survive the restart: {}",
                info["runtimeConfig"]["podCIDRs"]
            )
        },
    )
}
