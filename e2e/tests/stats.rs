//! Container and pod stats through crictl against a real berthd: `crictl
//! stats` (table, `-p POD`, `-o json`) and `crictl statsp`, for a busy
//! container (a shell busy loop that also writes a file into its writable
//! layer) and one that holds a known amount of memory (a file in its pod's
//! `/dev/shm` tmpfs, charged to its cgroup), under runc and under crun.
//! The numbers are checked against the kernel's: the cgroup files and
//! `/proc/<pid>/net/dev` of the containers' processes, read by the test.
//!
//! The test plays kubelet for the busy pod: it makes the pod's cgroup
//! with the largest CPU weight, so that the busy loop gets its core on a
//! shared, loaded test machine (as a pod that requested a core gets it on
//! a node).

use berth_e2e::{ensure, wait_until, Berthd, BerthdOptions, Registry, Suite, TestResult};
use berth_mount::mountinfo;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// What the memory container holds in its pod's /dev/shm.
const HELD: u64 = 50 << 20;
/// What the busy container writes into its writable layer.
const LAYER_FILE: u64 = 10 << 20;
/// The collector's period in these tests (the default is 5 s).
const PERIOD_MS: u64 = 1000;

fn main() {
    let mut suite = Suite::new();
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    for handler in ["runc", "crun"] {
        let mirrors = mirrors.clone();
        suite.run(
            &format!("stats_of_busy_and_allocating_containers_{handler}"),
            move || {
                let mirrors = mirrors.clone().ok_or("no registry")?;
                let mut berthd = Berthd::start(BerthdOptions {
                    registry_config_path: Some(mirrors),
                    extra_config: format!("\n[stats]\ncollect_period_ms = {PERIOD_MS}\n"),
                    ..BerthdOptions::default()
                })?;
                let parent = format!("berth-e2e-stats-{}", std::process::id());
                let outcome = berthd
                    .crictl_ok(&["pull", BUSYBOX])
                    .map(drop)
                    .and_then(|()| make_heavy_cgroup(&parent))
                    .and_then(|()| stats_of_busy_and_allocating(&mut berthd, handler, &parent));
                let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
                let cgroups = remove_cgroup_everywhere(&parent);
                let stopped = berthd.stop();
                outcome.and(cleaned).and(cgroups).and(stopped)
            },
        );
    }
    drop(registry);
    suite.finish();
}

fn stats_of_busy_and_allocating(berthd: &mut Berthd, handler: &str, parent: &str) -> TestResult {
    let berthd = &*berthd;
    // The busy pod has a cgroup, as kubelet gives every pod; the memory
    // pod has none (its stats sum its containers').
    let (busy_pod, busy) = run_container(
        berthd,
        handler,
        "busy",
        Some(parent),
        &format!("head -c {LAYER_FILE} /dev/zero > /layer-file; while :; do :; done"),
    )?;
    let (mem_pod, mem) = run_container(
        berthd,
        handler,
        "mem",
        None,
        &format!("head -c {HELD} /dev/zero > /dev/shm/held && touch /tmp/ready && exec sleep 1000"),
    )?;
    let busy_pid = pid(berthd, &busy)?;
    let mem_pid = pid(berthd, &mem)?;
    ensure(
        wait_until(Duration::from_secs(20), || {
            Path::new(&format!("/proc/{mem_pid}/root/tmp/ready")).exists()
        }),
        || "the memory container did not fill its /dev/shm".to_owned(),
    )?;

    // CPU: the busy loop keeps about one core busy; the rate berthd
    // reports (over one collector period) must show it within a few
    // periods.
    let mut stats = serde_json::Value::Null;
    let busy_enough = wait_until(Duration::from_secs(30), || {
        stats = container_stats(berthd, &["--id", &busy]).unwrap_or_default();
        number(&stats["cpu"]["usageNanoCores"]["value"]) > 800_000_000
    });
    ensure(busy_enough, || {
        format!("the busy container never reached 0.8 core: {stats}")
    })?;
    let before = cpu_usage_ns(busy_pid)?;
    let stats = container_stats(berthd, &["--id", &busy])?;
    let after = cpu_usage_ns(busy_pid)?;
    let reported = number(&stats["cpu"]["usageCoreNanoSeconds"]["value"]);
    // The reading is at most about one refresh age old: it lies between
    // what the kernel counted a second before the call and after it.
    ensure(
        reported <= after && reported + 2_000_000_000 >= before,
        || format!("cpu {reported} ns is not between the cgroup's {before} and {after}: {stats}"),
    )?;
    ensure(number(&stats["cpu"]["timestamp"]) > 0, || stats.to_string())?;

    // The writable layer holds the file the busy container wrote.
    let layer = &stats["writableLayer"];
    ensure(
        number(&layer["usedBytes"]["value"]) >= LAYER_FILE
            && number(&layer["usedBytes"]["value"]) < LAYER_FILE + (1 << 20)
            && number(&layer["inodesUsed"]["value"]) >= 2
            && layer["fsId"]["mountpoint"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
        || format!("writable layer of {LAYER_FILE} bytes: {layer}"),
    )?;

    // Memory: the working set is what the container holds, and what the
    // kernel's files give.
    let stats = container_stats(berthd, &["--id", &mem])?;
    let working_set = number(&stats["memory"]["workingSetBytes"]["value"]);
    let kernel = working_set_bytes(mem_pid)?;
    ensure(working_set.abs_diff(HELD) <= HELD / 10, || {
        format!("working set {working_set} is not within 10% of {HELD}: {stats}")
    })?;
    ensure(working_set.abs_diff(kernel) <= 1 << 20, || {
        format!("working set {working_set}, the cgroup's files say {kernel}")
    })?;
    let memory = &stats["memory"];
    ensure(
        number(&memory["usageBytes"]["value"]) >= working_set
            && number(&memory["rssBytes"]["value"]) > 0
            && number(&memory["pageFaults"]["value"]) > 0
            && memory["availableBytes"].is_null(),
        || format!("memory without a limit: {memory}"),
    )?;

    // `-p POD` keeps to that pod's container.
    let listed = berthd.crictl_ok(&["stats", "-o", "json", "-p", &mem_pod])?;
    let listed: serde_json::Value = serde_json::from_str(&listed).map_err(|e| e.to_string())?;
    let ids: Vec<&str> = listed["stats"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|s| s["attributes"]["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    ensure(ids == vec![mem.as_str()], || {
        format!("stats -p {mem_pod}: {listed}")
    })?;

    // The table: crictl samples twice, a second apart, and computes CPU %
    // from the change; it fails when the timestamps did not move.
    let table = berthd.crictl_ok(&["stats"])?;
    let busy_row = table
        .lines()
        .find(|l| l.contains("busy"))
        .ok_or_else(|| format!("no busy row: {table}"))?;
    let percent: f64 = busy_row
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no CPU % in {busy_row:?}"))?;
    ensure(percent > 80.0, || format!("busy CPU % {percent}: {table}"))?;
    ensure(table.lines().any(|l| l.contains("mem")), || table.clone())?;
    let pods_table = berthd.crictl_ok(&["statsp"])?;
    ensure(
        pods_table.contains("busy") && pods_table.contains("mem"),
        || format!("statsp: {pods_table}"),
    )?;

    // Pods: the memory pod's numbers are its container's (it has no
    // cgroup); the busy pod's come from its cgroup; both see their network.
    let pod = pod_stats(berthd, &mem_pod)?;
    let linux = &pod["linux"];
    let pod_working_set = number(&linux["memory"]["workingSetBytes"]["value"]);
    let kernel = working_set_bytes(mem_pid)?;
    ensure(pod_working_set.abs_diff(kernel) <= 1 << 20, || {
        format!("pod working set {pod_working_set}, its container's cgroup says {kernel}: {pod}")
    })?;
    ensure(
        number(&linux["process"]["processCount"]["value"]) >= 1,
        || pod.to_string(),
    )?;
    let containers: Vec<&str> = linux["containers"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|s| s["attributes"]["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    ensure(containers == vec![mem.as_str()], || pod.to_string())?;
    let eth0 = &linux["network"]["defaultInterface"];
    let (rx, tx) = interface_bytes(mem_pid, "eth0")?;
    ensure(
        eth0["name"] == "eth0"
            && number(&eth0["rxBytes"]["value"]) <= rx
            && number(&eth0["txBytes"]["value"]) <= tx
            && !eth0["rxErrors"].is_null(),
        || format!("eth0 {eth0}, the kernel counts rx {rx} tx {tx}"),
    )?;

    let pod = pod_stats(berthd, &busy_pod)?;
    let cpu = &pod["linux"]["cpu"];
    ensure(
        number(&cpu["usageNanoCores"]["value"]) > 800_000_000,
        || format!("the busy pod: {pod}"),
    )?;
    let pod_kernel = cgroup_dir_cpu_usage_ns(Path::new(parent))?;
    let pod_reported = number(&cpu["usageCoreNanoSeconds"]["value"]);
    ensure(
        pod_reported <= pod_kernel && pod_reported + 2_000_000_000 >= pod_kernel,
        || format!("busy pod cpu {pod_reported} ns, its cgroup's files say {pod_kernel}: {pod}"),
    )?;
    let pod_working_set = number(&pod["linux"]["memory"]["workingSetBytes"]["value"]);
    let pod_kernel = cgroup_dir_working_set(Path::new(parent))?;
    ensure(pod_working_set.abs_diff(pod_kernel) <= 1 << 20, || {
        format!("busy pod working set {pod_working_set}, its cgroup's files say {pod_kernel}")
    })?;
    Ok(())
}

/// Makes the busy pod's cgroup with the largest CPU weight (v1
/// `cpu.shares`, v2 `cpu.weight`), as kubelet makes pod cgroups before
/// the runtime places containers in them.
fn make_heavy_cgroup(parent: &str) -> TestResult {
    let mounts = hierarchies()?;
    let (dir, file, weight) = match mounts.iter().find(|(_, cs)| cs.iter().any(|c| c == "cpu")) {
        Some((mount, _)) => (mount.join(parent), "cpu.shares", "262144"),
        None => {
            let (mount, _) = mounts
                .iter()
                .find(|(_, cs)| cs.is_empty())
                .ok_or("no cgroup2 mount")?;
            (mount.join(parent), "cpu.weight", "10000")
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join(file), weight).map_err(|e| format!("{}/{file}: {e}", dir.display()))
}

/// Runs a pod (with `cgroup_parent` if given) under `handler` and a started
/// container running `script` in it; returns (pod, container).
fn run_container(
    berthd: &Berthd,
    handler: &str,
    name: &str,
    cgroup_parent: Option<&str>,
    script: &str,
) -> Result<(String, String), String> {
    let mut pod = serde_json::json!({
        "metadata": {"name": name, "namespace": "berth-e2e", "uid": format!("uid-{name}"), "attempt": 0},
        "log_directory": berthd.dir().join("logs").join(name),
        "labels": {"app": name},
        "linux": {}
    });
    if let Some(parent) = cgroup_parent {
        pod["linux"]["cgroup_parent"] = format!("/{parent}").into();
    }
    let pod_path = berthd.dir().join(format!("pod-{name}.json"));
    std::fs::write(&pod_path, pod.to_string()).map_err(|e| e.to_string())?;
    let pod_path = pod_path.to_string_lossy().into_owned();
    let pod = berthd
        .crictl_ok(&["runp", "--runtime", handler, &pod_path])?
        .trim()
        .to_owned();
    let container = serde_json::json!({
        "metadata": {"name": name},
        "image": {"image": BUSYBOX},
        "command": ["sh", "-c", script],
        "log_path": format!("{name}.log"),
        "labels": {"role": name},
        "linux": {}
    });
    let container_path = berthd.dir().join(format!("container-{name}.json"));
    std::fs::write(&container_path, container.to_string()).map_err(|e| e.to_string())?;
    let container_path = container_path.to_string_lossy().into_owned();
    let id = berthd
        .crictl_ok(&["create", &pod, &container_path, &pod_path])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &id])?;
    Ok((pod, id))
}

fn pid(berthd: &Berthd, id: &str) -> Result<u32, String> {
    let out = berthd.crictl_ok(&["inspect", id])?;
    let status: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    status["info"]["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| format!("no pid: {status}"))
}

/// The one entry `crictl stats -o json ARGS` prints.
fn container_stats(berthd: &Berthd, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["stats", "-o", "json"];
    all.extend_from_slice(args);
    let out = berthd.crictl_ok(&all)?;
    let listed: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("stats is not JSON ({e}): {out}"))?;
    match listed["stats"].as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one.clone()),
        _ => Err(format!(
            "crictl {all:?} did not list one container: {listed}"
        )),
    }
}

fn pod_stats(berthd: &Berthd, pod: &str) -> Result<serde_json::Value, String> {
    let out = berthd.crictl_ok(&["statsp", "-o", "json", "--id", pod])?;
    let listed: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("statsp is not JSON ({e}): {out}"))?;
    match listed["stats"].as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one.clone()),
        _ => Err(format!("statsp --id {pod} did not list one pod: {listed}")),
    }
}

/// A protojson number: uint64 values come as strings.
fn number(value: &serde_json::Value) -> u64 {
    match value {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        other => other.as_u64().unwrap_or(0),
    }
}

/// The cgroup hierarchies: (mount point, controllers; empty for cgroup2).
fn hierarchies() -> Result<Vec<(PathBuf, Vec<String>)>, String> {
    let table = mountinfo::read_self().map_err(|e| e.to_string())?;
    Ok(table
        .into_iter()
        .filter_map(|m| match m.fs_type.as_str() {
            "cgroup" => Some((m.mount_point, m.super_options)),
            "cgroup2" => Some((m.mount_point, Vec::new())),
            _ => None,
        })
        .collect())
}

/// The directory of `pid`'s cgroup holding `controller`'s files (v1), or
/// its v2 directory (when the controller has no v1 hierarchy).
fn cgroup_of(pid: u32, controller: &str) -> Result<(PathBuf, bool), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
    let mounts = hierarchies()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if controllers.split(',').any(|c| c == controller) {
            if let Some((mount, _)) = mounts
                .iter()
                .find(|(_, cs)| cs.iter().any(|c| c == controller))
            {
                return Ok((mount.join(path.trim_start_matches('/')), false));
            }
        }
    }
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("no cgroup with {controller} for pid {pid}: {text}"))?;
    let (mount, _) = mounts
        .iter()
        .find(|(_, cs)| cs.is_empty())
        .ok_or("no cgroup2 mount")?;
    Ok((mount.join(path.trim_start_matches('/')), true))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn key(text: &str, key: &str) -> Result<u64, String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| format!("no {key} in {text}"))
}

/// The CPU time of `pid`'s cgroup, from its files.
fn cpu_usage_ns(pid: u32) -> Result<u64, String> {
    let (dir, unified) = cgroup_of(pid, "cpuacct")?;
    if unified {
        Ok(key(&read(&dir.join("cpu.stat"))?, "usage_usec")? * 1000)
    } else {
        read(&dir.join("cpuacct.usage"))?
            .trim()
            .parse()
            .map_err(|e| format!("cpuacct.usage: {e}"))
    }
}

/// Usage minus inactive file pages of `pid`'s memory cgroup.
fn working_set_bytes(pid: u32) -> Result<u64, String> {
    let (dir, unified) = cgroup_of(pid, "memory")?;
    working_set_in(&dir, unified)
}

fn working_set_in(dir: &Path, unified: bool) -> Result<u64, String> {
    let (usage, inactive) = if unified {
        ("memory.current", "inactive_file")
    } else {
        ("memory.usage_in_bytes", "total_inactive_file")
    };
    let usage: u64 = read(&dir.join(usage))?
        .trim()
        .parse()
        .map_err(|e| format!("{usage}: {e}"))?;
    Ok(usage.saturating_sub(key(&read(&dir.join("memory.stat"))?, inactive)?))
}

/// The CPU time of the cgroup at `dir`, from its files.
fn cgroup_dir_cpu_usage_ns(dir: &Path) -> Result<u64, String> {
    let mounts = hierarchies()?;
    match mounts
        .iter()
        .find(|(_, cs)| cs.iter().any(|c| c == "cpuacct"))
    {
        Some((mount, _)) => read(&mount.join(dir).join("cpuacct.usage"))?
            .trim()
            .parse()
            .map_err(|e| format!("cpuacct.usage: {e}")),
        None => {
            let (mount, _) = mounts
                .iter()
                .find(|(_, cs)| cs.is_empty())
                .ok_or("no cgroup2 mount")?;
            Ok(key(&read(&mount.join(dir).join("cpu.stat"))?, "usage_usec")? * 1000)
        }
    }
}

/// The working set of the cgroup at `dir` under the memory hierarchy.
fn cgroup_dir_working_set(dir: &Path) -> Result<u64, String> {
    let mounts = hierarchies()?;
    match mounts
        .iter()
        .find(|(_, cs)| cs.iter().any(|c| c == "memory"))
    {
        Some((mount, _)) => working_set_in(&mount.join(dir), false),
        None => {
            let (mount, _) = mounts
                .iter()
                .find(|(_, cs)| cs.is_empty())
                .ok_or("no cgroup2 mount")?;
            working_set_in(&mount.join(dir), true)
        }
    }
}

/// (rx, tx) bytes of `interface` in `pid`'s network namespace.
fn interface_bytes(pid: u32, interface: &str) -> Result<(u64, u64), String> {
    let text = read(Path::new(&format!("/proc/{pid}/net/dev")))?;
    text.lines()
        .find_map(|l| {
            let (name, counters) = l.split_once(':')?;
            (name.trim() == interface).then(|| {
                let c: Vec<u64> = counters
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                (
                    c.first().copied().unwrap_or(0),
                    c.get(8).copied().unwrap_or(0),
                )
            })
        })
        .ok_or_else(|| format!("no {interface} in {text}"))
}

/// Removes the pods' parent cgroup, which kubelet would own, from every
/// hierarchy (the runtimes made it for the containers).
fn remove_cgroup_everywhere(parent: &str) -> TestResult {
    for (mount, _) in hierarchies()? {
        let dir = mount.join(parent);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
    Ok(())
}
