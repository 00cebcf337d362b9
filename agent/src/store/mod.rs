//! The metadata store: one redb database at `<root>/metadata.redb`.
//!
//! On-disk format: redb's own file format; the table `meta` holds
//! `schema_version` (u32). A store with no version is new and gets
//! [`SCHEMA_VERSION`]; a store with a higher version was written by a newer
//! berth and is refused, because this berth cannot know what the newer one
//! changed. A file redb cannot open is reported as corrupt and left as it
//! is: the operator decides, berth never overwrites it.
//!
//! Records live in [`Table`]s: a key (an id) maps to a JSON document that
//! carries its own record version, so a record type can grow fields without
//! a schema bump. Each write is one redb transaction: it is either wholly on
//! disk or not at all, whatever moment berthd is killed.

pub mod locks;
pub mod name_index;
pub mod objects;
pub mod proto;
pub mod records;

use serde::de::DeserializeOwned;
use serde::Serialize;

use redb::{Database, TableDefinition};
use std::path::{Path, PathBuf};

/// The schema this berth writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata store {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error(
        "metadata store {path} is corrupt or not a berth store ({source}); it was left untouched"
    )]
    Corrupt {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error("metadata store {path} has unknown old schema version {found}; it was left untouched")]
    OldSchema { path: PathBuf, found: u32 },
    #[error("metadata store {path} has schema version {found}, newer than the {supported} this berth supports; upgrade berth")]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot make metadata store {path} owner-only: {source}")]
    OwnerOnly {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata store {path}: {source}")]
    Io {
        path: PathBuf,
        // Boxed: redb's error is large, and every store result carries it.
        source: Box<redb::Error>,
    },
    #[error("metadata store {path}: record {table}/{key} is unreadable: {source}")]
    Record {
        path: PathBuf,
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The class of this error: another process holding the store is
    /// transient; everything else is the node's failure.
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::InUse { .. } => crate::error::ErrorKind::Unavailable,
            _ => crate::error::ErrorKind::Internal,
        }
    }
}

/// The tables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Sandboxes,
    Containers,
    /// Settings of the node (the pod CIDRs), one record per key.
    Node,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Sandboxes => "sandboxes",
            Self::Containers => "containers",
            Self::Node => "node",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// An open metadata store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens the store under `root`, creating it when absent.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        berth_owner_only::create_dir_all(root).map_err(|source| StoreError::CreateDir {
            path: root.to_owned(),
            source,
        })?;
        let path = root.join("metadata.redb");
        let db = if path.exists() {
            // `Database::open` never initialises a file, so a damaged one
            // stays exactly as it was.
            Database::open(&path).map_err(|e| open_error(&path, e))?
        } else {
            Database::create(&path).map_err(|e| open_error(&path, e))?
        };
        // The records hold each container's config, environment included.
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(berth_owner_only::FILE_MODE);
            std::fs::set_permissions(&path, mode).map_err(|source| StoreError::OwnerOnly {
                path: path.clone(),
                source,
            })?;
        }
        let store = Self { db, path };
        store.check_schema()?;
        Ok(store)
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = match txn.open_table(META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.io(e)),
        };
        let version = table.get(SCHEMA_VERSION_KEY).map_err(|e| self.io(e))?;
        Ok(version.map(|v| v.value()).unwrap_or(0))
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        match self.schema_version()? {
            0 => {
                let txn = self.db.begin_write().map_err(|e| self.io(e))?;
                {
                    let mut table = txn.open_table(META).map_err(|e| self.io(e))?;
                    table
                        .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                        .map_err(|e| self.io(e))?;
                }
                txn.commit().map_err(|e| self.io(e))?;
                Ok(())
            }
            SCHEMA_VERSION => Ok(()),
            found if found > SCHEMA_VERSION => Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            }),
            found => Err(StoreError::OldSchema {
                path: self.path.clone(),
                found,
            }),
        }
    }

    /// Writes `record` under `key`, replacing what was there.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, record: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("records are plain data");
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut table = txn.open_table(table.definition()).map_err(|e| self.io(e))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Removes `key`; removing an absent key is not an error.
    pub fn delete(&self, table: Table, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut table = txn.open_table(table.definition()).map_err(|e| self.io(e))?;
            table.remove(key).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Reads one record.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table_handle = match txn.open_table(table.definition()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let Some(bytes) = table_handle.get(key).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        self.decode(table, key, bytes.value()).map(Some)
    }

    /// Reads every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        use redb::ReadableTable;
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table_handle = match txn.open_table(table.definition()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut records = Vec::new();
        for entry in table_handle.iter().map_err(|e| self.io(e))? {
            let (key, bytes) = entry.map_err(|e| self.io(e))?;
            let key = key.value().to_owned();
            let record = self.decode(table, &key, bytes.value())?;
            records.push((key, record));
        }
        Ok(records)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Record {
            path: self.path.clone(),
            table: table.name(),
            key: key.to_owned(),
            source,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_owned(),
        },
        source => StoreError::Corrupt {
            path: path.to_owned(),
            source: Box::new(source),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_store_gets_current_schema_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("create");
            assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
    }

    #[test]
    fn corrupt_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metadata.redb");
        let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(&path, &garbage).expect("write garbage");
        let err = Store::open(dir.path()).expect_err("corrupt store");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("read back"), garbage);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metadata.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("table")
                .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION + 1)
                .expect("insert");
            txn.commit().expect("commit");
        }
        let before = std::fs::read(&path).expect("read");
        let err = Store::open(dir.path()).expect_err("too new");
        assert!(
            matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), before);
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            assert_eq!(
                store.get::<Vec<u32>>(Table::Sandboxes, "a").expect("get"),
                None
            );
            assert!(store
                .list::<Vec<u32>>(Table::Sandboxes)
                .expect("list")
                .is_empty());
            store.put(Table::Sandboxes, "b", &vec![2u32]).expect("put");
            store.put(Table::Sandboxes, "a", &vec![1u32]).expect("put");
            store.put(Table::Containers, "a", &vec![9u32]).expect("put");
            store
                .put(Table::Sandboxes, "a", &vec![1u32, 1])
                .expect("replace");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.list::<Vec<u32>>(Table::Sandboxes).expect("list"),
            vec![("a".to_owned(), vec![1, 1]), ("b".to_owned(), vec![2])]
        );
        store.delete(Table::Sandboxes, "a").expect("delete");
        store.delete(Table::Sandboxes, "a").expect("delete twice");
        assert_eq!(
            store.get::<Vec<u32>>(Table::Sandboxes, "a").expect("get"),
            None
        );
        assert_eq!(
            store.get::<Vec<u32>>(Table::Containers, "a").expect("get"),
            Some(vec![9])
        );
    }

    #[test]
    fn unreadable_record_names_table_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.put(Table::Containers, "c1", &"text").expect("put");
        let err = store
            .get::<u64>(Table::Containers, "c1")
            .expect_err("wrong type");
        assert!(err.to_string().contains("containers/c1"), "{err}");
    }

    #[test]
    fn second_open_is_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("first");
        let err = Store::open(dir.path()).expect_err("second");
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    }
}
