//! Pods and containers through crictl against a real berthd: `runp`,
//! `pods`, `inspectp`, `stopp`, `rmp`, and a `kill -9` of berthd with pods
//! running. Each test stops its daemon and checks for leaks.

use berth_e2e::leaks::{pids_running, process_exited};
use berth_e2e::{ensure, wait_until, Berthd, BerthdOptions, Registry, Suite, TestResult};
use std::path::Path;
use std::time::Duration;

/// The image of the container tests, served by the loopback registry.
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn main() {
    let mut suite = Suite::new();
    suite.run("pod_lifecycle_with_crictl", pod_lifecycle_with_crictl);
    suite.run(
        "pods_survive_kill_9_of_berthd",
        pods_survive_kill_9_of_berthd,
    );
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    let with_images = |test: fn(&mut Berthd) -> TestResult| {
        let mirrors = mirrors.clone();
        move || {
            let mirrors = mirrors.clone().ok_or("no registry")?;
            with_berthd_options(
                BerthdOptions {
                    registry_config_path: Some(mirrors),
                    ..BerthdOptions::default()
                },
                |berthd| {
                    berthd.crictl_ok(&["pull", BUSYBOX])?;
                    test(berthd)
                },
            )
        }
    };
    suite.run(
        "container_lifecycle_with_crictl",
        with_images(container_lifecycle),
    );
    suite.run(
        "containers_survive_kill_9_of_berthd",
        with_images(containers_survive_kill_9),
    );
    suite.run("crun_runs_containers", with_images(crun_runs_containers));
    suite.run(
        "images_in_use_are_not_removed",
        with_images(images_in_use_are_not_removed),
    );
    drop(registry);
    suite.finish();
}

/// Writes a pod config for crictl; returns its path.
fn pod_json(berthd: &Berthd, name: &str) -> Result<String, String> {
    let config = serde_json::json!({
        "metadata": {"name": name, "namespace": "berth-e2e", "uid": format!("uid-{name}"), "attempt": 0},
        "hostname": name,
        "log_directory": berthd.dir().join("logs").join(name),
        "labels": {"app": name},
        "annotations": {"berth.e2e/note": "kept"},
        "dns_config": {"servers": ["10.0.0.10"], "searches": ["e2e.svc"]},
        "linux": {"sysctls": {"kernel.shm_rmid_forced": "1"}}
    });
    let path = berthd.dir().join(format!("pod-{name}.json"));
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
    Ok(path.to_string_lossy().into_owned())
}

fn inspectp(berthd: &Berthd, id: &str) -> Result<serde_json::Value, String> {
    let out = berthd.crictl_ok(&["inspectp", id])?;
    serde_json::from_str(&out).map_err(|e| format!("inspectp is not JSON ({e}): {out}"))
}

fn pod_ids(berthd: &Berthd, args: &[&str]) -> Result<Vec<String>, String> {
    let mut all = vec!["pods", "-q"];
    all.extend_from_slice(args);
    Ok(berthd
        .crictl_ok(&all)?
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Runs `body` on a fresh berthd; whatever the outcome, removes every pod
/// before the leak check, so a failed test leaks nothing either.
fn with_berthd(body: impl FnOnce(&mut Berthd) -> TestResult) -> TestResult {
    with_berthd_options(BerthdOptions::default(), body)
}

fn with_berthd_options(
    options: BerthdOptions,
    body: impl FnOnce(&mut Berthd) -> TestResult,
) -> TestResult {
    let mut berthd = Berthd::start(options)?;
    let outcome = body(&mut berthd);
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let stopped = berthd.stop();
    outcome.and(cleaned).and(stopped)
}

fn pod_lifecycle_with_crictl() -> TestResult {
    with_berthd(pod_lifecycle)
}

fn pod_lifecycle(berthd: &mut Berthd) -> TestResult {
    let berthd = &*berthd;
    let config = pod_json(berthd, "web")?;
    let id = berthd.crictl_ok(&["runp", &config])?.trim().to_owned();
    ensure(id.len() == 64, || format!("runp printed {id:?}"))?;

    let status = inspectp(berthd, &id)?;
    ensure(status["status"]["state"] == "SANDBOX_READY", || {
        status.to_string()
    })?;
    let ip = status["status"]["network"]["ip"].as_str().unwrap_or("");
    ensure(ip.starts_with("10.88."), || {
        format!("pod ip {ip:?}: {status}")
    })?;
    ensure(
        status["status"]["annotations"]["berth.e2e/note"] == "kept",
        || status.to_string(),
    )?;
    ensure(status["info"]["namespaces"]["net"].is_string(), || {
        format!("verbose info: {status}")
    })?;
    ensure(pod_ids(berthd, &[])? == vec![id.clone()], || {
        "pods lists the pod".to_owned()
    })?;
    ensure(pod_ids(berthd, &["--label", "app=web"])?.len() == 1, || {
        "label filter".to_owned()
    })?;
    ensure(pod_ids(berthd, &["--label", "app=db"])?.is_empty(), || {
        "label filter excludes".to_owned()
    })?;
    ensure(pod_ids(berthd, &["--id", &id[..12]])?.len() == 1, || {
        "id prefix filter".to_owned()
    })?;

    // A second runp of the same pod name is refused.
    let again = berthd.crictl(&["runp", &config])?;
    ensure(!again.status.success(), || {
        "duplicate name accepted".to_owned()
    })?;

    berthd.crictl_ok(&["stopp", &id])?;
    let status = inspectp(berthd, &id)?;
    ensure(status["status"]["state"] == "SANDBOX_NOTREADY", || {
        status.to_string()
    })?;
    ensure(
        pod_ids(berthd, &["--state", "NotReady"])? == vec![id.clone()],
        || "state filter".to_owned(),
    )?;
    berthd.crictl_ok(&["stopp", &id])?;
    berthd.crictl_ok(&["rmp", &id])?;
    ensure(pod_ids(berthd, &[])?.is_empty(), || {
        "rmp removed the pod".to_owned()
    })?;
    let gone = berthd.crictl(&["inspectp", &id])?;
    ensure(!gone.status.success(), || {
        "inspectp of a removed pod succeeded".to_owned()
    })?;
    // The name is free again.
    berthd.crictl_ok(&["runp", &config])?;
    Ok(())
}

fn pods_survive_kill_9_of_berthd() -> TestResult {
    with_berthd(kill_9_and_restart)
}

fn kill_9_and_restart(berthd: &mut Berthd) -> TestResult {
    let first = berthd
        .crictl_ok(&["runp", &pod_json(berthd, "one")?])?
        .trim()
        .to_owned();
    let second = berthd
        .crictl_ok(&["runp", &pod_json(berthd, "two")?])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["stopp", &second])?;
    let ip = inspectp(berthd, &first)?["status"]["network"]["ip"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    berthd.kill9()?;
    berthd.restart()?;
    let status = inspectp(berthd, &first)?;
    ensure(status["status"]["state"] == "SANDBOX_READY", || {
        status.to_string()
    })?;
    ensure(status["status"]["network"]["ip"] == ip.as_str(), || {
        format!("ip changed from {ip}: {status}")
    })?;
    let status = inspectp(berthd, &second)?;
    ensure(status["status"]["state"] == "SANDBOX_NOTREADY", || {
        status.to_string()
    })?;
    Ok(())
}

/// Writes a container config for crictl; returns its path.
fn container_json(berthd: &Berthd, name: &str, command: &[&str]) -> Result<String, String> {
    let config = serde_json::json!({
        "metadata": {"name": name},
        "image": {"image": BUSYBOX},
        "command": command,
        "log_path": format!("{name}.log"),
        "labels": {"role": name},
        "linux": {}
    });
    let path = berthd.dir().join(format!("container-{name}.json"));
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
    Ok(path.to_string_lossy().into_owned())
}

fn inspect(berthd: &Berthd, id: &str) -> Result<serde_json::Value, String> {
    let out = berthd.crictl_ok(&["inspect", id])?;
    serde_json::from_str(&out).map_err(|e| format!("inspect is not JSON ({e}): {out}"))
}

fn container_ids(berthd: &Berthd, args: &[&str]) -> Result<Vec<String>, String> {
    let mut all = vec!["ps", "-a", "-q"];
    all.extend_from_slice(args);
    Ok(berthd
        .crictl_ok(&all)?
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Runs a pod and a started container in it; returns (pod, container).
fn run_container(
    berthd: &Berthd,
    pod_name: &str,
    name: &str,
    command: &[&str],
) -> Result<(String, String), String> {
    let pod_config = pod_json(berthd, pod_name)?;
    let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
    let config = container_json(berthd, name, command)?;
    let id = berthd
        .crictl_ok(&["create", &pod, &config, &pod_config])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &id])?;
    Ok((pod, id))
}

fn container_lifecycle(berthd: &mut Berthd) -> TestResult {
    let berthd = &*berthd;
    let pod_config = pod_json(berthd, "app")?;
    let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
    let config = container_json(
        berthd,
        "main",
        &["sh", "-c", "echo hello from berth; exec sleep 1000"],
    )?;
    let id = berthd
        .crictl_ok(&["create", &pod, &config, &pod_config])?
        .trim()
        .to_owned();
    let created = inspect(berthd, &id)?;
    ensure(created["status"]["state"] == "CONTAINER_CREATED", || {
        created.to_string()
    })?;
    berthd.crictl_ok(&["start", &id])?;
    let running = inspect(berthd, &id)?;
    ensure(running["status"]["state"] == "CONTAINER_RUNNING", || {
        running.to_string()
    })?;
    ensure(running["info"]["pid"].as_u64().unwrap_or(0) > 0, || {
        running.to_string()
    })?;
    ensure(
        container_ids(berthd, &["--pod", &pod])? == vec![id.clone()],
        || "ps --pod".to_owned(),
    )?;
    ensure(
        container_ids(berthd, &["--label", "role=main", "--state", "Running"])?.len() == 1,
        || "ps filters".to_owned(),
    )?;
    ensure(
        container_ids(berthd, &["--state", "Exited"])?.is_empty(),
        || "ps --state Exited".to_owned(),
    )?;

    let mut logs = String::new();
    wait_until(Duration::from_secs(10), || {
        logs = berthd.crictl_ok(&["logs", &id]).unwrap_or_default();
        logs.contains("hello from berth")
    });
    ensure(logs.contains("hello from berth"), || {
        format!("logs: {logs:?}")
    })?;
    let log_file = Path::new(running["status"]["logPath"].as_str().unwrap_or(""));
    let raw =
        std::fs::read_to_string(log_file).map_err(|e| format!("{}: {e}", log_file.display()))?;
    ensure(raw.contains(" stdout F hello from berth\n"), || raw.clone())?;

    let out = berthd.crictl_ok(&["exec", "-s", &id, "sh", "-c", "echo $((6 * 7)); hostname"])?;
    // crictl adds blank lines after the output.
    ensure(out.trim_end() == "42\napp", || {
        format!("exec output {out:?}")
    })?;
    let failed = berthd.crictl(&["exec", "-s", &id, "sh", "-c", "exit 3"])?;
    // crictl exits 1 for any non-zero exit code of the command.
    ensure(!failed.status.success(), || {
        format!("exec exit status {:?}", failed.status)
    })?;

    berthd.crictl_ok(&["stop", "--timeout", "5", &id])?;
    let exited = inspect(berthd, &id)?;
    ensure(exited["status"]["state"] == "CONTAINER_EXITED", || {
        exited.to_string()
    })?;
    // `exec sleep` is the container's process; SIGTERM ends it.
    ensure(exited["status"]["exitCode"] == 143, || exited.to_string())?;
    ensure(exited["status"]["reason"] == "Error", || exited.to_string())?;
    berthd.crictl_ok(&["rm", &id])?;
    ensure(container_ids(berthd, &[])?.is_empty(), || {
        "rm removed the container".to_owned()
    })?;
    berthd.crictl_ok(&["stopp", &pod])?;
    berthd.crictl_ok(&["rmp", &pod])?;
    Ok(())
}

fn containers_survive_kill_9(berthd: &mut Berthd) -> TestResult {
    let (_, ticker) = run_container(
        berthd,
        "ticker",
        "tick",
        &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
    )?;
    // Exits when told (by a file put into its /tmp), so the exit certainly
    // falls while berthd is down.
    const EXIT_NOW: &str = "/tmp/berth-e2e-kill9-exit-now";
    let (_, quitter) = run_container(
        berthd,
        "quitter",
        "quit",
        &[
            "sh",
            "-c",
            "until [ -e /tmp/berth-e2e-kill9-exit-now ]; do sleep 0.05; done; exit 3",
        ],
    )?;
    let quitting = pids_running(EXIT_NOW);
    ensure(quitting.len() == 1, || {
        format!("the quitting container's process: {quitting:?}")
    })?;
    berthd.kill9()?;
    std::fs::write(format!("/proc/{}/root{EXIT_NOW}", quitting[0]), "")
        .map_err(|e| format!("cannot tell the container to exit: {e}"))?;
    ensure(
        wait_until(Duration::from_secs(20), || process_exited(quitting[0])),
        || "the quitting container did not exit".to_owned(),
    )?;
    berthd.restart()?;

    let ticking = inspect(berthd, &ticker)?;
    ensure(ticking["status"]["state"] == "CONTAINER_RUNNING", || {
        ticking.to_string()
    })?;
    let log_file = ticking["status"]["logPath"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let size = || std::fs::metadata(&log_file).map(|m| m.len()).unwrap_or(0);
    let before = size();
    ensure(
        wait_until(Duration::from_secs(5), || size() > before),
        || "the log kept flowing".to_owned(),
    )?;
    let out = berthd.crictl_ok(&["exec", "-s", &ticker, "echo", "alive"])?;
    ensure(out.trim_end() == "alive", || out.clone())?;

    let mut quit = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), || {
        quit = inspect(berthd, &quitter).unwrap_or_default();
        quit["status"]["state"] == "CONTAINER_EXITED"
    });
    ensure(quit["status"]["state"] == "CONTAINER_EXITED", || {
        quit.to_string()
    })?;
    ensure(quit["status"]["exitCode"] == 3, || quit.to_string())?;
    Ok(())
}

/// RemoveImage refuses an image a container stands on (FailedPrecondition,
/// naming the container's snapshot) and removes it once the container is
/// gone.
fn images_in_use_are_not_removed(berthd: &mut Berthd) -> TestResult {
    let (_, id) = run_container(berthd, "user", "user", &["sleep", "1000"])?;
    let refused = berthd.crictl(&["rmi", BUSYBOX])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure(!refused.status.success(), || {
        "rmi of an image in use succeeded".to_owned()
    })?;
    ensure(
        stderr.contains("FailedPrecondition") && stderr.contains(&id),
        || format!("rmi error: {stderr}"),
    )?;
    let images = berthd.crictl_ok(&["images", "-q"])?;
    ensure(images.lines().count() == 1, || {
        format!("the image stays: {images:?}")
    })?;
    let out = berthd.crictl_ok(&["exec", "-s", &id, "echo", "unharmed"])?;
    ensure(out.trim_end() == "unharmed", || out.clone())?;

    berthd.crictl_ok(&["rm", "--force", &id])?;
    berthd.crictl_ok(&["rmi", BUSYBOX])?;
    let images = berthd.crictl_ok(&["images", "-q"])?;
    ensure(images.trim().is_empty(), || {
        format!("rmi after the container left: {images:?}")
    })?;
    Ok(())
}

/// The `crun` RuntimeClass handler runs containers as runc does, also on
/// this machine's hybrid cgroup layout that crun 1.8 refuses by itself.
fn crun_runs_containers(berthd: &mut Berthd) -> TestResult {
    let berthd = &*berthd;
    let pod_config = pod_json(berthd, "fast")?;
    let pod = berthd
        .crictl_ok(&["runp", "--runtime", "crun", &pod_config])?
        .trim()
        .to_owned();
    let status = inspectp(berthd, &pod)?;
    ensure(status["status"]["runtimeHandler"] == "crun", || {
        status.to_string()
    })?;
    let config = container_json(berthd, "crunned", &["sleep", "1000"])?;
    let id = berthd
        .crictl_ok(&["create", &pod, &config, &pod_config])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &id])?;
    let out = berthd.crictl_ok(&["exec", "-s", &id, "cat", "/proc/self/cgroup"])?;
    ensure(out.contains("memory:") && out.contains(&id), || {
        format!("the exec runs in the container's v1 cgroups: {out}")
    })?;
    berthd.crictl_ok(&["stop", "--timeout", "0", &id])?;
    let exited = inspect(berthd, &id)?;
    ensure(exited["status"]["exitCode"] == 137, || exited.to_string())?;
    berthd.crictl_ok(&["rmp", "--force", &pod])?;
    Ok(())
}
