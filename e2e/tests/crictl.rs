//! crictl against a real berthd: what a node operator would type.

use berth_e2e::{berthd_binary, ensure, wait_until, Berthd, BerthdOptions, Suite, TestResult};
use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    let mut suite = Suite::new();
    suite.run("crictl_version", crictl_version);
    suite.run(
        "crictl_info_reports_ready_conditions",
        crictl_info_reports_ready_conditions,
    );
    suite.run(
        "network_not_ready_without_cni_config",
        network_not_ready_without_cni_config,
    );
    suite.run(
        "runtime_config_reports_cgroup_driver",
        runtime_config_reports_cgroup_driver,
    );
    suite.run("unimplemented_rpcs_say_so", unimplemented_rpcs_say_so);
    suite.run("metrics_count_the_calls", metrics_count_the_calls);
    suite.run(
        "stale_socket_after_kill_9_is_replaced",
        stale_socket_after_kill_9_is_replaced,
    );
    suite.run("bad_config_fails_start_up", bad_config_fails_start_up);
    suite.run(
        "corrupt_store_fails_start_up_untouched",
        corrupt_store_fails_start_up_untouched,
    );
    suite.run("socket_in_use_fails_start_up", socket_in_use_fails_start_up);
    suite.run(
        "config_default_prints_every_section",
        config_default_prints_every_section,
    );
    suite.finish();
}

fn crictl_version() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    let out = berthd.crictl_ok(&["version"])?;
    ensure(out.contains("RuntimeName:  berth"), || out.clone())?;
    ensure(out.contains("RuntimeApiVersion:  v1"), || out.clone())?;
    let version = env!("CARGO_PKG_VERSION");
    ensure(out.contains(&format!("RuntimeVersion:  {version}")), || {
        out.clone()
    })?;
    berthd.stop()
}

/// The `status` object of `crictl info`, and the whole document.
fn info(berthd: &Berthd) -> Result<serde_json::Value, String> {
    let out = berthd.crictl_ok(&["info"])?;
    serde_json::from_str(&out).map_err(|e| format!("crictl info is not JSON ({e}): {out}"))
}

fn condition<'a>(info: &'a serde_json::Value, kind: &str) -> Result<&'a serde_json::Value, String> {
    info["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .ok_or_else(|| format!("no {kind} condition in {info}"))
}

fn crictl_info_reports_ready_conditions() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    let info = info(&berthd)?;
    ensure(condition(&info, "RuntimeReady")?["status"] == true, || {
        info.to_string()
    })?;
    ensure(condition(&info, "NetworkReady")?["status"] == true, || {
        info.to_string()
    })?;
    // Verbose info carries the effective config.
    let root = berthd.root_dir();
    ensure(
        info["config"]["root"] == root.to_string_lossy().as_ref(),
        || format!("config.root is not {}: {info}", root.display()),
    )?;
    berthd.stop()
}

fn network_not_ready_without_cni_config() -> TestResult {
    let empty = tempfile::tempdir().map_err(|e| e.to_string())?;
    let own_network = berth_e2e::network::Network::claim(&empty.path().join("ipam"))?;
    let berthd = Berthd::start(BerthdOptions {
        cni_conf_dir: Some(empty.path().to_owned()),
        ..BerthdOptions::default()
    })?;
    let info = info(&berthd)?;
    let network = condition(&info, "NetworkReady")?;
    ensure(network["status"] == false, || info.to_string())?;
    ensure(network["reason"] == "NetworkPluginNotReady", || {
        info.to_string()
    })?;
    let message = network["message"].as_str().unwrap_or("");
    ensure(
        message.contains(&empty.path().to_string_lossy().into_owned()),
        || format!("message does not name the config dir: {message}"),
    )?;
    // The runtime itself is still ready.
    ensure(condition(&info, "RuntimeReady")?["status"] == true, || {
        info.to_string()
    })?;

    // A config appearing later is picked up without a restart.
    own_network.write_conf(empty.path())?;
    let info = self::info(&berthd)?;
    ensure(condition(&info, "NetworkReady")?["status"] == true, || {
        info.to_string()
    })?;
    berthd.stop()
}

fn runtime_config_reports_cgroup_driver() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    let out = berthd.crictl_ok(&["runtime-config"])?;
    // No systemd on the test machines: cgroupfs is what `auto` must pick.
    let expected = if std::path::Path::new("/run/systemd/system").is_dir() {
        "SYSTEMD"
    } else {
        "CGROUPFS"
    };
    ensure(out.contains(expected), || {
        format!("expected {expected}: {out}")
    })?;
    berthd.stop()
}

fn unimplemented_rpcs_say_so() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    // Checkpoints belong to a later issue.
    let args = ["checkpoint", "--export=/tmp/x.tar", "c1"];
    let output = berthd.crictl(&args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure(!output.status.success(), || {
        format!("crictl {args:?} succeeded")
    })?;
    ensure(stderr.contains("Unimplemented"), || {
        format!("crictl {args:?}: expected Unimplemented, got {stderr}")
    })?;
    berthd.stop()
}

/// The value of one sample line of the Prometheus text format.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn metrics_count_the_calls() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    berthd.crictl_ok(&["version"])?;
    berthd.crictl_ok(&["version"])?;
    berthd.crictl_ok(&["info"])?;
    let _ = berthd.crictl(&["inspect", "no-such-container"])?;
    let metrics = berthd.metrics()?;
    let count = |method: &str, code: &str| {
        sample(
            &metrics,
            &format!("berth_cri_requests_total{{code=\"{code}\",method=\"{method}\"}}"),
        )
        .unwrap_or(0.0)
    };
    // crictl itself calls Version before some commands: at least ours.
    ensure(count("Version", "OK") >= 2.0, || metrics.clone())?;
    ensure(count("Status", "OK") >= 1.0, || metrics.clone())?;
    ensure(count("ContainerStatus", "NOT_FOUND") == 1.0, || {
        metrics.clone()
    })?;
    let observed = sample(
        &metrics,
        "berth_cri_request_duration_seconds_count{method=\"Status\"}",
    )
    .unwrap_or(0.0);
    ensure(observed >= 1.0, || metrics.clone())?;
    berthd.stop()
}

fn stale_socket_after_kill_9_is_replaced() -> TestResult {
    let mut berthd = Berthd::start(BerthdOptions::default())?;
    berthd.kill9()?;
    ensure(berthd.socket().exists(), || {
        "kill -9 leaves the socket file".to_owned()
    })?;
    berthd.restart()?;
    berthd.crictl_ok(&["version"])?;
    berthd.stop()
}

/// Runs berthd expecting it to fail at start-up; returns its stderr.
fn start_up_failure(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(berthd_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut status = None;
    wait_until(Duration::from_secs(20), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("berthd {args:?} kept running"));
    };
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure(!status.success(), || format!("berthd {args:?} exited 0"))?;
    let last = stderr.trim_end().lines().last().unwrap_or("").to_owned();
    ensure(last.starts_with("berthd: "), || {
        format!("no one-line error: {stderr}")
    })?;
    Ok(last)
}

fn bad_config_fails_start_up() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("config.toml");
    let root = dir.path().join("root");
    let socket = dir.path().join("s.sock");
    let base = [
        "--root",
        root.to_str().ok_or("path")?,
        "--socket",
        socket.to_str().ok_or("path")?,
        "--config",
        config.to_str().ok_or("path")?,
    ];
    for (text, key) in [
        ("[metrics]\nadress = \"127.0.0.1:1\"\n", "adress"),
        ("[log]\nlevel = \"chatty\"\n", "log.level"),
        ("[cni]\nbin_dirs = 3\n", "bin_dirs"),
    ] {
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let error = start_up_failure(&base)?;
        ensure(error.contains(key), || {
            format!("{text:?}: error does not name {key}: {error}")
        })?;
        ensure(!socket.exists(), || "a socket was created".to_owned())?;
    }
    let missing = dir.path().join("missing.toml");
    let error = start_up_failure(&["--config", missing.to_str().ok_or("path")?])?;
    ensure(error.contains("missing.toml"), || error.clone())
}

fn corrupt_store_fails_start_up_untouched() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let store = root.join("metadata.redb");
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&store, &garbage).map_err(|e| e.to_string())?;
    let socket = dir.path().join("s.sock");
    let state = dir.path().join("state");
    let error = start_up_failure(&[
        "--root",
        root.to_str().ok_or("path")?,
        "--state",
        state.to_str().ok_or("path")?,
        "--socket",
        socket.to_str().ok_or("path")?,
    ])?;
    ensure(
        error.contains("metadata.redb") && error.contains("corrupt"),
        || error.clone(),
    )?;
    let after = std::fs::read(&store).map_err(|e| e.to_string())?;
    ensure(after == garbage, || {
        "the corrupt store was modified".to_owned()
    })?;
    ensure(!socket.exists(), || "a socket was created".to_owned())
}

fn socket_in_use_fails_start_up() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    let other = tempfile::tempdir().map_err(|e| e.to_string())?;
    let socket = berthd.socket();
    let error = start_up_failure(&[
        "--root",
        other.path().join("root").to_str().ok_or("path")?,
        "--state",
        other.path().join("state").to_str().ok_or("path")?,
        "--socket",
        socket.to_str().ok_or("path")?,
    ])?;
    ensure(error.contains("in use"), || error.clone())?;
    // The running daemon is unharmed.
    berthd.crictl_ok(&["version"])?;
    berthd.stop()
}

fn config_default_prints_every_section() -> TestResult {
    let output = Command::new(berthd_binary())
        .args(["config", "default"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(output.status.success(), || {
        "berthd config default failed".to_owned()
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    for section in [
        "[grpc]",
        "[log]",
        "[metrics]",
        "[streaming]",
        "[cni]",
        "[registry]",
        "[cgroup]",
        "[runtime]",
    ] {
        ensure(text.contains(section), || {
            format!("no {section} in:\n{text}")
        })?;
    }
    // That the printed file parses to the defaults is a unit test of the
    // agent's config module.
    Ok(())
}
