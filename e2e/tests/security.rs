//! The boundaries a local user of the node meets (issue 10): what another
//! user can reach of berthd's state while a container runs, and what idle
//! connections to the metrics port can do to the CRI socket. Real berthd,
//! crictl, runc and the loopback registry; each test stops its daemon and
//! checks for leaks.

use berth_e2e::{ensure, tool, wait_until, Berthd, BerthdOptions, Registry, Suite, TestResult};
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The image of the container tests, served by the loopback registry.
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// The unprivileged user that plays the attacker.
const NOBODY: &str = "65534";

fn main() {
    let mut suite = Suite::new();
    suite.run(
        "idle_metrics_connections_do_not_starve_the_cri",
        idle_metrics_connections_do_not_starve_the_cri,
    );
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(|r| r.mirrors_dir().to_owned());
    suite.run("container_state_is_unreachable_by_other_users", || {
        let mirrors = mirrors.clone().ok_or("no registry")?;
        with_berthd(
            BerthdOptions {
                registry_config_path: Some(mirrors),
                ..BerthdOptions::default()
            },
            container_state_is_unreachable,
        )
    });
    suite.run("hostile_log_paths_and_profiles_are_refused_at_once", || {
        let mirrors = mirrors.clone().ok_or("no registry")?;
        with_berthd(
            BerthdOptions {
                registry_config_path: Some(mirrors),
                ..BerthdOptions::default()
            },
            hostile_log_paths_and_profiles,
        )
    });
    drop(registry);
    suite.finish();
}

/// Runs `body` on a fresh berthd; whatever the outcome, removes every pod
/// before the leak check.
fn with_berthd(options: BerthdOptions, body: impl FnOnce(&Berthd) -> TestResult) -> TestResult {
    let berthd = Berthd::start(options)?;
    let outcome = body(&berthd);
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let stopped = berthd.stop();
    outcome.and(cleaned).and(stopped)
}

/// Runs `args` as the unprivileged user, without supplementary groups.
/// A shell execs them: setpriv's own exec still passes path checks that
/// the user's would not.
fn as_nobody(args: &[&str]) -> Result<Output, String> {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            "exec \"$0\" \"$@\"",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run setpriv: {e}"))
}

/// Fails when the unprivileged user can run `args` successfully.
fn nobody_cannot(what: &str, args: &[&str]) -> TestResult {
    let output = as_nobody(args)?;
    ensure(!output.status.success(), || {
        format!(
            "another user could {what}: {args:?} printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure(stderr.contains("Permission denied"), || {
        format!("{what}: {args:?} failed otherwise than with EACCES: {stderr}")
    })
}

fn write_json(berthd: &Berthd, name: &str, value: serde_json::Value) -> Result<String, String> {
    let path = berthd.dir().join(format!("{name}.json"));
    std::fs::write(&path, value.to_string()).map_err(|e| e.to_string())?;
    Ok(path.to_string_lossy().into_owned())
}

fn container(
    berthd: &Berthd,
    pod: &str,
    pod_config: &str,
    config: serde_json::Value,
) -> Result<String, String> {
    let name = config["metadata"]["name"]
        .as_str()
        .unwrap_or("c")
        .to_owned();
    let path = write_json(berthd, &format!("container-{name}"), config)?;
    let id = berthd
        .crictl_ok(&["create", pod, &path, pod_config])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &id])?;
    Ok(id)
}

fn mode(path: &Path) -> Result<(u32, u32), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((meta.mode() & 0o7777, meta.uid()))
}

/// Every directory from `top` down to `leaf` is root's and 0700.
fn owner_only_down_to(top: &Path, leaf: &Path) -> TestResult {
    let below = leaf
        .strip_prefix(top)
        .map_err(|_| format!("{} is not under {}", leaf.display(), top.display()))?;
    let mut dir = top.to_owned();
    let mut dirs = vec![dir.clone()];
    for part in below {
        dir.push(part);
        dirs.push(dir.clone());
    }
    for dir in dirs {
        let (mode, uid) = mode(&dir)?;
        ensure((mode, uid) == (0o700, 0), || {
            format!(
                "{} is {mode:o} owned by {uid}, not 0700 root's",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Everything under `top`, not descending into mount points (a rootfs, a
/// snapshot's tree, the pod's shm) or `skip`.
fn walk(top: &Path, skip: &[&str]) -> Vec<PathBuf> {
    let device = std::fs::metadata(top).map(|m| m.dev()).unwrap_or(0);
    let mut found = Vec::new();
    let mut pending = vec![top.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            found.push(path.clone());
            let name = entry.file_name();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() && meta.dev() == device && !skip.iter().any(|s| name == *s) {
                pending.push(path);
            }
        }
    }
    found
}

fn container_state_is_unreachable(berthd: &Berthd) -> TestResult {
    // The test's directory stands for /run and /var/lib, which every user
    // may traverse: only berthd's own modes may stop them.
    std::fs::set_permissions(berthd.dir(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let pod_config = write_json(
        berthd,
        "pod",
        serde_json::json!({
            "metadata": {"name": "perms", "namespace": "berth-e2e", "uid": "uid-perms", "attempt": 0},
            "hostname": "perms",
            "log_directory": berthd.dir().join("logs/perms"),
            "linux": {}
        }),
    )?;
    let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();

    // A container that keeps a secret in its environment and plants a
    // setuid-root copy of busybox, named as the applet it would run.
    let planter = container(
        berthd,
        &pod,
        &pod_config,
        serde_json::json!({
            "metadata": {"name": "planter"},
            "image": {"image": BUSYBOX},
            "command": ["sh", "-c", "mkdir -p /planted && cp /bin/busybox /planted/id && \
                        chmod 4755 /planted/id && exec sleep 1000"],
            "envs": [{"key": "SECRET_TOKEN", "value": "hunter2"}],
            "log_path": "planter.log",
            "linux": {}
        }),
    )?;
    // A non-root container still reads the pod's files and writes its shm.
    let user = container(
        berthd,
        &pod,
        &pod_config,
        serde_json::json!({
            "metadata": {"name": "user"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "log_path": "user.log",
            "linux": {"security_context": {"run_as_user": {"value": 1000}}}
        }),
    )?;
    // One that has exited, so its exit file exists.
    let exited = container(
        berthd,
        &pod,
        &pod_config,
        serde_json::json!({
            "metadata": {"name": "exited"},
            "image": {"image": BUSYBOX},
            "command": ["true"],
            "log_path": "exited.log",
            "linux": {}
        }),
    )?;

    let id_output = berthd.crictl_ok(&["exec", "-s", &user, "id", "-u"])?;
    ensure(id_output.trim() == "1000", || format!("id -u: {id_output}"))?;
    let hosts = berthd.crictl_ok(&["exec", "-s", &user, "cat", "/etc/hosts"])?;
    ensure(hosts.contains("localhost"), || {
        format!("/etc/hosts: {hosts}")
    })?;
    berthd.crictl_ok(&[
        "exec",
        "-s",
        &user,
        "cat",
        "/etc/resolv.conf",
        "/etc/hostname",
    ])?;
    let shm = berthd.crictl_ok(&[
        "exec",
        "-s",
        &user,
        "sh",
        "-c",
        "echo shared > /dev/shm/probe && cat /dev/shm/probe",
    ])?;
    ensure(shm.trim() == "shared", || format!("/dev/shm: {shm}"))?;

    let state = berthd.state_dir();
    let root = berthd.root_dir();
    // `<state>/containers/<id>` is the bundle (agent/src/container/record.rs).
    let bundle = state.join("containers").join(&planter);
    let planted = bundle.join("rootfs/planted/id");
    let exit_file = state.join("containers").join(&exited).join("exit.json");
    ensure(
        wait_until(Duration::from_secs(20), || {
            planted.exists() && exit_file.exists()
        }),
        || "the planted binary or the exit file never appeared".to_owned(),
    )?;
    let (planted_mode, planted_uid) = mode(&planted)?;
    ensure((planted_mode, planted_uid) == (0o4755, 0), || {
        format!("the plant is {planted_mode:o} owned by {planted_uid}")
    })?;

    // As another user.
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let config = path(&bundle.join("config.json"));
    nobody_cannot("stat the bundle's config.json", &["stat", &config])?;
    nobody_cannot("read the bundle's config.json", &["cat", &config])?;
    nobody_cannot("list the rootfs", &["ls", &path(&bundle.join("rootfs/"))])?;
    nobody_cannot(
        "run the container's setuid binary",
        &[&path(&planted), "-u"],
    )?;
    nobody_cannot("read the exit file", &["cat", &path(&exit_file)])?;
    nobody_cannot(
        "read the shim's log",
        &["cat", &path(&bundle.join("shim.log"))],
    )?;
    nobody_cannot(
        "list the snapshots",
        &["ls", &path(&root.join("snapshotter/snapshots"))],
    )?;
    nobody_cannot(
        "list the content store",
        &["ls", &path(&root.join("content/blobs/sha256"))],
    )?;
    nobody_cannot(
        "list the pod sandboxes",
        &["ls", &path(&state.join("sandboxes"))],
    )?;
    // And nothing at all below the root and state dirs.
    let mut everything = walk(&state, &["rootfs", "shm"]);
    everything.extend(walk(&root, &["fs"]));
    let mut args = vec![
        "stat".to_owned(),
        "-c".to_owned(),
        "%n".to_owned(),
        "--".to_owned(),
    ];
    args.extend(everything.iter().map(|p| path(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stat = as_nobody(&args)?;
    let reachable = String::from_utf8_lossy(&stat.stdout);
    ensure(reachable.trim().is_empty(), || {
        format!("another user can reach:\n{reachable}")
    })?;
    ensure(everything.len() > 20, || {
        format!("walked only {:?}", everything)
    })?;

    // The modes themselves, from the root and state dirs down.
    // (The rootfs mount point shows the image's `/`, not its own mode.)
    owner_only_down_to(&state, &bundle)?;
    owner_only_down_to(&state, &state.join("sandboxes").join(&pod))?;
    owner_only_down_to(&state, &state.join("s"))?;
    owner_only_down_to(&root, &root.join("snapshotter/snapshots"))?;
    owner_only_down_to(&root, &root.join("content/blobs/sha256"))?;
    owner_only_down_to(&root, &root.join("content/ingest"))?;
    for snapshot in std::fs::read_dir(root.join("snapshotter/snapshots"))
        .map_err(|e| e.to_string())?
        .flatten()
    {
        owner_only_down_to(&root, &snapshot.path())?;
    }
    for file in [
        bundle.join("config.json"),
        bundle.join("options.json"),
        bundle.join("shim.log"),
        bundle.join("address"),
        exit_file.clone(),
        root.join("metadata.redb"),
    ] {
        let (mode, _) = mode(&file)?;
        ensure(mode == 0o600, || format!("{} is {mode:o}", file.display()))?;
    }
    // The CRI log is kubelet's to read (0640, as containerd).
    let log = berthd.dir().join("logs/perms/planter.log");
    let (log_mode, _) = mode(&log)?;
    ensure(log_mode == 0o640, || {
        format!("{} is {log_mode:o}", log.display())
    })?;
    Ok(())
}

/// The (soft, hard) open-file limits berthd starts with: systemd's
/// defaults, scaled so that the test's connections outnumber the soft one.
const STARTING_LIMITS: (u64, u64) = (256, 1024);
/// Idle connections the attacker opens: more than the hard limit.
const IDLE_CONNECTIONS: usize = 1100;

fn idle_metrics_connections_do_not_starve_the_cri() -> TestResult {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // The test process holds its own ends of the connections.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let needed = 4 * IDLE_CONNECTIONS as u64;
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, needed.max(soft), needed.max(hard))
            .map_err(|e| format!("cannot raise the test's own file limit: {e}"))?;
    }
    with_berthd(
        BerthdOptions {
            open_files_limit: Some(STARTING_LIMITS),
            ..BerthdOptions::default()
        },
        idle_metrics_connections,
    )
}

fn idle_metrics_connections(berthd: &Berthd) -> TestResult {
    let address = std::fs::read_to_string(berthd.state_dir().join("metrics-address"))
        .map_err(|e| format!("metrics-address: {e}"))?
        .trim()
        .parse::<std::net::SocketAddr>()
        .map_err(|e| e.to_string())?;
    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        // A server that stopped accepting leaves connects to time out.
        if let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            idle.push(stream);
        }
    }

    // The CRI answers, promptly, while they are open.
    let started = Instant::now();
    let version = Command::new(tool("crictl")?)
        .args(["--runtime-endpoint", &berthd.endpoint()])
        .args(["--timeout", "5s", "version"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run crictl: {e}"))?;
    let took = started.elapsed();
    ensure(
        version.status.success() && took < Duration::from_secs(5),
        || {
            format!(
                "CRI Version with {} idle metrics connections open: {} after {took:?}: {}",
                idle.len(),
                version.status,
                String::from_utf8_lossy(&version.stderr)
            )
        },
    )?;
    berthd.crictl_ok(&["runp", &pod_json(berthd)?])?;

    // Beyond the cap they are closed at once, the rest after the
    // header-read timeout.
    let closed = |idle: &[TcpStream]| idle.iter().filter(|s| is_closed(s)).count();
    let mut at_once = 0;
    wait_until(Duration::from_secs(2), || {
        at_once = closed(&idle);
        at_once + 64 >= idle.len()
    });
    ensure(at_once + 64 >= idle.len(), || {
        format!(
            "{at_once} of {} idle connections closed within 2 s",
            idle.len()
        )
    })?;
    let mut all = 0;
    wait_until(Duration::from_secs(15), || {
        all = closed(&idle);
        all == idle.len()
    });
    ensure(all == idle.len(), || {
        format!(
            "{all} of {} idle connections closed within 15 s",
            idle.len()
        )
    })?;
    drop(idle);
    let metrics = berthd.metrics()?;
    ensure(metrics.contains("berth_cri_requests_total"), || {
        metrics.clone()
    })?;

    // The accept loops neither spun nor flooded the log.
    let log = berthd.log();
    let accept_lines = log.matches("accept failed").count();
    ensure(accept_lines <= 10, || {
        format!("{accept_lines} accept failures logged")
    })?;
    // And berthd raised its soft limit to the hard one.
    let pid = berthd.pid().ok_or("berthd is not running")?;
    let limits =
        std::fs::read_to_string(format!("/proc/{pid}/limits")).map_err(|e| e.to_string())?;
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    let numbers: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    let hard = STARTING_LIMITS.1.to_string();
    ensure(numbers == [hard.as_str(), hard.as_str()], || {
        format!("berthd's limits: {files}")
    })
}

/// Whether the server has closed `stream` (its end of the connection).
fn is_closed(mut stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            // An error response before the close.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn pod_json(berthd: &Berthd) -> Result<String, String> {
    write_json(
        berthd,
        "pod",
        serde_json::json!({
            "metadata": {"name": "busy", "namespace": "berth-e2e", "uid": "uid-busy", "attempt": 0},
            "hostname": "busy",
            "linux": {}
        }),
    )
}

/// How long a refusal may take: a blocking open would take crictl's 60 s.
const PROMPTLY: Duration = Duration::from_secs(15);

fn hostile_log_paths_and_profiles(berthd: &Berthd) -> TestResult {
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let log_dir = berthd.dir().join("logs/hostile");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
    let pod_config = write_json(
        berthd,
        "pod",
        serde_json::json!({
            "metadata": {"name": "hostile", "namespace": "berth-e2e", "uid": "uid-hostile", "attempt": 0},
            "hostname": "hostile",
            "log_directory": log_dir,
            "linux": {}
        }),
    )?;
    let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
    let fifo = |path: &Path| {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU)
            .map_err(|e| format!("mkfifo {}: {e}", path.display()))
    };
    fifo(&log_dir.join("fifo.log"))?;
    let profile_fifo = berthd.dir().join("profile-fifo.json");
    fifo(&profile_fifo)?;
    let escaped = berthd.dir().join("escaped.log");
    let absolute = berthd.dir().join("absolute.log");

    let with_log = |name: &str, log_path: &str| {
        serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["sh", "-c", "echo written; exec sleep 1000"],
            "log_path": log_path,
            "linux": {}
        })
    };
    let with_profile = |name: &str, profile: &Path| {
        serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "linux": {"security_context": {"seccomp": {
                "profile_type": 2, "localhost_ref": profile
            }}}
        })
    };
    let cases = [
        (
            "an escaping log path",
            with_log("escape", "../../escaped.log"),
            "log_path",
        ),
        (
            "an absolute log path",
            with_log("absolute", &absolute.to_string_lossy()),
            "log_path",
        ),
        ("a FIFO log path", with_log("fifo", "fifo.log"), ""),
        (
            "a FIFO seccomp profile",
            with_profile("profile-fifo", &profile_fifo),
            "not a regular file",
        ),
        (
            "/dev/zero as seccomp profile",
            with_profile("profile-zero", Path::new("/dev/zero")),
            "not a regular file",
        ),
    ];
    for (what, config, reason) in cases {
        let name = config["metadata"]["name"]
            .as_str()
            .unwrap_or("c")
            .to_owned();
        let path = write_json(berthd, &format!("container-{name}"), config)?;
        let started = Instant::now();
        let created = berthd.crictl(&["create", &pod, &path, &pod_config])?;
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&created.stderr);
        // A created one must not start either (the log opens at create).
        let started_too = created.status.success()
            && berthd
                .crictl(&["start", String::from_utf8_lossy(&created.stdout).trim()])?
                .status
                .success();
        ensure(!created.status.success() || !started_too, || {
            format!("{what} was accepted")
        })?;
        ensure(took < PROMPTLY, || {
            format!("{what}: refused only after {took:?}")
        })?;
        ensure(stderr.contains(reason), || format!("{what}: {stderr}"))?;
    }
    ensure(!escaped.exists() && !absolute.exists(), || {
        "a container log was written outside the pod's log directory".to_owned()
    })?;
    // The pod is not held up by any of it.
    let started = Instant::now();
    berthd.crictl_ok(&["stopp", &pod])?;
    let took = started.elapsed();
    ensure(took < PROMPTLY, || format!("StopPodSandbox took {took:?}"))
}
