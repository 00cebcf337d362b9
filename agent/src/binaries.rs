//! Finding berth's helper binaries: the shim (`containerd-shim-berth-v2`)
//! and the pod init (`berth-init`).
//!
//! They are installed beside `berthd`, so the directory of the running
//! executable comes first; then, for cargo's test binaries in
//! `target/<profile>/deps/`, the directory above it; then `PATH`.

use std::path::{Path, PathBuf};

/// The pod init binary.
pub const INIT: &str = "berth-init";
/// The shim binary, named the containerd way.
pub const SHIM: &str = "containerd-shim-berth-v2";

/// The path of the helper `name`, if it is installed.
pub fn find(name: &str) -> Option<PathBuf> {
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let beside = own_dir.iter().flat_map(|dir| {
        let mut dirs = vec![dir.clone()];
        if dir.file_name().is_some_and(|n| n == "deps") {
            dirs.extend(dir.parent().map(Path::to_path_buf));
        }
        dirs
    });
    let path = std::env::var_os("PATH").unwrap_or_default();
    beside
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_binaries_on_path_and_not_missing_ones() {
        assert!(super::find("sh").is_some());
        assert!(super::find("berth-no-such-helper").is_none());
    }
}
