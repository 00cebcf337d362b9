//! The agent's error type, the kinds of errors, and their one mapping to
//! gRPC status codes.

use std::path::PathBuf;

/// Everything that can stop berthd or fail a CRI call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Socket(#[from] crate::socket::SocketError),
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {address}: {source}")]
    Metrics {
        address: String,
        source: std::io::Error,
    },
    #[error("CRI server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Image(#[from] berth_imageservice::Error),
    /// A request field holds a value berth cannot use.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error(transparent)]
    NameInUse(#[from] crate::store::name_index::NameInUse),
    #[error(transparent)]
    AmbiguousId(#[from] crate::store::records::AmbiguousId),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error(transparent)]
    Stats(#[from] crate::stats::StatsError),
    #[error(transparent)]
    Streaming(#[from] crate::streaming::StreamingError),
    /// The client's deadline passed while berthd was doing `action`.
    #[error("{action}: the client's deadline passed")]
    DeadlinePassed { action: String },
    /// A CRI call berth does not implement yet.
    #[error("{rpc} is not implemented by berth yet")]
    Unimplemented { rpc: String },
}

impl Error {
    /// An `InvalidArgument` naming the request field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The class of an error: one per gRPC status code berthd answers with.
/// Domain errors say their kind; [`From<Error> for tonic::Status`] is the
/// one place that turns a kind into a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object named by the request does not exist.
    NotFound,
    /// The request itself is at fault.
    InvalidArgument,
    /// A name the request asks for is taken.
    AlreadyExists,
    /// The object is not in a state that allows the call (retrying the same
    /// call will not help until something else changes).
    FailedPrecondition,
    /// The call did not finish in time.
    DeadlineExceeded,
    /// The client went away, or the work was abandoned.
    Cancelled,
    /// A dependency (a shim, a registry, the store's lock) is out of reach
    /// for now: retry.
    Unavailable,
    /// The registry wants (other) credentials.
    Unauthenticated,
    /// The registry refused access.
    PermissionDenied,
    /// Content did not match its digest or size.
    DataLoss,
    /// berth does not implement the call.
    Unimplemented,
    /// A failure of the node (disk, kernel, runtime binary).
    Internal,
}

impl From<berth_imageservice::ErrorKind> for ErrorKind {
    fn from(kind: berth_imageservice::ErrorKind) -> Self {
        use berth_imageservice::ErrorKind as Image;
        match kind {
            Image::NotFound => Self::NotFound,
            Image::InvalidArgument => Self::InvalidArgument,
            Image::Unauthenticated => Self::Unauthenticated,
            Image::PermissionDenied => Self::PermissionDenied,
            Image::Unavailable => Self::Unavailable,
            Image::DeadlineExceeded => Self::DeadlineExceeded,
            Image::Cancelled => Self::Cancelled,
            Image::DataLoss => Self::DataLoss,
            Image::FailedPrecondition => Self::FailedPrecondition,
            Image::Internal => Self::Internal,
        }
    }
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Image(e) => e.kind().into(),
            Error::Config(_) | Error::InvalidArgument { .. } | Error::AmbiguousId(_) => {
                ErrorKind::InvalidArgument
            }
            Error::NameInUse(_) => ErrorKind::AlreadyExists,
            Error::Container(e) => e.kind(),
            Error::Sandbox(e) => e.kind(),
            Error::Stats(e) => e.kind(),
            Error::Streaming(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::DeadlinePassed { .. } => ErrorKind::DeadlineExceeded,
            Error::Unimplemented { .. } => ErrorKind::Unimplemented,
            Error::Cgroup(_)
            | Error::Socket(_)
            | Error::CreateDir { .. }
            | Error::Metrics { .. }
            | Error::Serve(_) => ErrorKind::Internal,
        }
    }
}

/// The gRPC code of each kind.
fn grpc_code(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorKind::Cancelled => tonic::Code::Cancelled,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorKind::DataLoss => tonic::Code::DataLoss,
        ErrorKind::Unimplemented => tonic::Code::Unimplemented,
        ErrorKind::Internal => tonic::Code::Internal,
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::new(grpc_code(error.kind()), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(error: impl Into<Error>) -> tonic::Status {
        tonic::Status::from(error.into())
    }

    #[test]
    fn kinds_become_codes_with_the_message() {
        let held = status(crate::store::StoreError::InUse {
            path: PathBuf::from("/var/lib/berth/metadata.redb"),
        });
        assert_eq!(held.code(), tonic::Code::Unavailable);
        assert!(
            held.message().contains("in use by another process"),
            "{held}"
        );
        let gone = status(crate::container::ContainerError::NotFound("c1".to_owned()));
        assert_eq!(gone.code(), tonic::Code::NotFound);
        assert_eq!(gone.message(), "container c1 not found");
        let shim = status(crate::container::ContainerError::Shim(
            crate::shim_client::ShimError::HandlerShimMissing(PathBuf::from("x")),
        ));
        assert_eq!(shim.code(), tonic::Code::FailedPrecondition);
        let late = status(Error::DeadlinePassed {
            action: "pulling busybox".to_owned(),
        });
        assert_eq!(late.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            late.message(),
            "pulling busybox: the client's deadline passed"
        );
        let missing = status(Error::Unimplemented {
            rpc: "CheckpointContainer".to_owned(),
        });
        assert_eq!(missing.code(), tonic::Code::Unimplemented);
        assert_eq!(
            missing.message(),
            "CheckpointContainer is not implemented by berth yet"
        );
        assert_eq!(
            status(Error::invalid("image.image", "must name an image")).code(),
            tonic::Code::InvalidArgument
        );
    }
}
