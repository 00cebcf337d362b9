//! Operating a node's berthd: SIGHUP reloads the configuration of a
//! running daemon without losing its pods, containers or socket;
//! `berthd config dump` and drop-ins; `berthd doctor` and the start-up
//! checks that become `Status` conditions; shims outside berthd's cgroup;
//! `hack/install-node.sh` into a staging root and sd_notify.

use berth_e2e::{
    berthd_binary, ensure, repo_root, wait_until, write_json, Berthd, BerthdOptions, Registry,
    Suite, TestResult,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The image of the container tests, served by the loopback registry.
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// What berthd logs once it has applied a reload.
const RELOADED: &str = "reloaded the configuration";

fn main() {
    let mut suite = Suite::new();
    suite.run(
        "config_dump_merges_drop_ins_and_flags",
        config_dump_merges_drop_ins_and_flags,
    );
    suite.run(
        "sighup_with_a_broken_file_keeps_the_running_config",
        sighup_with_a_broken_file_keeps_the_running_config,
    );
    suite.run(
        "doctor_finds_planted_problems_with_fixes",
        doctor_finds_planted_problems_with_fixes,
    );
    suite.run(
        "a_missing_runtime_is_a_status_condition_not_a_crash",
        a_missing_runtime_is_a_status_condition_not_a_crash,
    );
    suite.run(
        "install_node_into_a_staging_root_and_uninstall",
        install_node_into_a_staging_root_and_uninstall,
    );
    suite.run(
        "systemd_is_told_ready_and_stopping",
        systemd_is_told_ready_and_stopping,
    );
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    suite.run("sighup_reloads_without_losing_anything", || {
        sighup_reloads_without_losing_anything(mirrors.as_deref().ok_or("no registry")?)
    });
    suite.run("shims_live_outside_berthd_s_cgroup", || {
        shims_live_outside_berthd_s_cgroup(mirrors.as_deref().ok_or("no registry")?)
    });
    suite.run("installed_binaries_run_pods_and_containers", || {
        installed_binaries_run_pods_and_containers(mirrors.as_deref().ok_or("no registry")?)
    });
    drop(registry);
    suite.finish();
}

/// Edits the daemon's config file: `edit` gets it as a TOML table.
fn edit_config(berthd: &Berthd, edit: impl FnOnce(&mut toml::Table)) -> TestResult {
    let path = berthd.config_path();
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let mut table: toml::Table = text.parse().map_err(|e| format!("config: {e}"))?;
    edit(&mut table);
    std::fs::write(&path, table.to_string()).map_err(|e| e.to_string())
}

/// Sets `table.key` (creating the table) to `value`.
fn set(config: &mut toml::Table, table: &str, key: &str, value: impl Into<toml::Value>) {
    let entry = config
        .entry(table)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value.into());
    }
}

fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.to_string_lossy().into_owned())
}

/// Sends SIGHUP and waits until the daemon has logged its `count`th
/// outcome matching `done`.
fn hangup(berthd: &Berthd, done: &str, count: usize) -> TestResult {
    let pid = berthd.pid().ok_or("berthd is not running")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| format!("kill -HUP {pid}: {e}"))?;
    let applied = wait_until(Duration::from_secs(20), || {
        berthd.log().matches(done).count() >= count
    });
    ensure(applied, || {
        format!("no {count}th {done:?} after SIGHUP:\n{}", berthd.log())
    })
}

/// The identity of the socket file: the same inode is the same bind.
fn socket_inode(berthd: &Berthd) -> Result<u64, String> {
    std::fs::metadata(berthd.socket())
        .map(|m| m.ino())
        .map_err(|e| format!("socket: {e}"))
}

/// A CRI call that fails with NotFound naming `probe`; the request layer
/// logs it at debug level only.
fn probe(berthd: &Berthd, probe: &str) -> TestResult {
    let out = berthd.crictl(&["inspect", probe])?;
    ensure(!out.status.success(), || {
        format!("crictl inspect {probe} succeeded")
    })
}

fn still_serving(berthd: &Berthd, pid: u32, inode: u64) -> TestResult {
    ensure(berthd.pid() == Some(pid), || {
        "berthd was restarted".to_owned()
    })?;
    ensure(Path::new(&format!("/proc/{pid}")).exists(), || {
        format!("berthd died:\n{}", berthd.log())
    })?;
    ensure(socket_inode(berthd)? == inode, || {
        "the socket was bound again".to_owned()
    })?;
    berthd.crictl_ok(&["version"]).map(drop)
}

fn sighup_with_a_broken_file_keeps_the_running_config() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    let outcome = (|| {
        let pid = berthd.pid().ok_or("berthd is not running")?;
        let inode = socket_inode(&berthd)?;
        let good = std::fs::read_to_string(berthd.config_path()).map_err(|e| e.to_string())?;
        let broken = good.replace("level = \"debug\"", "levle = \"debug\"");
        ensure(broken != good, || format!("no log.level in {good}"))?;
        std::fs::write(berthd.config_path(), broken).map_err(|e| e.to_string())?;
        hangup(&berthd, "cannot reload the configuration", 1)?;
        let log = berthd.log();
        ensure(log.contains("log.levle"), || {
            format!("the error does not name the key:\n{log}")
        })?;
        ensure(!log.contains(RELOADED), || log.clone())?;
        still_serving(&berthd, pid, inode)
    })();
    outcome.and(berthd.stop())
}

fn sighup_reloads_without_losing_anything(mirrors: &Path) -> TestResult {
    let mut berthd = Berthd::start(BerthdOptions::default())?;
    let outcome = reloads(&mut berthd, mirrors);
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    outcome.and(cleaned).and(berthd.stop())
}

fn reloads(berthd: &mut Berthd, mirrors: &Path) -> TestResult {
    let pid = berthd.pid().ok_or("berthd is not running")?;
    let inode = socket_inode(berthd)?;
    let original_cni = {
        let text = std::fs::read_to_string(berthd.config_path()).map_err(|e| e.to_string())?;
        let table: toml::Table = text.parse().map_err(|e| format!("config: {e}"))?;
        PathBuf::from(table["cni"]["conf_dir"].as_str().ok_or("no cni.conf_dir")?)
    };

    // Without mirrors the upstream registry is unreachable.
    let pulled = berthd.crictl(&["pull", BUSYBOX])?;
    ensure(!pulled.status.success(), || {
        "pulled without mirrors".to_owned()
    })?;
    probe(berthd, "probe-before-info")?;

    // Mirrors, pinned images and the log level apply; the message size
    // needs a restart and is said to.
    edit_config(berthd, |config| {
        set(config, "log", "level", "info");
        set(config, "registry", "config_path", path_value(mirrors));
        set(
            config,
            "image",
            "pinned_images",
            toml::Value::Array(vec![BUSYBOX.into()]),
        );
        set(config, "grpc", "max_message_size", 32 * 1024 * 1024);
    })?;
    hangup(berthd, RELOADED, 1)?;
    let log = berthd.log();
    ensure(
        log.contains("grpc.max_message_size") && log.contains("restart"),
        || format!("the key needing a restart is not named:\n{log}"),
    )?;
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let images: serde_json::Value =
        serde_json::from_str(&berthd.crictl_ok(&["images", "-o", "json"])?)
            .map_err(|e| e.to_string())?;
    let busybox = images["images"]
        .as_array()
        .and_then(|all| {
            all.iter().find(|i| {
                i["repoTags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == BUSYBOX))
            })
        })
        .ok_or_else(|| format!("{BUSYBOX} is not listed: {images}"))?;
    ensure(busybox["pinned"] == true, || {
        format!("not pinned: {busybox}")
    })?;

    // A pod and a container run across the next reload.
    let pod_config = write_json(
        berthd,
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "reload", "namespace": "berth-e2e", "uid": "uid-reload", "attempt": 0},
            "log_directory": berthd.dir().join("logs"),
            "linux": {}
        }),
    )?;
    let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
    let container_config = write_json(
        berthd,
        "container.json",
        serde_json::json!({
            "metadata": {"name": "sleeper"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "log_path": "sleeper.log",
            "linux": {}
        }),
    )?;
    let container = berthd
        .crictl_ok(&["create", &pod, &container_config, &pod_config])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &container])?;
    let container_pid = running_pid(berthd, &container)?;
    probe(berthd, "probe-at-info")?;

    // Back to debug, and a CNI directory without a network.
    let empty_cni = berthd.dir().join("empty-net.d");
    std::fs::create_dir_all(&empty_cni).map_err(|e| e.to_string())?;
    edit_config(berthd, |config| {
        set(config, "log", "level", "debug");
        set(config, "cni", "conf_dir", path_value(&empty_cni));
    })?;
    hangup(berthd, RELOADED, 2)?;
    probe(berthd, "probe-after-debug")?;
    let logged = wait_until(Duration::from_secs(10), || {
        berthd.log().contains("probe-after-debug")
    });
    let log = berthd.log();
    ensure(logged && log.contains("probe-before-info"), || {
        format!("debug-level failures are not logged at debug:\n{log}")
    })?;
    ensure(!log.contains("probe-at-info"), || {
        format!("a debug-level failure was logged at info:\n{log}")
    })?;
    let info: serde_json::Value =
        serde_json::from_str(&berthd.crictl_ok(&["info"])?).map_err(|e| e.to_string())?;
    let network = info["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "NetworkReady"))
        .ok_or_else(|| format!("no NetworkReady: {info}"))?;
    ensure(
        network["status"] == false
            && network["message"]
                .as_str()
                .is_some_and(|m| m.contains(&*empty_cni.to_string_lossy())),
        || format!("NetworkReady does not name the new CNI dir: {network}"),
    )?;

    // Nothing was lost: the same daemon, socket, pod and container.
    still_serving(berthd, pid, inode)?;
    ensure(running_pid(berthd, &container)? == container_pid, || {
        "the container was restarted".to_owned()
    })?;
    let pod_status = berthd.crictl_ok(&["inspectp", &pod])?;
    ensure(pod_status.contains("SANDBOX_READY"), || pod_status.clone())?;

    // The first CNI directory again: pods get a network.
    edit_config(berthd, |config| {
        set(config, "cni", "conf_dir", path_value(&original_cni));
    })?;
    hangup(berthd, RELOADED, 3)?;
    let second = write_json(
        berthd,
        "pod2.json",
        serde_json::json!({
            "metadata": {"name": "after", "namespace": "berth-e2e", "uid": "uid-after", "attempt": 0},
            "log_directory": berthd.dir().join("logs2"),
            "linux": {}
        }),
    )?;
    berthd.crictl_ok(&["runp", &second]).map(drop)
}

fn running_pid(berthd: &Berthd, id: &str) -> Result<u64, String> {
    let out = berthd.crictl_ok(&["inspect", id])?;
    let status: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("inspect is not JSON ({e}): {out}"))?;
    ensure(status["status"]["state"] == "CONTAINER_RUNNING", || {
        status.to_string()
    })?;
    status["info"]["pid"]
        .as_u64()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("no pid: {status}"))
}

/// `berthd config dump` with a file, two drop-ins and a flag: a complete
/// configuration that says where each value came from.
fn config_dump_merges_drop_ins_and_flags() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("config.toml");
    let drop_ins = dir.path().join("config.d");
    std::fs::create_dir_all(&drop_ins).map_err(|e| e.to_string())?;
    let write = |path: PathBuf, text: &str| std::fs::write(path, text).map_err(|e| e.to_string());
    write(
        config.clone(),
        "root = \"/srv/berth\"\n[log]\nlevel = \"warn\"\nformat = \"json\"\n",
    )?;
    write(drop_ins.join("20-last.toml"), "[log]\nlevel = \"trace\"\n")?;
    write(
        drop_ins.join("10-first.toml"),
        "[log]\nlevel = \"error\"\n[image]\npinned_images = [\"registry.k8s.io/pause:3.10\"]\n",
    )?;
    let output = std::process::Command::new(berthd_binary())
        .args(["config", "dump", "--config"])
        .arg(&config)
        .args(["--socket", "/run/other.sock"])
        .output()
        .map_err(|e| format!("cannot run berthd: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure(output.status.success(), || {
        format!(
            "berthd config dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let dumped: toml::Table = text
        .parse()
        .map_err(|e| format!("dump is not TOML ({e}): {text}"))?;
    let get = |table: &str, key: &str| dumped.get(table).and_then(|t| t.get(key)).cloned();
    ensure(
        dumped.get("root").and_then(toml::Value::as_str) == Some("/srv/berth"),
        || text.clone(),
    )?;
    ensure(
        get("log", "level").as_ref().and_then(toml::Value::as_str) == Some("trace"),
        || text.clone(),
    )?;
    ensure(
        get("log", "format").as_ref().and_then(toml::Value::as_str) == Some("json"),
        || text.clone(),
    )?;
    ensure(
        get("grpc", "socket").as_ref().and_then(toml::Value::as_str) == Some("/run/other.sock"),
        || text.clone(),
    )?;
    ensure(
        get("image", "pinned_images").is_some_and(|v| v.as_array().is_some_and(|a| a.len() == 1)),
        || text.clone(),
    )?;
    // Defaults are filled in.
    ensure(
        get("cni", "conf_dir")
            .as_ref()
            .and_then(toml::Value::as_str)
            == Some("/etc/cni/net.d"),
        || text.clone(),
    )?;
    let first = text.find("10-first.toml");
    let last = text.find("20-last.toml");
    ensure(first.is_some() && last.is_some() && first < last, || {
        format!("the sources are not listed in order: {text}")
    })?;
    // The dump is a configuration berthd reads back to the same dump.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).map_err(|e| e.to_string())?;
    write(again.join("config.toml"), &text)?;
    let reread = std::process::Command::new(berthd_binary())
        .args(["config", "dump", "--config"])
        .arg(again.join("config.toml"))
        .output()
        .map_err(|e| format!("cannot run berthd: {e}"))?;
    let body = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    ensure(
        body(&String::from_utf8_lossy(&reread.stdout)) == body(&text),
        || {
            format!(
                "the dump does not read back: {}",
                String::from_utf8_lossy(&reread.stderr)
            )
        },
    )
}

/// A handler whose runtime is missing, as TOML for a config file.
const MISSING_RUNC: &str =
    "\n[runtime.handlers.runc]\nruntime_path = \"/nonexistent/berth-e2e/runc\"\n";

fn doctor_finds_planted_problems_with_fixes() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let empty_cni = dir.path().join("net.d");
    std::fs::create_dir_all(&empty_cni).map_err(|e| e.to_string())?;
    let doctor = |config: &str| -> Result<(bool, String), String> {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let output = std::process::Command::new(berthd_binary())
            .arg("doctor")
            .arg("--config")
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run berthd doctor: {e}"))?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    };
    let base = format!(
        "root = \"{}\"\nstate = \"{}\"\n",
        dir.path().join("root").display(),
        dir.path().join("state").display()
    );
    // This host with the CNI plugins installed and a network: no problem.
    let good_cni = dir.path().join("good.d");
    std::fs::create_dir_all(&good_cni).map_err(|e| e.to_string())?;
    std::fs::write(
        good_cni.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"test","plugins":[{"type":"bridge","bridge":"berth-doctor0"},{"type":"loopback"}]}"#,
    )
    .map_err(|e| e.to_string())?;
    let (ok, out) = doctor(&format!(
        "{base}[cni]\nconf_dir = \"{}\"\n",
        good_cni.display()
    ))?;
    ensure(ok && out.contains("0 problems"), || {
        format!("doctor on a good config:\n{out}")
    })?;
    for check in [
        "kernel",
        "overlayfs",
        "cgroups",
        "runtime runc",
        "CNI",
        "disk",
        "inodes",
        "socket",
    ] {
        ensure(
            out.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            || format!("no ok line for {check}:\n{out}"),
        )?;
    }
    // A missing runtime and no CNI network: each named, each with a fix.
    let (ok, out) = doctor(&format!(
        "{base}[cni]\nconf_dir = \"{}\"\n{MISSING_RUNC}",
        empty_cni.display()
    ))?;
    ensure(!ok, || {
        format!("doctor passed with planted problems:\n{out}")
    })?;
    ensure(out.contains("2 problems"), || out.clone())?;
    ensure(
        out.contains("/nonexistent/berth-e2e/runc")
            && out.contains("runtime.handlers.runc.runtime_path"),
        || format!("the missing runtime is not named with a fix:\n{out}"),
    )?;
    ensure(
        out.contains(&*empty_cni.to_string_lossy())
            && out.contains("fix: write a network configuration"),
        || format!("the missing CNI network is not named with a fix:\n{out}"),
    )?;
    // A plugin the network names that is not installed.
    std::fs::write(
        empty_cni.join("10-net.conflist"),
        r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"berth-no-such-plugin"}]}"#,
    )
    .map_err(|e| e.to_string())?;
    let (ok, out) = doctor(&format!(
        "{base}[cni]\nconf_dir = \"{}\"\n",
        empty_cni.display()
    ))?;
    ensure(
        !ok && out.contains("berth-no-such-plugin") && out.contains("containernetworking-plugins"),
        || format!("the missing plugin is not named with a fix:\n{out}"),
    )
}

fn a_missing_runtime_is_a_status_condition_not_a_crash() -> TestResult {
    let berthd = Berthd::start(BerthdOptions {
        extra_config: MISSING_RUNC.to_owned(),
        ..BerthdOptions::default()
    })?;
    let outcome = (|| {
        let info: serde_json::Value =
            serde_json::from_str(&berthd.crictl_ok(&["info"])?).map_err(|e| e.to_string())?;
        let runtime = info["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "RuntimeReady"))
            .ok_or_else(|| format!("no RuntimeReady: {info}"))?;
        ensure(
            runtime["status"] == false
                && runtime["reason"] == "RuntimeBinaryMissing"
                && runtime["message"].as_str().is_some_and(|m| {
                    m.contains("/nonexistent/berth-e2e/runc") && m.contains("fix:")
                }),
            || format!("RuntimeReady does not report the missing runtime: {runtime}"),
        )?;
        let log = berthd.log();
        ensure(
            log.contains("node check") && log.contains("/nonexistent/berth-e2e/runc"),
            || format!("start-up did not log the problem:\n{log}"),
        )
    })();
    outcome.and(berthd.stop())
}

/// A cgroup of its own in several v1 hierarchies (and the cgroup2 mount of
/// a hybrid host), as systemd gives a service; removed on drop.
struct Confinement {
    dirs: Vec<PathBuf>,
}

impl Confinement {
    fn new() -> Result<Self, String> {
        let name = format!("berth-e2e-confined-{}", std::process::id());
        let dirs: Vec<PathBuf> = ["pids", "memory", "systemd", "unified"]
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h))
            .filter(|h| h.join("cgroup.procs").exists())
            .map(|h| h.join(&name))
            .collect();
        ensure(dirs.len() >= 2, || {
            "fewer than two cgroup hierarchies".to_owned()
        })?;
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(Self { dirs })
    }

    fn enter(&self, pid: u32) -> TestResult {
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Every process in any of the cgroups.
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .flat_map(|dir| {
                std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// What systemd's default KillMode does on stop: SIGKILL to all.
    fn kill_all(&self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait_until(Duration::from_secs(10), || self.pids().is_empty());
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// berthd confined to a cgroup of its own starts a container; killing
/// every process of that cgroup (berthd included) leaves the container and
/// its shim running, and a new berthd takes them over.
fn shims_live_outside_berthd_s_cgroup(mirrors: &Path) -> TestResult {
    let confinement = Confinement::new()?;
    let mut berthd = Berthd::start(BerthdOptions {
        registry_config_path: Some(mirrors.to_owned()),
        ..BerthdOptions::default()
    })?;
    let outcome = (|| {
        let pid = berthd.pid().ok_or("berthd is not running")?;
        confinement.enter(pid)?;
        berthd.crictl_ok(&["pull", BUSYBOX])?;
        let pod_config = write_json(
            &berthd,
            "pod.json",
            serde_json::json!({
                "metadata": {"name": "confined", "namespace": "berth-e2e", "uid": "uid-confined", "attempt": 0},
                "log_directory": berthd.dir().join("logs"),
                "linux": {"security_context": {"namespace_options": {"pid": 0}}}
            }),
        )?;
        let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
        let container_config = write_json(
            &berthd,
            "container.json",
            serde_json::json!({
                "metadata": {"name": "survivor"},
                "image": {"image": BUSYBOX},
                "command": ["sleep", "1000"],
                "log_path": "survivor.log",
                "linux": {}
            }),
        )?;
        let container = berthd
            .crictl_ok(&["create", &pod, &container_config, &pod_config])?
            .trim()
            .to_owned();
        berthd.crictl_ok(&["start", &container])?;
        let container_pid = running_pid(&berthd, &container)?;
        // Only berthd is in its cgroup: the shim, the pod's init and the
        // container are elsewhere.
        let confined = confinement.pids();
        ensure(confined == vec![pid], || {
            format!("berthd's cgroup holds {confined:?}, berthd is {pid}")
        })?;
        berthd.kill9()?;
        confinement.kill_all();
        ensure(
            Path::new(&format!("/proc/{container_pid}")).exists(),
            || "the container died with berthd's cgroup".to_owned(),
        )?;
        berthd.restart()?;
        ensure(running_pid(&berthd, &container)? == container_pid, || {
            "the container was not taken over".to_owned()
        })?;
        // The shim still answers: exec goes through it.
        let out = berthd.crictl_ok(&["exec", "-s", &container, "echo", "still here"])?;
        ensure(out.contains("still here"), || {
            format!("exec printed {out:?}")
        })
    })();
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    outcome.and(cleaned).and(berthd.stop())
}

/// Runs `hack/install-node.sh ARGS`; returns its stderr (its notes).
fn install_node(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("bash")
        .arg(repo_root().join("hack/install-node.sh"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run hack/install-node.sh: {e}"))?;
    let notes = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure(output.status.success(), || {
        format!(
            "hack/install-node.sh {args:?} failed ({}): {notes}",
            output.status
        )
    })?;
    Ok(notes)
}

fn install_node_into_a_staging_root_and_uninstall() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let staging = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = staging.path().to_string_lossy().into_owned();
    let binary = berthd_binary();
    let from = binary
        .parent()
        .ok_or("BERTHD has no directory")?
        .to_string_lossy()
        .into_owned();
    let install = ["--destdir", root.as_str(), "--from", from.as_str()];
    let first = install_node(&install)?;
    let file = |path: &str| staging.path().join(path.trim_start_matches('/'));
    let read = |path: &str| std::fs::read_to_string(file(path)).map_err(|e| format!("{path}: {e}"));
    for binary in ["berthd", "containerd-shim-berth-v2", "berth-init"] {
        let path = format!("/usr/local/bin/{binary}");
        let mode = std::fs::metadata(file(&path))
            .map_err(|e| format!("{path}: {e}"))?
            .permissions()
            .mode();
        ensure(mode & 0o777 == 0o755, || {
            format!("{path} has mode {mode:o}")
        })?;
    }
    let unit = read("/etc/systemd/system/berth.service")?;
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/berthd",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Delegate=yes",
        "KillMode=process",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "TasksMax=infinity",
    ] {
        ensure(unit.lines().any(|l| l == line), || {
            format!("the unit lacks {line:?}:\n{unit}")
        })?;
    }
    ensure(!unit.contains(&root), || {
        format!("the unit names the staging root:\n{unit}")
    })?;
    ensure(
        first.contains("installed /etc/systemd/system/berth.service"),
        || first.clone(),
    )?;
    let crictl = read("/etc/crictl.yaml")?;
    ensure(
        crictl.contains("runtime-endpoint: unix:///run/berth/berth.sock"),
        || crictl.clone(),
    )?;
    let conflist = read("/etc/cni/net.d/10-berth-bridge.conflist")?;
    ensure(conflist.contains("\"bridge\""), || conflist.clone())?;
    // The installed berthd reads the installed config.
    let config = file("/etc/berth/config.toml");
    let dumped = std::process::Command::new(file("/usr/local/bin/berthd"))
        .args(["config", "dump", "--config"])
        .arg(&config)
        .output()
        .map_err(|e| e.to_string())?;
    ensure(dumped.status.success(), || {
        String::from_utf8_lossy(&dumped.stderr).into_owned()
    })?;
    ensure(file("/etc/berth/config.d").is_dir(), || {
        "no config.d".to_owned()
    })?;

    // Idempotent: a second run installs nothing again.
    let manifest = read("/etc/berth/.install-manifest")?;
    let second = install_node(&install)?;
    ensure(!second.contains("installed /"), || {
        format!("the second run wrote again: {second}")
    })?;
    ensure(read("/etc/berth/.install-manifest")? == manifest, || {
        "the manifest changed".to_owned()
    })?;

    // An operator's edit and berth's data survive the uninstall.
    std::fs::write(file("/etc/berth/config.toml"), "[log]\nlevel = \"debug\"\n")
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(file("/var/lib/berth")).map_err(|e| e.to_string())?;
    std::fs::write(file("/var/lib/berth/metadata.redb"), "data").map_err(|e| e.to_string())?;
    let removed = install_node(&["--destdir", &root, "--uninstall"])?;
    for gone in [
        "/usr/local/bin/berthd",
        "/etc/systemd/system/berth.service",
        "/etc/crictl.yaml",
        "/etc/cni/net.d/10-berth-bridge.conflist",
    ] {
        ensure(!file(gone).exists(), || {
            format!("{gone} is left: {removed}")
        })?;
    }
    ensure(
        file("/etc/berth/config.toml").exists()
            && removed.contains("keeping /etc/berth/config.toml"),
        || removed.clone(),
    )?;
    ensure(file("/var/lib/berth/metadata.redb").exists(), || {
        "the data was removed".to_owned()
    })?;
    install_node(&["--destdir", &root, "--uninstall", "--purge"])?;
    ensure(!file("/var/lib/berth").exists(), || {
        "--purge kept the data".to_owned()
    })?;

    // Existing configs are never replaced.
    let other = tempfile::tempdir().map_err(|e| e.to_string())?;
    let other_root = other.path().to_string_lossy().into_owned();
    let theirs = other.path().join("etc/crictl.yaml");
    std::fs::create_dir_all(other.path().join("etc/cni/net.d")).map_err(|e| e.to_string())?;
    std::fs::write(
        &theirs,
        "runtime-endpoint: unix:///run/containerd/containerd.sock\n",
    )
    .map_err(|e| e.to_string())?;
    let their_net = other.path().join("etc/cni/net.d/05-theirs.conflist");
    std::fs::write(&their_net, "{}").map_err(|e| e.to_string())?;
    install_node(&["--destdir", &other_root, "--from", &from])?;
    ensure(
        std::fs::read_to_string(&theirs)
            .map_err(|e| e.to_string())?
            .contains("containerd.sock"),
        || "an existing crictl.yaml was replaced".to_owned(),
    )?;
    ensure(
        !other
            .path()
            .join("etc/cni/net.d/10-berth-bridge.conflist")
            .exists(),
        || "a network was added beside an existing one".to_owned(),
    )?;
    install_node(&["--destdir", &other_root, "--uninstall"])?;
    ensure(theirs.exists() && their_net.exists(), || {
        "the uninstall removed the operator's files".to_owned()
    })
}

fn systemd_is_told_ready_and_stopping() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let receive = || -> Result<String, String> {
        let mut buffer = [0u8; 256];
        let n = socket
            .recv(&mut buffer)
            .map_err(|e| format!("no notification: {e}"))?;
        Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
    };
    let berthd = Berthd::start(BerthdOptions {
        env: vec![(
            "NOTIFY_SOCKET".to_owned(),
            path.to_string_lossy().into_owned(),
        )],
        ..BerthdOptions::default()
    })?;
    let ready = receive()?;
    let answered = berthd.crictl_ok(&["version"]).map(drop);
    berthd.stop()?;
    answered?;
    ensure(ready == "READY=1", || {
        format!("first notification {ready:?}")
    })?;
    let stopping = receive()?;
    ensure(stopping == "STOPPING=1", || {
        format!("second notification {stopping:?}")
    })
}

/// Restores `$BERTHD` when dropped.
struct BerthdBinary(Option<std::ffi::OsString>);

impl Drop for BerthdBinary {
    fn drop(&mut self) {
        match self.0.take() {
            Some(path) => std::env::set_var("BERTHD", path),
            None => std::env::remove_var("BERTHD"),
        }
    }
}

/// What `hack/install-node.sh` put in a staging prefix runs a pod and a
/// container by itself: the installed berthd finds the installed shim and
/// berth-init beside it (in a prefix of its own, not the build's).
fn installed_binaries_run_pods_and_containers(mirrors: &Path) -> TestResult {
    let staging = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = staging.path().to_string_lossy().into_owned();
    let binary = berthd_binary();
    let from = binary
        .parent()
        .ok_or("BERTHD has no directory")?
        .to_string_lossy()
        .into_owned();
    install_node(&[
        "--destdir",
        &root,
        "--prefix",
        "/opt/berth",
        "--from",
        &from,
    ])?;
    let installed = staging.path().join("opt/berth/bin/berthd");
    let _restore = BerthdBinary(std::env::var_os("BERTHD"));
    std::env::set_var("BERTHD", &installed);
    // With the harness's own root, socket, network and mirrors.
    let berthd = Berthd::start(BerthdOptions {
        registry_config_path: Some(mirrors.to_owned()),
        ..BerthdOptions::default()
    })?;
    let outcome = (|| {
        let exe = std::fs::read_link(format!("/proc/{}/exe", berthd.pid().ok_or("not running")?))
            .map_err(|e| e.to_string())?;
        ensure(exe == installed, || {
            format!("the harness ran {}", exe.display())
        })?;
        berthd.crictl_ok(&["pull", BUSYBOX])?;
        let pod_config = write_json(
            &berthd,
            "pod.json",
            serde_json::json!({
                "metadata": {"name": "installed", "namespace": "berth-e2e", "uid": "uid-installed", "attempt": 0},
                "log_directory": berthd.dir().join("logs"),
                "linux": {}
            }),
        )?;
        let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
        let container_config = write_json(
            &berthd,
            "container.json",
            serde_json::json!({
                "metadata": {"name": "app"},
                "image": {"image": BUSYBOX},
                "command": ["sleep", "1000"],
                "log_path": "app.log",
                "linux": {}
            }),
        )?;
        let container = berthd
            .crictl_ok(&["create", &pod, &container_config, &pod_config])?
            .trim()
            .to_owned();
        berthd.crictl_ok(&["start", &container])?;
        running_pid(&berthd, &container).map(drop)
    })();
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    let stopped = berthd.stop();
    outcome.and(cleaned).and(stopped)
}
