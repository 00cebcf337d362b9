//! A table of records kept in memory and written through to the [`Store`].
//!
//! Reads (`get`, `list`, `find`) come from memory and never touch the disk.
//! A change computes the new record, writes it in one redb transaction and
//! only then replaces the copy in memory (containerd's `UpdateSync`), so
//! memory never shows a state the disk does not hold. Writes to one table
//! are serialised by a mutex: redb allows one writer at a time anyway, and
//! a read-modify-write of one record cannot interleave with another's. The
//! writes fsync, so async callers run them on the blocking pool.

use super::{Store, StoreError, Table};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};

/// A persisted object with a unique id.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    fn id(&self) -> &str;
}

/// An id prefix matched more than one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("id prefix {prefix:?} is ambiguous: it matches {count} objects")]
pub struct AmbiguousId {
    pub prefix: String,
    pub count: usize,
}

/// The records of one table.
#[derive(Debug)]
pub struct Records<T> {
    table: Table,
    map: RwLock<BTreeMap<String, T>>,
    writer: Mutex<()>,
}

impl<T: Record> Records<T> {
    /// An empty table; [`Records::load`] fills one from the store.
    pub fn new(table: Table) -> Self {
        Self {
            table,
            map: RwLock::new(BTreeMap::new()),
            writer: Mutex::new(()),
        }
    }

    /// Reads every record of `table`.
    pub fn load(store: &Store, table: Table) -> Result<Self, StoreError> {
        let records = Self::new(table);
        *records.map.write().expect("records lock is never poisoned") =
            store.list::<T>(table)?.into_iter().collect();
        Ok(records)
    }

    /// The record with exactly this id.
    pub fn get(&self, id: &str) -> Option<T> {
        self.read().get(id).cloned()
    }

    /// The record with this id, or the only one whose id starts with it
    /// (crictl users type short ids, as with containerd's truncindex).
    pub fn find(&self, id_or_prefix: &str) -> Result<Option<T>, AmbiguousId> {
        if id_or_prefix.is_empty() {
            return Ok(None);
        }
        let map = self.read();
        if let Some(record) = map.get(id_or_prefix) {
            return Ok(Some(record.clone()));
        }
        let mut matches = map
            .range(id_or_prefix.to_owned()..)
            .take_while(|(id, _)| id.starts_with(id_or_prefix));
        let first = matches.next().map(|(_, r)| r.clone());
        let more = matches.count();
        if more > 0 {
            return Err(AmbiguousId {
                prefix: id_or_prefix.to_owned(),
                count: more + 1,
            });
        }
        Ok(first)
    }

    /// Every record, in id order.
    pub fn list(&self) -> Vec<T> {
        self.read().values().cloned().collect()
    }

    /// Writes `record`, replacing any record with its id.
    pub fn put(&self, store: &Store, record: T) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock is never poisoned");
        store.put(self.table, record.id(), &record)?;
        self.write().insert(record.id().to_owned(), record);
        Ok(())
    }

    /// Changes the record `id` with `change`, and returns the new record;
    /// `None` when there is no such record (nothing is written).
    pub fn update(
        &self,
        store: &Store,
        id: &str,
        change: impl FnOnce(&mut T),
    ) -> Result<Option<T>, StoreError> {
        let _writer = self.writer.lock().expect("writer lock is never poisoned");
        let Some(mut record) = self.get(id) else {
            return Ok(None);
        };
        change(&mut record);
        store.put(self.table, id, &record)?;
        self.write().insert(id.to_owned(), record.clone());
        Ok(Some(record))
    }

    /// Removes the record `id`; removing an absent one is fine.
    pub fn delete(&self, store: &Store, id: &str) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock is never poisoned");
        store.delete(self.table, id)?;
        self.write().remove(id);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, T>> {
        self.map.read().expect("records lock is never poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, T>> {
        self.map.write().expect("records lock is never poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Thing {
        id: String,
        n: u32,
    }

    impl Record for Thing {
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn thing(id: &str, n: u32) -> Thing {
        Thing { id: id.into(), n }
    }

    #[test]
    fn writes_through_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let records = Records::<Thing>::load(&store, Table::Sandboxes).expect("load");
            records.put(&store, thing("abc1", 1)).expect("put");
            records.put(&store, thing("abd2", 2)).expect("put");
            let updated = records
                .update(&store, "abc1", |t| t.n = 10)
                .expect("update");
            assert_eq!(updated, Some(thing("abc1", 10)));
            assert_eq!(
                records.update(&store, "none", |t| t.n = 0).expect("u"),
                None
            );
            records.put(&store, thing("zz", 3)).expect("put");
            records.delete(&store, "zz").expect("delete");
            records.delete(&store, "zz").expect("delete twice");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let records = Records::<Thing>::load(&store, Table::Sandboxes).expect("load");
        assert_eq!(records.list(), vec![thing("abc1", 10), thing("abd2", 2)]);
        assert!(Records::<Thing>::load(&store, Table::Containers)
            .expect("other table")
            .list()
            .is_empty());
    }

    #[test]
    fn finds_by_unique_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let records = Records::<Thing>::new(Table::Containers);
        for (id, n) in [("abc1", 1), ("abd2", 2), ("b", 3)] {
            records.put(&store, thing(id, n)).expect("put");
        }
        assert_eq!(records.find("abc1").expect("exact"), Some(thing("abc1", 1)));
        assert_eq!(records.find("abd").expect("prefix"), Some(thing("abd2", 2)));
        assert_eq!(records.find("b").expect("exact wins"), Some(thing("b", 3)));
        assert_eq!(records.find("c").expect("none"), None);
        assert_eq!(records.find("").expect("empty"), None);
        assert_eq!(
            records.find("ab").expect_err("ambiguous"),
            AmbiguousId {
                prefix: "ab".into(),
                count: 2
            }
        );
    }
}
