//! The CRI container log record format, the shim's one library module:
//! the shim binary writes container logs with it (`io/cri_log.rs`), and the
//! fuzz target `shim/fuzz` (`cri_log`) drives it.
//!
//! Format, one record a line (the kubelet's `parseCRILog` reads it):
//! `<timestamp> <stdout|stderr> <P|F> <content>\n`. The timestamp is UTC
//! RFC 3339 with nine fractional digits (`2006-01-02T15:04:05.000000000Z`, a
//! fixed-width form of Go's `RFC3339Nano`). A line of the container's output
//! becomes one `F` (full) record without its `\n`. A line longer than
//! [`MAX_LINE`] bytes is cut into `P` (partial) records of exactly
//! [`MAX_LINE`] bytes and a last `F` record, as containerd does; output that
//! ends without a newline is written as a `P` record at EOF.

use std::io;
use std::time::SystemTime;

use time::OffsetDateTime;

/// The longest content of one record, as containerd's
/// `maxContainerLogLineSize`.
pub const MAX_LINE: usize = 16 * 1024;

/// The stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

/// Whether a record ends a line of output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Partial,
    Full,
}

impl Tag {
    fn as_byte(self) -> u8 {
        match self {
            Tag::Partial => b'P',
            Tag::Full => b'F',
        }
    }
}

/// Cuts a byte stream into records: lines without their `\n`, at most
/// `max` bytes each. Bytes of an unfinished line wait for the next
/// [`feed`](Self::feed) unless they already exceed `max`.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        assert!(max > 0, "a record must hold at least one byte");
        Self {
            pending: Vec::new(),
            max,
        }
    }

    /// Adds `data` and emits every record it completes.
    pub fn feed<E>(&mut self, data: &[u8], emit: &mut E) -> io::Result<()>
    where
        E: FnMut(Tag, &[u8]) -> io::Result<()>,
    {
        self.pending.extend_from_slice(data);
        let max = self.max;
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    let mut line = &rest[..newline];
                    while line.len() > max {
                        emit(Tag::Partial, &line[..max])?;
                        line = &line[max..];
                    }
                    emit(Tag::Full, line)?;
                    start += newline + 1;
                }
                None => {
                    // Keep up to `max` bytes: if a newline follows, they
                    // make one full record, as in containerd.
                    let mut offset = 0;
                    while rest.len() - offset > max {
                        emit(Tag::Partial, &rest[offset..offset + max])?;
                        offset += max;
                    }
                    start += offset;
                    break;
                }
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Emits what is left at EOF as a partial record.
    pub fn finish<E>(&mut self, emit: &mut E) -> io::Result<()>
    where
        E: FnMut(Tag, &[u8]) -> io::Result<()>,
    {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.pending);
        emit(Tag::Partial, &rest)
    }
}

/// One record as written to the log: `<timestamp> <stream> <tag> <content>\n`.
pub fn record_line(at: SystemTime, stream: Stream, tag: Tag, content: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(content.len() + 48);
    line.extend_from_slice(rfc3339_nano(at).as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.push(b' ');
    line.push(tag.as_byte());
    line.push(b' ');
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

/// Formats `t` as UTC RFC 3339 with nine fractional digits.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}
