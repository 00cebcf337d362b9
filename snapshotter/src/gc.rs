//! Garbage collection of committed snapshots.
//!
//! A committed snapshot is kept when the caller still references it (the
//! image store passes the chain IDs of the images it has), when an active
//! snapshot or a view stands on it, or when it is an ancestor of one kept.
//! Everything else is collected, children before parents: the records of all
//! of them are deleted in one transaction, then their directories, so a crash
//! in between leaves only directories that recovery sweeps.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use crate::metadata::Record;
use crate::{Kind, Result, Snapshotter};

impl Snapshotter {
    /// Removes the committed snapshots that neither `referenced` keys nor
    /// active snapshots or views need (see the module documentation), and
    /// returns their keys, children first. Unknown keys in `referenced` are
    /// ignored.
    pub fn gc<I, S>(&self, referenced: I) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let referenced: Vec<S> = referenced.into_iter().collect();
        let referenced: HashSet<&str> = referenced.iter().map(AsRef::as_ref).collect();
        let tx = self.meta.write()?;
        let records = tx.all()?;
        let doomed = collectable(&records, &referenced);
        if doomed.is_empty() {
            return Ok(doomed);
        }
        let by_key: HashMap<&str, &Record> = records.iter().map(|(k, r)| (k.as_str(), r)).collect();
        let mut ids = Vec::with_capacity(doomed.len());
        for key in &doomed {
            let record = by_key[key.as_str()];
            tx.delete(key)?;
            if let Some(parent) = &record.parent {
                tx.remove_child(parent, key)?;
            }
            ids.push(record.id);
        }
        tx.commit()?;
        #[cfg(test)]
        if self.crash_at(crate::CrashPoint::GcAfterMetadata) {
            return Err(crate::Error::InjectedCrash);
        }
        for id in ids {
            self.remove_dir(id);
        }
        Ok(doomed)
    }
}

/// Committed snapshots nothing keeps, children first.
fn collectable(records: &[(String, Record)], referenced: &HashSet<&str>) -> Vec<String> {
    let by_key: HashMap<&str, &Record> = records.iter().map(|(k, r)| (k.as_str(), r)).collect();
    let mut kept: HashSet<&str> = HashSet::new();
    for (key, record) in records {
        if record.kind != Kind::Committed || referenced.contains(key.as_str()) {
            let mut next = Some(key.as_str());
            while let Some(k) = next {
                if !kept.insert(k) {
                    break;
                }
                next = by_key.get(k).and_then(|r| r.parent.as_deref());
            }
        }
    }
    let depth = |key: &str| {
        let mut depth = 0usize;
        let mut next = by_key.get(key).and_then(|r| r.parent.as_deref());
        while let Some(k) = next {
            depth += 1;
            next = by_key.get(k).and_then(|r| r.parent.as_deref());
        }
        depth
    };
    let mut doomed: Vec<(usize, &str)> = records
        .iter()
        .filter(|(k, _)| !kept.contains(k.as_str()))
        .map(|(k, _)| (depth(k), k.as_str()))
        .collect();
    doomed.sort_by_key(|&(d, k)| (Reverse(d), k));
    doomed.into_iter().map(|(_, k)| k.to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, kind: Kind, parent: Option<&str>) -> Record {
        Record::new(id, kind, parent)
    }

    #[test]
    fn collectable_keeps_what_is_referenced_or_used() {
        // a <- b <- c (image 1); a <- d (image 2); x <- y (image 3, unreferenced)
        // active "ctr" on d; view "v" on y's parent x.
        let records = vec![
            ("a".to_owned(), rec(1, Kind::Committed, None)),
            ("b".to_owned(), rec(2, Kind::Committed, Some("a"))),
            ("c".to_owned(), rec(3, Kind::Committed, Some("b"))),
            ("d".to_owned(), rec(4, Kind::Committed, Some("a"))),
            ("x".to_owned(), rec(5, Kind::Committed, None)),
            ("y".to_owned(), rec(6, Kind::Committed, Some("x"))),
            ("ctr".to_owned(), rec(7, Kind::Active, Some("d"))),
            ("v".to_owned(), rec(8, Kind::View, Some("x"))),
            ("lone".to_owned(), rec(9, Kind::Committed, None)),
        ];
        let cases: &[(&[&str], &[&str])] = &[
            (&["c"], &["y", "lone"]),
            (&[], &["c", "b", "y", "lone"]),
            (&["c", "y", "lone"], &[]),
            (&["b", "unknown"], &["c", "y", "lone"]),
        ];
        for (referenced, want) in cases {
            let referenced: HashSet<&str> = referenced.iter().copied().collect();
            assert_eq!(collectable(&records, &referenced), *want, "{referenced:?}");
        }
    }
}
