//! The table of one kind of lifecycle object (pod sandboxes, containers):
//! its [`Records`], its unique names ([`NameIndex`]) and one lock per
//! object ([`KeyedLocks`]).
//!
//! The lock protocol: every call that changes an object takes its lock
//! with [`ObjectTable::lock`], which finds the object by id or prefix,
//! waits for the lock and reads the record again (another call may have
//! changed or removed it meanwhile). The returned [`Locked`] guard is the
//! proof that the lock is held: what may only run under the lock takes
//! one. A create reserves the name and locks the new id before anything
//! exists ([`ObjectTable::begin_create`]). The exit watchers record exits
//! without the lock: [`Records::update`] is atomic on its own.

use super::locks::KeyedLocks;
use super::name_index::{NameInUse, NameIndex, Reservation};
use super::records::{AmbiguousId, Record, Records};
use super::{Store, StoreError, Table};
use std::ops::Deref;
use tokio::sync::OwnedMutexGuard;

/// A record of a lifecycle object: it has a unique name and a creation
/// that a crash may interrupt.
pub trait Object: Record {
    /// The name reserved for the object.
    fn name(&self) -> &str;
    /// True while the object is being created: it is hidden from the CRI,
    /// and a crash leaves it for recovery to undo.
    fn is_creating(&self) -> bool;
}

/// The records, names and locks of one kind of object.
#[derive(Debug)]
pub struct ObjectTable<T> {
    records: Records<T>,
    names: NameIndex,
    locks: KeyedLocks,
}

impl<T: Object> ObjectTable<T> {
    /// An empty table (tests); [`ObjectTable::load`] fills one from the store.
    pub fn new(table: Table) -> Self {
        Self {
            records: Records::new(table),
            names: NameIndex::new(),
            locks: KeyedLocks::new(),
        }
    }

    /// Loads the records of `table`; the names of created objects are
    /// reserved again (an interrupted creation's name is free for the retry).
    pub fn load(store: &Store, table: Table) -> Result<Self, StoreError> {
        let records = Records::<T>::load(store, table)?;
        let loaded = records.list();
        let names = NameIndex::with_owners(
            loaded
                .iter()
                .filter(|r| !r.is_creating())
                .map(|r| (r.name(), r.id())),
        );
        Ok(Self {
            records,
            names,
            locks: KeyedLocks::new(),
        })
    }

    /// The record with exactly this id.
    pub fn get(&self, id: &str) -> Option<T> {
        self.records.get(id)
    }

    /// The record with this id or unique id prefix, whatever its state.
    pub fn find(&self, id_or_prefix: &str) -> Result<Option<T>, AmbiguousId> {
        self.records.find(id_or_prefix)
    }

    /// The record with this id or unique id prefix, unless it is still
    /// being created (the CRI does not see those).
    pub fn find_created(&self, id_or_prefix: &str) -> Result<Option<T>, AmbiguousId> {
        Ok(self.find(id_or_prefix)?.filter(|r| !r.is_creating()))
    }

    /// Every record, in id order.
    pub fn list(&self) -> Vec<T> {
        self.records.list()
    }

    /// Writes `record` (see [`Records::put`]).
    pub fn put(&self, store: &Store, record: T) -> Result<(), StoreError> {
        self.records.put(store, record)
    }

    /// Changes the record `id` (see [`Records::update`]).
    pub fn update(
        &self,
        store: &Store,
        id: &str,
        change: impl FnOnce(&mut T),
    ) -> Result<Option<T>, StoreError> {
        self.records.update(store, id, change)
    }

    /// Deletes the record `id`; deleting an absent one is fine.
    pub fn delete(&self, store: &Store, id: &str) -> Result<(), StoreError> {
        self.records.delete(store, id)
    }

    /// Frees the name of `record` (the object is gone).
    pub fn release_name(&self, record: &T) {
        self.names.release(record.name(), record.id());
    }

    /// Finds the object `id_or_prefix` in any state, waits for its lock and
    /// reads its record again; `None` when there is no such object (or it
    /// was removed while this call waited).
    pub async fn lock(&self, id_or_prefix: &str) -> Result<Option<Locked<'_, T>>, AmbiguousId> {
        let found = self.find(id_or_prefix)?;
        Ok(self.lock_found(found).await)
    }

    /// As [`ObjectTable::lock`], for an object the CRI sees: one still
    /// being created is `None` at once, without waiting for its creation.
    pub async fn lock_created(
        &self,
        id_or_prefix: &str,
    ) -> Result<Option<Locked<'_, T>>, AmbiguousId> {
        let found = self.find_created(id_or_prefix)?;
        Ok(self.lock_found(found).await)
    }

    async fn lock_found(&self, found: Option<T>) -> Option<Locked<'_, T>> {
        let id = found?.id().to_owned();
        let guard = self.locks.lock(&id).await;
        let record = self.get(&id)?;
        Some(Locked {
            table: self,
            record,
            _guard: guard,
        })
    }

    /// Reserves `name` for the new object `id` and takes its lock, before
    /// its record is written.
    pub async fn begin_create(&self, name: &str, id: &str) -> Result<Creation, NameInUse> {
        let reservation = self.names.reserve(name, id)?;
        let guard = self.locks.lock(id).await;
        Ok(Creation {
            reservation: Some(reservation),
            _guard: guard,
        })
    }
}

/// An object whose lock is held, with its record as read under the lock.
#[derive(Debug)]
pub struct Locked<'a, T> {
    table: &'a ObjectTable<T>,
    record: T,
    _guard: OwnedMutexGuard<()>,
}

impl<T: Object> Locked<'_, T> {
    /// Reads the record again: an exit watcher may have changed it (it does
    /// not take the lock). A record deleted meanwhile keeps its last copy.
    pub fn refresh(&mut self) {
        if let Some(record) = self.table.get(self.record.id()) {
            self.record = record;
        }
    }
}

impl<T> Deref for Locked<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.record
    }
}

/// A create in progress: the new object's name is reserved (released on
/// drop unless committed) and its lock held.
#[derive(Debug)]
pub struct Creation {
    reservation: Option<Reservation>,
    _guard: OwnedMutexGuard<()>,
}

impl Creation {
    /// Keeps the name for good: the object now exists. The lock stays held
    /// until the creation is dropped.
    pub fn commit_name(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            reservation.commit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Thing {
        id: String,
        name: String,
        creating: bool,
        n: u32,
    }

    impl Record for Thing {
        fn id(&self) -> &str {
            &self.id
        }
    }

    impl Object for Thing {
        fn name(&self) -> &str {
            &self.name
        }
        fn is_creating(&self) -> bool {
            self.creating
        }
    }

    fn thing(id: &str, name: &str, creating: bool) -> Thing {
        Thing {
            id: id.into(),
            name: name.into(),
            creating,
            n: 0,
        }
    }

    #[tokio::test]
    async fn load_reserves_the_names_of_created_objects_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let table = ObjectTable::<Thing>::new(Table::Containers);
            table.put(&store, thing("a1", "made", false)).expect("put");
            table.put(&store, thing("b2", "half", true)).expect("put");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let table = ObjectTable::<Thing>::load(&store, Table::Containers).expect("load");
        assert_eq!(table.list().len(), 2);
        let clash = table.begin_create("made", "c3").await.expect_err("taken");
        assert_eq!(clash.id, "a1");
        table.begin_create("half", "c3").await.expect("free again");
    }

    #[tokio::test]
    async fn lock_rereads_and_hides_what_is_being_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let table = ObjectTable::<Thing>::new(Table::Sandboxes);
        table.put(&store, thing("abc", "x", false)).expect("put");
        table.put(&store, thing("new", "y", true)).expect("put");

        let mut locked = table.lock("ab").await.expect("unique").expect("found");
        assert_eq!(locked.id, "abc");
        table.update(&store, "abc", |t| t.n = 7).expect("update");
        assert_eq!(locked.n, 0, "the copy read under the lock");
        locked.refresh();
        assert_eq!(locked.n, 7);
        drop(locked);

        assert!(table.lock("none").await.expect("no match").is_none());
        assert!(table.lock_created("new").await.expect("lookup").is_none());
        assert!(table.find_created("new").expect("lookup").is_none());
        assert!(table.lock("new").await.expect("lookup").is_some());
        table.put(&store, thing("abd", "z", false)).expect("put");
        assert_eq!(
            table.lock("ab").await.expect_err("ambiguous").count,
            2,
            "two ids start with ab"
        );
    }

    #[tokio::test]
    async fn a_removed_object_is_gone_once_the_lock_is_had() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let table = Arc::new(ObjectTable::<Thing>::new(Table::Containers));
        table.put(&store, thing("abc", "x", false)).expect("put");
        let held = table.lock("abc").await.expect("lookup").expect("found");
        let waiter = {
            let table = table.clone();
            tokio::spawn(async move { table.lock("abc").await.expect("lookup").is_none() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "abc is locked");
        table.delete(&store, "abc").expect("delete");
        drop(held);
        assert!(waiter.await.expect("task"), "the re-read sees the removal");
    }

    #[tokio::test]
    async fn an_uncommitted_creation_frees_its_name() {
        let table = ObjectTable::<Thing>::new(Table::Containers);
        drop(table.begin_create("n", "id1").await.expect("free"));
        let mut creation = table.begin_create("n", "id2").await.expect("released");
        creation.commit_name();
        drop(creation);
        assert_eq!(
            table.begin_create("n", "id3").await.expect_err("kept").id,
            "id2"
        );
    }
}
