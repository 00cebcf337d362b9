//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! A block is a 32-bit count of pairs, then per pair a 32-bit length and
//! the name (lower case, unique), a 32-bit length and the value (several
//! values of one name are joined by NUL). Every block of one direction of a
//! connection is compressed by one zlib stream preset with the SPDY/3
//! dictionary and sync-flushed at the end of each block, so an
//! [`HeaderEncoder`] and a [`HeaderDecoder`] live as long as the
//! connection: one for the frames it writes, one for those it reads.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::dictionary::DICTIONARY;
use crate::{Error, Result};

/// Default cap on the decompressed size of one header block.
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 256 * 1024;

/// The headers of a SYN_STREAM, SYN_REPLY or HEADERS frame: lower-case,
/// unique names in insertion order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `name` (lower-cased). A second value of the same
    /// name is joined to the first by NUL, as SPDY/3 carries it.
    pub fn insert(&mut self, name: &str, value: &str) -> Result<()> {
        if name.is_empty() || name.contains('\0') {
            return Err(Error::InvalidHeader {
                name: name.to_owned(),
                reason: "names must be non-empty and free of NUL",
            });
        }
        let name = name.to_ascii_lowercase();
        match self.pairs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push('\0');
                existing.push_str(value);
            }
            None => self.pairs.push((name, value.to_owned())),
        }
        Ok(())
    }

    /// The first value of `name` (compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    /// Every value of `name` (compared case-insensitively).
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let joined = self
            .pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        joined.into_iter().flat_map(|v| v.split('\0'))
    }

    /// Name and joined value of each pair.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The uncompressed name/value block.
    fn to_block(&self) -> Result<Vec<u8>> {
        let mut block = Vec::with_capacity(
            4 + self
                .pairs
                .iter()
                .map(|(n, v)| 8 + n.len() + v.len())
                .sum::<usize>(),
        );
        push_len(&mut block, self.pairs.len())?;
        for (name, value) in &self.pairs {
            push_len(&mut block, name.len())?;
            block.extend_from_slice(name.as_bytes());
            push_len(&mut block, value.len())?;
            block.extend_from_slice(value.as_bytes());
        }
        Ok(block)
    }

    /// Parses an uncompressed name/value block, refusing what moby/spdystream
    /// refuses (upper-case or duplicate names) and what SPDY/3 forbids
    /// (empty names, trailing bytes).
    fn from_block(block: &[u8]) -> Result<Self> {
        let mut rest = block;
        let count = take_u32(&mut rest)? as usize;
        // Each pair takes at least 8 bytes: never trust the count for an
        // allocation.
        if count > rest.len() / 8 {
            return Err(Error::InvalidHeaderBlock {
                reason: "pair count larger than the block",
            });
        }
        let mut headers = Headers {
            pairs: Vec::with_capacity(count),
        };
        for _ in 0..count {
            let name = take_bytes(&mut rest)?;
            let value = take_bytes(&mut rest)?;
            let lossy = || String::from_utf8_lossy(name).into_owned();
            let bad = |reason| Error::InvalidHeader {
                name: lossy(),
                reason,
            };
            if name.is_empty() {
                return Err(bad("empty name"));
            }
            if name.iter().any(|b| b.is_ascii_uppercase() || *b == 0) {
                return Err(bad("names must be lower case and free of NUL"));
            }
            let name = std::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
            let value = std::str::from_utf8(value).map_err(|_| bad("value is not UTF-8"))?;
            if headers.pairs.iter().any(|(n, _)| n == name) {
                return Err(bad("duplicate name"));
            }
            headers.pairs.push((name.to_owned(), value.to_owned()));
        }
        if !rest.is_empty() {
            return Err(Error::InvalidHeaderBlock {
                reason: "bytes after the last pair",
            });
        }
        Ok(headers)
    }
}

fn push_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let len = u32::try_from(len).map_err(|_| Error::Unencodable {
        kind: "header block",
        reason: "a length above 32 bits",
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn take_u32(rest: &mut &[u8]) -> Result<u32> {
    let Some((word, tail)) = rest.split_first_chunk::<4>() else {
        return Err(Error::InvalidHeaderBlock {
            reason: "truncated length",
        });
    };
    *rest = tail;
    Ok(u32::from_be_bytes(*word))
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = take_u32(rest)? as usize;
    if len > rest.len() {
        return Err(Error::InvalidHeaderBlock {
            reason: "truncated name or value",
        });
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Ok(bytes)
}

/// The compression context of the header blocks one side writes.
pub struct HeaderEncoder {
    zlib: Compress,
}

impl std::fmt::Debug for HeaderEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderEncoder")
            .field("total_in", &self.zlib.total_in())
            .finish()
    }
}

impl HeaderEncoder {
    /// A fresh context, preset with the SPDY/3 dictionary.
    pub fn new() -> Result<Self> {
        // Go's framer compresses at the best level; any level decodes alike.
        let mut zlib = Compress::new(Compression::best(), true);
        zlib.set_dictionary(&DICTIONARY).map_err(Error::Compress)?;
        Ok(Self { zlib })
    }

    /// Compresses `headers` as the next block of this context, appending
    /// it to `out`.
    pub fn encode(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<()> {
        let block = headers.to_block()?;
        let start = self.zlib.total_in();
        loop {
            out.reserve(block.len() / 2 + 64);
            let consumed = usize::try_from(self.zlib.total_in() - start)
                .expect("consumed input fits the block's usize length");
            self.zlib
                .compress_vec(&block[consumed..], out, FlushCompress::Sync)
                .map_err(Error::Compress)?;
            let consumed = usize::try_from(self.zlib.total_in() - start)
                .expect("consumed input fits the block's usize length");
            // Done once all input is in and the flush left spare room.
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// The decompression context of the header blocks one side reads.
pub struct HeaderDecoder {
    zlib: Decompress,
    max: usize,
}

impl std::fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecoder")
            .field("total_in", &self.zlib.total_in())
            .field("max", &self.max)
            .finish()
    }
}

impl HeaderDecoder {
    /// A fresh context whose blocks may decompress to at most `max` bytes
    /// each.
    pub fn new(max: usize) -> Self {
        Self {
            zlib: Decompress::new(true),
            max,
        }
    }

    /// Decompresses and parses the next block of this context. After an
    /// error the context is out of step with the peer's: the connection
    /// must end.
    pub fn decode(&mut self, compressed: &[u8]) -> Result<Headers> {
        // One byte past the cap tells a block at the cap from one above it.
        let limit = self.max.saturating_add(1);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).max(64).min(limit));
        let start = self.zlib.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() > self.max {
                    return Err(Error::HeaderBlockTooLarge { max: self.max });
                }
                out.reserve_exact(out.len().max(64).min(limit - out.len()));
            }
            let consumed = usize::try_from(self.zlib.total_in() - start)
                .expect("consumed input fits the frame's usize length");
            let before = (self.zlib.total_in(), self.zlib.total_out());
            match self
                .zlib
                .decompress_vec(&compressed[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(&DICTIONARY)
                        .map_err(Error::Decompress)?;
                    continue;
                }
                Err(e) => return Err(Error::Decompress(e)),
            }
            if out.len() > self.max {
                return Err(Error::HeaderBlockTooLarge { max: self.max });
            }
            let consumed = usize::try_from(self.zlib.total_in() - start)
                .expect("consumed input fits the frame's usize length");
            if consumed == compressed.len() && out.len() < out.capacity() {
                break;
            }
            if before == (self.zlib.total_in(), self.zlib.total_out()) && out.len() < out.capacity()
            {
                return Err(Error::InvalidHeaderBlock {
                    reason: "compressed block stops short",
                });
            }
        }
        Headers::from_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in pairs {
            h.insert(n, v).expect("valid header");
        }
        h
    }

    #[test]
    fn blocks_round_trip_on_one_context_each_way() {
        let mut enc = HeaderEncoder::new().expect("encoder");
        let mut dec = HeaderDecoder::new(DEFAULT_MAX_HEADER_BLOCK);
        let blocks = [
            headers(&[("streamtype", "error")]),
            headers(&[
                ("streamtype", "stdout"),
                ("port", "8080"),
                ("requestid", "0"),
            ]),
            headers(&[]),
            headers(&[("streamtype", "error")]),
            headers(&[("x", &"v".repeat(100_000))]),
        ];
        let mut sizes = Vec::new();
        for block in &blocks {
            let mut wire = Vec::new();
            enc.encode(block, &mut wire).expect("encode");
            sizes.push(wire.len());
            assert_eq!(&dec.decode(&wire).expect("decode"), block);
        }
        // The repeated block compresses against the history of the first.
        assert!(sizes[3] < sizes[0], "sizes {sizes:?}");
    }

    #[test]
    fn names_are_lowered_and_values_joined() {
        let h = headers(&[("StreamType", "a"), ("streamtype", "b")]);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("STREAMTYPE"), Some("a"));
        assert_eq!(h.values("streamtype").collect::<Vec<_>>(), ["a", "b"]);
        assert!(Headers::new().insert("", "x").is_err());
    }

    #[test]
    fn a_block_compressed_by_go_decodes() {
        // moby/spdystream v0.5.0's Framer (compress/zlib, best level,
        // SPDY/3 dictionary) writing {"streamtype": "error"} as the first
        // block of a connection.
        let go: &[u8] = &[
            0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x62, 0x60, 0x60, 0x60, 0x04, 0xa7, 0xb3, 0x92,
            0xa2, 0xd4, 0xc4, 0x5c, 0x68, 0x51, 0xc2, 0x9a, 0x0a, 0x0a, 0x68, 0x00, 0x00, 0x00,
            0x00, 0xff, 0xff,
        ];
        let mut dec = HeaderDecoder::new(DEFAULT_MAX_HEADER_BLOCK);
        let got = dec.decode(go).expect("decode go block");
        assert_eq!(got, headers(&[("streamtype", "error")]));
    }

    #[test]
    fn a_zip_bomb_is_refused() {
        let mut enc = HeaderEncoder::new().expect("encoder");
        let mut wire = Vec::new();
        enc.encode(&headers(&[("x", &"a".repeat(1 << 20))]), &mut wire)
            .expect("encode");
        assert!(wire.len() < 8 * 1024, "{} bytes", wire.len());
        for max in [0, 1, 63, 64, 65, 64 * 1024] {
            let mut dec = HeaderDecoder::new(max);
            assert!(matches!(
                dec.decode(&wire),
                Err(Error::HeaderBlockTooLarge { max: m }) if m == max
            ));
        }
    }

    #[test]
    fn garbage_and_bad_blocks_are_refused() {
        let mut dec = HeaderDecoder::new(DEFAULT_MAX_HEADER_BLOCK);
        assert!(matches!(
            dec.decode(b"not zlib at all"),
            Err(Error::Decompress(_))
        ));
        let bad = |block: &[u8]| Headers::from_block(block).expect_err("refused");
        assert!(matches!(
            bad(&[0, 0, 0, 1]),
            Error::InvalidHeaderBlock { .. }
        ));
        assert!(matches!(
            bad(&[0xff, 0xff, 0xff, 0xff, 0, 0]),
            Error::InvalidHeaderBlock { .. }
        ));
        let pair = |n: &[u8]| {
            let mut b = vec![0, 0, 0, 1];
            b.extend_from_slice(&(n.len() as u32).to_be_bytes());
            b.extend_from_slice(n);
            b.extend_from_slice(&[0, 0, 0, 1, b'v']);
            b
        };
        assert!(matches!(bad(&pair(b"Upper")), Error::InvalidHeader { .. }));
        assert!(matches!(bad(&pair(b"")), Error::InvalidHeader { .. }));
        let mut trailing = pair(b"ok");
        trailing.push(0);
        assert!(matches!(bad(&trailing), Error::InvalidHeaderBlock { .. }));
        let mut dup = pair(b"ok");
        dup[3] = 2;
        dup.extend_from_slice(&[0, 0, 0, 2, b'o', b'k', 0, 0, 0, 0]);
        assert!(matches!(bad(&dup), Error::InvalidHeader { .. }));
    }
}
