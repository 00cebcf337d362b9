//! SPDY/3.1 as Kubernetes speaks it: the transport of kubelet's and
//! crictl's exec, attach and port-forward (client-go's SPDY executor and
//! round tripper over moby/spdystream).
//!
//! Layout: [`frame`] parses and writes the frames (the 8-byte head with its
//! length checked before any allocation, every control frame, DATA) and
//! [`headers`] the name/value header blocks with their zlib contexts (the
//! SPDY/3 dictionary, one context per direction per connection, a cap on
//! the decompressed size). `connection.rs` runs a connection over any
//! `AsyncRead + AsyncWrite`: [`Connection::server`] on the upgraded HTTP
//! connection, [`Connection::accept`] for each stream the client opens
//! ([`Stream`]: its headers, SYN_REPLY, data both ways with FIN, RST,
//! `AsyncRead`/`AsyncWrite`), PING replies, GOAWAY, and bounded memory; a
//! [`Connection::client`] serves tests. The HTTP upgrade itself (and the
//! `X-Stream-Protocol-Version` negotiation) belongs to the caller; this
//! crate only names the protocol ([`UPGRADE`]).
//!
//! Flow control, as the Go peer needs it: moby/spdystream neither sends
//! WINDOW_UPDATE nor honours it. So this side sends its windows (SETTINGS
//! at the start, WINDOW_UPDATE as the application reads) for peers that
//! do flow control, enforces the peer's windows on what it writes only once
//! the peer shows it does flow control (sends SETTINGS or WINDOW_UPDATE),
//! and holds at most [`Config::stream_buffer`] unread bytes per stream:
//! a flow-controlled peer never exceeds that, and from a peer that does,
//! the connection stops reading until the application drains the stream,
//! which is what spdystream itself does to a Go peer.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

mod connection;
mod dictionary;
mod error;
pub mod frame;
pub mod headers;

pub use connection::{Config, Connection, RecvStream, SendStream, Stream};
pub use error::{Error, Result};
pub use frame::RstStatus;
pub use headers::Headers;

/// The `Upgrade` token of the HTTP request that opens a SPDY connection.
pub const UPGRADE: &str = "SPDY/3.1";
