//! The snapshotter's error type.

use std::path::PathBuf;

use crate::Kind;

/// Everything the snapshotter can fail with.
///
/// Variants name the snapshot key or the path involved; layer application has
/// its own narrower [`ApplyError`](crate::ApplyError), folded in as
/// [`Error::Apply`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Keys and names are arbitrary strings, but not empty ones.
    #[error("snapshot key must not be empty")]
    EmptyKey,
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },
    /// The operation needs another kind of snapshot (for example `commit` of a
    /// view, or `mounts` of a committed snapshot).
    #[error("snapshot {key:?} is {actual}, expected {expected}")]
    WrongKind {
        key: String,
        actual: Kind,
        expected: &'static str,
    },
    /// Only committed snapshots can be parents.
    #[error("parent {parent:?} is {actual}, not committed")]
    ParentNotCommitted { parent: String, actual: Kind },
    /// `remove` of a snapshot that is still a parent.
    #[error("snapshot {key:?} has children: {}", children.join(", "))]
    HasChildren { key: String, children: Vec<String> },
    /// `commit_layer` of a name that exists with another parent, or of a
    /// snapshot prepared on another parent.
    #[error("snapshot {name:?} has parent {existing:?}, not {requested:?}")]
    ParentMismatch {
        name: String,
        existing: Option<String>,
        requested: Option<String>,
    },
    /// overlayfs caps the number of lower layers.
    #[error("snapshot {key:?} would have {layers} layers, overlayfs allows {max}")]
    TooManyLayers {
        key: String,
        layers: usize,
        max: usize,
    },
    /// The root path cannot be used in overlay mount options.
    #[error("snapshotter root {path} contains ',', ':' or a newline, which overlay mount options cannot carry")]
    InvalidRoot { path: PathBuf },
    /// overlayfs needs `d_type` from the filesystem under the root.
    #[error("filesystem of {path} does not report file types in directory entries (d_type), which overlayfs needs")]
    NoDType { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The metadata database failed; `DatabaseAlreadyOpen` means a second
    /// snapshotter on the same root.
    #[error("metadata database {path}: {source}")]
    Database {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("metadata record of snapshot {key:?} is unreadable: {source}")]
    CorruptRecord {
        key: String,
        source: serde_json::Error,
    },
    #[error("metadata record of snapshot {key:?} has version {version}, this berth reads version {supported}")]
    UnsupportedRecord {
        key: String,
        version: u32,
        supported: u32,
    },
    #[error("metadata database {path} has format {found}, this berth reads format {supported}")]
    UnsupportedFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// Reading the mount table (for [`FsUsage`](crate::FsUsage)).
    #[error(transparent)]
    MountTable(#[from] berth_mount::Error),
    #[error(transparent)]
    Apply(#[from] crate::apply::ApplyError),
    /// A crash simulated by the unit tests.
    #[cfg(test)]
    #[error("injected crash")]
    InjectedCrash,
}

/// Shorthand for results of the snapshotter.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}
