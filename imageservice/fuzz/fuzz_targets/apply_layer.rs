//! Layer application on arbitrary tar streams: it never panics, and never
//! creates, changes or deletes anything outside its target directory.
//! Needs root (owners, device nodes, trusted.* xattrs), as berthd does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// Every path below `dir`, with its metadata that an escape would change.
fn snapshot(dir: &Path) -> Vec<(String, u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        seen.push((path.display().to_string(), meta.size(), meta.mode()));
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
    }
    seen.sort();
    seen
}

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().expect("tempdir");
    let sentinel = outer.path().join("sentinel");
    std::fs::create_dir(&sentinel).expect("sentinel");
    std::fs::write(sentinel.join("file"), b"keep").expect("sentinel file");
    let target = outer.path().join("target");
    std::fs::create_dir(&target).expect("target");
    let before = snapshot(&sentinel);
    let _ = berth_snapshotter::apply_layer(data, &target);
    assert_eq!(snapshot(&sentinel), before, "the layer changed something outside its target");
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .expect("read outer")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(outside.len(), 2, "the layer created {outside:?} next to its target");
});
