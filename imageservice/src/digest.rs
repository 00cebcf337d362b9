//! Content digests (`sha256:<hex>`), as in the OCI image spec and go-digest.
//!
//! Accepted algorithms are the ones go-digest registers: sha256 (64 hex
//! digits), sha384 (96) and sha512 (128). The hex part is lower case, as
//! go-digest's `Validate` demands; anything else is an [`InvalidDigest`].

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A digest algorithm berth can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `sha256`, the algorithm of every registry in practice.
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings and in the store's directory layout.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest such as `sha256:6e9f…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// A string that is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {value:?}: {reason}")]
pub struct InvalidDigest {
    /// The rejected text (never a secret: digests are public).
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl Digest {
    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        let mut hasher = Hasher::new(Algorithm::Sha256);
        hasher.update(data);
        hasher.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lower-case hex encoding of the hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidDigest {
            value: value.to_owned(),
            reason,
        };
        let (algorithm, hex) = value
            .split_once(':')
            .ok_or_else(|| invalid("missing ':' between algorithm and hex"))?;
        if !valid_algorithm_grammar(algorithm) {
            return Err(invalid("malformed algorithm"));
        }
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            _ => return Err(invalid("unsupported digest algorithm")),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(invalid("wrong length of the hex part"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("the hex part must be lower-case hexadecimal"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

/// distribution/reference: `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`.
fn valid_algorithm_grammar(algorithm: &str) -> bool {
    !algorithm.is_empty()
        && algorithm.split(['-', '_', '+', '.']).all(|component| {
            let mut bytes = component.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                && bytes.all(|b| b.is_ascii_alphanumeric())
        })
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hashing with any supported algorithm.
#[derive(Clone)]
pub(crate) struct Hasher(HasherInner);

#[derive(Clone)]
enum HasherInner {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match self.0 {
            HasherInner::Sha256(_) => Algorithm::Sha256,
            HasherInner::Sha384(_) => Algorithm::Sha384,
            HasherInner::Sha512(_) => Algorithm::Sha512,
        };
        f.debug_tuple("Hasher").field(&algorithm).finish()
    }
}

impl Hasher {
    /// A hasher for `algorithm`.
    pub(crate) fn new(algorithm: Algorithm) -> Hasher {
        Hasher(match algorithm {
            Algorithm::Sha256 => HasherInner::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => HasherInner::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => HasherInner::Sha512(sha2::Sha512::new()),
        })
    }

    /// Feeds `data`.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha384(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    pub(crate) fn finish(self) -> Digest {
        let (algorithm, hex) = match self.0 {
            HasherInner::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            HasherInner::Sha384(h) => (Algorithm::Sha384, hex::encode(h.finalize())),
            HasherInner::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays() {
        let digest: Digest = EMPTY.parse().expect("valid digest");
        assert_eq!(digest.algorithm(), Algorithm::Sha256);
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(Digest::sha256(b""), digest);
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("", "missing ':'"),
            ("sha256", "missing ':'"),
            (":abc", "malformed algorithm"),
            ("sha256+:abc", "malformed algorithm"),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported"),
            ("sha256:abc", "wrong length"),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "lower-case",
            ),
            (
                "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "lower-case",
            ),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Digest>().expect_err(input);
            assert!(err.to_string().contains(reason), "{input}: {err}");
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn other_algorithms() {
        let mut hasher = Hasher::new(Algorithm::Sha512);
        hasher.update(b"abc");
        let digest = hasher.finish();
        assert_eq!(digest.hex().len(), 128);
        assert!(digest.hex().starts_with("ddaf35a193617aba"));
        assert_eq!(digest.to_string().parse::<Digest>(), Ok(digest));
        let mut hasher = Hasher::new(Algorithm::Sha384);
        hasher.update(b"abc");
        assert!(hasher.finish().hex().starts_with("cb00753f45a35e8b"));
    }

    #[test]
    fn serde_round_trip() {
        let json = format!("\"{EMPTY}\"");
        let digest: Digest = serde_json::from_str(&json).expect("valid");
        assert_eq!(serde_json::to_string(&digest).expect("serialize"), json);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }
}
