//! Single-use tokens: what a streaming URL names.
//!
//! Exec, Attach and PortForward store their validated request under a
//! fresh random token and answer a URL that carries it; the streaming
//! server takes the request out on the first use. A token lives
//! [`TOKEN_TTL`]; an unknown, used or expired one finds nothing (the
//! server answers 404). At most [`MAX_TOKENS`] wait at once, so requests
//! that are never followed cannot grow berthd.

use super::StreamRequest;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a URL stays valid (kubelet's and containerd's minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// The most unused tokens kept at once.
pub const MAX_TOKENS: usize = 1000;

/// The requests waiting for their stream, by token.
#[derive(Debug, Default)]
pub struct Tokens {
    waiting: Mutex<HashMap<String, (Instant, StreamRequest)>>,
}

/// Every token is taken.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_TOKENS} streaming requests wait for their client already; retry later")]
pub struct TooManyTokens;

impl Tokens {
    /// Stores `request` under a new token and returns the token.
    pub fn insert(&self, request: StreamRequest) -> Result<String, TooManyTokens> {
        self.insert_at(request, Instant::now())
    }

    fn insert_at(&self, request: StreamRequest, now: Instant) -> Result<String, TooManyTokens> {
        let mut waiting = self.waiting.lock().expect("token lock");
        waiting.retain(|_, (expires, _)| *expires > now);
        if waiting.len() >= MAX_TOKENS {
            return Err(TooManyTokens);
        }
        let token = crate::sandbox::random_id();
        waiting.insert(token.clone(), (now + TOKEN_TTL, request));
        Ok(token)
    }

    /// Takes the request of `token` out, if it is there and not expired.
    pub fn take(&self, token: &str) -> Option<StreamRequest> {
        self.take_at(token, Instant::now())
    }

    fn take_at(&self, token: &str, now: Instant) -> Option<StreamRequest> {
        let mut waiting = self.waiting.lock().expect("token lock");
        let (expires, request) = waiting.remove(token)?;
        (expires > now).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::cri::v1 as cri;

    fn request(id: &str) -> StreamRequest {
        StreamRequest::PortForward(cri::PortForwardRequest {
            pod_sandbox_id: id.to_owned(),
            port: vec![80],
        })
    }

    #[test]
    fn a_token_is_used_once_and_expires() {
        let tokens = Tokens::default();
        let now = Instant::now();
        let a = tokens.insert_at(request("a"), now).expect("insert");
        let b = tokens.insert_at(request("b"), now).expect("insert");
        assert_ne!(a, b);
        assert!(
            matches!(tokens.take_at(&a, now), Some(StreamRequest::PortForward(r)) if r.pod_sandbox_id == "a")
        );
        assert!(tokens.take_at(&a, now).is_none(), "used");
        assert!(tokens.take_at("nope", now).is_none(), "unknown");
        assert!(tokens.take_at(&b, now + TOKEN_TTL).is_none(), "expired");
    }

    #[test]
    fn waiting_tokens_are_capped_and_expired_ones_make_room() {
        let tokens = Tokens::default();
        let now = Instant::now();
        for _ in 0..MAX_TOKENS {
            tokens.insert_at(request("x"), now).expect("insert");
        }
        assert!(tokens.insert_at(request("x"), now).is_err());
        assert!(tokens.insert_at(request("x"), now + TOKEN_TTL).is_ok());
    }
}
