//! CRI container log files: the records of [`berth_shim::cri_record`]
//! (format, line splitting) appended to the file the kubelet names.
//!
//! Both streams of a container share one [`CriLog`]: each record is one
//! `write` under a lock, so records never interleave. [`CriLog::reopen`]
//! serves CRI `ReopenContainerLog` after the kubelet rotated the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

pub use berth_shim::cri_record::{rfc3339_nano, LineSplitter, Stream, Tag, MAX_LINE};

use crate::error::{Error, Result};

/// A CRI log file shared by a container's streams.
#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl CriLog {
    /// Opens (creating, mode 0640) `path` for appending. Its directory must
    /// exist: the kubelet makes it.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(open_append(path)?),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again, so records go to a new file after the old
    /// one was renamed away (log rotation).
    pub fn reopen(&self) -> Result<()> {
        let file = open_append(&self.path)?;
        *self.file.lock().expect("log file lock poisoned") = file;
        Ok(())
    }

    /// Appends one record stamped with the current time.
    pub fn write_record(&self, stream: Stream, tag: Tag, content: &[u8]) -> io::Result<()> {
        let line = berth_shim::cri_record::record_line(SystemTime::now(), stream, tag, content);
        self.file
            .lock()
            .expect("log file lock poisoned")
            .write_all(&line)
    }
}

/// Opens the log for appending (0640 when created, as containerd's). The
/// path comes from the pod spec: a symlink is not followed, and anything
/// but a regular file is refused, opened non-blocking so that a FIFO fails
/// at once instead of hanging the create.
fn open_append(path: &Path) -> Result<File> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(Error::InvalidArgument(format!(
            "container log {} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Copies `src` into `log` as `stream` until EOF. A pty master reports EIO
/// once the container closed its side: that is EOF too. A failed write is
/// reported once and the copy goes on, so a full disk never blocks the
/// container on a full pipe.
pub fn copy_to_log(mut src: impl Read, log: &CriLog, stream: Stream) -> io::Result<()> {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut write_failed = false;
    let mut emit = |tag: Tag, content: &[u8]| {
        if let Err(e) = log.write_record(stream, tag, content) {
            if !write_failed {
                tracing::warn!(path = %log.path().display(), "cannot write the container log: {e}");
                write_failed = true;
            }
        }
        Ok(())
    };
    let mut buf = vec![0; 32 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(e),
        };
        splitter.feed(&buf[..n], &mut emit)?;
    }
    splitter.finish(&mut emit)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn only_regular_files_are_opened_and_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        // A reader, so that the non-blocking open itself succeeds.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("reader");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").expect("write");
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let unread = dir.path().join("unread-fifo.log");
        nix::unistd::mkfifo(&unread, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        for path in [&fifo, &link, &unread, &dir.path().to_owned()] {
            let started = std::time::Instant::now();
            assert!(CriLog::open(path).is_err(), "{}", path.display());
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        let log = dir.path().join("ok.log");
        CriLog::open(&log).expect("a regular file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    fn split(max: usize, feeds: &[&[u8]], eof: bool) -> Vec<(Tag, Vec<u8>)> {
        let mut out = Vec::new();
        let mut emit = |tag: Tag, content: &[u8]| {
            out.push((tag, content.to_vec()));
            Ok(())
        };
        let mut splitter = LineSplitter::new(max);
        for data in feeds {
            splitter.feed(data, &mut emit).expect("emit never fails");
        }
        if eof {
            splitter.finish(&mut emit).expect("emit never fails");
        }
        out
    }

    fn full(s: &str) -> (Tag, Vec<u8>) {
        (Tag::Full, s.as_bytes().to_vec())
    }

    fn partial(s: &str) -> (Tag, Vec<u8>) {
        (Tag::Partial, s.as_bytes().to_vec())
    }

    #[test]
    fn splits_lines() {
        // (name, max, reads, EOF, records)
        type Case<'a> = (&'a str, usize, &'a [&'a [u8]], bool, Vec<(Tag, Vec<u8>)>);
        let cases: &[Case] = &[
            (
                "two lines",
                8,
                &[b"hello\nerr\n"],
                true,
                vec![full("hello"), full("err")],
            ),
            ("empty line", 8, &[b"\n"], true, vec![full("")]),
            (
                "line across reads",
                8,
                &[b"hel", b"lo\nwor", b"ld\n"],
                true,
                vec![full("hello"), full("world")],
            ),
            (
                "no newline at EOF",
                8,
                &[b"abc"],
                true,
                vec![partial("abc")],
            ),
            ("no newline, no EOF yet", 8, &[b"abc"], false, vec![]),
            (
                "long line",
                4,
                &[b"abcdefghij\n"],
                true,
                vec![partial("abcd"), partial("efgh"), full("ij")],
            ),
            ("exactly max", 4, &[b"abcd\n"], true, vec![full("abcd")]),
            (
                "max bytes, newline in the next read",
                4,
                &[b"abcd", b"\n"],
                true,
                vec![full("abcd")],
            ),
            (
                "long line across reads",
                4,
                &[b"abc", b"defgh", b"ij\nk"],
                true,
                vec![partial("abcd"), partial("efgh"), full("ij"), partial("k")],
            ),
            (
                "carriage return kept",
                8,
                &[b"a\r\n"],
                true,
                vec![full("a\r")],
            ),
        ];
        for (name, max, feeds, eof, want) in cases {
            assert_eq!(&split(*max, feeds, *eof), want, "{name}");
        }
    }

    #[test]
    fn splits_40k_line_at_16k() {
        let line = vec![b'x'; 40 * 1024];
        let mut data = line.clone();
        data.push(b'\n');
        // Feed in odd-sized reads, as a pipe may deliver them.
        let feeds: Vec<&[u8]> = data.chunks(5000).collect();
        let got = split(MAX_LINE, &feeds, true);
        let shape: Vec<(Tag, usize)> = got.iter().map(|(t, c)| (*t, c.len())).collect();
        assert_eq!(
            shape,
            vec![
                (Tag::Partial, MAX_LINE),
                (Tag::Partial, MAX_LINE),
                (Tag::Full, 40 * 1024 - 2 * MAX_LINE)
            ]
        );
        assert_eq!(got.concat_content(), line);
    }

    trait Concat {
        fn concat_content(&self) -> Vec<u8>;
    }

    impl Concat for Vec<(Tag, Vec<u8>)> {
        fn concat_content(&self) -> Vec<u8> {
            self.iter().flat_map(|(_, c)| c.iter().copied()).collect()
        }
    }

    #[test]
    fn formats_timestamps() {
        let cases = [
            (Duration::ZERO, "1970-01-01T00:00:00.000000000Z"),
            (Duration::new(1, 5), "1970-01-01T00:00:01.000000005Z"),
            (
                Duration::new(1_700_000_000, 123_456_789),
                "2023-11-14T22:13:20.123456789Z",
            ),
        ];
        for (since_epoch, want) in cases {
            assert_eq!(rfc3339_nano(SystemTime::UNIX_EPOCH + since_epoch), want);
        }
    }

    #[test]
    fn writes_records_and_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.log");
        let log = CriLog::open(&path).expect("open log");
        copy_to_log(&b"hello\nno newline"[..], &log, Stream::Stdout).expect("copy");
        log.write_record(Stream::Stderr, Tag::Full, b"err")
            .expect("write");

        let text = std::fs::read_to_string(&path).expect("read log");
        let records: Vec<(&str, &str, &str, &str)> = text
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let ts = f.next().expect("timestamp");
                OffsetDateTime::parse(ts, &Rfc3339).expect("RFC 3339 timestamp");
                assert_eq!(ts.len(), "1970-01-01T00:00:00.000000000Z".len(), "{ts}");
                (
                    ts,
                    f.next().expect("stream"),
                    f.next().expect("tag"),
                    f.next().expect("content"),
                )
            })
            .collect();
        let fields: Vec<_> = records.iter().map(|r| (r.1, r.2, r.3)).collect();
        assert_eq!(
            fields,
            vec![
                ("stdout", "F", "hello"),
                ("stdout", "P", "no newline"),
                ("stderr", "F", "err")
            ]
        );
        assert!(text.ends_with('\n'));

        let rotated = dir.path().join("c.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log.reopen().expect("reopen");
        log.write_record(Stream::Stdout, Tag::Full, b"after")
            .expect("write");
        let new = std::fs::read_to_string(&path).expect("read new log");
        assert!(new.ends_with(" stdout F after\n"), "{new}");
        assert_eq!(std::fs::read_to_string(&rotated).expect("old"), text);
    }

    #[test]
    fn open_names_the_path() {
        let err = CriLog::open(Path::new("/nonexistent-dir/c.log")).expect_err("no dir");
        assert!(err.to_string().contains("/nonexistent-dir/c.log"), "{err}");
    }
}
