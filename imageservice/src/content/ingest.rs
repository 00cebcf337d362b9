//! Writers: temp file, streaming verification, commit; single-flight.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use berth_owner_only as owner_only;

use super::{blocking, io_err, sync_dir, ContentError, Info, Inner, Result, Store};
use crate::digest::{Digest, Hasher};

/// The outcome of [`Store::writer`].
#[derive(Debug)]
pub enum Ingest {
    /// The blob is already committed: nothing to download.
    Exists(Info),
    /// The caller writes the blob. Dropping the writer without
    /// `Writer::commit` discards it and lets a waiting caller take over.
    New(Box<Writer>),
}

/// Writes one blob: verify while streaming, commit atomically.
pub struct Writer {
    store: Store,
    digest: Digest,
    size: u64,
    written: u64,
    hasher: Hasher,
    file: tokio::fs::File,
    temp: TempFile,
    _flight: Flight,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`; fails at once if the blob grows past its size.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.written + data.len() as u64 > self.size {
            return Err(ContentError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: "got more".into(),
            });
        }
        self.hasher.update(data);
        self.file
            .write_all(data)
            .await
            .map_err(io_err("write", &self.temp.path))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Checks size and digest, then makes the blob visible durably. On error
    /// nothing is visible and the temp file is gone.
    pub async fn commit(mut self) -> Result<Info> {
        if self.written != self.size {
            return Err(ContentError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: format!("got {}", self.written),
            });
        }
        let actual = self.hasher.clone().finish();
        if actual != self.digest {
            return Err(ContentError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let temp = self.temp.path.clone();
        self.file.flush().await.map_err(io_err("write", &temp))?;
        self.file.sync_all().await.map_err(io_err("sync", &temp))?;
        let dir = self.store.algorithm_dir(self.digest.algorithm());
        {
            let dir = dir.clone();
            blocking(move || owner_only::create_dir_all(&dir).map_err(io_err("create", &dir)))
                .await?;
        }
        let target = self.store.blob_path(&self.digest);
        tokio::fs::rename(&temp, &target)
            .await
            .map_err(io_err("rename", &temp))?;
        self.temp.armed = false;
        sync_dir(dir).await?;
        Ok(Info {
            digest: self.digest.clone(),
            size: self.size,
        })
    }
}

/// Removes the ingest file unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // A single unlink; Drop cannot be async.
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove ingest file");
            }
        }
    }
}

/// Marks a digest as being written; dropping it wakes the waiters.
struct Flight {
    inner: Arc<Inner>,
    digest: Digest,
    _done: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        // Remove the entry first; the sender drops right after this body and
        // wakes the waiters, which then find either the blob or no writer.
        self.inner
            .inflight
            .lock()
            .expect("inflight map lock poisoned")
            .remove(&self.digest);
    }
}

pub(super) async fn begin(store: &Store, digest: &Digest, size: u64) -> Result<Ingest> {
    loop {
        if let Some(info) = store.existing(digest, size).await? {
            return Ok(Ingest::Exists(info));
        }
        let waiting = {
            let mut map = store
                .inner
                .inflight
                .lock()
                .expect("inflight map lock poisoned");
            match map.get(digest) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(());
                    map.insert(digest.clone(), rx);
                    Ok(Flight {
                        inner: store.inner.clone(),
                        digest: digest.clone(),
                        _done: tx,
                    })
                }
            }
        };
        let flight = match waiting {
            Err(mut rx) => {
                // Err: the sender is gone, i.e. that writer finished or failed.
                let _ = rx.changed().await;
                continue;
            }
            Ok(flight) => flight,
        };
        // It may have been committed between the check and the registration.
        if let Some(info) = store.existing(digest, size).await? {
            return Ok(Ingest::Exists(info));
        }
        let n = store.inner.ingest_counter.fetch_add(1, Ordering::Relaxed);
        let path = store
            .ingest_dir()
            .join(format!("{}-{}-{n}", digest.hex(), std::process::id()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(owner_only::FILE_MODE)
            .open(&path)
            .await
            .map_err(io_err("create", &path))?;
        return Ok(Ingest::New(Box::new(Writer {
            store: store.clone(),
            digest: digest.clone(),
            size,
            written: 0,
            hasher: Hasher::new(digest.algorithm()),
            file,
            temp: TempFile { path, armed: true },
            _flight: flight,
        })));
    }
}
