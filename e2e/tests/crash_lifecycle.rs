//! The crash matrix past create: berthd, built with the `failpoints`
//! feature, kills itself with SIGKILL (`BERTH_FAILPOINT`) at each step of
//! a pull and its unpack, of StartContainer, StopContainer and
//! RemoveContainer, and of StopPodSandbox and RemovePodSandbox. After a
//! restart every object must have converged: an image is fully there or
//! fully gone (no layer, blob or partial file left, and the pull works
//! again); a container is in one state its record and the host agree on
//! and the interrupted call works when repeated; a pod is Ready and usable,
//! or stopped with its network, namespaces and init released. Once removed,
//! nothing of it may be left: no shim, `runc init`, cgroup, mount, netns,
//! veth, IP or record.
//!
//! One berthd serves each group (pulls, containers, pods): each test
//! restarts it with its failpoint armed, and again without after the crash.

use berth_e2e::failpoints::{self, died_at, names_in};
use berth_e2e::{
    container_state, ensure, pod_state, wait_until, write_json, Berthd, BerthdOptions, Registry,
    Suite, TestResult,
};
use std::path::PathBuf;
use std::time::Duration;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// Each failpoint of a pull, in the order a pull reaches them.
const PULL_FAILPOINTS: &[&str] = &[
    "pull:after-manifest",
    "pull:after-content-commit",
    "pull:mid-layer-download",
    "unpack:mid-layer",
    "unpack:after-snapshot-commit",
    "pull:before-image-record",
];

/// The container calls that the tests interrupt.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// StartContainer of a created container.
    Start,
    /// StopContainer (timeout 0) of a running one.
    Stop,
    /// RemoveContainer (forced) of a running one.
    Remove,
}

/// Each failpoint of the container calls, the call that reaches it, and
/// the state the container must be in after the restart.
const CONTAINER_FAILPOINTS: &[(&str, Call, &str)] = &[
    (
        "container-start:before-shim-start",
        Call::Start,
        "CONTAINER_CREATED",
    ),
    (
        "container-start:after-shim-start",
        Call::Start,
        "CONTAINER_RUNNING",
    ),
    ("container-stop:after-kill", Call::Stop, "CONTAINER_EXITED"),
    (
        "container-stop:before-exit-record",
        Call::Stop,
        "CONTAINER_EXITED",
    ),
    (
        "container-remove:after-shim-gone",
        Call::Remove,
        "CONTAINER_EXITED",
    ),
    (
        "container-remove:after-unmount",
        Call::Remove,
        "CONTAINER_EXITED",
    ),
    (
        "container-remove:before-record-delete",
        Call::Remove,
        "CONTAINER_EXITED",
    ),
];

/// A pod case: the failpoint, whether the pod has a PID init (a shared
/// PID namespace) and a running container, whether RemovePodSandbox (else
/// StopPodSandbox) reaches it, and whether the pod is still Ready after
/// the restart (else it must be stopped and released).
struct PodCase {
    failpoint: &'static str,
    pid_init: bool,
    container: bool,
    remove: bool,
    ready_after: bool,
}

const POD_FAILPOINTS: &[PodCase] = &[
    PodCase {
        failpoint: "sandbox-stop:after-containers",
        pid_init: false,
        container: true,
        remove: false,
        ready_after: true,
    },
    PodCase {
        failpoint: "sandbox-release:after-pid-init",
        pid_init: true,
        container: false,
        remove: false,
        ready_after: false,
    },
    PodCase {
        failpoint: "sandbox-release:after-cni-del",
        pid_init: false,
        container: false,
        remove: false,
        ready_after: false,
    },
    PodCase {
        failpoint: "sandbox-release:after-namespaces",
        pid_init: true,
        container: false,
        remove: false,
        ready_after: false,
    },
    PodCase {
        failpoint: "sandbox-remove:after-containers",
        pid_init: false,
        container: true,
        remove: true,
        ready_after: false,
    },
    PodCase {
        failpoint: "sandbox-discard:before-record-delete",
        pid_init: true,
        container: true,
        remove: true,
        ready_after: false,
    },
];

fn main() {
    let mut suite = Suite::new();
    if failpoints::require().is_err() {
        suite.run("berthd_has_failpoints", failpoints::require);
        suite.finish();
    }
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox|bench/whiteout"));
    let options = registry.as_ref().map(|r| BerthdOptions {
        registry_config_path: Some(r.mirrors_dir()),
        ..BerthdOptions::default()
    });
    let whiteout = registry
        .as_ref()
        .map(|r| format!("{}/bench/whiteout:1", r.address()));

    group(
        &mut suite,
        "pull",
        options.clone(),
        PULL_FAILPOINTS,
        |berthd, fp| pull_crash(berthd, fp, whiteout.as_deref().ok_or("no registry")?),
    );
    let containers: Vec<&str> = CONTAINER_FAILPOINTS.iter().map(|c| c.0).collect();
    let mut setup = Setup::default();
    group(
        &mut suite,
        "container",
        options.clone(),
        &containers,
        |berthd, fp| {
            let (_, call, state) = CONTAINER_FAILPOINTS
                .iter()
                .find(|c| c.0 == fp)
                .expect("a listed failpoint");
            let pod = setup.pod(berthd)?;
            container_crash(berthd, &pod, fp, *call, state)
        },
    );
    let pods: Vec<&str> = POD_FAILPOINTS.iter().map(|c| c.failpoint).collect();
    group(&mut suite, "pod", options, &pods, |berthd, fp| {
        let case = POD_FAILPOINTS
            .iter()
            .find(|c| c.failpoint == fp)
            .expect("a listed failpoint");
        pod_crash(berthd, case)
    });
    drop(registry);
    suite.finish();
}

/// Runs one test per failpoint against one berthd (started on the first
/// test, and again if a test left it stopped), which is stopped and
/// checked for leaks at the end as a test of its own.
fn group(
    suite: &mut Suite,
    name: &str,
    options: Option<BerthdOptions>,
    failpoints: &[&str],
    mut test: impl FnMut(&mut Berthd, &str) -> TestResult,
) {
    let mut berthd: Option<Berthd> = None;
    for failpoint in failpoints {
        let label = format!("kill_9_at_{}", failpoint.replace([':', '-'], "_"));
        suite.run(&label, || {
            let options = options.clone().ok_or("no registry")?;
            if berthd.is_none() {
                berthd = Some(Berthd::start(options)?);
            }
            let daemon = berthd.as_mut().expect("started above");
            let outcome = test(daemon, failpoint);
            if outcome.is_err() {
                // The next test (or the retry) starts from a fresh daemon.
                if let Some(daemon) = berthd.take() {
                    let _ = daemon.crictl(&["rmp", "--all", "--force"]);
                    drop(daemon);
                }
            }
            outcome
        });
    }
    suite.run(&format!("{name}_group_leaves_nothing"), || {
        match berthd.take() {
            Some(daemon) => {
                daemon.crictl_ok(&["rmp", "--all", "--force"])?;
                daemon.stop()
            }
            None => Ok(()),
        }
    });
}

/// Restarts berthd with `failpoint` armed, runs `request` (a crictl call)
/// and checks that berthd died there, then restarts it unarmed.
fn crash_in(berthd: &mut Berthd, failpoint: &str, request: &[&str]) -> TestResult {
    berthd.restart_with_env(failpoints::armed(failpoint))?;
    let output = berthd.crictl(request)?;
    died_at(berthd, failpoint, &output)?;
    berthd.set_env(Vec::new());
    berthd.restart()
}

// ---- pulls ----

/// Everything the image service keeps on disk: snapshots, committed blobs,
/// ingest files.
fn image_files(berthd: &Berthd) -> Vec<String> {
    let root = berthd.root_dir();
    let mut files = Vec::new();
    for (what, dir) in [
        ("snapshot", root.join("snapshotter/snapshots")),
        ("blob", root.join("content/blobs/sha256")),
        ("ingest file", root.join("content/ingest")),
    ] {
        files.extend(names_in(&dir).into_iter().map(|n| format!("{what} {n}")));
    }
    files
}

fn pull_crash(berthd: &mut Berthd, failpoint: &str, image: &str) -> TestResult {
    let before = image_files(berthd);
    crash_in(berthd, failpoint, &["pull", image])?;
    let listed = berthd.crictl_ok(&["images", "-q"])?;
    ensure(listed.trim().is_empty(), || {
        format!("an interrupted pull left an image: {listed}")
    })?;
    let after = image_files(berthd);
    ensure(after == before, || {
        format!("before the pull: {before:?}\nafter the crash and restart: {after:?}")
    })?;
    // The pull works again, and the image is usable and removable.
    berthd.crictl_ok(&["pull", image])?;
    berthd.crictl_ok(&["inspecti", image])?;
    berthd.crictl_ok(&["rmi", image])?;
    let removed = image_files(berthd);
    ensure(removed == before, || {
        format!("after rmi: {removed:?}, before the pull: {before:?}")
    })
}

// ---- containers ----

/// The pod the container tests share, made on first use.
#[derive(Default)]
struct Setup {
    pod: Option<Pod>,
    count: u32,
}

#[derive(Clone)]
struct Pod {
    id: String,
    config: String,
}

impl Setup {
    fn pod(&mut self, berthd: &mut Berthd) -> Result<Pod, String> {
        self.count += 1;
        if let Some(pod) = &self.pod {
            // A test that failed dropped its daemon: this one is fresh.
            let known = berthd.crictl_ok(&["pods", "-q"])?;
            if known.lines().any(|l| l.trim() == pod.id) {
                return Ok(pod.clone());
            }
        }
        berthd.crictl_ok(&["pull", BUSYBOX])?;
        let config = pod_config(berthd, "lifecycle", false)?;
        let id = berthd.crictl_ok(&["runp", &config])?.trim().to_owned();
        let pod = Pod { id, config };
        self.pod = Some(pod.clone());
        Ok(pod)
    }
}

fn pod_config(berthd: &Berthd, name: &str, pid_init: bool) -> Result<String, String> {
    // PID namespace 0 (POD) gives the pod its init; 1 (CONTAINER) none.
    let pid = if pid_init { 0 } else { 1 };
    write_json(
        berthd,
        &format!("pod-{name}.json"),
        serde_json::json!({
            "metadata": {"name": name, "namespace": "berth-e2e", "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": berthd.dir().join("logs").join(name),
            "linux": {"security_context": {"namespace_options": {"pid": pid}}}
        }),
    )
}

fn container_config(berthd: &Berthd, name: &str) -> Result<String, String> {
    write_json(
        berthd,
        &format!("container-{name}.json"),
        serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "3600"],
            "log_path": format!("{name}.log"),
            "linux": {}
        }),
    )
}

/// Creates (and with `start`, starts) a container in the pod; its ID.
fn container_in(berthd: &Berthd, pod: &Pod, name: &str, start: bool) -> Result<String, String> {
    let config = container_config(berthd, name)?;
    let id = berthd
        .crictl_ok(&["create", &pod.id, &config, &pod.config])?
        .trim()
        .to_owned();
    if start {
        berthd.crictl_ok(&["start", &id])?;
    }
    Ok(id)
}

/// Waits for container `id` to reach `state` (an exit that happened
/// while berthd was down is collected just after start-up).
fn reaches(berthd: &Berthd, id: &str, state: &str) -> TestResult {
    let mut last = String::new();
    wait_until(Duration::from_secs(10), || {
        last = container_state(berthd, id).unwrap_or_else(|e| e);
        last == state
    });
    ensure(last == state, || {
        format!("container {id} is {last}, not {state}")
    })
}

fn snapshot_dirs(berthd: &Berthd) -> Vec<String> {
    names_in(&berthd.root_dir().join("snapshotter/snapshots"))
}

fn container_crash(
    berthd: &mut Berthd,
    pod: &Pod,
    failpoint: &str,
    call: Call,
    state_after: &str,
) -> TestResult {
    let snapshots = snapshot_dirs(berthd);
    let name = failpoint.replace(':', "-");
    let id = container_in(berthd, pod, &name, !matches!(call, Call::Start))?;
    let request: Vec<&str> = match call {
        Call::Start => vec!["start", &id],
        Call::Stop => vec!["stop", "--timeout", "0", &id],
        Call::Remove => vec!["rm", "--force", &id],
    };
    crash_in(berthd, failpoint, &request)?;
    reaches(berthd, &id, state_after)?;
    let in_cgroup = berth_e2e::leaks::processes_in_cgroup_of(&id);
    match state_after {
        "CONTAINER_RUNNING" => ensure(!in_cgroup.is_empty(), || {
            format!("{id} is listed running, but nothing runs in its cgroup")
        })?,
        "CONTAINER_EXITED" => {
            let dead = wait_until(Duration::from_secs(10), || {
                berth_e2e::leaks::processes_in_cgroup_of(&id).is_empty()
            });
            ensure(dead, || {
                format!(
                    "{id} is listed exited, but its processes run: {:?}",
                    berth_e2e::leaks::processes_in_cgroup_of(&id)
                )
            })?;
        }
        _ => {}
    }
    if state_after == "CONTAINER_CREATED" {
        // The interrupted start works when repeated.
        berthd.crictl_ok(&["start", &id])?;
        reaches(berthd, &id, "CONTAINER_RUNNING")?;
    }
    if state_after == "CONTAINER_RUNNING" {
        // The container is usable: its shim answers.
        let out = berthd.crictl_ok(&["exec", "--sync", &id, "echo", "alive"])?;
        ensure(out.trim() == "alive", || format!("exec printed {out:?}"))?;
    }
    berthd.crictl_ok(&["rm", "--force", &id])?;
    let listed = berthd.crictl_ok(&["ps", "-a", "-q"])?;
    ensure(!listed.contains(&id), || {
        format!("{id} is still listed after rm")
    })?;
    berth_e2e::leaks::nothing_left_of(&berthd.state_dir(), &id)?;
    ensure(snapshot_dirs(berthd) == snapshots, || {
        format!(
            "snapshots before the test: {snapshots:?}, after rm: {:?}",
            snapshot_dirs(berthd)
        )
    })
}

// ---- pods ----

/// What a stopped pod must no longer hold: namespace mounts under its
/// dir, its init, its veth and IP.
fn held_by(berthd: &Berthd, id: &str) -> Vec<String> {
    let dir: PathBuf = berthd.state_dir().join("sandboxes").join(id);
    let mut held: Vec<String> = berth_e2e::leaks::mounts_under(&dir)
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    held.extend(
        berth_e2e::leaks::processes_referring_to(&dir)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    held.extend(berthd.network_leaks());
    held
}

fn pod_crash(berthd: &mut Berthd, case: &PodCase) -> TestResult {
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let name = case.failpoint.replace(':', "-");
    let config = pod_config(berthd, &name, case.pid_init)?;
    let id = berthd.crictl_ok(&["runp", &config])?.trim().to_owned();
    let pod = Pod {
        id: id.clone(),
        config: config.clone(),
    };
    let container = match case.container {
        true => Some(container_in(berthd, &pod, "worker", true)?),
        false => None,
    };
    let request: Vec<&str> = match case.remove {
        true => vec!["rmp", "--force", &id],
        false => vec!["stopp", &id],
    };
    crash_in(berthd, case.failpoint, &request)?;

    let state = pod_state(berthd, &id)?;
    if case.ready_after {
        ensure(state == "SANDBOX_READY", || {
            format!("pod {id} is {state}, not ready")
        })?;
        // Usable: a new container runs in it.
        let fresh = container_in(berthd, &pod, "fresh", true)?;
        reaches(berthd, &fresh, "CONTAINER_RUNNING")?;
    } else {
        ensure(state == "SANDBOX_NOTREADY", || {
            format!("pod {id} is {state}, not stopped")
        })?;
        let held = held_by(berthd, &id);
        ensure(held.is_empty(), || {
            format!("the stopped pod {id} still holds:\n  {}", held.join("\n  "))
        })?;
    }
    if let Some(container) = &container {
        // Whatever the pod's state, its first container no longer runs
        // (the stop got that far) or is gone with the removal.
        let listed = berthd.crictl_ok(&["ps", "-a", "-q"])?;
        if listed.contains(container.as_str()) {
            reaches(berthd, container, "CONTAINER_EXITED")?;
        }
    }
    // The interrupted call works when repeated, and the pod goes entirely.
    berthd.crictl_ok(&["stopp", &id])?;
    berthd.crictl_ok(&["rmp", "--force", &id])?;
    let listed = berthd.crictl_ok(&["pods", "-q"])?;
    ensure(!listed.contains(&id), || {
        format!("{id} is listed after rmp")
    })?;
    let mut left = held_by(berthd, &id);
    let dir = berthd.state_dir().join("sandboxes").join(&id);
    if dir.exists() {
        left.push(format!("sandbox dir {}", dir.display()));
    }
    ensure(left.is_empty(), || {
        format!("the removed pod {id} left:\n  {}", left.join("\n  "))
    })?;
    if let Some(container) = &container {
        berth_e2e::leaks::nothing_left_of(&berthd.state_dir(), container)?;
    }
    // The name is free again.
    let again = berthd.crictl_ok(&["runp", &config])?.trim().to_owned();
    berthd.crictl_ok(&["rmp", "--force", &again]).map(drop)
}
