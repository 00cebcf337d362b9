//! A content-addressed blob store with verified, crash-safe writes.
//!
//! On disk (as containerd's `plugins/content/local`):
//!
//! ```text
//! <root>/blobs/<algorithm>/<hex>    committed blobs, immutable, named by digest
//! <root>/ingest/<hex>-<n>           writes in progress; swept by `Store::open`
//! ```
//!
//! A write streams into a file under `ingest/`, hashing and counting as it
//! goes; commit checks size and digest, fsyncs the file, renames it into
//! `blobs/` and fsyncs that directory. So a blob path exists only with
//! verified content, and a crash leaves at most an ingest file. A blob that
//! exists is not written again.
//!
//! Writes are single-flight per digest: while one [`Writer`](ingest::Writer) for a digest is
//! open, [`Store::writer`] for the same digest waits for it, then returns
//! [`Ingest::Exists`] if it committed, or a fresh writer if it failed.
//!
//! Assumption: one `Store` per root in one process (berthd holds a lock on
//! its root), so every ingest file found by `open` is a leftover.

mod ingest;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::digest::{Algorithm, Digest};
use berth_owner_only as owner_only;

pub use ingest::Ingest;

/// What the store knows about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// Failures of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A file system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done: `create`, `write`, `rename`, …
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No committed blob has this digest.
    #[error("blob {0} not found in the content store")]
    NotFound(Digest),
    /// The content does not hash to the expected digest.
    #[error("blob {expected} failed verification: the content has digest {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The content is longer or shorter than the descriptor says.
    #[error("blob {digest}: expected {expected} bytes, {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size the descriptor gives.
        expected: u64,
        /// What arrived: `got 12 bytes`, `got more`.
        actual: String,
    },
    /// A blob is larger than a caller's limit.
    #[error("blob {digest} has {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

pub(crate) type Result<T, E = ContentError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The content store. Cheap to clone; clones share the single-flight map.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    inflight: Mutex<HashMap<Digest, tokio::sync::watch::Receiver<()>>>,
    ingest_counter: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the store at `root` and deletes leftover
    /// ingest files.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let dirs = root.clone();
        blocking(move || {
            // Owner-only: a hostile image's blobs are nobody else's business.
            for dir in [dirs.clone(), dirs.join("blobs"), dirs.join("ingest")] {
                owner_only::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            }
            let ingest = dirs.join("ingest");
            for entry in std::fs::read_dir(&ingest).map_err(io_err("read", &ingest))? {
                let path = entry.map_err(io_err("read", &ingest))?.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(io_err("remove", &path))?;
                tracing::info!(path = %path.display(), "removed leftover ingest file");
            }
            Ok(())
        })
        .await?;
        Ok(Store {
            inner: Arc::new(Inner {
                root,
                inflight: Mutex::new(HashMap::new()),
                ingest_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob `digest` lives once committed, for blocking readers
    /// (open it with `std::fs::File` on a blocking thread).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.algorithm_dir(digest.algorithm()).join(digest.hex())
    }

    fn algorithm_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.inner.root.join("blobs").join(algorithm.as_str())
    }

    fn ingest_dir(&self) -> PathBuf {
        self.inner.root.join("ingest")
    }

    /// Size of the committed blob, or [`ContentError::NotFound`].
    pub async fn info(&self, digest: &Digest) -> Result<Info> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Info {
                digest: digest.clone(),
                size: meta.len(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(source) => Err(ContentError::Io {
                op: "stat",
                path,
                source,
            }),
        }
    }

    /// Opens a committed blob for reading.
    pub async fn reader(&self, digest: &Digest) -> Result<tokio::fs::File> {
        let path = self.blob_path(digest);
        tokio::fs::File::open(&path).await.map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ContentError::NotFound(digest.clone())
            } else {
                ContentError::Io {
                    op: "open",
                    path: path.clone(),
                    source,
                }
            }
        })
    }

    /// Reads a whole committed blob of at most `limit` bytes (manifests,
    /// configs).
    pub async fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let info = self.info(digest).await?;
        if info.size > limit {
            return Err(ContentError::TooLarge {
                digest: digest.clone(),
                size: info.size,
                limit,
            });
        }
        let path = self.blob_path(digest);
        tokio::fs::read(&path).await.map_err(io_err("read", &path))
    }

    /// The digests of every committed blob, for the sweep at start-up of
    /// what no image record references.
    pub async fn list(&self) -> Result<Vec<Digest>> {
        let blobs = self.inner.root.join("blobs");
        blocking(move || {
            let mut digests = Vec::new();
            for algorithm in std::fs::read_dir(&blobs).map_err(io_err("read", &blobs))? {
                let algorithm = algorithm.map_err(io_err("read", &blobs))?;
                let dir = algorithm.path();
                let prefix = algorithm.file_name().to_string_lossy().into_owned();
                for blob in std::fs::read_dir(&dir).map_err(io_err("read", &dir))? {
                    let name = blob.map_err(io_err("read", &dir))?.file_name();
                    // Names that are no digest are not the store's.
                    if let Ok(digest) = format!("{prefix}:{}", name.to_string_lossy()).parse() {
                        digests.push(digest);
                    }
                }
            }
            Ok(digests)
        })
        .await
    }

    /// Deletes a committed blob; [`ContentError::NotFound`] if there is none.
    /// Deleting a blob while a reader has it open is fine (POSIX unlink).
    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(digest.clone()))
            }
            Err(source) => {
                return Err(ContentError::Io {
                    op: "remove",
                    path,
                    source,
                })
            }
        }
        sync_dir(self.algorithm_dir(digest.algorithm())).await
    }

    /// Starts writing the blob `digest` of `size` bytes: see [`Ingest`].
    /// Waits while another writer for the same digest is open.
    pub async fn writer(&self, digest: &Digest, size: u64) -> Result<Ingest> {
        ingest::begin(self, digest, size).await
    }

    /// Writes `data` as the blob `digest` (verified), unless it exists.
    pub async fn write_all(&self, digest: &Digest, data: &[u8]) -> Result<Info> {
        match self.writer(digest, data.len() as u64).await? {
            Ingest::Exists(info) => Ok(info),
            Ingest::New(mut writer) => {
                writer.write(data).await?;
                writer.commit().await
            }
        }
    }

    /// The committed blob, if present with the expected size.
    async fn existing(&self, digest: &Digest, size: u64) -> Result<Option<Info>> {
        match self.info(digest).await {
            Ok(info) if info.size == size => Ok(Some(info)),
            Ok(info) => {
                tracing::warn!(%digest, size = info.size, expected = size, "blob has the wrong size, rewriting it");
                Ok(None)
            }
            Err(ContentError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking content store task panicked")
}

/// fsync a directory, so a rename or unlink in it is durable.
async fn sync_dir(dir: PathBuf) -> Result<()> {
    blocking(move || {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", &dir))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest_files(store: &Store) -> usize {
        std::fs::read_dir(store.ingest_dir())
            .expect("ingest dir")
            .count()
    }

    #[tokio::test]
    async fn list_names_every_committed_blob() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).await.expect("open");
        assert!(store.list().await.expect("list").is_empty());
        let one = Digest::sha256(b"one");
        let two = Digest::sha256(b"two");
        store.write_all(&one, b"one").await.expect("write");
        store.write_all(&two, b"two").await.expect("write");
        let mut listed = store.list().await.expect("list");
        listed.sort_by_key(ToString::to_string);
        let mut expected = vec![one, two];
        expected.sort_by_key(ToString::to_string);
        assert_eq!(listed, expected);
    }

    #[tokio::test]
    async fn write_read_delete() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).await.expect("open");
        let data = b"hello blob";
        let digest = Digest::sha256(data);
        let info = store.write_all(&digest, data).await.expect("write");
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(
            store.blob_path(&digest),
            tmp.path().join("blobs/sha256").join(digest.hex())
        );
        assert_eq!(store.read(&digest, 100).await.expect("read"), data);
        assert!(matches!(
            store.read(&digest, 3).await,
            Err(ContentError::TooLarge {
                size: 10,
                limit: 3,
                ..
            })
        ));
        assert_eq!(store.info(&digest).await.expect("info"), info);
        assert_eq!(ingest_files(&store), 0);

        // An existing blob is not rewritten.
        let mtime = std::fs::metadata(store.blob_path(&digest))
            .and_then(|m| m.modified())
            .expect("mtime");
        assert!(
            matches!(store.writer(&digest, 10).await.expect("writer"), Ingest::Exists(i) if i == info)
        );
        let again = std::fs::metadata(store.blob_path(&digest))
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(mtime, again);

        store.delete(&digest).await.expect("delete");
        assert!(matches!(
            store.info(&digest).await,
            Err(ContentError::NotFound(_))
        ));
        assert!(matches!(
            store.delete(&digest).await,
            Err(ContentError::NotFound(_))
        ));
        assert!(matches!(
            store.reader(&digest).await,
            Err(ContentError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn mismatches_leave_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).await.expect("open");
        let claimed = Digest::sha256(b"what the manifest says");

        let err = store
            .write_all(&claimed, b"something else!!!!!!!!")
            .await
            .expect_err("mismatch");
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&claimed.to_string()));

        let Ingest::New(mut w) = store.writer(&claimed, 4).await.expect("writer") else {
            panic!("blob should not exist");
        };
        w.write(b"abc").await.expect("within size");
        let err = w.write(b"de").await.expect_err("too long");
        assert!(matches!(err, ContentError::SizeMismatch { .. }), "{err}");
        drop(w);

        let Ingest::New(mut w) = store.writer(&claimed, 4).await.expect("writer") else {
            panic!("blob should not exist");
        };
        w.write(b"abc").await.expect("write");
        let err = w.commit().await.expect_err("too short");
        assert!(err.to_string().contains("expected 4 bytes, got 3"), "{err}");

        assert!(matches!(
            store.info(&claimed).await,
            Err(ContentError::NotFound(_))
        ));
        assert_eq!(
            ingest_files(&store),
            0,
            "failed writes leave no ingest file"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("blobs/sha256"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }

    #[tokio::test]
    async fn open_sweeps_ingest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).await.expect("open");
        std::fs::write(tmp.path().join("ingest/leftover"), b"x").expect("write");
        std::fs::create_dir(tmp.path().join("ingest/dir")).expect("mkdir");
        assert_eq!(ingest_files(&store), 2);
        let store = Store::open(tmp.path()).await.expect("reopen");
        assert_eq!(ingest_files(&store), 0);
    }

    #[tokio::test]
    async fn single_flight() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).await.expect("open");
        let data = b"shared layer".to_vec();
        let digest = Digest::sha256(&data);

        let Ingest::New(mut first) = store.writer(&digest, data.len() as u64).await.expect("w")
        else {
            panic!("new blob");
        };
        // A second request for the same digest waits for the first writer.
        let waiter = {
            let (store, digest) = (store.clone(), digest.clone());
            tokio::spawn(async move { store.writer(&digest, 12).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while the first write is open");
        first.write(&data).await.expect("write");
        first.commit().await.expect("commit");
        let second = waiter.await.expect("join").expect("writer");
        assert!(
            matches!(second, Ingest::Exists(ref i) if i.size == 12),
            "{second:?}"
        );

        // When the first writer fails, a waiter becomes the writer.
        let other = Digest::sha256(b"other");
        let Ingest::New(failing) = store.writer(&other, 5).await.expect("w") else {
            panic!("new blob");
        };
        let waiter = {
            let (store, other) = (store.clone(), other.clone());
            tokio::spawn(async move {
                match store.writer(&other, 5).await.expect("writer") {
                    Ingest::New(mut w) => {
                        w.write(b"other").await.expect("write");
                        w.commit().await.expect("commit")
                    }
                    Ingest::Exists(_) => panic!("the first writer failed"),
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(failing);
        assert_eq!(waiter.await.expect("join").size, 5);
        assert!(store.inner.inflight.lock().expect("lock").is_empty());
    }
}
