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
//! and holds at most [`Config::stream_buffer`] unread bytes per stream
//! ([`Config::connection_buffer`] in all): a flow-controlled peer never
//! exceeds the first, and from a peer that does, the connection stops
//! reading until the application drains the stream, which is what
//! spdystream itself does to a Go peer.
//!
//! ```no_run
//! # async fn serve(io: tokio::net::TcpStream) -> berth_spdy::Result<()> {
//! use berth_spdy::{Config, Connection, Headers};
//!
//! let mut conn = Connection::server(io, Config::default());
//! while let Some(mut stream) = conn.accept().await {
//!     let kind = stream.headers().get("streamtype").unwrap_or_default();
//!     let stdout = kind == "stdout";
//!     stream.reply(Headers::new(), false).await?;
//!     if stdout {
//!         stream.write_all(b"hello\n").await?;
//!         stream.close().await?; // FIN
//!     }
//! }
//! conn.close().await?; // GOAWAY: the Go peer stops reading, so last
//! # Ok(()) }
//! ```
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
