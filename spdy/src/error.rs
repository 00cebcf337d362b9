//! The crate's error type.

use crate::frame::RstStatus;

/// What went wrong decoding a frame, compressing headers or running a
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A control frame carries a SPDY version other than 3.
    #[error("spdy control frame of version {0}, only version 3 is spoken")]
    UnsupportedVersion(u16),
    /// A frame's length is above what the receiver accepts; nothing was
    /// allocated for it.
    #[error("spdy {kind} frame of {len} bytes is larger than the limit of {max}")]
    FrameTooLarge {
        /// Frame type.
        kind: &'static str,
        /// Length field of the frame.
        len: u32,
        /// The limit it broke.
        max: u32,
    },
    /// A frame that breaks a rule of its type.
    #[error("invalid spdy {kind} frame: {reason}")]
    InvalidFrame {
        /// Frame type.
        kind: &'static str,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A frame to be written that cannot be encoded.
    #[error("cannot encode spdy {kind} frame: {reason}")]
    Unencodable {
        /// Frame type.
        kind: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The zlib stream of header blocks is corrupt.
    #[error("spdy header block does not decompress")]
    Decompress(#[source] flate2::DecompressError),
    /// The zlib compressor failed.
    #[error("spdy header block does not compress")]
    Compress(#[source] flate2::CompressError),
    /// A header block decompresses to more than the limit (a zip bomb).
    #[error("spdy header block decompresses to more than {max} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        max: usize,
    },
    /// A decompressed header block that breaks the name/value block format.
    #[error("invalid spdy header block: {reason}")]
    InvalidHeaderBlock {
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A header name that SPDY/3 forbids (empty, upper case, duplicated,
    /// containing NUL) or a value that is not UTF-8.
    #[error("invalid spdy header {name:?}: {reason}")]
    InvalidHeader {
        /// The name as received or given (lossy UTF-8).
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Reading or writing the underlying connection failed.
    #[error("spdy connection i/o")]
    Io(#[from] std::io::Error),
    /// The connection has ended (closed by the peer, failed, or shut down).
    #[error("spdy connection is closed")]
    ConnectionClosed,
    /// The peer sent GOAWAY, or this side did: no new streams.
    #[error("spdy connection is going away: no new streams")]
    GoingAway,
    /// The connection has used up its stream IDs.
    #[error("spdy stream ids are exhausted")]
    StreamIdsExhausted,
    /// The stream was reset (by the peer or locally).
    #[error("spdy stream {id} was reset ({status})")]
    StreamReset {
        /// Stream ID.
        id: u32,
        /// RST_STREAM status code.
        status: RstStatus,
    },
    /// Writing to a stream whose sending side is already finished (FIN sent).
    #[error("spdy stream {id} is closed for writing")]
    StreamClosed {
        /// Stream ID.
        id: u32,
    },
    /// Writing data on a peer-initiated stream before SYN_REPLY: the Go
    /// peer (moby/spdystream) silently drops such data.
    #[error("spdy stream {id} has not been replied to")]
    NotReplied {
        /// Stream ID.
        id: u32,
    },
    /// Replying twice, or replying to a stream this side opened.
    #[error("spdy stream {id}: {reason}")]
    InvalidReply {
        /// Stream ID.
        id: u32,
        /// Why.
        reason: &'static str,
    },
}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &error {
            Error::Io(e) => e.kind(),
            Error::ConnectionClosed => ErrorKind::ConnectionAborted,
            Error::StreamReset { .. } => ErrorKind::ConnectionReset,
            Error::StreamClosed { .. } => ErrorKind::BrokenPipe,
            Error::NotReplied { .. } | Error::InvalidReply { .. } => ErrorKind::NotConnected,
            _ => ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, error)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
