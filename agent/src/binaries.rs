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

/// `program` if it is a path to an executable file, else the first
/// executable of that name on `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return executable(program).then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_binaries_on_path_and_not_missing_ones() {
        assert!(super::find("sh").is_some());
        assert!(super::find("berth-no-such-helper").is_none());
    }

    #[test]
    fn finds_programs_by_name_or_path() {
        use std::path::Path;
        let sh = super::find_program(Path::new("sh")).expect("sh on PATH");
        assert!(sh.is_absolute());
        assert_eq!(super::find_program(&sh), Some(sh.clone()));
        assert!(super::find_program(Path::new("berth-no-such-program")).is_none());
        let plain = tempfile::NamedTempFile::new().expect("temp file");
        assert!(
            super::find_program(plain.path()).is_none(),
            "not executable"
        );
    }
}
