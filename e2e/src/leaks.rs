//! What a stopped daemon may have left behind: mounts under its
//! directories, processes that still refer to them, network namespaces.

use std::path::Path;

/// Named network namespaces (`ip netns list`), by name.
pub fn network_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

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

/// Everything leaked by a daemon that used `dir`, as readable lines.
pub fn find(dir: &Path, netns_before: &[String]) -> Vec<String> {
    let mut found: Vec<String> = mounts_under(dir)
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    found.extend(
        processes_referring_to(dir)
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    found.extend(
        network_namespaces()
            .into_iter()
            .filter(|ns| !netns_before.contains(ns))
            .map(|ns| format!("network namespace {ns}")),
    );
    found
}
