//! Recovery: bringing `snapshots/` back in line with the metadata, at open
//! and on [`Snapshotter::cleanup`](crate::Snapshotter::cleanup).
//!
//! Assumptions, which the protocol in `lib.rs` guarantees:
//!
//! 1. The metadata is the truth: a directory `snapshots/<id>` belongs to a
//!    snapshot if and only if a committed record has that id.
//! 2. Creating a snapshot builds `snapshots/new-<pid>-<n>` completely, renames
//!    it to `snapshots/<id>` and fsyncs `snapshots/` while the write
//!    transaction adding the record is open, and commits last. A crash leaves
//!    a `new-*` directory or an `<id>` no record names: both are garbage.
//! 3. Removing a snapshot commits the deletion of its record first, then
//!    renames its directory to `rm-<id>` and deletes that. A crash leaves an
//!    unreferenced `<id>` or an `rm-*`: garbage.
//! 4. One snapshotter uses a root at a time (redb locks `metadata.redb`), so
//!    nothing is in flight at open. At run time the sweep holds the write
//!    transaction, so no snapshot is between rename and commit, and skips the
//!    `new-*` and `rm-*` directories that operations in flight own.
//! 5. Other names in `snapshots/` are not berth's and are left alone, with a
//!    warning. A record whose directory is missing is reported, not repaired:
//!    deleting it could strand its children, and an operator should see a
//!    disk that lost data.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::tree::remove_all;
use crate::{Error, Result};

/// What a directory name in `snapshots/` is.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Snapshot(u64),
    New,
    Removing,
    Foreign,
}

fn classify(name: &str) -> Entry {
    if let Ok(id) = name.parse::<u64>() {
        // Only the canonical spelling, so "007" is not taken for 7.
        if id.to_string() == name {
            return Entry::Snapshot(id);
        }
    }
    if name.starts_with("new-") {
        Entry::New
    } else if name.starts_with("rm-") {
        Entry::Removing
    } else {
        Entry::Foreign
    }
}

/// Removes what no snapshot owns from `snapshots`: directories of ids not in
/// `live`, and `new-*`/`rm-*` directories not in `in_flight`. Returns the
/// paths removed.
pub(crate) fn sweep(
    snapshots: &Path,
    live: &HashSet<u64>,
    in_flight: &HashSet<String>,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = fs::read_dir(snapshots).map_err(|e| Error::io("read directory", snapshots, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", snapshots, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "leaving a foreign entry in the snapshots directory");
            continue;
        };
        let garbage = match classify(&name) {
            Entry::Snapshot(id) => !live.contains(&id),
            Entry::New | Entry::Removing => !in_flight.contains(&name),
            Entry::Foreign => {
                tracing::warn!(path = %path.display(), "leaving a foreign entry in the snapshots directory");
                false
            }
        };
        if garbage {
            remove_all(&path).map_err(|e| Error::io("remove", &path, e))?;
            tracing::info!(path = %path.display(), "removed leftover snapshot directory");
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Ids in `live` whose `fs` directory is missing, each reported.
pub(crate) fn missing(snapshots: &Path, live: &HashSet<u64>) -> Vec<u64> {
    let mut missing: Vec<u64> = live
        .iter()
        .copied()
        .filter(|id| !snapshots.join(id.to_string()).join("fs").is_dir())
        .collect();
    missing.sort_unstable();
    for id in &missing {
        tracing::error!(id, dir = %snapshots.join(id.to_string()).display(), "snapshot directory is missing");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(classify("7"), Entry::Snapshot(7));
        assert_eq!(classify("007"), Entry::Foreign);
        assert_eq!(classify("new-12-3"), Entry::New);
        assert_eq!(classify("rm-7"), Entry::Removing);
        assert_eq!(classify("lost+found"), Entry::Foreign);
        assert_eq!(classify("-1"), Entry::Foreign);
    }

    #[test]
    fn sweep_removes_only_garbage() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = tmp.path();
        for d in [
            "1/fs",
            "2/fs",
            "3/fs",
            "new-1-0/fs",
            "new-1-1/fs",
            "rm-9/fs/x",
            "foreign",
        ] {
            fs::create_dir_all(s.join(d)).expect("mkdir");
        }
        fs::write(s.join("3/fs/file"), b"orphan data").expect("write");
        let live = HashSet::from([1, 2]);
        let in_flight = HashSet::from(["new-1-1".to_owned()]);
        let removed = sweep(s, &live, &in_flight).expect("sweep");
        assert_eq!(
            removed,
            vec![s.join("3"), s.join("new-1-0"), s.join("rm-9")]
        );
        let mut left: Vec<String> = fs::read_dir(s)
            .expect("read")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, ["1", "2", "foreign", "new-1-1"]);
        assert_eq!(missing(s, &HashSet::from([1, 2, 5])), vec![5]);
    }
}
