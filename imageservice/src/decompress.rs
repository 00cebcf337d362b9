//! Layer decompression and diff ID verification, for streaming a layer into
//! the snapshotter while it downloads.
//!
//! Synchronous `Read` on purpose: decompression is CPU work and the tar
//! unpacker is synchronous, so both run on a blocking thread; feed them from
//! async code with `tokio_util::io::SyncIoBridge` or a channel.
//!
//! The media type must be a layer type berth knows (so encrypted or foreign
//! formats fail clearly), but the compression is taken from the data's magic
//! bytes, as containerd's `compression.DecompressStream` does: Docker's
//! `tar.gzip` layers are sometimes plain tar.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::{media_type, ManifestError};

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or
    /// [`ManifestError::UnsupportedMediaType`]. `digest` names the layer.
    pub(crate) fn from_media_type(mt: &str, digest: &Digest) -> Result<Compression, ManifestError> {
        match mt {
            media_type::OCI_LAYER | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Ok(Compression::None)
            }
            media_type::OCI_LAYER_GZIP
            | media_type::DOCKER_LAYER
            | media_type::DOCKER_FOREIGN_LAYER
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                Ok(Compression::Gzip)
            }
            media_type::OCI_LAYER_ZSTD
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            _ => Err(ManifestError::UnsupportedMediaType {
                what: "layer",
                digest: digest.clone(),
                media_type: mt.to_owned(),
                hint: "",
            }),
        }
    }

    fn sniff(prefix: &[u8]) -> Compression {
        match prefix {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            // zstd skippable frame: 0x184D2A5? little-endian.
            [m, 0x2a, 0x4d, 0x18, ..] if m & 0xf0 == 0x50 => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// A decompressing reader over a layer blob.
pub(crate) type LayerReader = Box<dyn Read + Send>;

/// Checks that `mt` is a layer media type (see `Compression::from_media_type`;
/// `digest` names the layer in errors), then returns a reader of the
/// uncompressed tar, detecting gzip, zstd or plain tar from the first bytes
/// of `reader`. Reading it fails with `InvalidData` on corrupt input.
pub fn decompress<R: Read + Send + 'static>(
    mt: &str,
    digest: &Digest,
    mut reader: R,
) -> Result<LayerReader, crate::Error> {
    Compression::from_media_type(mt, digest)?;
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(crate::Error::Layer {
                    digest: digest.clone(),
                    source,
                })
            }
        }
    }
    let head = io::Cursor::new(prefix[..filled].to_vec());
    let whole = head.chain(reader);
    Ok(match Compression::sniff(&prefix[..filled]) {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(whole).map_err(|source| {
                crate::Error::Layer {
                    digest: digest.clone(),
                    source,
                }
            })?)
        }
    })
}

/// Hashes what is read through it, to check a layer's diff ID (sha256, the
/// only algorithm image builders use for diff IDs).
#[derive(Debug)]
pub struct DiffIdReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> DiffIdReader<R> {
    /// Wraps the uncompressed tar stream.
    pub fn new(inner: R) -> DiffIdReader<R> {
        DiffIdReader {
            inner,
            hasher: Hasher::new(Algorithm::Sha256),
        }
    }

    /// Reads the rest of the stream (a tar reader stops at the end-of-archive
    /// marker and leaves padding unread) and returns the digest of all of it.
    pub fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hasher.finish())
    }

    /// [`finish`](Self::finish), then compares with the config's diff ID.
    pub fn verify(self, expected: &Digest) -> Result<(), crate::Error> {
        let actual = self.finish().map_err(|source| crate::Error::Layer {
            digest: expected.clone(),
            source,
        })?;
        if &actual == expected {
            Ok(())
        } else {
            Err(crate::Error::DiffIdMismatch {
                expected: expected.clone(),
                actual,
            })
        }
    }
}

impl<R: Read> Read for DiffIdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A bounded pipe from async code (the download) to a blocking reader (the
/// decompressor and unpacker), for streaming a layer while it downloads:
/// each chunk goes to [`crate::content::Writer::write`] and to [`PipeSender::send`].
/// Holds at most `chunks` chunks, so a slow unpacker slows the download.
pub(crate) fn pipe(chunks: usize) -> (PipeSender, PipeReader) {
    let (tx, rx) = tokio::sync::mpsc::channel(chunks.max(1));
    let finished = Arc::new(AtomicBool::new(false));
    (
        PipeSender {
            tx,
            finished: finished.clone(),
        },
        PipeReader {
            rx,
            current: Bytes::new(),
            finished,
        },
    )
}

/// The async end of a [`pipe`].
#[derive(Debug)]
pub(crate) struct PipeSender {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    finished: Arc<AtomicBool>,
}

impl PipeSender {
    /// Sends a chunk; `false` when the reader is gone (it failed or stopped).
    pub(crate) async fn send(&self, chunk: Bytes) -> bool {
        self.tx.send(Ok(chunk)).await.is_ok()
    }

    /// Makes the reader fail with `error` (the download failed).
    pub(crate) async fn fail(self, error: io::Error) {
        let _ = self.tx.send(Err(error)).await;
    }

    /// Ends the stream cleanly: the reader sees end of file. Dropping the
    /// sender without `finish` makes the reader fail instead, so a broken
    /// download never looks like a complete layer.
    pub(crate) fn finish(self) {
        self.finished.store(true, Ordering::Release);
    }
}

/// The blocking end of a [`pipe`]: `Read` on a blocking thread only.
#[derive(Debug)]
pub(crate) struct PipeReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    finished: Arc<AtomicBool>,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None if self.finished.load(Ordering::Acquire) => return Ok(0),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the layer download stopped before its end",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_like() -> Vec<u8> {
        (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn read_all(mut r: LayerReader) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("decompress");
        out
    }

    #[test]
    fn decompresses_by_magic() {
        let data = tar_like();
        let d = Digest::sha256(b"layer");
        let gz = gzip(&data);
        let zst = zstd::encode_all(&data[..], 1).expect("zstd");
        let mut two_members = gzip(&data[..100]);
        two_members.extend(gzip(&data[100..]));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (media_type::OCI_LAYER_GZIP, gz.clone()),
            (media_type::DOCKER_LAYER, gz),
            (media_type::DOCKER_LAYER, data.clone()), // "gzip" that is plain tar
            (media_type::OCI_LAYER, data.clone()),
            (media_type::OCI_LAYER_ZSTD, zst.clone()),
            (media_type::OCI_LAYER_GZIP, zst),
            (media_type::OCI_LAYER_GZIP, two_members),
        ];
        for (mt, blob) in cases {
            let out = read_all(decompress(mt, &d, io::Cursor::new(blob)).expect(mt));
            assert_eq!(out, data, "{mt}");
        }
        assert!(
            read_all(decompress(media_type::OCI_LAYER, &d, io::empty()).expect("empty")).is_empty()
        );
    }

    #[test]
    fn rejects_unknown_types_and_corrupt_data() {
        let d = Digest::sha256(b"layer");
        let err = decompress(
            "application/vnd.oci.image.layer.v1.tar+encrypted",
            &d,
            io::empty(),
        )
        .err()
        .expect("unsupported");
        assert!(err.to_string().contains("+encrypted"), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);

        let mut corrupt = gzip(&tar_like());
        let len = corrupt.len();
        corrupt[len / 2] ^= 0xff;
        let mut r =
            decompress(media_type::OCI_LAYER_GZIP, &d, io::Cursor::new(corrupt)).expect("ok");
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn diff_id_covers_unread_tail() {
        let data = tar_like();
        let expected = Digest::sha256(&data);
        let mut reader = DiffIdReader::new(io::Cursor::new(data));
        let mut head = [0u8; 100];
        reader.read_exact(&mut head).expect("read");
        reader
            .verify(&expected)
            .expect("same digest after draining the tail");

        let err = DiffIdReader::new(io::Cursor::new(b"other".to_vec()))
            .verify(&expected)
            .expect_err("mismatch");
        assert_eq!(err.kind(), crate::ErrorKind::DataLoss);
        assert!(err.to_string().contains(&expected.to_string()), "{err}");
    }

    #[tokio::test]
    async fn pipe_streams_into_a_blocking_decompressor() {
        let data = tar_like();
        let gz = Bytes::from(gzip(&data));
        let d = Digest::sha256(&gz);
        let (tx, rx) = pipe(2);
        let expected = Digest::sha256(&data);
        let reader = tokio::task::spawn_blocking(move || {
            let tar =
                DiffIdReader::new(decompress(media_type::OCI_LAYER_GZIP, &d, rx).expect("gzip"));
            tar.verify(&expected)
        });
        for chunk in gz.chunks(1000) {
            assert!(tx.send(Bytes::copy_from_slice(chunk)).await);
        }
        tx.finish();
        reader.await.expect("join").expect("diff id");

        // A sender dropped without finish: the reader fails, never a short EOF.
        let (tx, mut rx) = pipe(1);
        assert!(tx.send(Bytes::from_static(b"partial")).await);
        drop(tx);
        let err = tokio::task::spawn_blocking(move || rx.read_to_end(&mut Vec::new()))
            .await
            .expect("join")
            .expect_err("aborted");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (tx, mut rx) = pipe(1);
        tx.fail(io::Error::other("registry stalled")).await;
        let err = tokio::task::spawn_blocking(move || rx.read(&mut [0; 8]))
            .await
            .expect("join");
        assert!(err.expect_err("failed").to_string().contains("stalled"));
    }
}
