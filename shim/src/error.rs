//! The shim's errors, and their ttrpc status codes (mapped here only).

use std::io;
use std::path::PathBuf;

use containerd_shim_protos::protobuf;
use containerd_shim_protos::ttrpc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The text names the missing thing: "container c1 not found".
    #[error("{0}")]
    NotFound(String),

    #[error("{0} already exists")]
    AlreadyExists(String),

    /// The request does not fit the task's state.
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A system call without a file to name.
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot run {}: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The OCI runtime ran and failed; `message` is its own error text.
    #[error("{runtime} {command} failed: {message}")]
    Runtime {
        runtime: String,
        command: String,
        message: String,
    },

    /// The OCI runtime did not finish in time and was killed.
    #[error("{runtime} {command} did not finish within {seconds} s: killed")]
    RuntimeTimeout {
        runtime: String,
        command: String,
        seconds: u64,
    },

    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: protobuf::Error,
    },

    #[error("encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: protobuf::Error,
    },

    #[error(transparent)]
    Mount(#[from] berth_mount::Error),

    #[error("ttrpc: {0}")]
    Ttrpc(#[from] ttrpc::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn sys(op: &'static str, errno: nix::errno::Errno) -> Self {
        Error::Sys {
            op,
            source: errno.into(),
        }
    }

    fn code(&self) -> ttrpc::Code {
        match self {
            Error::InvalidArgument(_) | Error::Decode { .. } => ttrpc::Code::INVALID_ARGUMENT,
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::Runtime { .. } => ttrpc::Code::UNKNOWN,
            Error::RuntimeTimeout { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            Error::Io { .. }
            | Error::Sys { .. }
            | Error::Spawn { .. }
            | Error::Json { .. }
            | Error::Encode { .. }
            | Error::Mount(_)
            | Error::Ttrpc(_) => ttrpc::Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes() {
        let cases = [
            (
                Error::InvalidArgument("x".into()),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (Error::NotFound("x".into()), ttrpc::Code::NOT_FOUND),
            (
                Error::AlreadyExists("x".into()),
                ttrpc::Code::ALREADY_EXISTS,
            ),
            (
                Error::FailedPrecondition("x".into()),
                ttrpc::Code::FAILED_PRECONDITION,
            ),
            (
                Error::Runtime {
                    runtime: "runc".into(),
                    command: "start".into(),
                    message: "boom".into(),
                },
                ttrpc::Code::UNKNOWN,
            ),
            (
                Error::io("/x", io::Error::from(io::ErrorKind::NotFound)),
                ttrpc::Code::INTERNAL,
            ),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code, "{text}");
                    assert_eq!(s.message(), text);
                }
                other => panic!("not a status: {other:?}"),
            }
        }
    }
}
