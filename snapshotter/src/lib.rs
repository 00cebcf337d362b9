//! berth's overlayfs snapshotter: the layer store under image layers and
//! container root filesystems.
//!
//! Layout: [`Snapshotter`] (this file) keeps snapshots in containerd's model
//! and is the only way to change the store; `metadata.rs` holds the records
//! in redb; `overlay.rs` turns a snapshot into [`Mount`]s (berth-mount's,
//! which also mounts them); `apply.rs` writes a layer's tar stream into a snapshot
//! ([`apply_layer`]), refusing anything that would escape it; `tree.rs` walks
//! and removes directory trees without following symlinks; `usage.rs`
//! measures [`Usage`] and [`FsUsage`]; `gc.rs` collects unreferenced
//! snapshots ([`Snapshotter::gc`]); `recovery.rs` sweeps what a crash left
//! behind; `error.rs` has [`Error`]. Directories and files are made
//! owner-only through `berth-owner-only`.
//!
//! # Model
//!
//! A snapshot is a directory tree under a key, an arbitrary non-empty string
//! (a chain ID such as `sha256:…`, a container ID). Keys of all kinds share
//! one namespace. A snapshot is one of:
//!
//! - **active**: writable, made by [`Snapshotter::prepare`] on an optional
//!   parent; [`Snapshotter::commit`] turns it into a committed snapshot under
//!   a new name.
//! - **view**: read-only, made by [`Snapshotter::view`].
//! - **committed**: immutable; the only kind that can be a parent.
//!
//! A snapshot with children cannot be removed. Mounts of actives and views
//! come from [`Snapshotter::mounts`] (and are returned by `prepare`/`view`).
//!
//! Layers of one image are unpacked in parallel, each into its own
//! parentless active snapshot ([`Snapshotter::prepare_layer`], then
//! [`apply_layer`] into the directory it returns), and committed in chain
//! order with [`Snapshotter::commit_layer`], which sets the parent at commit
//! time: overlay upper directories do not depend on the layers below them.
//! Committing a chain ID that exists already is not an error, so two pulls of
//! images sharing layers can race.
//!
//! All methods take `&self`; a `Snapshotter` can be shared between threads.
//! They block on filesystem work: call them from `spawn_blocking` in async
//! code.
//!
//! # On-disk format
//!
//! ```text
//! <root>/                    mode 0700
//!   metadata.redb            redb database: records, parent → children, next id (metadata.rs)
//!   snapshots/
//!     <id>/                  one per snapshot; decimal ids from 1, never reused
//!       fs/                  the snapshot's tree: overlay upperdir, lowerdir of its children
//!       work/                overlay workdir (used by actives with a parent)
//!     new-<pid>-<n>/         a snapshot being created, renamed to <id> when complete
//!     rm-<id>/               a snapshot being deleted
//! ```
//!
//! # Crash safety
//!
//! A crash at any point leaves either no snapshot or a complete one.
//! Creating builds `new-<pid>-<n>/{fs,work}`, fsyncs it, and then, inside
//! the write transaction that adds the record, renames it to `<id>`
//! (`RENAME_NOREPLACE`), fsyncs `snapshots/`, and commits. Committing an
//! active first syncs its filesystem (`syncfs`), then switches the record in
//! one transaction; the directory stays. Removing deletes the record first
//! and the directory after. Whatever a crash leaves in `snapshots/` that no
//! record names is swept by [`Snapshotter::open`] (and
//! [`Snapshotter::cleanup`]); `recovery.rs` lists the assumptions.
//!
//! # Limits
//!
//! overlayfs stacks at most 500 lower layers, and mount(2) takes one page
//! (4096 bytes) of options: with a root like `/var/lib/berth/snapshots` about
//! 90 absolute lower directories fit. Longer chains are mounted with
//! `lowerdir` relative to `snapshots/` (`12/fs:11/fs:…`, see berth-mount),
//! which fits some 400 layers with five-digit ids. The root may not contain
//! `,`, `:` or newlines, which would split the options.
#![forbid(unsafe_code)]

mod apply;
mod error;
mod gc;
mod metadata;
mod overlay;
mod recovery;
mod tree;
mod usage;

use berth_owner_only as owner_only;
use std::collections::HashSet;
use std::fs::{self, DirBuilder, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use berth_mount::Mount;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

pub use apply::{apply_layer, ApplyError, ApplyStats};
pub use error::{Error, Result};
pub use tree::Usage;
pub use usage::{Capacity, FsUsage};

use metadata::{to_system_time, Lookup, Metadata, Record};
use overlay::Dirs;

/// What a snapshot is; see the crate documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Active,
    View,
    Committed,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Active => "active",
            Kind::View => "a view",
            Kind::Committed => "committed",
        })
    }
}

/// A snapshot, as [`Snapshotter::stat`] and [`Snapshotter::list`] show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub key: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// How [`Snapshotter::commit_layer`] went; both are success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The layer is now committed under the name.
    Created,
    /// A snapshot with the name and parent existed already (another pull
    /// unpacked the same layer); the new copy was removed.
    AlreadyExists,
}

/// Where a unit test makes the snapshotter stop as if the process died.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    CreateBeforeRename,
    CreateAfterRename,
    RemoveAfterMetadata,
    RemoveAfterRename,
    DuplicateAfterMetadata,
    GcAfterMetadata,
}

/// berth's overlayfs snapshotter. One per root: a second `open` of the same
/// root fails while the first is alive.
pub struct Snapshotter {
    root: PathBuf,
    dirs: Dirs,
    meta: Metadata,
    index_off: bool,
    /// Numbers for `new-<pid>-<n>` directories.
    staging: AtomicU64,
    /// The lowest id to hand out, so an id whose directory could not be
    /// cleaned up after a failed transaction is not reused.
    id_floor: AtomicU64,
    /// `new-*` and `rm-*` directories that operations in flight own.
    in_flight: Mutex<HashSet<String>>,
    #[cfg(test)]
    crash: Mutex<Option<CrashPoint>>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.root)
            .field("index_off", &self.index_off)
            .finish_non_exhaustive()
    }
}

impl Snapshotter {
    /// Opens the snapshotter at `root`, creating it if needed, and sweeps
    /// what a crash left behind (see `recovery.rs`).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        overlay::check_root(root)?;
        let snapshots = root.join("snapshots");
        for dir in [root, snapshots.as_path()] {
            owner_only::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let meta = Metadata::open(&root.join("metadata.redb"))?;
        overlay::check_dtype(root, "snapshots")?;
        let sn = Snapshotter {
            root: root.to_owned(),
            dirs: Dirs { snapshots },
            meta,
            index_off: overlay::has_index_parameter(),
            staging: AtomicU64::new(0),
            id_floor: AtomicU64::new(0),
            in_flight: Mutex::new(HashSet::new()),
            #[cfg(test)]
            crash: Mutex::new(None),
        };
        let live: HashSet<u64> = sn.meta.read()?.all()?.iter().map(|(_, r)| r.id).collect();
        recovery::sweep(&sn.dirs.snapshots, &live, &HashSet::new())?;
        recovery::missing(&sn.dirs.snapshots, &live);
        Ok(sn)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates active snapshot `key` on committed `parent` (or empty) and
    /// returns its mounts, which are writable.
    pub fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        let (record, parents) = self.create(Kind::Active, key, parent)?;
        Ok(overlay::mounts(
            &self.dirs,
            record.kind,
            record.id,
            &parents,
            self.index_off,
        ))
    }

    /// Creates view `key` of committed `parent` (or of nothing) and returns
    /// its mounts, which are read-only.
    pub fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        let (record, parents) = self.create(Kind::View, key, parent)?;
        Ok(overlay::mounts(
            &self.dirs,
            record.kind,
            record.id,
            &parents,
            self.index_off,
        ))
    }

    /// Creates a parentless active snapshot to unpack one layer into, and
    /// returns its directory for [`apply_layer`]. Commit it with
    /// [`Snapshotter::commit_layer`], or [`Snapshotter::remove`] it on error.
    pub fn prepare_layer(&self, key: &str) -> Result<PathBuf> {
        let (record, _) = self.create(Kind::Active, key, None)?;
        Ok(self.dirs.fs(record.id))
    }

    /// The mounts of active snapshot or view `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rx = self.meta.read()?;
        let record = get(rx.get(key)?, key)?;
        if record.kind == Kind::Committed {
            return Err(Error::WrongKind {
                key: key.to_owned(),
                actual: record.kind,
                expected: "active or a view",
            });
        }
        let parents = rx.parent_ids(&record)?;
        Ok(overlay::mounts(
            &self.dirs,
            record.kind,
            record.id,
            &parents,
            self.index_off,
        ))
    }

    /// Commits active snapshot `key` as `name`: its contents become
    /// immutable and usable as a parent, and `key` is gone. Fails with
    /// [`Error::AlreadyExists`] if `name` exists (the active stays).
    pub fn commit(&self, name: &str, key: &str) -> Result<()> {
        check_key(name)?;
        let (id, usage) = self.seal(key)?;
        let tx = self.meta.write()?;
        let mut record = get(tx.get(key)?, key)?;
        if record.id != id || record.kind != Kind::Active {
            // Removed and prepared again since we looked.
            return Err(Error::NotFound {
                key: key.to_owned(),
            });
        }
        if tx.get(name)?.is_some() {
            return Err(Error::AlreadyExists {
                key: name.to_owned(),
            });
        }
        record.kind = Kind::Committed;
        record.usage = Some(usage);
        record.updated = metadata::now_nanos();
        tx.delete(key)?;
        tx.put(name, &record)?;
        if let Some(parent) = &record.parent {
            tx.remove_child(parent, key)?;
            tx.add_child(parent, name)?;
        }
        tx.commit()
    }

    /// Commits layer snapshot `key` (from [`Snapshotter::prepare_layer`]) as
    /// `name`, usually the layer's chain ID, on `parent`, which must be
    /// committed already: commit the layers of an image in chain order.
    ///
    /// If `name` exists as a committed snapshot on the same parent, `key` is
    /// removed and the result is [`Committed::AlreadyExists`]; with another
    /// parent the result is [`Error::ParentMismatch`].
    pub fn commit_layer(&self, key: &str, name: &str, parent: Option<&str>) -> Result<Committed> {
        check_key(name)?;
        if let Some(p) = parent {
            check_key(p)?;
        }
        {
            let rx = self.meta.read()?;
            let record = get(rx.get(key)?, key)?;
            if record.parent.is_some() && record.parent.as_deref() != parent {
                return Err(Error::ParentMismatch {
                    name: key.to_owned(),
                    existing: record.parent,
                    requested: parent.map(str::to_owned),
                });
            }
        }
        let (id, usage) = self.seal(key)?;
        let tx = self.meta.write()?;
        let mut record = get(tx.get(key)?, key)?;
        if record.id != id || record.kind != Kind::Active {
            return Err(Error::NotFound {
                key: key.to_owned(),
            });
        }
        if let Some(existing) = tx.get(name)? {
            if existing.kind != Kind::Committed {
                return Err(Error::AlreadyExists {
                    key: name.to_owned(),
                });
            }
            if existing.parent.as_deref() != parent {
                return Err(Error::ParentMismatch {
                    name: name.to_owned(),
                    existing: existing.parent,
                    requested: parent.map(str::to_owned),
                });
            }
            tx.delete(key)?;
            if let Some(p) = &record.parent {
                tx.remove_child(p, key)?;
            }
            tx.commit()?;
            #[cfg(test)]
            if self.crash_at(CrashPoint::DuplicateAfterMetadata) {
                return Err(Error::InjectedCrash);
            }
            self.remove_dir(id);
            return Ok(Committed::AlreadyExists);
        }
        if let Some(p) = parent {
            let parent_record = get(tx.get(p)?, p)?;
            if parent_record.kind != Kind::Committed {
                return Err(Error::ParentNotCommitted {
                    parent: p.to_owned(),
                    actual: parent_record.kind,
                });
            }
            let depth = tx.parent_ids(&parent_record)?.len() + 2;
            if depth > overlay::MAX_LAYERS {
                return Err(Error::TooManyLayers {
                    key: name.to_owned(),
                    layers: depth,
                    max: overlay::MAX_LAYERS,
                });
            }
        }
        if let Some(p) = &record.parent {
            tx.remove_child(p, key)?;
        }
        record.kind = Kind::Committed;
        record.parent = parent.map(str::to_owned);
        record.usage = Some(usage);
        record.updated = metadata::now_nanos();
        tx.delete(key)?;
        tx.put(name, &record)?;
        if let Some(p) = parent {
            tx.add_child(p, name)?;
        }
        tx.commit()?;
        Ok(Committed::Created)
    }

    /// Removes snapshot `key` of any kind; refused while it has children.
    /// Unmount an active snapshot or view before removing it.
    pub fn remove(&self, key: &str) -> Result<()> {
        let tx = self.meta.write()?;
        let record = get(tx.get(key)?, key)?;
        let children = tx.children(key)?;
        if !children.is_empty() {
            return Err(Error::HasChildren {
                key: key.to_owned(),
                children,
            });
        }
        tx.delete(key)?;
        if let Some(parent) = &record.parent {
            tx.remove_child(parent, key)?;
        }
        tx.commit()?;
        #[cfg(test)]
        if self.crash_at(CrashPoint::RemoveAfterMetadata) {
            return Err(Error::InjectedCrash);
        }
        self.remove_dir(record.id);
        Ok(())
    }

    /// Information about snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        let record = get(self.meta.read()?.get(key)?, key)?;
        Ok(info(key.to_owned(), record))
    }

    /// All snapshots, ordered by key.
    pub fn list(&self) -> Result<Vec<Info>> {
        let records = self.meta.read()?.all()?;
        Ok(records.into_iter().map(|(k, r)| info(k, r)).collect())
    }

    /// Disk usage of snapshot `key`'s own directory (not its parents'):
    /// measured at commit for committed snapshots, now for the others.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let record = get(self.meta.read()?.get(key)?, key)?;
        match record.usage {
            Some(usage) => Ok(usage),
            None => self.measure(record.id),
        }
    }

    /// The mount point of the filesystem holding the snapshots: the CRI
    /// `FilesystemIdentifier` of every snapshot's usage.
    pub fn mountpoint(&self) -> Result<PathBuf> {
        usage::mountpoint(&self.root)
    }

    /// The size of the filesystem holding the snapshots (`statvfs(2)`).
    pub fn capacity(&self) -> Result<Capacity> {
        usage::capacity(&self.root)
    }

    /// Usage of the root for CRI `ImageFsInfo`: the snapshots' usage (as
    /// [`Snapshotter::usage`]) plus the metadata database, and the
    /// filesystem holding the root. Directories of operations in flight are
    /// not counted.
    pub fn fs_usage(&self) -> Result<FsUsage> {
        let timestamp = SystemTime::now();
        let records = self.meta.read()?.all()?;
        let mut used = Usage::default();
        for (_, record) in records {
            let u = match record.usage {
                Some(u) => u,
                // Removed since the read transaction: nothing to count.
                None => match self.measure(record.id) {
                    Ok(u) => u,
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                },
            };
            used.bytes += u.bytes;
            used.inodes += u.inodes;
        }
        let db = self.meta.path();
        let st = fs::metadata(db).map_err(|e| Error::io("stat", db, e))?;
        used.bytes += std::os::unix::fs::MetadataExt::blocks(&st) * 512;
        used.inodes += 1;
        let capacity = usage::capacity(&self.root)?;
        Ok(FsUsage {
            timestamp,
            mountpoint: usage::mountpoint(&self.root)?,
            used_bytes: used.bytes,
            used_inodes: used.inodes,
            total_bytes: capacity.total_bytes,
            available_bytes: capacity.available_bytes,
            total_inodes: capacity.total_inodes,
            free_inodes: capacity.free_inodes,
        })
    }

    /// Removes directories in `snapshots/` that no snapshot owns (left by a
    /// crash, or by a removal that failed) and returns them. [`open`] does
    /// this too.
    ///
    /// [`open`]: Snapshotter::open
    pub fn cleanup(&self) -> Result<Vec<PathBuf>> {
        // The write transaction keeps creations from being between rename
        // and commit while we look.
        let tx = self.meta.write()?;
        let live: HashSet<u64> = tx.all()?.iter().map(|(_, r)| r.id).collect();
        // Held through the sweep: a creation staged after a copy of the set
        // was taken would have its `new-*` directory swept from under it.
        let in_flight = self.in_flight.lock().expect("in-flight set poisoned");
        let removed = recovery::sweep(&self.dirs.snapshots, &live, &in_flight)?;
        drop(in_flight);
        drop(tx);
        Ok(removed)
    }

    /// Creates snapshot `key`; returns its record and its ancestors' ids.
    fn create(&self, kind: Kind, key: &str, parent: Option<&str>) -> Result<(Record, Vec<u64>)> {
        check_key(key)?;
        if let Some(p) = parent {
            check_key(p)?;
        }
        let staged = self.stage()?;
        #[cfg(test)]
        if self.crash_at(CrashPoint::CreateBeforeRename) {
            std::mem::forget(staged);
            return Err(Error::InjectedCrash);
        }
        let tx = self.meta.write()?;
        if tx.get(key)?.is_some() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let mut parents = Vec::new();
        if let Some(p) = parent {
            let parent_record = get(tx.get(p)?, p)?;
            if parent_record.kind != Kind::Committed {
                return Err(Error::ParentNotCommitted {
                    parent: p.to_owned(),
                    actual: parent_record.kind,
                });
            }
            parents.push(parent_record.id);
            parents.extend(tx.parent_ids(&parent_record)?);
            if parents.len() > overlay::MAX_LAYERS {
                return Err(Error::TooManyLayers {
                    key: key.to_owned(),
                    layers: parents.len() + 1,
                    max: overlay::MAX_LAYERS,
                });
            }
            tx.add_child(p, key)?;
        }
        let id = tx.allocate_id(self.id_floor.load(Ordering::SeqCst))?;
        self.id_floor.fetch_max(id + 1, Ordering::SeqCst);
        let record = Record::new(id, kind, parent);
        tx.put(key, &record)?;
        let placed = staged.place(id)?;
        #[cfg(test)]
        if self.crash_at(CrashPoint::CreateAfterRename) {
            std::mem::forget(placed);
            return Err(Error::InjectedCrash);
        }
        tx.commit()?;
        placed.keep();
        Ok((record, parents))
    }

    /// Builds `new-<pid>-<n>/{fs,work}` and fsyncs it.
    fn stage(&self) -> Result<Staged<'_>> {
        let name = format!(
            "new-{}-{}",
            std::process::id(),
            self.staging.fetch_add(1, Ordering::SeqCst)
        );
        self.in_flight
            .lock()
            .expect("in-flight set poisoned")
            .insert(name.clone());
        let staged = Staged {
            sn: self,
            path: self.dirs.snapshots.join(&name),
            name,
        };
        for (dir, mode) in [
            (staged.path.clone(), owner_only::DIR_MODE),
            // The container's `/` until a layer sets its own mode.
            (staged.path.join("fs"), 0o755),
            (staged.path.join("work"), owner_only::DIR_MODE),
        ] {
            DirBuilder::new()
                .mode(mode)
                .create(&dir)
                .map_err(|e| Error::io("create directory", &dir, e))?;
            // Exact modes, whatever the umask.
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("chmod", &dir, e))?;
        }
        sync_dir(&staged.path)?;
        Ok(staged)
    }

    /// Flushes active snapshot `key`'s data to disk and measures it, before
    /// it is committed.
    fn seal(&self, key: &str) -> Result<(u64, Usage)> {
        check_key(key)?;
        let record = get(self.meta.read()?.get(key)?, key)?;
        if record.kind != Kind::Active {
            return Err(Error::WrongKind {
                key: key.to_owned(),
                actual: record.kind,
                expected: "active",
            });
        }
        let fs_dir = self.dirs.fs(record.id);
        let dir = File::open(&fs_dir).map_err(|e| Error::io("open", &fs_dir, e))?;
        nix::unistd::syncfs(dir.as_fd()).map_err(|e| Error::io("syncfs", &fs_dir, e))?;
        Ok((record.id, self.measure(record.id)?))
    }

    fn measure(&self, id: u64) -> Result<Usage> {
        let fs_dir = self.dirs.fs(id);
        tree::disk_usage(&fs_dir).map_err(|e| Error::io("measure", fs_dir, e))
    }

    /// Deletes the directory of a snapshot whose record is gone. Failures are
    /// logged: the directory is then an orphan that `cleanup` sweeps.
    fn remove_dir(&self, id: u64) {
        let name = format!("rm-{id}");
        self.in_flight
            .lock()
            .expect("in-flight set poisoned")
            .insert(name.clone());
        let from = self.dirs.snapshot(id);
        let to = self.dirs.snapshots.join(&name);
        let result = match fs::rename(&from, &to) {
            Ok(()) => {
                #[cfg(test)]
                if self.crash_at(CrashPoint::RemoveAfterRename) {
                    return;
                }
                tree::remove_all(&to).map_err(|e| Error::io("remove", &to, e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("rename", &from, e)),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "snapshot directory left for cleanup");
        }
        self.in_flight
            .lock()
            .expect("in-flight set poisoned")
            .remove(&name);
    }

    #[cfg(test)]
    fn crash_at(&self, point: CrashPoint) -> bool {
        let mut armed = self.crash.lock().expect("crash point poisoned");
        if *armed == Some(point) {
            *armed = None;
            true
        } else {
            false
        }
    }
}

/// A staged `new-*` directory, removed on drop unless placed.
struct Staged<'a> {
    sn: &'a Snapshotter,
    name: String,
    path: PathBuf,
}

impl<'a> Staged<'a> {
    /// Renames the staged directory to `snapshots/<id>` and makes that
    /// durable.
    fn place(self, id: u64) -> Result<Placed<'a>> {
        let to = self.sn.dirs.snapshot(id);
        renameat2(
            AT_FDCWD,
            &self.path,
            AT_FDCWD,
            &to,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| Error::io("rename", &self.path, e))?;
        let placed = Placed {
            sn: self.sn,
            id,
            keep: false,
        };
        // Renamed: nothing left to clean up under the staged name.
        self.sn
            .in_flight
            .lock()
            .expect("in-flight set poisoned")
            .remove(&self.name);
        std::mem::forget(self);
        sync_dir(&placed.sn.dirs.snapshots)?;
        Ok(placed)
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if let Err(e) = tree::remove_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove staged snapshot directory");
        }
        self.sn
            .in_flight
            .lock()
            .expect("in-flight set poisoned")
            .remove(&self.name);
    }
}

/// A snapshot directory renamed into place before its record is committed;
/// removed on drop unless kept.
struct Placed<'a> {
    sn: &'a Snapshotter,
    id: u64,
    keep: bool,
}

impl Placed<'_> {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let dir = self.sn.dirs.snapshot(self.id);
            if let Err(e) = tree::remove_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove snapshot directory of an aborted transaction");
            }
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        Err(Error::EmptyKey)
    } else {
        Ok(())
    }
}

fn get(record: Option<Record>, key: &str) -> Result<Record> {
    record.ok_or_else(|| Error::NotFound {
        key: key.to_owned(),
    })
}

fn info(key: String, record: Record) -> Info {
    Info {
        key,
        kind: record.kind,
        parent: record.parent,
        created: to_system_time(record.created),
        updated: to_system_time(record.updated),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn open(dir: &Path) -> Snapshotter {
        Snapshotter::open(dir.join("root")).expect("open snapshotter")
    }

    /// Every record has a complete directory, and every directory a record.
    fn assert_consistent(sn: &Snapshotter) {
        let ids: BTreeSet<String> = sn
            .meta
            .read()
            .expect("read")
            .all()
            .expect("all")
            .iter()
            .map(|(_, r)| r.id.to_string())
            .collect();
        let dirs: BTreeSet<String> = fs::read_dir(&sn.dirs.snapshots)
            .expect("read snapshots")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        assert_eq!(ids, dirs, "records and directories disagree");
        for id in ids {
            let dir = sn.dirs.snapshots.join(id);
            assert!(
                dir.join("fs").is_dir() && dir.join("work").is_dir(),
                "{dir:?} incomplete"
            );
        }
    }

    fn keys(sn: &Snapshotter) -> Vec<String> {
        sn.list()
            .expect("list")
            .into_iter()
            .map(|i| i.key)
            .collect()
    }

    #[test]
    fn the_snapshot_model_works_and_misuse_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        let m = sn.prepare("a", None).expect("prepare a");
        assert_eq!((m.len(), m[0].fs_type.as_str()), (1, "bind"));
        assert_eq!(m[0].options, ["rw", "rbind"]);
        assert_eq!(sn.mounts("a").expect("mounts"), m);
        let a_dir = PathBuf::from(&m[0].source);
        fs::write(a_dir.join("hello"), "hi").expect("write into a");
        sn.commit("base", "a").expect("commit");
        assert!(matches!(sn.stat("a"), Err(Error::NotFound { .. })));
        let base = sn.stat("base").expect("stat");
        assert_eq!((base.kind, base.parent), (Kind::Committed, None));
        assert!(base.updated >= base.created);

        let b = sn.prepare("b", Some("base")).expect("prepare b");
        assert_eq!(b[0].fs_type, "overlay");
        assert!(b[0]
            .options
            .iter()
            .any(|o| o == &format!("lowerdir={}", a_dir.display())));
        assert!(b[0].options.iter().any(|o| o.starts_with("upperdir=")));
        let v = sn.view("v", Some("base")).expect("view");
        assert_eq!(v[0].fs_type, "bind");
        assert_eq!(v[0].source, a_dir.to_str().expect("utf-8"));
        assert_eq!(v[0].options, ["ro", "rbind"]);
        assert_eq!(keys(&sn), ["b", "base", "v"]);

        assert!(matches!(sn.prepare("b", None), Err(Error::AlreadyExists { key }) if key == "b"));
        assert!(
            matches!(sn.prepare("x", Some("nope")), Err(Error::NotFound { key }) if key == "nope")
        );
        assert!(matches!(
            sn.prepare("x", Some("b")),
            Err(Error::ParentNotCommitted {
                actual: Kind::Active,
                ..
            })
        ));
        assert!(matches!(
            sn.view("x", Some("v")),
            Err(Error::ParentNotCommitted {
                actual: Kind::View,
                ..
            })
        ));
        assert!(matches!(
            sn.commit("c", "v"),
            Err(Error::WrongKind {
                actual: Kind::View,
                ..
            })
        ));
        assert!(
            matches!(sn.commit("base", "b"), Err(Error::AlreadyExists { key }) if key == "base")
        );
        assert!(matches!(
            sn.commit("c", "nope"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            sn.mounts("base"),
            Err(Error::WrongKind {
                actual: Kind::Committed,
                ..
            })
        ));
        assert!(matches!(sn.prepare("", None), Err(Error::EmptyKey)));
        assert!(matches!(sn.commit("", "b"), Err(Error::EmptyKey)));
        match sn.remove("base") {
            Err(Error::HasChildren { key, children }) => {
                assert_eq!(key, "base");
                assert_eq!(children, ["b", "v"]);
            }
            other => panic!("remove of a parent: {other:?}"),
        }
        // Nothing above changed anything.
        assert_eq!(keys(&sn), ["b", "base", "v"]);
        assert_consistent(&sn);

        sn.commit("top", "b").expect("commit b");
        assert_eq!(
            sn.stat("top").expect("stat").parent.as_deref(),
            Some("base")
        );
        assert!(
            matches!(sn.remove("base"), Err(Error::HasChildren { children, .. }) if children == ["top", "v"])
        );
        for key in ["v", "top", "base"] {
            sn.remove(key).expect("remove");
        }
        assert!(matches!(sn.remove("base"), Err(Error::NotFound { .. })));
        assert!(keys(&sn).is_empty());
        assert_consistent(&sn);
    }

    #[test]
    fn keys_are_arbitrary_strings() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        let odd = [
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "../../etc/passwd",
            "/absolute",
            "with space and ünïcödé",
            "new-1-1",
            "7",
        ];
        for key in odd {
            sn.prepare(key, None).expect("prepare");
        }
        let mut want: Vec<&str> = odd.to_vec();
        want.sort();
        assert_eq!(keys(&sn), want);
        assert_consistent(&sn);
        assert!(!tmp.path().join("etc").exists());
    }

    #[test]
    fn layers_commit_in_chain_order_and_duplicates_are_success() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        let l1 = sn.prepare_layer("extract-1").expect("prepare layer");
        assert!(l1.is_dir() && fs::read_dir(&l1).expect("read").next().is_none());
        fs::write(l1.join("one"), "1").expect("write");
        let l2 = sn.prepare_layer("extract-2").expect("prepare layer");
        fs::write(l2.join("two"), "2").expect("write");

        // The parent must be committed first.
        assert!(matches!(
            sn.commit_layer("extract-2", "chain-2", Some("chain-1")),
            Err(Error::NotFound { key }) if key == "chain-1"
        ));
        assert!(matches!(
            sn.commit_layer("extract-2", "chain-2", Some("extract-1")),
            Err(Error::ParentNotCommitted { .. })
        ));
        assert_eq!(
            sn.commit_layer("extract-1", "chain-1", None)
                .expect("commit 1"),
            Committed::Created
        );
        assert_eq!(
            sn.commit_layer("extract-2", "chain-2", Some("chain-1"))
                .expect("commit 2"),
            Committed::Created
        );
        let info = sn.stat("chain-2").expect("stat");
        assert_eq!(
            (info.kind, info.parent.as_deref()),
            (Kind::Committed, Some("chain-1"))
        );

        // Another pull unpacked the same layers.
        let dup = sn.prepare_layer("extract-1b").expect("prepare dup");
        fs::write(dup.join("one"), "1").expect("write");
        assert_eq!(
            sn.commit_layer("extract-1b", "chain-1", None)
                .expect("commit dup"),
            Committed::AlreadyExists
        );
        assert!(!dup.exists(), "the duplicate directory is removed");
        assert!(matches!(sn.stat("extract-1b"), Err(Error::NotFound { .. })));
        sn.prepare_layer("extract-2b").expect("prepare");
        assert!(matches!(
            sn.commit_layer("extract-2b", "chain-2", None),
            Err(Error::ParentMismatch { existing: Some(p), requested: None, .. }) if p == "chain-1"
        ));
        // A name held by an active snapshot is not a duplicate.
        sn.prepare_layer("busy").expect("prepare");
        assert!(matches!(
            sn.commit_layer("extract-2b", "busy", None),
            Err(Error::AlreadyExists { key }) if key == "busy"
        ));
        // commit_layer of a non-active.
        assert!(matches!(
            sn.commit_layer("chain-1", "again", None),
            Err(Error::WrongKind {
                actual: Kind::Committed,
                ..
            })
        ));
        // An active prepared on a parent keeps it.
        sn.prepare("on-top", Some("chain-2"))
            .expect("prepare on top");
        assert!(matches!(
            sn.commit_layer("on-top", "chain-3", Some("chain-1")),
            Err(Error::ParentMismatch { .. })
        ));
        assert_eq!(
            sn.commit_layer("on-top", "chain-3", Some("chain-2"))
                .expect("commit on top"),
            Committed::Created
        );
        assert!(
            matches!(sn.remove("chain-2"), Err(Error::HasChildren { children, .. }) if children == ["chain-3"])
        );
        assert_consistent(&sn);
    }

    #[test]
    fn usage_is_measured_and_kept_at_commit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        let dir = sn.prepare_layer("l").expect("prepare");
        let n = 1_000_000;
        fs::write(dir.join("data"), vec![0xa5; n]).expect("write");
        let active = sn.usage("l").expect("usage");
        assert!(active.bytes >= n as u64, "{active:?}");
        assert_eq!(active.inodes, 2);
        sn.commit_layer("l", "c", None).expect("commit");
        assert_eq!(sn.usage("c").expect("usage"), active);
        let total = sn.fs_usage().expect("fs usage");
        assert!(
            total.used_bytes >= active.bytes && total.used_inodes > active.inodes,
            "{total:?}"
        );
        assert!(sn.root().starts_with(&total.mountpoint));
        assert_eq!(sn.mountpoint().expect("mount point"), total.mountpoint);
        let capacity = sn.capacity().expect("capacity");
        assert_eq!(capacity.total_bytes, total.total_bytes);
        assert_eq!(capacity.total_inodes, total.total_inodes);
        assert!(
            total.total_bytes >= total.available_bytes && total.total_inodes >= total.free_inodes
        );
        assert!(matches!(sn.usage("nope"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn state_survives_reopening_and_ids_are_not_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        sn.prepare("a", None).expect("prepare");
        sn.commit("c", "a").expect("commit");
        sn.prepare("b", Some("c")).expect("prepare");
        sn.prepare("gone", None).expect("prepare");
        let gone_id = sn
            .meta
            .read()
            .expect("read")
            .get("gone")
            .expect("get")
            .expect("exists")
            .id;
        sn.remove("gone").expect("remove");
        assert!(matches!(
            Snapshotter::open(tmp.path().join("root")),
            Err(Error::Database { .. })
        ));
        drop(sn);
        let sn = open(tmp.path());
        assert_eq!(keys(&sn), ["b", "c"]);
        sn.prepare("new", None).expect("prepare");
        let new_id = sn
            .meta
            .read()
            .expect("read")
            .get("new")
            .expect("get")
            .expect("exists")
            .id;
        assert!(new_id > gone_id);
        assert_consistent(&sn);
    }

    #[test]
    fn cleanup_sweeps_orphans_but_not_live_snapshots() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        sn.prepare("live", None).expect("prepare");
        let s = &sn.dirs.snapshots;
        for d in ["999/fs", "new-1-77/fs", "rm-5/fs"] {
            fs::create_dir_all(s.join(d)).expect("mkdir");
        }
        let removed = sn.cleanup().expect("cleanup");
        assert_eq!(removed, [s.join("999"), s.join("new-1-77"), s.join("rm-5")]);
        assert_consistent(&sn);
        assert!(sn.cleanup().expect("cleanup").is_empty());
    }

    #[test]
    fn gc_removes_unreferenced_committed_snapshots_children_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        let chain = |keys: &[&str]| {
            let mut parent: Option<String> = None;
            for key in keys {
                sn.prepare_layer(&format!("x-{key}")).expect("prepare");
                sn.commit_layer(&format!("x-{key}"), key, parent.as_deref())
                    .expect("commit");
                parent = Some(key.to_string());
            }
        };
        chain(&["a", "b", "c"]);
        chain(&["x", "y"]);
        sn.prepare_layer("x-a").expect("prepare");
        sn.commit_layer("x-a", "d", Some("a")).expect("commit d");
        sn.prepare("container", Some("d")).expect("container");
        let removed = sn.gc(["y"]).expect("gc");
        assert_eq!(removed, ["c", "b"]);
        assert_eq!(keys(&sn), ["a", "container", "d", "x", "y"]);
        assert_consistent(&sn);
        sn.remove("container").expect("remove");
        let removed = sn.gc(Vec::<String>::new()).expect("gc");
        assert_eq!(removed, ["d", "y", "a", "x"]);
        assert!(keys(&sn).is_empty());
        assert_consistent(&sn);
    }

    /// Simulates a crash at `point` during `op`, reopens, and checks that
    /// the snapshot `key` is either absent or complete, with nothing else left.
    fn crash(
        point: CrashPoint,
        setup: impl Fn(&Snapshotter),
        op: impl Fn(&Snapshotter) -> Result<()>,
        key: &str,
        present: bool,
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let sn = open(tmp.path());
            setup(&sn);
            *sn.crash.lock().expect("lock") = Some(point);
            assert!(
                matches!(op(&sn), Err(Error::InjectedCrash)),
                "{point:?} was not reached"
            );
            assert!(sn.crash.lock().expect("lock").is_none());
        }
        let sn = open(tmp.path());
        assert_eq!(sn.stat(key).is_ok(), present, "{point:?}: {key} present");
        assert_consistent(&sn);
        // The store works after recovery.
        sn.prepare("after", None).expect("prepare after recovery");
        assert_consistent(&sn);
    }

    #[test]
    fn a_crash_at_any_point_leaves_no_snapshot_or_a_complete_one() {
        let nothing = |_: &Snapshotter| {};
        let prepare = |sn: &Snapshotter| sn.prepare("k", None).map(drop);
        crash(CrashPoint::CreateBeforeRename, nothing, prepare, "k", false);
        crash(CrashPoint::CreateAfterRename, nothing, prepare, "k", false);
        let with_parent = |sn: &Snapshotter| {
            sn.prepare("p", None).expect("prepare");
            sn.commit("parent", "p").expect("commit");
        };
        crash(
            CrashPoint::CreateAfterRename,
            with_parent,
            |sn| sn.view("k", Some("parent")).map(drop),
            "k",
            false,
        );

        let one = |sn: &Snapshotter| {
            let dir = sn.prepare_layer("k").expect("prepare");
            fs::write(dir.join("f"), "data").expect("write");
        };
        let remove = |sn: &Snapshotter| {
            sn.remove("k")?;
            // remove_dir swallowed the second crash point; report it.
            Err(Error::InjectedCrash)
        };
        crash(
            CrashPoint::RemoveAfterMetadata,
            one,
            |sn| sn.remove("k"),
            "k",
            false,
        );
        crash(CrashPoint::RemoveAfterRename, one, remove, "k", false);

        let dup = |sn: &Snapshotter| {
            sn.prepare_layer("x").expect("prepare");
            sn.commit_layer("x", "layer", None).expect("commit");
            sn.prepare_layer("k").expect("prepare dup");
        };
        crash(
            CrashPoint::DuplicateAfterMetadata,
            dup,
            |sn| sn.commit_layer("k", "layer", None).map(drop),
            "k",
            false,
        );

        let committed = |sn: &Snapshotter| {
            sn.prepare_layer("x").expect("prepare");
            sn.commit_layer("x", "k", None).expect("commit");
        };
        crash(
            CrashPoint::GcAfterMetadata,
            committed,
            |sn| sn.gc(Vec::<String>::new()).map(drop),
            "k",
            false,
        );
    }

    #[test]
    fn failed_creations_leave_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        sn.prepare("k", None).expect("prepare");
        for _ in 0..3 {
            assert!(sn.prepare("k", None).is_err());
            assert!(sn.view("v", Some("missing")).is_err());
        }
        assert_consistent(&sn);
        assert!(sn.in_flight.lock().expect("lock").is_empty());
    }

    #[test]
    fn snapshotters_are_shared_between_threads() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = open(tmp.path());
        sn.prepare("b", None).expect("prepare");
        sn.commit("base", "b").expect("commit");
        std::thread::scope(|s| {
            for t in 0..4 {
                let sn = &sn;
                s.spawn(move || {
                    for i in 0..25 {
                        let key = format!("t{t}-{i}");
                        sn.prepare(&key, Some("base")).expect("prepare");
                        if i % 2 == 0 {
                            sn.remove(&key).expect("remove");
                        } else {
                            sn.commit(&format!("c-{key}"), &key).expect("commit");
                        }
                        sn.cleanup().expect("cleanup while others work");
                    }
                });
            }
        });
        assert_eq!(keys(&sn).len(), 1 + 4 * 12);
        assert_consistent(&sn);
    }
}
