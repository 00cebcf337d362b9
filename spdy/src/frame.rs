//! SPDY/3 frames: the 8-byte head, every control frame Kubernetes' peers
//! send or expect, and DATA.
//!
//! ```text
//! control: |1| version (15) | type (16) | flags (8) | length (24) | payload
//! data:    |0| stream id (31)           | flags (8) | length (24) | payload
//! ```
//!
//! The length is checked against [`Limits`] from the head alone, before
//! anything is allocated for the payload. Unknown control types are
//! skipped, as SPDY/3 requires (moby/spdystream fails on them instead, so
//! this side never writes one).

use bytes::{Buf, Bytes, BytesMut};

use crate::headers::{HeaderDecoder, HeaderEncoder, Headers};
use crate::{Error, Result};

/// The SPDY version of every control frame.
pub const VERSION: u16 = 3;
/// Size of a frame's head.
pub const HEAD_LEN: usize = 8;
/// The largest length the 24-bit field can carry.
pub const MAX_LENGTH: u32 = 0x00ff_ffff;

/// FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender's last frame.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL on SYN_STREAM: the receiver never sends on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// CLEAR_SETTINGS on SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// SETTINGS ID of the peer's limit of concurrent streams.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;
/// SETTINGS ID of the initial per-stream flow-control window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// What a reader accepts, checked from a frame's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest control frame payload (header blocks are its bulk).
    pub max_control: u32,
    /// Largest DATA payload. The connection reads DATA in pieces, so this
    /// may be the protocol's maximum without costing memory.
    pub max_data: u32,
    /// Largest decompressed header block.
    pub max_header_block: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_control: 64 * 1024,
            max_data: MAX_LENGTH,
            max_header_block: crate::headers::DEFAULT_MAX_HEADER_BLOCK,
        }
    }
}

/// A RST_STREAM (and, for the first three, GOAWAY-like) status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: Self = Self(1);
    /// INVALID_STREAM: a frame for a stream that is not open.
    pub const INVALID_STREAM: Self = Self(2);
    /// REFUSED_STREAM: the stream was not processed (stream cap, GOAWAY).
    pub const REFUSED_STREAM: Self = Self(3);
    /// UNSUPPORTED_VERSION.
    pub const UNSUPPORTED_VERSION: Self = Self(4);
    /// CANCEL: the stream is no longer needed.
    pub const CANCEL: Self = Self(5);
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: Self = Self(6);
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: Self = Self(7);
    /// STREAM_IN_USE.
    pub const STREAM_IN_USE: Self = Self(8);
    /// STREAM_ALREADY_CLOSED.
    pub const STREAM_ALREADY_CLOSED: Self = Self(9);
    /// FRAME_TOO_LARGE.
    pub const FRAME_TOO_LARGE: Self = Self(11);
}

impl std::fmt::Display for RstStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1 => "PROTOCOL_ERROR",
            2 => "INVALID_STREAM",
            3 => "REFUSED_STREAM",
            4 => "UNSUPPORTED_VERSION",
            5 => "CANCEL",
            6 => "INTERNAL_ERROR",
            7 => "FLOW_CONTROL_ERROR",
            8 => "STREAM_IN_USE",
            9 => "STREAM_ALREADY_CLOSED",
            10 => "INVALID_CREDENTIALS",
            11 => "FRAME_TOO_LARGE",
            other => return write!(f, "status {other}"),
        };
        f.write_str(name)
    }
}

/// GOAWAY status: OK.
pub const GOAWAY_OK: u32 = 0;
/// GOAWAY status: PROTOCOL_ERROR.
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;
/// GOAWAY status: INTERNAL_ERROR.
pub const GOAWAY_INTERNAL_ERROR: u32 = 2;

/// One SETTINGS entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) or FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// 24-bit ID ([`SETTINGS_INITIAL_WINDOW_SIZE`], ...).
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM: the sender opens a stream.
    SynStream {
        /// Odd from the client, even from the server.
        stream_id: u32,
        /// Stream this one is associated to (0: none).
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// FIN: the sender sends nothing more.
        fin: bool,
        /// UNIDIRECTIONAL: the receiver sends nothing.
        unidirectional: bool,
        /// The stream's headers.
        headers: Headers,
    },
    /// SYN_REPLY: the receiver of a SYN_STREAM accepts it.
    SynReply {
        /// Stream.
        stream_id: u32,
        /// FIN.
        fin: bool,
        /// Headers.
        headers: Headers,
    },
    /// RST_STREAM: the stream ends abnormally.
    RstStream {
        /// Stream.
        stream_id: u32,
        /// Why.
        status: RstStatus,
    },
    /// SETTINGS.
    Settings {
        /// CLEAR_SETTINGS flag.
        clear: bool,
        /// Entries.
        entries: Vec<Setting>,
    },
    /// PING, echoed by the side that did not send it.
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// GOAWAY: the sender takes no more streams.
    GoAway {
        /// Last stream the sender processed.
        last_good_stream_id: u32,
        /// [`GOAWAY_OK`], [`GOAWAY_PROTOCOL_ERROR`], [`GOAWAY_INTERNAL_ERROR`].
        status: u32,
    },
    /// HEADERS: more headers for a stream.
    Headers {
        /// Stream.
        stream_id: u32,
        /// FIN.
        fin: bool,
        /// Headers.
        headers: Headers,
    },
    /// WINDOW_UPDATE: the receiver may send `delta` more bytes on the stream
    /// (stream 0: the whole session, SPDY/3.1).
    WindowUpdate {
        /// Stream, or 0.
        stream_id: u32,
        /// 1 to 2^31 - 1.
        delta: u32,
    },
    /// DATA.
    Data {
        /// Stream.
        stream_id: u32,
        /// FIN.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// A control frame of a type this crate does not know, skipped.
    Unknown {
        /// Its type.
        kind: u16,
    },
}

/// A frame's head: what it is and how long its payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Control frame.
    Control {
        /// Type.
        kind: u16,
        /// Flags.
        flags: u8,
        /// Payload length.
        len: u32,
    },
    /// DATA frame.
    Data {
        /// Stream.
        stream_id: u32,
        /// Flags.
        flags: u8,
        /// Payload length.
        len: u32,
    },
}

impl Head {
    /// Parses a head and checks its length against `limits`.
    pub fn parse(bytes: [u8; HEAD_LEN], limits: &Limits) -> Result<Self> {
        let first = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let flags = bytes[4];
        let len = u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]);
        if first & 0x8000_0000 != 0 {
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(Error::UnsupportedVersion(version));
            }
            let kind = (first & 0xffff) as u16;
            if len > limits.max_control {
                return Err(Error::FrameTooLarge {
                    kind: kind_name(kind),
                    len,
                    max: limits.max_control,
                });
            }
            Ok(Head::Control { kind, flags, len })
        } else {
            if first == 0 {
                return Err(Error::InvalidFrame {
                    kind: "DATA",
                    reason: "stream id 0",
                });
            }
            if len > limits.max_data {
                return Err(Error::FrameTooLarge {
                    kind: "DATA",
                    len,
                    max: limits.max_data,
                });
            }
            Ok(Head::Data {
                stream_id: first,
                flags,
                len,
            })
        }
    }

    /// Payload length.
    pub fn len(&self) -> u32 {
        match *self {
            Head::Control { len, .. } | Head::Data { len, .. } => len,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn kind_name(kind: u16) -> &'static str {
    match kind {
        TYPE_SYN_STREAM => "SYN_STREAM",
        TYPE_SYN_REPLY => "SYN_REPLY",
        TYPE_RST_STREAM => "RST_STREAM",
        TYPE_SETTINGS => "SETTINGS",
        TYPE_PING => "PING",
        TYPE_GOAWAY => "GOAWAY",
        TYPE_HEADERS => "HEADERS",
        TYPE_WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown control",
    }
}

fn invalid(kind: u16, reason: &'static str) -> Error {
    Error::InvalidFrame {
        kind: kind_name(kind),
        reason,
    }
}

fn word(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

fn stream_id(kind: u16, payload: &[u8], at: usize) -> Result<u32> {
    let id = word(payload, at) & STREAM_ID_MASK;
    if id == 0 {
        return Err(invalid(kind, "stream id 0"));
    }
    Ok(id)
}

impl Frame {
    /// Decodes a control frame's payload; header blocks go through
    /// `headers`, this direction's decompression context.
    pub fn decode_control(
        kind: u16,
        flags: u8,
        payload: &[u8],
        headers: &mut HeaderDecoder,
    ) -> Result<Self> {
        let len = payload.len();
        let exact = |want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(invalid(kind, "wrong length"))
            }
        };
        let at_least = |want: usize| {
            if len >= want {
                Ok(())
            } else {
                Err(invalid(kind, "too short"))
            }
        };
        let fin = flags & FLAG_FIN != 0;
        Ok(match kind {
            TYPE_SYN_STREAM => {
                at_least(10)?;
                let stream_id = stream_id(kind, payload, 0)?;
                let associated_to = word(payload, 4) & STREAM_ID_MASK;
                let priority = payload[8] >> 5;
                let headers = headers.decode(&payload[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                at_least(4)?;
                let stream_id = stream_id(kind, payload, 0)?;
                let headers = headers.decode(&payload[4..])?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                exact(8)?;
                let stream_id = stream_id(kind, payload, 0)?;
                let status = word(payload, 4);
                if status == 0 {
                    return Err(invalid(kind, "status 0"));
                }
                Frame::RstStream {
                    stream_id,
                    status: RstStatus(status),
                }
            }
            TYPE_SETTINGS => {
                at_least(4)?;
                let count = word(payload, 0) as usize;
                if count.checked_mul(8) != Some(len - 4) {
                    return Err(invalid(kind, "entry count does not match the length"));
                }
                let entries = payload[4..]
                    .chunks_exact(8)
                    .map(|entry| Setting {
                        flags: entry[0],
                        id: word(entry, 0) & 0x00ff_ffff,
                        value: word(entry, 4),
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            TYPE_PING => {
                exact(4)?;
                Frame::Ping {
                    id: word(payload, 0),
                }
            }
            TYPE_GOAWAY => {
                exact(8)?;
                Frame::GoAway {
                    last_good_stream_id: word(payload, 0) & STREAM_ID_MASK,
                    status: word(payload, 4),
                }
            }
            TYPE_WINDOW_UPDATE => {
                exact(8)?;
                let delta = word(payload, 4) & STREAM_ID_MASK;
                if delta == 0 {
                    return Err(invalid(kind, "delta 0"));
                }
                Frame::WindowUpdate {
                    stream_id: word(payload, 0) & STREAM_ID_MASK,
                    delta,
                }
            }
            kind => Frame::Unknown { kind },
        })
    }

    /// Appends the frame's bytes to `out`; header blocks go through
    /// `headers`, this direction's compression context, so frames must be
    /// written in the order they are encoded.
    pub fn encode(&self, headers: &mut HeaderEncoder, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        match self {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                fin,
                unidirectional,
                headers: block,
            } => {
                let flags = fin_flag(*fin)
                    | if *unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                control_head(out, TYPE_SYN_STREAM, flags);
                out.extend_from_slice(&check_id(TYPE_SYN_STREAM, *stream_id)?.to_be_bytes());
                out.extend_from_slice(&(associated_to & STREAM_ID_MASK).to_be_bytes());
                out.push((priority & 0x7) << 5);
                out.push(0);
                headers.encode(block, out)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers: block,
            } => {
                control_head(out, TYPE_SYN_REPLY, fin_flag(*fin));
                out.extend_from_slice(&check_id(TYPE_SYN_REPLY, *stream_id)?.to_be_bytes());
                headers.encode(block, out)?;
            }
            Frame::Headers {
                stream_id,
                fin,
                headers: block,
            } => {
                control_head(out, TYPE_HEADERS, fin_flag(*fin));
                out.extend_from_slice(&check_id(TYPE_HEADERS, *stream_id)?.to_be_bytes());
                headers.encode(block, out)?;
            }
            Frame::RstStream { stream_id, status } => {
                if status.0 == 0 {
                    return Err(Error::Unencodable {
                        kind: "RST_STREAM",
                        reason: "status 0",
                    });
                }
                control_head(out, TYPE_RST_STREAM, 0);
                out.extend_from_slice(&check_id(TYPE_RST_STREAM, *stream_id)?.to_be_bytes());
                out.extend_from_slice(&status.0.to_be_bytes());
            }
            Frame::Settings { clear, entries } => {
                control_head(
                    out,
                    TYPE_SETTINGS,
                    if *clear { FLAG_CLEAR_SETTINGS } else { 0 },
                );
                let count = u32::try_from(entries.len()).map_err(|_| Error::Unencodable {
                    kind: "SETTINGS",
                    reason: "too many entries",
                })?;
                out.extend_from_slice(&count.to_be_bytes());
                for entry in entries {
                    let flag_id = (u32::from(entry.flags) << 24) | (entry.id & 0x00ff_ffff);
                    out.extend_from_slice(&flag_id.to_be_bytes());
                    out.extend_from_slice(&entry.value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control_head(out, TYPE_PING, 0);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control_head(out, TYPE_GOAWAY, 0);
                out.extend_from_slice(&(last_good_stream_id & STREAM_ID_MASK).to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if *delta == 0 || *delta > STREAM_ID_MASK {
                    return Err(Error::Unencodable {
                        kind: "WINDOW_UPDATE",
                        reason: "delta outside 1..2^31",
                    });
                }
                control_head(out, TYPE_WINDOW_UPDATE, 0);
                out.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let id = stream_id & STREAM_ID_MASK;
                if id == 0 || id != *stream_id {
                    return Err(Error::Unencodable {
                        kind: "DATA",
                        reason: "stream id 0 or above 2^31",
                    });
                }
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&[fin_flag(*fin), 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Frame::Unknown { .. } => {
                return Err(Error::Unencodable {
                    kind: "unknown control",
                    reason: "moby/spdystream fails on unknown frame types",
                })
            }
        }
        let len = out.len() - start - HEAD_LEN;
        let Ok(len) = u32::try_from(len) else {
            out.truncate(start);
            return Err(too_long());
        };
        if len > MAX_LENGTH {
            out.truncate(start);
            return Err(too_long());
        }
        out[start + 5..start + 8].copy_from_slice(&len.to_be_bytes()[1..]);
        Ok(())
    }
}

fn too_long() -> Error {
    Error::Unencodable {
        kind: "frame",
        reason: "payload above 2^24 - 1 bytes",
    }
}

fn fin_flag(fin: bool) -> u8 {
    if fin {
        FLAG_FIN
    } else {
        0
    }
}

fn check_id(kind: u16, id: u32) -> Result<u32> {
    if id == 0 || id & !STREAM_ID_MASK != 0 {
        return Err(Error::Unencodable {
            kind: kind_name(kind),
            reason: "stream id 0 or above 2^31",
        });
    }
    Ok(id)
}

/// Writes a control head with a zero length, patched by `encode`.
fn control_head(out: &mut Vec<u8>, kind: u16, flags: u8) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&[flags, 0, 0, 0]);
}

/// Decodes whole frames from a byte buffer, with its own decompression
/// context: the reading half of a connection, for tests, fuzzing and
/// simple peers. (The [`Connection`](crate::Connection) reads DATA in
/// pieces instead, so a large DATA frame never sits in memory whole.)
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    headers: HeaderDecoder,
}

impl FrameDecoder {
    /// A decoder with `limits` and a fresh decompression context.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            headers: HeaderDecoder::new(limits.max_header_block),
        }
    }

    /// The next frame of `buf`, consumed from it; `None` while `buf` holds
    /// only part of one (a head whose length breaks the limits is refused at
    /// once). After an error the stream of frames cannot be resumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        let Some(head) = buf.first_chunk::<HEAD_LEN>() else {
            return Ok(None);
        };
        let head = Head::parse(*head, &self.limits)?;
        let len = head.len() as usize;
        if buf.len() < HEAD_LEN + len {
            return Ok(None);
        }
        buf.advance(HEAD_LEN);
        let payload = buf.split_to(len);
        Ok(Some(match head {
            Head::Control { kind, flags, .. } => {
                Frame::decode_control(kind, flags, &payload, &mut self.headers)?
            }
            Head::Data {
                stream_id, flags, ..
            } => Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: payload.freeze(),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in pairs {
            h.insert(n, v).expect("valid header");
        }
        h
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>> {
        let mut decoder = FrameDecoder::new(Limits::default());
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf)? {
            frames.push(frame);
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        Ok(frames)
    }

    fn encode(frame: &Frame) -> Vec<u8> {
        let mut encoder = HeaderEncoder::new().expect("encoder");
        let mut out = Vec::new();
        frame.encode(&mut encoder, &mut out).expect("encode");
        out
    }

    /// Frames without header blocks, byte for byte as moby/spdystream v0.5.0
    /// writes them (captured from its Framer).
    #[test]
    fn frames_match_go_bytes_both_ways() {
        let cases = [
            (
                "80030003000000080000000700000005",
                Frame::RstStream {
                    stream_id: 7,
                    status: RstStatus::CANCEL,
                },
            ),
            (
                "80030004000000140000000201000007000400000000000400000064",
                Frame::Settings {
                    clear: false,
                    entries: vec![
                        Setting {
                            flags: 1,
                            id: SETTINGS_INITIAL_WINDOW_SIZE,
                            value: 262_144,
                        },
                        Setting {
                            flags: 0,
                            id: SETTINGS_MAX_CONCURRENT_STREAMS,
                            value: 100,
                        },
                    ],
                },
            ),
            ("800300060000000400000001", Frame::Ping { id: 1 }),
            (
                "80030007000000080000000900000001",
                Frame::GoAway {
                    last_good_stream_id: 9,
                    status: GOAWAY_PROTOCOL_ERROR,
                },
            ),
            (
                "80030009000000080000000100010000",
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 65536,
                },
            ),
            (
                "00000001010000026869",
                Frame::Data {
                    stream_id: 1,
                    fin: true,
                    data: Bytes::from_static(b"hi"),
                },
            ),
            (
                "0000000301000000",
                Frame::Data {
                    stream_id: 3,
                    fin: true,
                    data: Bytes::new(),
                },
            ),
        ];
        for (go, frame) in cases {
            assert_eq!(encode(&frame), hex(go), "{frame:?}");
            assert_eq!(decode_all(&hex(go)).expect("decode"), [frame]);
        }
    }

    /// Header-carrying frames written by moby/spdystream v0.5.0: two
    /// SYN_STREAMs on one compression context, a SYN_REPLY with FIN and a
    /// HEADERS, each the first block of its own context.
    #[test]
    fn go_header_frames_decode() {
        let two = hex(concat!(
            "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff",
            "800300010000002e0000000300000000400002a547060606ce2248d465829234a301866250b9930829c28b40c99dc9c200000000ffff"
        ));
        let frames = decode_all(&two).expect("decode");
        assert_eq!(
            frames[0],
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: headers(&[("streamtype", "error")]),
            }
        );
        let Frame::SynStream {
            stream_id: 3,
            priority: 2,
            fin: false,
            headers: second,
            ..
        } = &frames[1]
        else {
            panic!("second frame {:?}", frames[1]);
        };
        // Go writes a map: the order of the names is random.
        assert_eq!(second.len(), 3);
        assert_eq!(second.get("streamtype"), Some("data"));
        assert_eq!(second.get("port"), Some("80"));
        assert_eq!(second.get("requestid"), Some("0"));

        let reply = hex("80030002010000230000000378f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff");
        assert_eq!(
            decode_all(&reply).expect("decode"),
            [Frame::SynReply {
                stream_id: 3,
                fin: true,
                headers: headers(&[("streamtype", "error")]),
            }]
        );
        let more = hex("80030008000000230000000578f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff");
        assert_eq!(
            decode_all(&more).expect("decode"),
            [Frame::Headers {
                stream_id: 5,
                fin: false,
                headers: headers(&[("streamtype", "error")]),
            }]
        );
    }

    #[test]
    fn every_frame_round_trips_on_one_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 7,
                fin: true,
                unidirectional: true,
                headers: headers(&[("streamtype", "stdin")]),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::Headers {
                stream_id: 1,
                fin: true,
                headers: headers(&[("a", "b"), ("c", "d")]),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::REFUSED_STREAM,
            },
            Frame::Settings {
                clear: true,
                entries: vec![],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good_stream_id: 5,
                status: GOAWAY_OK,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
            Frame::Data {
                stream_id: 0x7fff_ffff,
                fin: false,
                data: Bytes::from(vec![7; 100_000]),
            },
        ];
        let mut encoder = HeaderEncoder::new().expect("encoder");
        let mut wire = Vec::new();
        for frame in &frames {
            frame.encode(&mut encoder, &mut wire).expect("encode");
        }
        assert_eq!(decode_all(&wire).expect("decode"), frames);
    }

    #[test]
    fn truncated_input_waits_and_garbage_is_refused() {
        let wire = encode(&Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: headers(&[("streamtype", "error")]),
        });
        for cut in 0..wire.len() {
            let mut decoder = FrameDecoder::new(Limits::default());
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decoder.decode(&mut buf).expect("partial is fine"), None);
        }
        let refused = |bytes: &str| decode_all(&hex(bytes)).expect_err("refused");
        assert!(matches!(
            refused("80020001000000000000"),
            Error::UnsupportedVersion(2)
        ));
        // RST_STREAM: wrong length, stream 0, status 0.
        assert!(matches!(
            refused("800300030000000400000001"),
            Error::InvalidFrame {
                reason: "wrong length",
                ..
            }
        ));
        assert!(matches!(
            refused("80030003000000080000000000000005"),
            Error::InvalidFrame {
                reason: "stream id 0",
                ..
            }
        ));
        assert!(matches!(
            refused("80030003000000080000000100000000"),
            Error::InvalidFrame {
                reason: "status 0",
                ..
            }
        ));
        // SETTINGS whose count lies about its length.
        assert!(matches!(
            refused("8003000400000004ffffffff"),
            Error::InvalidFrame {
                kind: "SETTINGS",
                ..
            }
        ));
        // WINDOW_UPDATE of 0, DATA on stream 0, SYN_STREAM too short.
        assert!(matches!(
            refused("80030009000000080000000100000000"),
            Error::InvalidFrame {
                reason: "delta 0",
                ..
            }
        ));
        assert!(matches!(
            refused("0000000000000000"),
            Error::InvalidFrame { kind: "DATA", .. }
        ));
        assert!(matches!(
            refused("800300010000000400000001"),
            Error::InvalidFrame {
                reason: "too short",
                ..
            }
        ));
        // A SYN_STREAM whose header block is not zlib.
        assert!(matches!(
            refused("80030001000000100000000100000000000001020304ffff"),
            Error::Decompress(_)
        ));
        // Unknown control types are skipped.
        assert_eq!(
            decode_all(&hex("8003000a00000002abcd")).expect("skipped"),
            [Frame::Unknown { kind: 10 }]
        );
    }

    #[test]
    fn huge_lengths_are_refused_from_the_head() {
        let limits = Limits {
            max_control: 1024,
            max_data: 4096,
            max_header_block: 1024,
        };
        let mut decoder = FrameDecoder::new(limits);
        // A head alone, announcing 16 MiB: refused before any payload.
        let mut buf = BytesMut::from(&hex("8003000100ffffff")[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(Error::FrameTooLarge {
                kind: "SYN_STREAM",
                len: 0x00ff_ffff,
                max: 1024
            })
        ));
        let mut buf = BytesMut::from(&hex("0000000100001001")[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(Error::FrameTooLarge { kind: "DATA", .. })
        ));
    }

    #[test]
    fn unencodable_frames_are_refused() {
        let mut encoder = HeaderEncoder::new().expect("encoder");
        let mut out = Vec::new();
        let data = Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from(vec![0; MAX_LENGTH as usize + 1]),
        };
        assert!(data.encode(&mut encoder, &mut out).is_err());
        assert!(out.is_empty());
        let rst = Frame::RstStream {
            stream_id: 0,
            status: RstStatus::CANCEL,
        };
        assert!(rst.encode(&mut encoder, &mut out).is_err());
    }
}
