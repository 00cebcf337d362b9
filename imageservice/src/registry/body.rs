//! Blob bodies: streamed, size-checked, with a no-progress timeout, the
//! session's deadline and its cancellation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RegistryError;
use crate::digest::Digest;

/// The limits every network wait of a session honours, and the count of
/// the body bytes it received.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub deadline: Option<Instant>,
    pub cancel: CancellationToken,
    /// Body bytes received (manifests and blobs); shared by the clones.
    pub received: Arc<AtomicU64>,
}

/// What a timeout means for the error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Waiting for response headers.
    Response,
    /// Waiting for the next body chunk.
    Body,
}

impl Guard {
    /// Counts `bytes` of a body received.
    pub(crate) fn received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Runs `fut`, failing on cancellation, at the deadline, or after `limit`.
    pub(crate) async fn run<T>(
        &self,
        url: &str,
        limit: Duration,
        wait: Wait,
        fut: impl Future<Output = T>,
    ) -> Result<T, RegistryError> {
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(RegistryError::Cancelled { url: url.to_owned() }),
            () = deadline => Err(RegistryError::DeadlineExceeded { url: url.to_owned() }),
            () = tokio::time::sleep(limit) => Err(match wait {
                Wait::Response => RegistryError::Timeout { url: url.to_owned(), after: limit },
                Wait::Body => RegistryError::Stalled { url: url.to_owned(), after: limit },
            }),
            out = fut => Ok(out),
        }
    }
}

/// A blob being downloaded. Read it with [`Blob::chunk`] until `None`; the
/// bytes are not verified here (the content store's writer verifies them),
/// but the length is: more or fewer bytes than the descriptor's size fail.
#[derive(Debug)]
pub struct Blob {
    response: reqwest::Response,
    url: String,
    digest: Digest,
    size: u64,
    received: u64,
    stall: Duration,
    guard: Guard,
}

impl Blob {
    pub(crate) fn new(
        response: reqwest::Response,
        url: String,
        digest: Digest,
        size: u64,
        stall: Duration,
        guard: Guard,
    ) -> Blob {
        Blob {
            response,
            url,
            digest,
            size,
            received: 0,
            stall,
            guard,
        }
    }

    /// The expected size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The URL it comes from (before redirects; no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next chunk, `None` at the end. Fails with
    /// [`RegistryError::Stalled`] when no byte arrives for the client's
    /// `stall_timeout`.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let next = self
            .guard
            .run(&self.url, self.stall, Wait::Body, self.response.chunk())
            .await?;
        match next {
            Ok(Some(bytes)) => {
                self.guard.received(bytes.len());
                self.received += bytes.len() as u64;
                if self.received > self.size {
                    return Err(self.size_error("more"));
                }
                Ok(Some(bytes))
            }
            Ok(None) if self.received < self.size => {
                Err(self.size_error(&format!("only {}", self.received)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(RegistryError::Http {
                method: "GET",
                url: self.url.clone(),
                source: e.without_url(),
            }),
        }
    }

    fn size_error(&self, actual: &str) -> RegistryError {
        RegistryError::Size {
            url: self.url.clone(),
            digest: self.digest.clone(),
            expected: self.size,
            actual: actual.to_owned(),
        }
    }
}
