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
