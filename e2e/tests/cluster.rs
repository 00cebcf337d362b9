//! A one-node cluster on loopback (etcd, kube-apiserver, kube-scheduler,
//! kube-controller-manager, kubelet) on a fresh berthd, driven by kubectl:
//! the node is Ready (and NotReady with the runtime's reason while berthd's
//! network is not ready), a Deployment scales 0 → 20 → 0, a Job runs to
//! completion, `kubectl logs -f` follows a container, `kubectl delete` with
//! a grace period sends SIGTERM then SIGKILL, a pod shares its process
//! namespace, a pod runs in the host's network.
//!
//! One cluster serves every test, in order; each test deletes what it made.
//! At the end every pod must be gone from berthd, and berthd's leak check
//! must find nothing.

use berth_e2e::cluster::{Cluster, NODE_NAME};
use berth_e2e::{ensure, wait_until, Berthd, BerthdOptions, Registry, Suite, TestResult};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// A test of the shared cluster.
type ClusterTest = fn(&Berthd, &Cluster) -> TestResult;

fn main() {
    let mut suite = Suite::new();
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox|pause"));
    let started = registry
        .as_ref()
        .ok_or_else(|| "no registry".to_owned())
        .and_then(|registry| {
            Berthd::start(BerthdOptions {
                registry_config_path: Some(registry.mirrors_dir()),
                ..BerthdOptions::default()
            })
        })
        .and_then(|berthd| match Cluster::start(&berthd) {
            Ok(cluster) => Ok((berthd, cluster)),
            Err(e) => match berthd.stop() {
                Ok(()) => Err(e),
                Err(stop) => Err(format!("{e}\n{stop}")),
            },
        });
    let (berthd, cluster) = match started {
        Ok(both) => both,
        Err(e) => {
            suite.run("cluster_starts", || Err(e.clone()));
            drop(registry);
            suite.finish();
        }
    };
    let tests: &[(&str, ClusterTest)] = &[
        ("node_is_ready_and_not_ready_without_a_network", node_ready),
        ("deployment_scales_0_20_0", deployment_scales),
        ("job_runs_to_completion", job_completes),
        ("logs_follow_a_running_container", logs_follow),
        (
            "delete_with_grace_period_sends_term_then_kill",
            delete_with_grace,
        ),
        ("pod_shares_its_process_namespace", shared_pid_namespace),
        ("host_network_pod_sees_the_hosts_interfaces", host_network),
    ];
    for (name, test) in tests {
        suite.run(name, || test(&berthd, &cluster));
    }
    suite.run("everything_is_removed_and_nothing_leaks", || {
        teardown(&berthd, &cluster)
    });
    let rpc = cluster.kubelet().rpc_errors();
    match berthd.cri_calls() {
        Ok(calls) => {
            println!("CRI calls during the suite (method code count):");
            for ((method, code), count) in calls {
                println!("    {method} {code} {count}");
            }
        }
        Err(e) => println!("cannot read berthd's metrics: {e}"),
    }
    let stopped = cluster.stop();
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let leaks = berthd.stop();
    suite.run(
        "kubelet_logged_only_expected_rpc_errors_and_stopped",
        || {
            let unexpected: Vec<&String> = rpc
                .iter()
                .map(|(_, line)| line)
                .filter(|line| !EXPECTED_RPC_ERRORS.iter().any(|p| line.contains(p)))
                .collect();
            ensure(unexpected.is_empty(), || {
                format!("unexpected rpc errors:\n{unexpected:?}")
            })?;
            stopped.clone()?;
            cleaned.clone()?;
            leaks.clone()
        },
    );
    drop(registry);
    suite.finish();
}

/// As the kubelet suite's list: kubelet's cancelled Version refresh; NotFound
/// for containers kubelet has just removed; while the network is made not
/// ready, nothing is expected from berth (NetworkReady is a condition).
const EXPECTED_RPC_ERRORS: &[&str] = &[
    "\"Version from runtime service failed\" err=\"rpc error: code = Canceled desc = context canceled\"",
    "rpc error: code = NotFound desc = container ",
];

fn pod(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["automountServiceAccountToken"] = json!(false);
    if spec.get("terminationGracePeriodSeconds").is_none() {
        spec["terminationGracePeriodSeconds"] = json!(2);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]})
}

fn node_condition(cluster: &Cluster) -> Result<Value, String> {
    let node = cluster.get_json(&["node", NODE_NAME])?;
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .ok_or_else(|| format!("node has no Ready condition: {}", node["status"]))
}

fn wait_ready_status(cluster: &Cluster, want: &str) -> Result<Value, String> {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(90), || {
        std::thread::sleep(Duration::from_millis(500));
        last = node_condition(cluster).unwrap_or_else(|e| json!(e));
        last["status"] == want
    });
    if ok {
        Ok(last)
    } else {
        Err(format!("node Ready is not {want} within 90 s: {last}"))
    }
}

fn node_ready(berthd: &Berthd, cluster: &Cluster) -> TestResult {
    wait_ready_status(cluster, "True")?;
    let conf = berthd.dir().join("net.d/10-berth-e2e.conflist");
    let aside = berthd.dir().join("net.d/10-berth-e2e.conflist.aside");
    std::fs::rename(&conf, &aside).map_err(|e| e.to_string())?;
    let not_ready = wait_ready_status(cluster, "False");
    std::fs::rename(&aside, &conf).map_err(|e| e.to_string())?;
    let not_ready = not_ready?;
    ensure(
        not_ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("NetworkPluginNotReady")),
        || format!("NotReady does not give berth's reason: {not_ready}"),
    )?;
    wait_ready_status(cluster, "True").map(drop)
}

fn pods_of(cluster: &Cluster, selector: &str) -> Result<Vec<Value>, String> {
    let list = cluster.get_json(&["pods", "-l", selector])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn deployment_scales(_berthd: &Berthd, cluster: &Cluster) -> TestResult {
    cluster.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "scale", "namespace": "default"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "scale"}},
            "template": {
                "metadata": {"labels": {"app": "scale"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container("c", "exec sleep 3600")],
                },
            },
        },
    }))?;
    cluster.kubectl_ok(&["scale", "deployment/scale", "--replicas=20"])?;
    let mut ready = 0;
    let all = wait_until(Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_secs(1));
        ready = cluster
            .get_json(&["deployment", "scale"])
            .map(|d| d["status"]["readyReplicas"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        ready == 20
    });
    ensure(all, || format!("{ready} of 20 replicas ready after 300 s"))?;
    let ips: std::collections::BTreeSet<String> = pods_of(cluster, "app=scale")?
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
        .collect();
    ensure(ips.len() == 20, || {
        format!("20 pods, {} distinct IPs", ips.len())
    })?;
    cluster.kubectl_ok(&["scale", "deployment/scale", "--replicas=0"])?;
    let mut left = 0;
    let gone = wait_until(Duration::from_secs(180), || {
        std::thread::sleep(Duration::from_secs(1));
        left = pods_of(cluster, "app=scale").map_or(usize::MAX, |p| p.len());
        left == 0
    });
    ensure(gone, || {
        format!("{left} pods left 180 s after scaling to 0")
    })?;
    cluster
        .kubectl_ok(&["delete", "deployment", "scale"])
        .map(drop)
}

fn job_completes(_berthd: &Berthd, cluster: &Cluster) -> TestResult {
    cluster.apply(&json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once", "namespace": "default"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "containers": [container("c", "echo job-done")],
            }},
        },
    }))?;
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "--timeout=180s",
    ])?;
    let logs = cluster.kubectl_ok(&["logs", "job/once"])?;
    ensure(logs == "job-done\n", || {
        format!("the job's log is {logs:?}")
    })?;
    cluster
        .kubectl_ok(&["delete", "job", "once", "--cascade=foreground"])
        .map(drop)
}

fn wait_running(cluster: &Cluster, name: &str) -> Result<Value, String> {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(500));
        last = cluster
            .get_json(&["pod", name])
            .unwrap_or_else(|e| json!(e));
        last["status"]["phase"] == "Running"
    });
    if ok {
        Ok(last)
    } else {
        Err(format!(
            "pod {name} not Running within 120 s: {}",
            last["status"]
        ))
    }
}

fn delete_pod(cluster: &Cluster, name: &str) -> TestResult {
    cluster
        .kubectl_ok(&["delete", "pod", name, "--wait=true", "--timeout=120s"])
        .map(drop)
}

fn logs_follow(_berthd: &Berthd, cluster: &Cluster) -> TestResult {
    cluster.apply(&pod(
        "ticker",
        json!({"containers": [container("c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done")]}),
    ))?;
    wait_running(cluster, "ticker")?;
    let mut follow = cluster
        .kubectl_command(&["logs", "-f", "ticker"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = follow.stdout.take().ok_or("no stdout")?;
    // The first 30 lines take 6 s: most come while kubectl follows.
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(30)
        .map_while(Result::ok)
        .collect();
    let _ = follow.kill();
    let _ = follow.wait();
    let expected: Vec<String> = (0..30).map(|i| format!("tick-{i}")).collect();
    ensure(lines == expected, || {
        format!("kubectl logs -f gave {lines:?}")
    })?;
    delete_pod(cluster, "ticker")
}

fn delete_with_grace(berthd: &Berthd, cluster: &Cluster) -> TestResult {
    // The container writes to a host directory what it saw: TERM, then
    // that it kept running (it ignores TERM), until the SIGKILL.
    let marks = berthd.dir().join("grace");
    std::fs::create_dir_all(&marks).map_err(|e| e.to_string())?;
    let mut spec = json!({
        "terminationGracePeriodSeconds": 3,
        "volumes": [{"name": "marks", "hostPath": {"path": marks}}],
        "containers": [container(
            "c",
            "trap 'echo TERM >>/marks/log' TERM; echo started >>/marks/log; while true; do sleep 0.2; [ -f /marks/log ] && grep -q TERM /marks/log && echo alive >>/marks/log; done",
        )],
    });
    spec["containers"][0]["volumeMounts"] = json!([{"name": "marks", "mountPath": "/marks"}]);
    cluster.apply(&pod("graceful", spec))?;
    wait_running(cluster, "graceful")?;
    ensure(
        wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(marks.join("log")).is_ok_and(|l| l.contains("started"))
        }),
        || "the container did not start writing".to_owned(),
    )?;
    delete_pod(cluster, "graceful")?;
    let log = std::fs::read_to_string(marks.join("log")).map_err(|e| e.to_string())?;
    ensure(log.contains("TERM\n") && log.contains("alive\n"), || {
        format!("the container's record of its end: {log:?}")
    })?;
    ensure(cluster.get_json(&["pod", "graceful"]).is_err(), || {
        "the pod still exists".to_owned()
    })
}

fn shared_pid_namespace(_berthd: &Berthd, cluster: &Cluster) -> TestResult {
    cluster.apply(&pod(
        "sharing",
        json!({
            "shareProcessNamespace": true,
            "containers": [
                container("sleeper", "exec sleep 3601"),
                container("looker", "until ps | grep -q '[s]leep 3601'; do sleep 0.2; done; echo seen; exec sleep 3600"),
            ],
        }),
    ))?;
    wait_running(cluster, "sharing")?;
    let mut logs = String::new();
    let seen = wait_until(Duration::from_secs(30), || {
        logs = cluster
            .kubectl_ok(&["logs", "sharing", "-c", "looker"])
            .unwrap_or_else(|e| e);
        logs == "seen\n"
    });
    ensure(seen, || {
        format!("looker did not see sleeper's process: {logs:?}")
    })?;
    delete_pod(cluster, "sharing")
}

fn host_network(berthd: &Berthd, cluster: &Cluster) -> TestResult {
    cluster.apply(&pod(
        "hostnet",
        json!({"hostNetwork": true, "containers": [container("c", "cat /proc/net/dev; exec sleep 3600")]}),
    ))?;
    let pod = wait_running(cluster, "hostnet")?;
    ensure(
        pod["status"]["podIP"].is_string() && pod["status"]["podIP"] == pod["status"]["hostIP"],
        || {
            format!(
                "a host-network pod's IP is not the node's: {}",
                pod["status"]
            )
        },
    )?;
    // The harness bridge of this berthd exists only in the host's netns.
    let subnet = berthd.subnet().ok_or("no harness network")?;
    let number = subnet
        .strip_prefix("10.88.")
        .and_then(|s| s.split('.').next())
        .ok_or("subnet")?;
    let bridge = format!("berth-e2e{number}:");
    let mut logs = String::new();
    let seen = wait_until(Duration::from_secs(30), || {
        logs = cluster
            .kubectl_ok(&["logs", "hostnet"])
            .unwrap_or_else(|e| e);
        logs.contains(&bridge)
    });
    ensure(seen, || {
        format!("the pod does not see {bridge} of the host: {logs}")
    })?;
    delete_pod(cluster, "hostnet")
}

/// Everything the tests made is deleted: no pod in the API, no sandbox or
/// container in berthd.
fn teardown(berthd: &Berthd, cluster: &Cluster) -> TestResult {
    let _ = cluster.kubectl(&[
        "delete",
        "deployments,jobs,pods",
        "--all",
        "--wait=true",
        "--timeout=120s",
    ]);
    let mut left = String::new();
    let gone = wait_until(Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_secs(1));
        let pods = berthd.crictl_ok(&["pods", "-q"]).unwrap_or_else(|e| e);
        let containers = berthd.crictl_ok(&["ps", "-aq"]).unwrap_or_else(|e| e);
        left = format!("pods {pods:?}, containers {containers:?}");
        pods.trim().is_empty()
            && containers.trim().is_empty()
            && cluster.kubelet().pod_cgroups().is_empty()
    });
    ensure(gone, || format!("left after 120 s: {left}"))
}
