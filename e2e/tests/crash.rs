//! The crash matrix of CreateContainer: berthd, built with the
//! `failpoints` feature (`cargo build -p berth-agent --features
//! berth-agent/failpoints`), kills itself with SIGKILL at each step of a
//! create (`BERTH_FAILPOINT`); after a restart the container must be fully
//! gone (not listed, its name free for a retry that succeeds) and nothing
//! it had must be left: no shim, no `runc init`, no cgroup, no runtime
//! state, no mount, no bundle, no snapshot. A crash after the record says
//! Created leaves a container that is fully there and usable instead.
//! The same for RunPodSandbox (`sandbox-run:<step>`): no pod, namespace
//! mount, pod init, veth or IP is left, and the name is free.

use berth_e2e::failpoints::{self, died_at, names_in};
use berth_e2e::{ensure, write_json, Berthd, BerthdOptions, Registry, Suite, TestResult};
use std::path::Path;
use std::time::Duration;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// Each failpoint of CreateContainer, in the order the create reaches
/// them, and whether the container must survive the crash.
const FAILPOINTS: &[(&str, Outcome)] = &[
    ("container-create:after-record", Outcome::Gone),
    ("container-create:after-bundle", Outcome::Gone),
    ("container-create:after-shim-start", Outcome::Gone),
    ("container-create:during-task-create", Outcome::Gone),
    ("container-create:after-task-create", Outcome::Gone),
    ("container-create:after-created", Outcome::Usable),
];

/// Each failpoint of RunPodSandbox (the pod has a PID init and a CNI
/// network); a crash at any of them leaves nothing.
const SANDBOX_FAILPOINTS: &[&str] = &[
    "sandbox-run:after-record",
    "sandbox-run:after-namespaces",
    "sandbox-run:after-pid-init",
    "sandbox-run:after-cni-add",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Rolled back by recovery.
    Gone,
    /// Recorded as Created: recovery keeps it, and it starts.
    Usable,
}

fn main() {
    let mut suite = Suite::new();
    if failpoints::require().is_err() {
        suite.run("berthd_has_failpoints", failpoints::require);
        suite.finish();
    }
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    for (failpoint, outcome) in FAILPOINTS {
        let name = format!("kill_9_at_{}", failpoint.replace([':', '-'], "_"));
        suite.run(&name, || {
            let mirrors = mirrors.clone().ok_or("no registry")?;
            crash_at(&mirrors, failpoint, *outcome)
        });
    }
    for failpoint in SANDBOX_FAILPOINTS {
        let name = format!("kill_9_at_{}", failpoint.replace([':', '-'], "_"));
        suite.run(&name, || sandbox_crash_at(failpoint));
    }
    drop(registry);
    suite.finish();
}

fn crash_at(mirrors: &Path, failpoint: &str, outcome: Outcome) -> TestResult {
    let mut berthd = Berthd::start(BerthdOptions {
        registry_config_path: Some(mirrors.to_owned()),
        env: failpoints::armed(failpoint),
        ..BerthdOptions::default()
    })?;
    let outcome = crash_and_recover(&mut berthd, failpoint, outcome);
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let stopped = berthd.stop();
    outcome.and(cleaned).and(stopped)
}

fn sandbox_crash_at(failpoint: &str) -> TestResult {
    let mut berthd = Berthd::start(BerthdOptions {
        env: failpoints::armed(failpoint),
        ..BerthdOptions::default()
    })?;
    let outcome = sandbox_crash_and_recover(&mut berthd, failpoint);
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let stopped = berthd.stop();
    outcome.and(cleaned).and(stopped)
}

fn sandbox_crash_and_recover(berthd: &mut Berthd, failpoint: &str) -> TestResult {
    let pod = write_json(
        berthd,
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "crash", "namespace": "berth-e2e", "uid": "uid-crash", "attempt": 0},
            "linux": {"security_context": {"namespace_options": {"pid": 0}}}
        }),
    )?;
    let run = berthd.crictl(&["runp", &pod])?;
    died_at(berthd, failpoint, &run)?;
    berthd.set_env(Vec::new());
    berthd.restart()?;
    let listed = berthd.crictl_ok(&["pods", "-q"])?;
    ensure(listed.trim().is_empty(), || {
        format!("an interrupted pod is listed: {listed:?}")
    })?;
    let sandboxes = berthd.state_dir().join("sandboxes");
    let mut left: Vec<String> = berth_e2e::leaks::mounts_under(&sandboxes)
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    left.extend(
        std::fs::read_dir(&sandboxes)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("sandbox dir {}", e.path().display())),
    );
    left.extend(
        berth_e2e::leaks::processes_referring_to(berthd.dir())
            .into_iter()
            .filter(|p| p.contains("berth-init"))
            .map(|p| format!("process {p}")),
    );
    left.extend(berthd.network_leaks());
    ensure(left.is_empty(), || {
        format!("the interrupted pod left:\n  {}", left.join("\n  "))
    })?;
    // The name is free again.
    let id = berthd.crictl_ok(&["runp", &pod])?.trim().to_owned();
    berthd.crictl_ok(&["rmp", "--force", &id]).map(drop)
}

fn crash_and_recover(berthd: &mut Berthd, failpoint: &str, outcome: Outcome) -> TestResult {
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let pod = write_json(
        berthd,
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "crash", "namespace": "berth-e2e", "uid": "uid-crash", "attempt": 0},
            "log_directory": berthd.dir().join("logs"),
            "linux": {}
        }),
    )?;
    let container = write_json(
        berthd,
        "container.json",
        serde_json::json!({
            "metadata": {"name": "victim"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "3600"],
            "log_path": "victim.log",
            "linux": {}
        }),
    )?;
    let pod_id = berthd.crictl_ok(&["runp", &pod])?.trim().to_owned();
    let snapshots = snapshot_dirs(berthd);

    let create = berthd.crictl(&["create", &pod_id, &container, &pod])?;
    died_at(berthd, failpoint, &create)?;
    // The bundle names the container (every step but the first made one).
    let bundles = berthd.state_dir().join("containers");
    let ids: Vec<String> = std::fs::read_dir(&bundles)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure(ids.len() <= 1, || format!("several bundles: {ids:?}"))?;
    let id = ids.first().cloned();
    if failpoint.ends_with("task-create") {
        // The hazard the test is about: `runc init` waits on its exec fifo
        // (during the create, once the runtime finishes it).
        let id = id
            .as_deref()
            .ok_or("no bundle after the task was created")?;
        let waiting = berth_e2e::wait_until(Duration::from_secs(10), || {
            !berth_e2e::leaks::processes_in_cgroup_of(id).is_empty()
        });
        ensure(waiting, || {
            "no process in the container's cgroup after runc create".to_owned()
        })?;
    }

    berthd.set_env(Vec::new());
    berthd.restart()?;
    let listed = berthd.crictl_ok(&["ps", "-a", "-q"])?;
    if outcome == Outcome::Usable {
        let id = id
            .clone()
            .ok_or("no bundle for a container recorded as Created")?;
        ensure(listed.trim() == id, || {
            format!("{id} should be listed alone, got {listed:?}")
        })?;
        berthd.crictl_ok(&["start", &id])?;
        let state = berthd.crictl_ok(&[
            "inspect",
            "-o",
            "go-template",
            "--template",
            "{{.status.state}}",
            &id,
        ])?;
        ensure(state.trim() == "CONTAINER_RUNNING", || {
            format!("{id} does not run after start: {state}")
        })?;
        berthd.crictl_ok(&["rm", "--force", &id])?;
    } else {
        ensure(listed.trim().is_empty(), || {
            format!("an interrupted container is listed: {listed:?}")
        })?;
    }
    if let Some(id) = &id {
        nothing_left_of(berthd, id)?;
    }
    ensure(snapshot_dirs(berthd) == snapshots, || {
        format!(
            "snapshots before the create: {snapshots:?}, after recovery: {:?}",
            snapshot_dirs(berthd)
        )
    })?;

    // The name is free again: kubelet's retry succeeds, and the container runs.
    let retried = berthd
        .crictl_ok(&["create", &pod_id, &container, &pod])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &retried])?;
    berthd.crictl_ok(&["rm", "--force", &retried])?;
    nothing_left_of(berthd, &retried)
}

/// The snapshot directories of the daemon's snapshotter.
fn snapshot_dirs(berthd: &Berthd) -> Vec<String> {
    names_in(&berthd.root_dir().join("snapshotter/snapshots"))
}

/// Fails naming whatever of container `id` is still on the host.
fn nothing_left_of(berthd: &Berthd, id: &str) -> TestResult {
    berth_e2e::leaks::nothing_left_of(&berthd.state_dir(), id)
}
