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
            Error::Config(_) => tonic::Status::invalid_argument(message),
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
