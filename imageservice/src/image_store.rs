//! Image records: which images exist and under which names.
//!
//! On-disk format: `<root>/images.redb`, two tables. `images` maps an image
//! ID (the config digest, `sha256:…`) to a JSON [`ImageRecord`] with a
//! record version; `refs` maps every repo tag and repo digest to the ID that
//! owns it. A name belongs to one image: pulling a tag that moved takes it
//! from the image that had it (which stays, possibly nameless, until it is
//! removed, as with containerd). Every change is one transaction.

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");

/// The record version written by this berth.
pub(crate) const RECORD_VERSION: u32 = 1;

/// One image as the CRI reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub version: u32,
    /// The config digest, which is the CRI image ID.
    pub id: String,
    /// Normalised `registry/repository:tag` names.
    pub repo_tags: Vec<String>,
    /// `registry/repository@digest` names, digest of what the registry
    /// resolved (an index or a manifest).
    pub repo_digests: Vec<String>,
    /// Bytes of the image as pulled: config and compressed layers.
    pub size: u64,
    /// `User` of the image config, as written.
    pub user: Option<String>,
    /// The chain IDs of the layers, bottom first; the last is the rootfs's parent.
    pub chain_ids: Vec<String>,
    /// Blobs of this image kept in the content store (index, manifest,
    /// config), removed with the image when no other image needs them.
    pub blobs: Vec<String>,
}

impl ImageRecord {
    /// Every name of the image.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.repo_tags.iter().chain(&self.repo_digests)
    }

    /// The snapshot key a container's rootfs is prepared on.
    pub fn top_chain_id(&self) -> Option<&str> {
        self.chain_ids.last().map(String::as_str)
    }
}

/// Why the image store failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("image store {path}: {source}")]
    Db {
        path: PathBuf,
        // Boxed: redb's error is large, and every image result carries it.
        source: Box<redb::Error>,
    },
    #[error("image store {path}: record {id} is unreadable: {source}")]
    Record {
        path: PathBuf,
        id: String,
        source: serde_json::Error,
    },
}

/// The image records.
#[derive(Debug)]
pub(crate) struct ImageStore {
    db: Database,
    path: PathBuf,
}

impl ImageStore {
    /// Opens or creates `<root>/images.redb`.
    pub(crate) fn open(root: &Path) -> Result<ImageStore, ImageStoreError> {
        let path = root.join("images.redb");
        let db = Database::create(&path).map_err(|e| ImageStoreError::Db {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let store = ImageStore { db, path };
        // Create both tables so readers never meet a missing one.
        let txn = store.db.begin_write().map_err(|e| store.db_error(e))?;
        txn.open_table(IMAGES).map_err(|e| store.db_error(e))?;
        txn.open_table(REFS).map_err(|e| store.db_error(e))?;
        txn.commit().map_err(|e| store.db_error(e))?;
        Ok(store)
    }

    fn db_error(&self, e: impl Into<redb::Error>) -> ImageStoreError {
        ImageStoreError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn decode(&self, id: &str, bytes: &[u8]) -> Result<ImageRecord, ImageStoreError> {
        serde_json::from_slice(bytes).map_err(|source| ImageStoreError::Record {
            path: self.path.clone(),
            id: id.to_owned(),
            source,
        })
    }

    /// The image with ID `id`.
    pub(crate) fn get(&self, id: &str) -> Result<Option<ImageRecord>, ImageStoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let images = txn.open_table(IMAGES).map_err(|e| self.db_error(e))?;
        let found = images.get(id).map_err(|e| self.db_error(e))?;
        found
            .map(|bytes| self.decode(id, bytes.value()))
            .transpose()
    }

    /// The image that owns the name (repo tag or repo digest).
    pub(crate) fn by_name(&self, name: &str) -> Result<Option<ImageRecord>, ImageStoreError> {
        let id = {
            let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
            let refs = txn.open_table(REFS).map_err(|e| self.db_error(e))?;
            let found = refs.get(name).map_err(|e| self.db_error(e))?;
            match found {
                Some(id) => id.value().to_owned(),
                None => return Ok(None),
            }
        };
        self.get(&id)
    }

    /// Every image, by ID.
    pub(crate) fn list(&self) -> Result<Vec<ImageRecord>, ImageStoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let images = txn.open_table(IMAGES).map_err(|e| self.db_error(e))?;
        let mut records = Vec::new();
        for entry in images.iter().map_err(|e| self.db_error(e))? {
            let (id, bytes) = entry.map_err(|e| self.db_error(e))?;
            records.push(self.decode(id.value(), bytes.value())?);
        }
        Ok(records)
    }

    /// Adds `record`, or merges its names into the image with the same ID.
    /// Names it carries are taken from any other image. Returns the stored
    /// record.
    pub(crate) fn put(&self, record: ImageRecord) -> Result<ImageRecord, ImageStoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        let stored = {
            let mut images = txn.open_table(IMAGES).map_err(|e| self.db_error(e))?;
            let mut refs = txn.open_table(REFS).map_err(|e| self.db_error(e))?;
            let existing = match images
                .get(record.id.as_str())
                .map_err(|e| self.db_error(e))?
            {
                Some(bytes) => Some(self.decode(&record.id, bytes.value())?),
                None => None,
            };
            let mut merged = match existing {
                Some(mut old) => {
                    merge_names(&mut old.repo_tags, &record.repo_tags);
                    merge_names(&mut old.repo_digests, &record.repo_digests);
                    merge_names(&mut old.blobs, &record.blobs);
                    old
                }
                None => record.clone(),
            };
            merged.version = RECORD_VERSION;
            for name in record.names() {
                let owner = refs
                    .get(name.as_str())
                    .map_err(|e| self.db_error(e))?
                    .map(|id| id.value().to_owned());
                if let Some(owner) = owner.filter(|owner| *owner != merged.id) {
                    // The name moves: take it from its old image.
                    let old = images
                        .get(owner.as_str())
                        .map_err(|e| self.db_error(e))?
                        .map(|bytes| self.decode(&owner, bytes.value()))
                        .transpose()?;
                    if let Some(mut old) = old {
                        old.repo_tags.retain(|n| n != name);
                        old.repo_digests.retain(|n| n != name);
                        let bytes = serde_json::to_vec(&old).expect("records are plain data");
                        images
                            .insert(owner.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error(e))?;
                    }
                }
                refs.insert(name.as_str(), merged.id.as_str())
                    .map_err(|e| self.db_error(e))?;
            }
            let bytes = serde_json::to_vec(&merged).expect("records are plain data");
            images
                .insert(merged.id.as_str(), bytes.as_slice())
                .map_err(|e| self.db_error(e))?;
            merged
        };
        txn.commit().map_err(|e| self.db_error(e))?;
        Ok(stored)
    }

    /// Removes the image and all its names; `None` if there was none.
    pub(crate) fn remove(&self, id: &str) -> Result<Option<ImageRecord>, ImageStoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        let removed = {
            let mut images = txn.open_table(IMAGES).map_err(|e| self.db_error(e))?;
            let mut refs = txn.open_table(REFS).map_err(|e| self.db_error(e))?;
            let record = match images.remove(id).map_err(|e| self.db_error(e))? {
                Some(bytes) => self.decode(id, bytes.value())?,
                None => return Ok(None),
            };
            for name in record.names() {
                let owned = refs
                    .get(name.as_str())
                    .map_err(|e| self.db_error(e))?
                    .is_some_and(|owner| owner.value() == id);
                if owned {
                    refs.remove(name.as_str()).map_err(|e| self.db_error(e))?;
                }
            }
            record
        };
        txn.commit().map_err(|e| self.db_error(e))?;
        Ok(Some(removed))
    }
}

fn merge_names(into: &mut Vec<String>, names: &[String]) {
    for name in names {
        if !into.contains(name) {
            into.push(name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tags: &[&str], digests: &[&str]) -> ImageRecord {
        ImageRecord {
            version: RECORD_VERSION,
            id: id.to_owned(),
            repo_tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            repo_digests: digests.iter().map(|t| (*t).to_owned()).collect(),
            size: 10,
            user: None,
            chain_ids: vec!["sha256:c1".to_owned()],
            blobs: vec![id.to_owned()],
        }
    }

    #[test]
    fn names_resolve_and_merge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        store
            .put(record("sha256:a", &["r/x:1"], &["r/x@sha256:m"]))
            .expect("put");
        let merged = store.put(record("sha256:a", &["r/x:2"], &[])).expect("put");
        assert_eq!(merged.repo_tags, vec!["r/x:1", "r/x:2"]);
        for name in ["r/x:1", "r/x:2", "r/x@sha256:m"] {
            assert_eq!(
                store.by_name(name).expect("lookup").expect("found").id,
                "sha256:a"
            );
        }
        assert_eq!(store.list().expect("list").len(), 1);
    }

    #[test]
    fn a_moved_tag_leaves_its_old_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        store
            .put(record("sha256:a", &["r/x:latest"], &[]))
            .expect("put");
        store
            .put(record("sha256:b", &["r/x:latest"], &[]))
            .expect("put");
        assert_eq!(
            store
                .by_name("r/x:latest")
                .expect("lookup")
                .expect("found")
                .id,
            "sha256:b"
        );
        let old = store.get("sha256:a").expect("get").expect("still there");
        assert!(old.repo_tags.is_empty());
    }

    #[test]
    fn remove_takes_every_name_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = ImageStore::open(dir.path()).expect("open");
            store
                .put(record("sha256:a", &["r/x:1", "r/x:2"], &["r/x@sha256:m"]))
                .expect("put");
            store.put(record("sha256:b", &["r/y:1"], &[])).expect("put");
            let removed = store.remove("sha256:a").expect("remove").expect("existed");
            assert_eq!(removed.repo_tags.len(), 2);
            assert_eq!(store.remove("sha256:a").expect("remove again"), None);
        }
        let store = ImageStore::open(dir.path()).expect("reopen");
        assert_eq!(store.by_name("r/x:1").expect("lookup"), None);
        assert_eq!(store.by_name("r/x@sha256:m").expect("lookup"), None);
        assert_eq!(
            store.by_name("r/y:1").expect("lookup").expect("kept").id,
            "sha256:b"
        );
    }
}
