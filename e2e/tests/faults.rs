//! Faulty real components: the real runc and the real CNI `bridge` plugin
//! behind wrappers (shell scripts the suite writes into its temp dir) that
//! fail once (non-zero, with an error on stderr and in runc's log) or hang
//! once (after running the real command, so what it made is there) at a
//! chosen step: runc `create`, `start`, `kill`, `delete`; CNI ADD, DEL.
//! A test arms a fault by writing `<COMMAND> <fail|hang>` into the
//! wrapper's fault file, which the wrapper consumes when it fires.
//!
//! berthd runs the wrapped runc as the RuntimeClass handler `faulty`, with
//! `runtime.command_timeout_seconds` and `cni.plugin_timeout_seconds` at
//! 5, and the wrapped bridge from a CNI bin dir of the suite's own. Each
//! test asserts a precise gRPC error (the injected message, or
//! DeadlineExceeded naming the bound for a hang), that the object's state
//! agrees with the host, that nothing is left once it is removed (no shim,
//! `runc init`, cgroup, mount, runtime state, netns, veth or IP), and that
//! the interrupted request works when repeated. One berthd serves the
//! whole suite.

use berth_e2e::failpoints::names_in;
use berth_e2e::leaks::{nothing_left_of, processes_in_cgroup_of};
use berth_e2e::{
    container_state, ensure, wait_until, write_json, Berthd, BerthdOptions, Registry, Suite,
    TestResult,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// berth's bound on one runtime command and on one CNI plugin run here.
const TIMEOUT_SECONDS: u64 = 5;
/// The handler whose runtime is the wrapped runc.
const HANDLER: &str = "faulty";

/// The wrapped runc: the real one, except once where the fault file says.
const RUNC_WRAPPER: &str = r#"#!/bin/sh
# berth e2e (faults.rs): the real runc, failing or hanging once at the
# command the fault file names ("create fail", "kill hang").
real='@REAL@'
fault='@FAULT@'
cmd=
log=
prev=
for a in "$@"; do
    [ "$prev" = --log ] && log=$a
    if [ -z "$cmd" ]; then
        case $a in create | start | kill | delete) cmd=$a ;; esac
    fi
    prev=$a
done
if [ -n "$cmd" ] && [ -f "$fault" ] && [ "$(cut -d' ' -f1 "$fault")" = "$cmd" ] &&
    mv "$fault" "$fault.$$" 2>/dev/null; then
    mode=$(cut -d' ' -f2 "$fault.$$")
    rm -f "$fault.$$"
    if [ "$mode" = fail ]; then
        msg="berth-e2e: injected $cmd failure"
        [ -n "$log" ] && printf '{"level":"error","msg":"%s"}\n' "$msg" >>"$log"
        echo "$msg" >&2
        exit 1
    fi
    "$real" "$@"
    exec sleep 3600
fi
exec "$real" "$@"
"#;

/// The wrapped CNI bridge plugin, the same way by `CNI_COMMAND`.
const CNI_WRAPPER: &str = r#"#!/bin/sh
# berth e2e (faults.rs): the real bridge plugin, failing or hanging once at
# the CNI command the fault file names ("ADD fail", "DEL hang").
real='@REAL@'
fault='@FAULT@'
if [ -f "$fault" ] && [ "$(cut -d' ' -f1 "$fault")" = "$CNI_COMMAND" ] &&
    mv "$fault" "$fault.$$" 2>/dev/null; then
    mode=$(cut -d' ' -f2 "$fault.$$")
    rm -f "$fault.$$"
    if [ "$mode" = fail ]; then
        cat >/dev/null
        printf '{"cniVersion":"1.0.0","code":999,"msg":"berth-e2e: injected %s failure"}\n' "$CNI_COMMAND"
        exit 1
    fi
    "$real"
    exec sleep 3600
fi
exec "$real"
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fail,
    Hang,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Fail => "fail",
            Mode::Hang => "hang",
        }
    }
}

/// The wrappers, their fault files, and the daemon's options.
struct Wrappers {
    dir: tempfile::TempDir,
}

impl Wrappers {
    fn write() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-faults-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let runc = which("runc")?;
        let wrappers = Self { dir };
        let script = RUNC_WRAPPER
            .replace("@REAL@", &runc.to_string_lossy())
            .replace("@FAULT@", &wrappers.runtime_fault().to_string_lossy());
        executable(&wrappers.runc(), &script)?;
        // A CNI bin dir of the real plugins, bridge wrapped.
        let bins = wrappers.cni_bin_dir();
        std::fs::create_dir(&bins).map_err(|e| e.to_string())?;
        let real = Path::new("/usr/lib/cni");
        for name in names_in(real) {
            if name != "bridge" {
                std::os::unix::fs::symlink(real.join(&name), bins.join(&name))
                    .map_err(|e| e.to_string())?;
            }
        }
        let script = CNI_WRAPPER
            .replace("@REAL@", &real.join("bridge").to_string_lossy())
            .replace("@FAULT@", &wrappers.cni_fault().to_string_lossy());
        executable(&bins.join("bridge"), &script)?;
        Ok(wrappers)
    }

    fn runc(&self) -> PathBuf {
        self.dir.path().join("runc-faulty")
    }

    fn runtime_fault(&self) -> PathBuf {
        self.dir.path().join("runtime-fault")
    }

    fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni-bin")
    }

    fn cni_fault(&self) -> PathBuf {
        self.dir.path().join("cni-fault")
    }

    /// Arms one fault of the runtime (`create`, `start`, `kill`, `delete`).
    fn arm_runtime(&self, command: &str, mode: Mode) -> TestResult {
        std::fs::write(self.runtime_fault(), format!("{command} {}", mode.word()))
            .map_err(|e| e.to_string())
    }

    /// Arms one fault of the bridge plugin (`ADD`, `DEL`).
    fn arm_cni(&self, command: &str, mode: Mode) -> TestResult {
        std::fs::write(self.cni_fault(), format!("{command} {}", mode.word()))
            .map_err(|e| e.to_string())
    }

    /// Fails unless the armed fault fired (the wrapper consumed it), and
    /// disarms it either way.
    fn fired(&self, fault: &Path) -> TestResult {
        let armed = fault.exists();
        let _ = std::fs::remove_file(fault);
        ensure(!armed, || {
            format!("the fault in {} never fired", fault.display())
        })
    }

    fn options(&self, mirrors: PathBuf) -> BerthdOptions {
        BerthdOptions {
            registry_config_path: Some(mirrors),
            cni_bin_dirs: Some(vec![self.cni_bin_dir()]),
            cni_plugin_timeout_seconds: Some(TIMEOUT_SECONDS),
            extra_config: format!(
                "\n[runtime]\ncommand_timeout_seconds = {TIMEOUT_SECONDS}\n\n\
                 [runtime.handlers.runc]\nruntime_path = \"runc\"\n\n\
                 [runtime.handlers.{HANDLER}]\nruntime_path = {:?}\n",
                self.runc().display().to_string()
            ),
            ..BerthdOptions::default()
        }
    }
}

fn which(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} not found"))
}

fn executable(path: &Path, script: &str) -> TestResult {
    std::fs::write(path, script).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The runtime fault cases: the runc command, the mode.
const RUNTIME_FAULTS: &[(&str, Mode)] = &[
    ("create", Mode::Fail),
    ("create", Mode::Hang),
    ("start", Mode::Fail),
    ("start", Mode::Hang),
    ("kill", Mode::Fail),
    ("kill", Mode::Hang),
    ("delete", Mode::Fail),
    ("delete", Mode::Hang),
];

/// The CNI fault cases: the CNI command, the mode.
const CNI_FAULTS: &[(&str, Mode)] = &[
    ("ADD", Mode::Fail),
    ("ADD", Mode::Hang),
    ("DEL", Mode::Fail),
    ("DEL", Mode::Hang),
];

fn main() {
    let mut suite = Suite::new();
    let wrappers = match Wrappers::write() {
        Ok(w) => w,
        Err(e) => {
            suite.run("write_the_wrappers", || Err(e.clone()));
            suite.finish();
        }
    };
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    let mut berthd: Option<Berthd> = None;
    let daemon = |berthd: &mut Option<Berthd>| -> Result<(), String> {
        if berthd.is_none() {
            let mirrors = mirrors.clone().ok_or("no registry")?;
            let started = Berthd::start(wrappers.options(mirrors))?;
            started.crictl_ok(&["pull", BUSYBOX])?;
            *berthd = Some(started);
        }
        Ok(())
    };
    let mut run =
        |suite: &mut Suite, name: String, test: &dyn Fn(&mut Berthd, &Wrappers) -> TestResult| {
            suite.run(&name, || {
                daemon(&mut berthd)?;
                let outcome = test(berthd.as_mut().expect("started above"), &wrappers);
                let _ = std::fs::remove_file(wrappers.runtime_fault());
                let _ = std::fs::remove_file(wrappers.cni_fault());
                if outcome.is_err() {
                    // The retry, and the next test, start from a fresh daemon.
                    if let Some(daemon) = berthd.take() {
                        let _ = daemon.crictl(&["rmp", "--all", "--force"]);
                    }
                }
                outcome
            });
        };
    for &(command, mode) in RUNTIME_FAULTS {
        let name = format!("runc_{command}_that_{}s_once", mode.word());
        run(&mut suite, name, &move |berthd, wrappers| {
            runtime_fault(berthd, wrappers, command, mode)
        });
    }
    for &(command, mode) in CNI_FAULTS {
        let name = format!("cni_{}_that_{}s_once", command.to_lowercase(), mode.word());
        run(&mut suite, name, &move |berthd, wrappers| {
            cni_fault(berthd, wrappers, command, mode)
        });
    }
    suite.run("the_faulty_daemon_leaves_nothing", || match berthd.take() {
        Some(daemon) => {
            daemon.crictl_ok(&["rmp", "--all", "--force"])?;
            daemon.stop()
        }
        None => Ok(()),
    });
    drop(registry);
    // finish() exits: the wrappers' temp dir goes first.
    drop(wrappers);
    suite.finish();
}

/// Checks that a failed crictl call failed with `code` and a message
/// holding `text`.
fn failed_with(output: &std::process::Output, code: &str, text: &str) -> TestResult {
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure(!output.status.success(), || {
        format!(
            "the call succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    ensure(
        stderr.contains(&format!("code = {code}")) && stderr.contains(text),
        || format!("expected code {code} and {text:?}, got: {}", stderr.trim()),
    )
}

/// The error a fault gives: the injected message, or for a hang
/// DeadlineExceeded naming berth's bound.
fn expected_error(mode: Mode, command: &str, fail_code: &str) -> (String, String) {
    match mode {
        Mode::Fail => (
            fail_code.to_owned(),
            format!("berth-e2e: injected {command} failure"),
        ),
        Mode::Hang => (
            "DeadlineExceeded".to_owned(),
            format!("did not finish within {TIMEOUT_SECONDS} s"),
        ),
    }
}

fn pod_config(berthd: &Berthd, name: &str) -> Result<String, String> {
    write_json(
        berthd,
        &format!("pod-{name}.json"),
        serde_json::json!({
            "metadata": {"name": name, "namespace": "berth-e2e", "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": berthd.dir().join("logs").join(name),
            "linux": {}
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

/// Fails unless container `id`'s record and the host agree: RUNNING with
/// processes in its cgroup, or CREATED/EXITED with none (after a few
/// seconds for a kill to be reaped). Returns the state.
fn state_agrees(berthd: &Berthd, id: &str) -> Result<String, String> {
    let state = container_state(berthd, id)?;
    if state == "CONTAINER_RUNNING" {
        ensure(!processes_in_cgroup_of(id).is_empty(), || {
            format!("{id} is listed running, but nothing runs in its cgroup")
        })?;
    } else {
        let dead = wait_until(Duration::from_secs(10), || {
            processes_in_cgroup_of(id).is_empty()
        });
        ensure(dead, || {
            format!(
                "{id} is listed {state}, but its processes run: {:?}",
                processes_in_cgroup_of(id)
            )
        })?;
    }
    Ok(state)
}

fn runtime_fault(
    berthd: &mut Berthd,
    wrappers: &Wrappers,
    command: &str,
    mode: Mode,
) -> TestResult {
    let name = format!("{command}-{}", mode.word());
    let pod_json = pod_config(berthd, &name)?;
    let pod = berthd
        .crictl_ok(&["runp", "--runtime", HANDLER, &pod_json])?
        .trim()
        .to_owned();
    let container_json = container_config(berthd, "victim")?;
    let create = [
        "create",
        pod.as_str(),
        container_json.as_str(),
        pod_json.as_str(),
    ];
    let bundles = berthd.state_dir().join("containers");
    let runtime_state = berthd.state_dir().join("runc");
    let before = (names_in(&bundles), names_in(&runtime_state));

    let id = if command == "create" {
        wrappers.arm_runtime(command, mode)?;
        // Watch the bundles while the create runs: the container's ID.
        let mut child = crictl_child(berthd, &create)?;
        let mut seen = None;
        loop {
            if seen.is_none() {
                seen = names_in(&bundles)
                    .into_iter()
                    .find(|b| !before.0.contains(b));
            }
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        wrappers.fired(&wrappers.runtime_fault())?;
        let (code, text) = expected_error(mode, command, "Internal");
        failed_with(&output, &code, &text)?;
        // Nothing of the failed create is left, nor listed.
        let listed = berthd.crictl_ok(&["ps", "-a", "-q", "--pod", &pod])?;
        ensure(listed.trim().is_empty(), || {
            format!("a failed create is listed: {listed}")
        })?;
        if let Some(id) = &seen {
            nothing_left_of(&berthd.state_dir(), id)?;
        } else {
            ensure(mode == Mode::Fail, || {
                "the hung create never made a bundle".to_owned()
            })?;
        }
        let after = (names_in(&bundles), names_in(&runtime_state));
        ensure(after == before, || {
            format!("bundles and runtime state before: {before:?}, after: {after:?}")
        })?;
        // The next create works.
        berthd.crictl_ok(&create)?.trim().to_owned()
    } else {
        berthd.crictl_ok(&create)?.trim().to_owned()
    };

    match command {
        "create" => {
            berthd.crictl_ok(&["start", &id])?;
        }
        "start" => {
            wrappers.arm_runtime(command, mode)?;
            let output = berthd.crictl(&["start", &id])?;
            wrappers.fired(&wrappers.runtime_fault())?;
            let (code, text) = expected_error(mode, command, "Internal");
            failed_with(&output, &code, &text)?;
            state_agrees(berthd, &id)?;
        }
        "kill" => {
            berthd.crictl_ok(&["start", &id])?;
            wrappers.arm_runtime(command, mode)?;
            let output = berthd.crictl(&["stop", "--timeout", "0", &id])?;
            wrappers.fired(&wrappers.runtime_fault())?;
            let (code, text) = expected_error(mode, command, "Internal");
            failed_with(&output, &code, &text)?;
            state_agrees(berthd, &id)?;
            // The stop works when repeated.
            berthd.crictl_ok(&["stop", "--timeout", "0", &id])?;
            let state = state_agrees(berthd, &id)?;
            ensure(state == "CONTAINER_EXITED", || {
                format!("{id} is {state} after a stop")
            })?;
        }
        "delete" => {
            // The exited task is deleted when its exit is recorded; the
            // failure there is berth's to handle, and the removal works.
            berthd.crictl_ok(&["start", &id])?;
            wrappers.arm_runtime(command, mode)?;
            berthd.crictl_ok(&["stop", "--timeout", "0", &id])?;
            let fired = wait_until(Duration::from_secs(TIMEOUT_SECONDS + 5), || {
                !wrappers.runtime_fault().exists()
            });
            ensure(fired, || "the delete fault never fired".to_owned())?;
            state_agrees(berthd, &id)?;
        }
        _ => unreachable!("a listed runtime command"),
    }
    berthd.crictl_ok(&["rm", "--force", &id])?;
    nothing_left_of(&berthd.state_dir(), &id)?;
    berthd.crictl_ok(&["rmp", "--force", &pod])?;
    let after = (names_in(&bundles), names_in(&runtime_state));
    ensure(after == before, || {
        format!("bundles and runtime state before: {before:?}, after: {after:?}")
    })
}

fn crictl_child(berthd: &Berthd, args: &[&str]) -> Result<std::process::Child, String> {
    let endpoint = berthd.endpoint();
    Command::new(berth_e2e::tool("crictl")?)
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "60s"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run crictl: {e}"))
}

/// What the daemon's pods hold on the host: namespace mounts and dirs
/// under its sandboxes, processes naming them, veths and IPs.
fn pods_hold(berthd: &Berthd) -> Vec<String> {
    let sandboxes = berthd.state_dir().join("sandboxes");
    let mut held: Vec<String> = berth_e2e::leaks::mounts_under(&sandboxes)
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    held.extend(
        names_in(&sandboxes)
            .into_iter()
            .map(|d| format!("sandbox dir {d}")),
    );
    held.extend(berthd.network_leaks());
    held
}

fn cni_fault(berthd: &mut Berthd, wrappers: &Wrappers, command: &str, mode: Mode) -> TestResult {
    // Only this test's pods: the earlier ones are removed.
    berthd.crictl_ok(&["rmp", "--all", "--force"])?;
    let held = pods_hold(berthd);
    ensure(held.is_empty(), || format!("before the test: {held:?}"))?;
    let name = format!("cni-{}-{}", command.to_lowercase(), mode.word());
    let pod_json = pod_config(berthd, &name)?;
    match command {
        "ADD" => {
            wrappers.arm_cni(command, mode)?;
            let output = berthd.crictl(&["runp", &pod_json])?;
            wrappers.fired(&wrappers.cni_fault())?;
            let (code, text) = expected_error(mode, "ADD", "Internal");
            failed_with(&output, &code, &text)?;
            let listed = berthd.crictl_ok(&["pods", "-q"])?;
            ensure(listed.trim().is_empty(), || {
                format!("a pod whose ADD failed is listed: {listed}")
            })?;
            let held = pods_hold(berthd);
            ensure(held.is_empty(), || {
                format!("the failed RunPodSandbox left:\n  {}", held.join("\n  "))
            })?;
            // The next RunPodSandbox works.
            let pod = berthd.crictl_ok(&["runp", &pod_json])?.trim().to_owned();
            berthd.crictl_ok(&["rmp", "--force", &pod])?;
        }
        "DEL" => {
            let pod = berthd.crictl_ok(&["runp", &pod_json])?.trim().to_owned();
            wrappers.arm_cni(command, mode)?;
            // DEL is retried: the stop succeeds, and releases everything.
            berthd.crictl_ok(&["stopp", &pod])?;
            wrappers.fired(&wrappers.cni_fault())?;
            let network = berthd.network_leaks();
            ensure(network.is_empty(), || {
                format!("the stopped pod still holds: {network:?}")
            })?;
            berthd.crictl_ok(&["rmp", "--force", &pod])?;
        }
        _ => unreachable!("a listed CNI command"),
    }
    let held = pods_hold(berthd);
    ensure(held.is_empty(), || {
        format!("the removed pods left:\n  {}", held.join("\n  "))
    })
}
