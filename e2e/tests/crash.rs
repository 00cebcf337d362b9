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

use berth_e2e::{ensure, Berthd, BerthdOptions, Registry, Suite, TestResult};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
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
    if !has_failpoints(&berth_e2e::berthd_binary()) {
        // Fail at once rather than wait for crashes that cannot happen.
        suite.run("berthd_has_failpoints", || {
            Err(format!(
                "{} was built without failpoints: cargo build -p berth-agent -p berth-shim \
                 --features berth-agent/failpoints",
                berth_e2e::berthd_binary().display()
            ))
        });
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

/// True when the berthd binary has the failpoints compiled in (it names
/// their environment variable only then).
fn has_failpoints(binary: &Path) -> bool {
    std::process::Command::new("grep")
        .args(["-q", "-a", "-F", "BERTH_FAILPOINT"])
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success())
}

fn crash_at(mirrors: &Path, failpoint: &str, outcome: Outcome) -> TestResult {
    let mut berthd = Berthd::start(BerthdOptions {
        registry_config_path: Some(mirrors.to_owned()),
        env: vec![("BERTH_FAILPOINT".to_owned(), failpoint.to_owned())],
        ..BerthdOptions::default()
    })?;
    let outcome = crash_and_recover(&mut berthd, failpoint, outcome);
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let stopped = berthd.stop();
    outcome.and(cleaned).and(stopped)
}

fn sandbox_crash_at(failpoint: &str) -> TestResult {
    let mut berthd = Berthd::start(BerthdOptions {
        env: vec![("BERTH_FAILPOINT".to_owned(), failpoint.to_owned())],
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

/// Checks that berthd killed itself at `failpoint` while serving the
/// request that `request` was the client of.
fn died_at(berthd: &mut Berthd, failpoint: &str, request: &std::process::Output) -> TestResult {
    let status = berthd.wait_exit(Duration::from_secs(30))?;
    ensure(status.signal() == Some(libc_sigkill()), || {
        format!(
            "berthd did not die at {failpoint} (was it built with --features \
             berth-agent/failpoints?): {status}; client: {}\n{}",
            String::from_utf8_lossy(&request.stdout),
            berthd.log()
        )
    })?;
    ensure(
        berthd
            .log()
            .contains(&format!("failpoint {failpoint} reached")),
        || {
            format!(
                "berthd died elsewhere than at {failpoint}:\n{}",
                berthd.log()
            )
        },
    )?;
    ensure(!request.status.success(), || {
        "the request succeeded although berthd died".to_owned()
    })
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
            !processes_in_cgroup_of(id).is_empty()
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

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

fn write_json(berthd: &Berthd, name: &str, value: serde_json::Value) -> Result<String, String> {
    let path = berthd.dir().join(name);
    std::fs::write(&path, value.to_string()).map_err(|e| e.to_string())?;
    Ok(path.to_string_lossy().into_owned())
}

/// The snapshot directories of the daemon's snapshotter.
fn snapshot_dirs(berthd: &Berthd) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(berthd.root_dir().join("snapshotter/snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

/// Fails naming whatever of container `id` is still on the host after a
/// few seconds (a killed process may stay a zombie until its parent, the
/// exited shim's subreaper or init, reaps it).
fn nothing_left_of(berthd: &Berthd, id: &str) -> TestResult {
    let mut outcome = Ok(());
    berth_e2e::wait_until(Duration::from_secs(10), || {
        outcome = left_of(berthd, id);
        outcome.is_ok()
    });
    outcome
}

fn left_of(berthd: &Berthd, id: &str) -> TestResult {
    let mut left = Vec::new();
    let bundle = berthd.state_dir().join("containers").join(id);
    if bundle.exists() {
        left.push(format!("bundle {}", bundle.display()));
    }
    let runtime_state = berthd.state_dir().join("runc").join(id);
    if runtime_state.exists() {
        left.push(format!("runtime state {}", runtime_state.display()));
    }
    left.extend(
        berth_e2e::leaks::mounts_under(&bundle)
            .into_iter()
            .map(|m| format!("mount {m}")),
    );
    left.extend(
        processes_in_cgroup_of(id)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    left.extend(
        berth_e2e::leaks::processes_referring_to(&bundle)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    left.extend(
        cgroup_dirs_naming(id)
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    ensure(left.is_empty(), || {
        format!("container {id} left:\n  {}", left.join("\n  "))
    })
}

/// Processes whose cgroup (in any hierarchy) names `id`.
fn processes_in_cgroup_of(id: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let cgroups = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
            cgroups.contains(id).then(|| {
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // "pid (comm) state ppid ...": the state and parent.
                let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest.trim());
                let state_ppid: Vec<&str> = fields.split(' ').take(2).collect();
                format!(
                    "{pid} (state/ppid {}): {}",
                    state_ppid.join("/"),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
        })
        .collect()
}

/// Cgroup directories (in every mounted hierarchy) whose name holds `id`.
fn cgroup_dirs_naming(id: &str) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let roots = mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split(' ').next()?;
        let mount_point = before.split(' ').nth(4)?;
        (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    });
    let mut found = Vec::new();
    for root in roots {
        let mut pending = vec![root];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if entry.file_name().to_string_lossy().contains(id) {
                        found.push(entry.path());
                    }
                    pending.push(entry.path());
                }
            }
        }
    }
    found
}
