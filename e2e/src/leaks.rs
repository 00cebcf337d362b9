//! What a stopped daemon may have left behind, counting only what it made
//! itself: mounts under its directories (among them the network namespaces
//! its pods pinned in its state dir), processes that still refer to them.
//! What its pods left on its own CNI network is [`crate::network::Network::leaks`].
//! Other runtimes' namespaces and processes on the machine are not counted.

use std::path::Path;

/// Mount points at or below `dir`. Read with berth-mount's parser, the
/// one that undoes mountinfo's octal escapes (`\040` for a space): a
/// leaked mount with a space in its path is still found.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let table = berth_mount::mountinfo::read_self().expect("read /proc/self/mountinfo");
    berth_mount::mountinfo::under(&table, dir)
        .map(|m| m.mount_point.to_string_lossy().into_owned())
        .collect()
}

/// Processes other than this one whose command line names `dir`.
pub fn processes_referring_to(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()) && *pid != me)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| format!("pid {pid}: {}", cmdline.trim()))
        })
        .collect()
}

/// Host PIDs of the live (not zombie) processes whose command line
/// contains `needle`.
pub fn pids_running(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let matching: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter(|pid| !process_exited(*pid))
        .collect();
    // A shell's child between fork and exec still shows the shell's
    // command line: it is not another process of that name.
    matching
        .iter()
        .copied()
        .filter(|pid| parent_pid(*pid).is_none_or(|parent| !matching.contains(&parent)))
        .collect()
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// True when process `pid` is gone or a zombie.
pub fn process_exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with(['Z', 'X']))
    })
}

/// Everything leaked by a daemon that used `dir`, as readable lines.
pub fn find(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = mounts_under(dir)
        .into_iter()
        .map(|m| {
            // berthd pins a pod's namespace at <state>/sandboxes/<id>/netns.
            if m.ends_with("/netns") {
                format!("network namespace pinned at {m}")
            } else {
                format!("mount {m}")
            }
        })
        .collect();
    found.extend(
        processes_referring_to(dir)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    found
}

/// What is left on the host of container `id` of the daemon whose state
/// dir is `state`: its bundle, the OCI runtime's state, mounts under the
/// bundle, processes in its cgroup or naming its bundle (shim, `runc
/// init`), and its cgroups on every hierarchy. Empty once it is gone.
pub fn container_leftovers(state: &Path, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let bundle = state.join("containers").join(id);
    if bundle.exists() {
        left.push(format!("bundle {}", bundle.display()));
    }
    let runtime_state = state.join("runc").join(id);
    if runtime_state.exists() {
        left.push(format!("runtime state {}", runtime_state.display()));
    }
    left.extend(
        mounts_under(&bundle)
            .into_iter()
            .map(|m| format!("mount {m}")),
    );
    left.extend(
        processes_in_cgroup_of(id)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    left.extend(
        processes_referring_to(&bundle)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    left.extend(
        cgroup_dirs_naming(id)
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    left
}

/// Fails naming whatever of container `id` is still on the host after a
/// few seconds (a killed process may stay a zombie until its parent, the
/// exited shim's subreaper or init, reaps it).
pub fn nothing_left_of(state: &Path, id: &str) -> Result<(), String> {
    let mut left = Vec::new();
    crate::wait_until(std::time::Duration::from_secs(10), || {
        left = container_leftovers(state, id);
        left.is_empty()
    });
    crate::ensure(left.is_empty(), || {
        format!("container {id} left:\n  {}", left.join("\n  "))
    })
}

/// Live processes whose cgroup (in any hierarchy) names `id`, with their
/// state, parent and command line.
pub fn processes_in_cgroup_of(id: &str) -> Vec<String> {
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
pub fn cgroup_dirs_naming(id: &str) -> Vec<std::path::PathBuf> {
    let table = berth_mount::mountinfo::read_self().expect("read /proc/self/mountinfo");
    let roots = table
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point);
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
