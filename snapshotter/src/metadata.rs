//! Snapshot metadata in redb.
//!
//! Three tables in `<root>/metadata.redb`:
//!
//! - `snapshots`: key → a JSON record, for example
//!   `{"v":1,"id":7,"kind":"committed","parent":"sha256:…","created":1700000000000000000,"updated":…,"usage":{"bytes":4096,"inodes":3}}`.
//!   `v` is the record version, `id` names the directory `snapshots/<id>`,
//!   times are nanoseconds since the Unix epoch, `usage` is measured when the
//!   snapshot is committed (committed snapshots do not change).
//! - `children`: a multimap from a parent key to the keys of its children.
//! - `meta`: `format` (the layout of this database, 1) and `next_id`.
//!
//! A write transaction is also the snapshotter's lock: redb runs one at a
//! time, and the directory moves that must agree with the metadata happen
//! while it is open (see `lib.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, MultimapTableDefinition, ReadableMultimapTable, ReadableTable, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Kind, Result, Usage};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Layout of the database; bumped on incompatible changes.
const FORMAT: u64 = 1;
/// Version of the JSON records.
const RECORD_VERSION: u32 = 1;

/// One snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub v: u32,
    pub id: u64,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub created: u64,
    pub updated: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Record {
    pub fn new(id: u64, kind: Kind, parent: Option<&str>) -> Self {
        let now = now_nanos();
        Record {
            v: RECORD_VERSION,
            id,
            kind,
            parent: parent.map(str::to_owned),
            created: now,
            updated: now,
            usage: None,
        }
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let corrupt = |source| Error::CorruptRecord {
            key: key.to_owned(),
            source,
        };
        let Version { v } = serde_json::from_slice(bytes).map_err(corrupt)?;
        if v != RECORD_VERSION {
            return Err(Error::UnsupportedRecord {
                key: key.to_owned(),
                version: v,
                supported: RECORD_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(corrupt)
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record of plain fields always serializes")
    }
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn to_system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> Error {
    Error::Database {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}

/// The metadata database.
pub(crate) struct Metadata {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("path", &self.path)
            .finish()
    }
}

impl Metadata {
    /// Opens or creates the database at `path`; fails if another process
    /// (or another snapshotter in this one) has it open.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| db_err(path, e))?;
        let meta = Metadata {
            db,
            path: path.to_owned(),
        };
        let tx = meta.write()?;
        {
            let mut table = tx.tx.open_table(META).map_err(|e| tx.err(e))?;
            let format = table
                .get("format")
                .map_err(|e| tx.err(e))?
                .map(|g| g.value());
            match format {
                None => {
                    table.insert("format", FORMAT).map_err(|e| tx.err(e))?;
                }
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(Error::UnsupportedFormat {
                        path: path.to_owned(),
                        found,
                        supported: FORMAT,
                    })
                }
            }
            tx.tx.open_table(SNAPSHOTS).map_err(|e| tx.err(e))?;
            tx.tx.open_multimap_table(CHILDREN).map_err(|e| tx.err(e))?;
        }
        tx.commit()?;
        Ok(meta)
    }

    /// Starts a write transaction, waiting for the one in progress.
    pub fn write(&self) -> Result<WriteTx<'_>> {
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        Ok(WriteTx {
            tx,
            path: &self.path,
        })
    }

    /// Starts a read transaction, a consistent snapshot of the metadata.
    pub fn read(&self) -> Result<ReadTx<'_>> {
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        Ok(ReadTx {
            tx,
            path: &self.path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A write transaction; dropped without [`WriteTx::commit`], it changes
/// nothing.
pub(crate) struct WriteTx<'a> {
    tx: redb::WriteTransaction,
    path: &'a Path,
}

impl WriteTx<'_> {
    fn err(&self, e: impl Into<redb::Error>) -> Error {
        db_err(self.path, e)
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        value.map(|g| Record::decode(key, g.value())).transpose()
    }

    pub fn put(&self, key: &str, record: &Record) -> Result<()> {
        let mut table = self.tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        table
            .insert(key, record.encode().as_slice())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let mut table = self.tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        table.remove(key).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn all(&self) -> Result<Vec<(String, Record)>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        let iter = table.iter().map_err(|e| self.err(e))?;
        collect_records(iter, self.path)
    }

    pub fn children(&self, key: &str) -> Result<Vec<String>> {
        let table = self
            .tx
            .open_multimap_table(CHILDREN)
            .map_err(|e| self.err(e))?;
        let values = table.get(key).map_err(|e| self.err(e))?;
        collect_children(values, self.path)
    }

    pub fn add_child(&self, parent: &str, child: &str) -> Result<()> {
        let mut table = self
            .tx
            .open_multimap_table(CHILDREN)
            .map_err(|e| self.err(e))?;
        table.insert(parent, child).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn remove_child(&self, parent: &str, child: &str) -> Result<()> {
        let mut table = self
            .tx
            .open_multimap_table(CHILDREN)
            .map_err(|e| self.err(e))?;
        table.remove(parent, child).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Hands out the next snapshot id, at least `floor`.
    pub fn allocate_id(&self, floor: u64) -> Result<u64> {
        let mut table = self.tx.open_table(META).map_err(|e| self.err(e))?;
        let next = table
            .get("next_id")
            .map_err(|e| self.err(e))?
            .map_or(1, |g| g.value());
        let id = next.max(floor).max(1);
        table.insert("next_id", id + 1).map_err(|e| self.err(e))?;
        Ok(id)
    }

    pub fn commit(self) -> Result<()> {
        self.tx.commit().map_err(|e| db_err(self.path, e))
    }
}

/// A read transaction.
pub(crate) struct ReadTx<'a> {
    tx: redb::ReadTransaction,
    path: &'a Path,
}

impl ReadTx<'_> {
    fn err(&self, e: impl Into<redb::Error>) -> Error {
        db_err(self.path, e)
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        value.map(|g| Record::decode(key, g.value())).transpose()
    }

    pub fn all(&self) -> Result<Vec<(String, Record)>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        let iter = table.iter().map_err(|e| self.err(e))?;
        collect_records(iter, self.path)
    }
}

/// Lookups both kinds of transaction offer.
pub(crate) trait Lookup {
    fn get(&self, key: &str) -> Result<Option<Record>>;

    /// The ids of `record`'s ancestors, closest first.
    fn parent_ids(&self, record: &Record) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut next = record.parent.clone();
        while let Some(key) = next {
            let parent = self.get(&key)?.ok_or(Error::NotFound { key })?;
            ids.push(parent.id);
            next = parent.parent;
        }
        Ok(ids)
    }
}

impl Lookup for WriteTx<'_> {
    fn get(&self, key: &str) -> Result<Option<Record>> {
        WriteTx::get(self, key)
    }
}

impl Lookup for ReadTx<'_> {
    fn get(&self, key: &str) -> Result<Option<Record>> {
        ReadTx::get(self, key)
    }
}

fn collect_records(
    iter: redb::Range<'_, &str, &[u8]>,
    path: &Path,
) -> Result<Vec<(String, Record)>> {
    let mut out = Vec::new();
    for item in iter {
        let (k, v) = item.map_err(|e| db_err(path, e))?;
        let key = k.value().to_owned();
        let record = Record::decode(&key, v.value())?;
        out.push((key, record));
    }
    Ok(out)
}

fn collect_children(values: redb::MultimapValue<'_, &str>, path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v in values {
        out.push(v.map_err(|e| db_err(path, e))?.value().to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_versions_are_checked() {
        let mut r = Record::new(7, Kind::Committed, Some("sha256:abc"));
        r.usage = Some(Usage {
            bytes: 4096,
            inodes: 3,
        });
        let bytes = r.encode();
        assert_eq!(Record::decode("k", &bytes).expect("decode"), r);
        let text = String::from_utf8(bytes).expect("json is utf-8");
        assert!(
            text.starts_with(r#"{"v":1,"id":7,"kind":"committed","parent":"sha256:abc""#),
            "{text}"
        );

        let future = text.replacen(r#""v":1"#, r#""v":2"#, 1);
        assert!(matches!(
            Record::decode("k", future.as_bytes()),
            Err(Error::UnsupportedRecord { version: 2, .. })
        ));
        assert!(matches!(
            Record::decode("k", b"not json"),
            Err(Error::CorruptRecord { .. })
        ));
    }

    #[test]
    fn ids_increase_and_respect_the_floor() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let meta = Metadata::open(&tmp.path().join("m.redb")).expect("open");
        let tx = meta.write().expect("write");
        assert_eq!(tx.allocate_id(0).expect("id"), 1);
        assert_eq!(tx.allocate_id(0).expect("id"), 2);
        assert_eq!(tx.allocate_id(10).expect("id"), 10);
        tx.commit().expect("commit");
        let tx = meta.write().expect("write");
        assert_eq!(tx.allocate_id(0).expect("id"), 11);
        // Not committed: the next transaction sees 11 again.
        drop(tx);
        let tx = meta.write().expect("write");
        assert_eq!(tx.allocate_id(0).expect("id"), 11);
    }

    #[test]
    fn a_second_open_of_the_same_database_fails() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("m.redb");
        let _first = Metadata::open(&path).expect("open");
        assert!(matches!(Metadata::open(&path), Err(Error::Database { .. })));
    }

    #[test]
    fn children_and_parent_chains() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let meta = Metadata::open(&tmp.path().join("m.redb")).expect("open");
        let tx = meta.write().expect("write");
        tx.put("a", &Record::new(1, Kind::Committed, None))
            .expect("put");
        tx.put("b", &Record::new(2, Kind::Committed, Some("a")))
            .expect("put");
        tx.put("c", &Record::new(3, Kind::Active, Some("b")))
            .expect("put");
        tx.add_child("a", "b").expect("child");
        tx.add_child("b", "c").expect("child");
        assert_eq!(tx.children("b").expect("children"), vec!["c".to_owned()]);
        tx.remove_child("a", "b").expect("remove child");
        assert!(tx.children("a").expect("children").is_empty());
        tx.commit().expect("commit");
        let rx = meta.read().expect("read");
        let c = rx.get("c").expect("get").expect("c exists");
        assert_eq!(rx.parent_ids(&c).expect("chain"), vec![2, 1]);
        assert_eq!(rx.all().expect("all").len(), 3);
        assert!(rx.get("zzz").expect("get").is_none());
    }
}
