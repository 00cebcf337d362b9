//! The load generator against a real berthd: `berth-load` runs 30 pod
//! lifecycles (two containers, an ExecSync and a log read each) at
//! concurrency 6 while two tasks make List/Status calls; it must report
//! zero errors, berthd's own metrics must count the calls it reports, and
//! the daemon must leave nothing behind (the harness's leak check: mounts,
//! network namespaces, veths, IPs, shims, cgroups under its dirs). The full
//! run (300 pods at 20) is `hack/bench`'s, beside containerd.

use berth_e2e::{berth_load_binary, ensure, Berthd, BerthdOptions, Registry, Suite, TestResult};
use std::path::Path;
use std::process::{Command, Stdio};

/// The image of the containers, served by the loopback registry.
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const PODS: u64 = 30;
const CONCURRENCY: u64 = 6;

fn main() {
    let mut suite = Suite::new();
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    let with_berthd = |test: fn(&Berthd) -> TestResult| {
        let mirrors = mirrors.clone();
        move || {
            let berthd = Berthd::start(BerthdOptions {
                registry_config_path: Some(mirrors.clone().ok_or("no registry")?),
                ..BerthdOptions::default()
            })?;
            let outcome = test(&berthd);
            let stopped = berthd.stop();
            outcome.and(stopped)
        }
    };
    suite.run(
        "thirty_pods_at_concurrency_six_without_errors_or_leaks",
        with_berthd(thirty_pods_without_errors),
    );
    suite.run(
        "failed_calls_are_counted_and_fail_the_run",
        with_berthd(failed_calls_fail_the_run),
    );
    drop(registry);
    suite.finish();
}

/// Runs berth-load against `berthd`; returns its exit success and the JSON
/// report.
fn berth_load(
    berthd: &Berthd,
    pods: u64,
    concurrency: u64,
    extra: &[&str],
) -> Result<(bool, serde_json::Value), String> {
    let json = berthd.dir().join("load.json");
    let logs = berthd.dir().join("logs");
    let binary = berth_load_binary();
    let output = Command::new(&binary)
        .args(["--endpoint", &berthd.endpoint(), "--image", BUSYBOX])
        .args(["--pods", &pods.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--hammer", "2"])
        .arg("--log-dir")
        .arg(&logs)
        .arg("--json")
        .arg(&json)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    let report = read_json(&json).map_err(|e| {
        format!(
            "berth-load ({}) wrote no report: {e}\n{stdout}{stderr}",
            output.status
        )
    })?;
    Ok((output.status.success(), report))
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// How many calls of `method` the report timed.
fn calls(report: &serde_json::Value, method: &str) -> u64 {
    report["rpc_ms"][method]["n"].as_u64().unwrap_or(0)
}

/// berthd's count of `method` calls answered with `code`.
fn metric(metrics: &str, method: &str, code: &str) -> u64 {
    let series = format!("berth_cri_requests_total{{code=\"{code}\",method=\"{method}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn pods_listed(berthd: &Berthd) -> Result<Vec<String>, String> {
    Ok(berthd
        .crictl_ok(&["pods", "-q"])?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn thirty_pods_without_errors(berthd: &Berthd) -> TestResult {
    let (success, report) = berth_load(berthd, PODS, CONCURRENCY, &[])?;
    ensure(success && report["errors"] == 0, || {
        format!("berth-load reported errors: {}", report["error_messages"])
    })?;
    ensure(report["completed_pods"] == PODS, || {
        format!("{} of {PODS} pods completed", report["completed_pods"])
    })?;
    // Each pod's calls, made exactly as often as berth-load says, and
    // answered OK as often by berthd itself.
    let metrics = berthd.metrics()?;
    for (method, per_pod) in [
        ("RunPodSandbox", 1),
        ("CreateContainer", 2),
        ("StartContainer", 2),
        ("ExecSync", 1),
        ("StopContainer", 2),
        ("StopPodSandbox", 1),
        ("RemoveContainer", 2),
        ("RemovePodSandbox", 1),
    ] {
        let expected = per_pod * PODS;
        ensure(calls(&report, method) == expected, || {
            format!(
                "berth-load timed {} {method} calls, expected {expected}",
                calls(&report, method)
            )
        })?;
        ensure(metric(&metrics, method, "OK") == expected, || {
            format!(
                "berthd answered {} {method} calls OK, expected {expected}",
                metric(&metrics, method, "OK")
            )
        })?;
    }
    // The List/Status calls ran beside the pods and berthd saw them.
    for method in [
        "ListPodSandbox",
        "ListContainers",
        "PodSandboxStatus",
        "ContainerStatus",
        "Version",
        "Status",
    ] {
        let n = calls(&report, method);
        ensure(n > 0, || format!("berth-load made no {method} call"))?;
        ensure(
            metric(&metrics, method, "OK") + metric(&metrics, method, "NOT_FOUND") >= n,
            || format!("berthd counted fewer {method} calls than berth-load's {n}"),
        )?;
    }
    ensure(report["pod_ms"]["n"] == PODS, || {
        format!("pod latencies: {}", report["pod_ms"])
    })?;
    let left = pods_listed(berthd)?;
    ensure(left.is_empty(), || {
        format!("pods left after the run: {left:?}")
    })
}

/// A RuntimeClass handler berthd does not know: every RunPodSandbox fails,
/// berth-load counts each, exits non-zero, and nothing is left.
fn failed_calls_fail_the_run(berthd: &Berthd) -> TestResult {
    let (success, report) = berth_load(berthd, 3, 2, &["--runtime-handler", "no-such-handler"])?;
    ensure(!success, || {
        "berth-load exited 0 after failed calls".to_owned()
    })?;
    ensure(
        report["errors"] == 3 && report["completed_pods"] == 0,
        || {
            format!(
                "expected 3 errors and no completed pod: {} errors, {} completed, {}",
                report["errors"], report["completed_pods"], report["error_messages"]
            )
        },
    )?;
    let first = report["error_messages"][0].as_str().unwrap_or_default();
    ensure(
        first.contains("RunPodSandbox") && first.contains("no-such-handler"),
        || format!("the error does not name the call and the handler: {first}"),
    )?;
    let left = pods_listed(berthd)?;
    ensure(left.is_empty(), || {
        format!("pods left after the run: {left:?}")
    })
}
