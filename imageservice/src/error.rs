//! The crate's error type, and its classification for gRPC status codes.

use std::io;

use crate::content::ContentError;
use crate::digest::Digest;
use crate::hosts::HostsError;
use crate::manifest::ManifestError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;

/// Everything that can fail in the image service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The hosts directory cannot be used.
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// The node's registry auth file cannot be used.
    #[error(transparent)]
    AuthFile(#[from] crate::registry::AuthFileError),
    /// Talking to a registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A manifest, index or config is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// Reading or decompressing a layer failed.
    #[error("cannot read layer {digest}: {source}")]
    Layer {
        /// The layer (or the diff ID being checked).
        digest: Digest,
        /// The error; `InvalidData` for corrupt compressed data.
        source: io::Error,
    },
    /// The uncompressed layer does not match the image config.
    #[error("uncompressed layer has diff ID {actual}, the image config expects {expected}")]
    DiffIdMismatch {
        /// The config's diff ID.
        expected: Digest,
        /// What the layer hashed to.
        actual: Digest,
    },
    /// The manifest and the config disagree on the number of layers.
    #[error("manifest {manifest} lists {layers} layers but its config has {diff_ids} diff IDs")]
    LayerCount {
        /// The manifest.
        manifest: Digest,
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
    /// A layer could not be written into its snapshot (including hostile
    /// entries that would escape it).
    #[error("cannot unpack layer {digest}: {source}")]
    Apply {
        /// The layer.
        digest: Digest,
        /// Why.
        source: berth_snapshotter::ApplyError,
    },
    /// The snapshotter failed.
    #[error(transparent)]
    Snapshot(#[from] berth_snapshotter::Error),
    /// The image records failed.
    #[error(transparent)]
    Records(#[from] crate::image_store::ImageStoreError),
    /// Another pull that was unpacking a shared layer failed.
    #[error("shared layer {chain_id} failed in another pull: {message}")]
    SharedLayer {
        /// The layer's chain ID.
        chain_id: String,
        /// The other pull's error.
        message: String,
    },
    /// An image record holds an unusable ID.
    #[error("image record {id} has an invalid ID")]
    BadRecord {
        /// The ID.
        id: String,
    },
    /// A local directory could not be made.
    #[error("cannot create {path}: {source}")]
    Local {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The image cannot be removed while a container's snapshot stands on
    /// it.
    #[error("image {id} ({name}) is in use by container snapshot {snapshot}")]
    InUse {
        /// The image's ID.
        id: String,
        /// The name the caller used.
        name: String,
        /// The snapshot on the image.
        snapshot: String,
    },
    /// A background task died.
    #[error("image service task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The class of an [`Error`], one per gRPC status code the agent answers
/// with (the agent maps these in its one place for status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The image, tag, manifest or blob does not exist (or no platform
    /// matches).
    NotFound,
    /// The request or the image is malformed or unsupported.
    InvalidArgument,
    /// The registry wants (other) credentials.
    Unauthenticated,
    /// The registry refused access.
    PermissionDenied,
    /// The registry is unreachable, failing, stalled or rate-limiting: retry.
    Unavailable,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// The caller cancelled.
    Cancelled,
    /// Content did not match its digest or size.
    DataLoss,
    /// The node's configuration (hosts directory, certificates) is
    /// unusable, or the image is in use.
    FailedPrecondition,
    /// A local failure (disk).
    Internal,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Reference(_) => ErrorKind::InvalidArgument,
            Error::Hosts(_) | Error::AuthFile(_) => ErrorKind::FailedPrecondition,
            Error::Registry(e) => e.kind(),
            Error::Manifest(ManifestError::NoMatchingPlatform { .. }) => ErrorKind::NotFound,
            Error::Manifest(_) => ErrorKind::InvalidArgument,
            Error::Content(ContentError::NotFound(_)) => ErrorKind::NotFound,
            Error::Content(
                ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. },
            ) => ErrorKind::DataLoss,
            Error::Content(ContentError::TooLarge { .. }) => ErrorKind::InvalidArgument,
            Error::Content(ContentError::Io { .. }) => ErrorKind::Internal,
            Error::Layer { source, .. } => match source.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => ErrorKind::DataLoss,
                _ => ErrorKind::Internal,
            },
            Error::DiffIdMismatch { .. } => ErrorKind::DataLoss,
            Error::LayerCount { .. } => ErrorKind::InvalidArgument,
            Error::Apply { .. } => ErrorKind::InvalidArgument,
            Error::SharedLayer { .. } => ErrorKind::Unavailable,
            Error::InUse { .. } => ErrorKind::FailedPrecondition,
            Error::Snapshot(_)
            | Error::Records(_)
            | Error::BadRecord { .. }
            | Error::Local { .. }
            | Error::Task(_) => ErrorKind::Internal,
        }
    }
}
