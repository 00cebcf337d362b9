//! The agent's error type, and its one mapping to gRPC status codes.

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

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Image(e) => {
                use berth_imageservice::ErrorKind as Kind;
                let code = match e.kind() {
                    Kind::NotFound => tonic::Code::NotFound,
                    Kind::InvalidArgument => tonic::Code::InvalidArgument,
                    Kind::Unauthenticated => tonic::Code::Unauthenticated,
                    Kind::PermissionDenied => tonic::Code::PermissionDenied,
                    Kind::Unavailable => tonic::Code::Unavailable,
                    Kind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
                    Kind::Cancelled => tonic::Code::Cancelled,
                    Kind::DataLoss => tonic::Code::DataLoss,
                    Kind::FailedPrecondition => tonic::Code::FailedPrecondition,
                    Kind::Internal => tonic::Code::Internal,
                };
                tonic::Status::new(code, message)
            }
            Error::Config(_) | Error::InvalidArgument { .. } | Error::AmbiguousId(_) => {
                tonic::Status::invalid_argument(message)
            }
            Error::NameInUse(_) => tonic::Status::already_exists(message),
            Error::Container(e) => tonic::Status::new(e.grpc_code(), message),
            Error::Sandbox(e) => {
                use crate::sandbox::files::FilesError;
                use crate::sandbox::SandboxError as E;
                let code = match e {
                    E::NotFound(_) => tonic::Code::NotFound,
                    E::NetworkNotReady(_) => tonic::Code::FailedPrecondition,
                    E::Files(FilesError::Dns { .. }) => tonic::Code::InvalidArgument,
                    E::Abandoned => tonic::Code::Cancelled,
                    E::Namespace(_)
                    | E::Files(_)
                    | E::Cni(_)
                    | E::Sysctl { .. }
                    | E::Hostname { .. }
                    | E::Init { .. }
                    | E::CreateDir { .. }
                    | E::RemoveDir { .. } => tonic::Code::Internal,
                };
                tonic::Status::new(code, message)
            }
            Error::Store(crate::store::StoreError::InUse { .. }) => {
                tonic::Status::unavailable(message)
            }
            Error::Store(_)
            | Error::Cgroup(_)
            | Error::Socket(_)
            | Error::CreateDir { .. }
            | Error::Metrics { .. }
            | Error::Serve(_) => tonic::Status::internal(message),
        }
    }
}
