#![forbid(unsafe_code)]
//! Content digests: parsing per the OCI grammar and verification of streams.
//!
//! Every blob metalor reads is named by a digest that came from untrusted
//! input, so the text is validated before it becomes a file name, and the
//! bytes are hashed and counted before anything trusts them.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

use super::error::OciError;

/// Digests longer than this are refused outright; the longest registered
/// one (sha512) is 135 characters, so this only stops abuse.
const MAX_DIGEST_LEN: usize = 1024;

/// A validated content digest such as `sha256:e3b0…`.
///
/// The text follows the OCI image-spec grammar
/// `algorithm ":" encoded`, where `algorithm` is lowercase alphanumeric
/// components joined by `+ . _ -` and `encoded` is `[a-zA-Z0-9=_-]+`.
/// The registered algorithms are checked more strictly: `sha256` needs 64
/// and `sha512` 128 lowercase hex digits. Other algorithms pass parsing
/// (the grammar allows them) but cannot be verified, which
/// [`Digest::hasher`] reports. Because neither part can contain `/` or
/// start a `..`, a parsed digest is safe to use as `blobs/ALG/ENCODED`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    text: String,
    colon: usize,
}

impl Digest {
    /// Parses and validates `text`; see the type docs for the grammar.
    pub fn parse(text: &str) -> Result<Digest, OciError> {
        let bad = |reason| OciError::InvalidDigest {
            digest: text.to_owned(),
            reason,
        };
        if text.len() > MAX_DIGEST_LEN {
            return Err(bad("longer than 1024 characters"));
        }
        let colon = text.find(':').ok_or_else(|| bad("missing ':'"))?;
        let (algorithm, encoded) = (&text[..colon], &text[colon + 1..]);
        check_algorithm(algorithm).map_err(bad)?;
        check_encoded(encoded).map_err(bad)?;
        check_registered(algorithm, encoded).map_err(bad)?;
        Ok(Digest {
            text: text.to_owned(),
            colon,
        })
    }

    /// Computes the sha256 digest of `bytes`; the algorithm metalor writes.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let text = format!("sha256:{}", hex(&Sha256::digest(bytes)));
        Digest { text, colon: 6 }
    }

    /// The algorithm part, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        &self.text[..self.colon]
    }

    /// The encoded part, e.g. the 64 hex digits of a sha256 digest.
    pub fn hex(&self) -> &str {
        &self.text[self.colon + 1..]
    }

    /// The whole digest as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Returns a fresh hasher for this digest's algorithm, or an error for an
    /// algorithm metalor cannot compute (content that cannot be verified is
    /// never trusted).
    pub fn hasher(&self) -> Result<DigestHasher, OciError> {
        match self.algorithm() {
            "sha256" => Ok(DigestHasher::Sha256(Sha256::new())),
            "sha512" => Ok(DigestHasher::Sha512(Sha512::new())),
            other => Err(OciError::UnsupportedDigestAlgorithm {
                digest: self.clone(),
                algorithm: other.to_owned(),
            }),
        }
    }

    /// Checks `bytes` against this digest and `size` in one go; used for the
    /// small JSON documents that are read whole.
    pub fn verify_bytes(&self, bytes: &[u8], size: u64) -> Result<(), OciError> {
        let found = bytes.len() as u64;
        if found != size {
            return Err(OciError::SizeMismatch {
                digest: self.clone(),
                expected: size,
                found,
            });
        }
        let mut hasher = self.hasher()?;
        hasher.update(bytes);
        self.check_hash(hasher.finish_hex())
    }

    /// Compares a computed hex digest with this one.
    fn check_hash(&self, found_hex: String) -> Result<(), OciError> {
        if found_hex == self.hex() {
            return Ok(());
        }
        Err(OciError::DigestMismatch {
            expected: self.clone(),
            found: format!("{}:{}", self.algorithm(), found_hex),
        })
    }
}

/// `algorithm-component (separator algorithm-component)*` with components
/// `[a-z0-9]+` and separators `[+._-]`.
fn check_algorithm(algorithm: &str) -> Result<(), &'static str> {
    if algorithm.is_empty() {
        return Err("empty algorithm");
    }
    let components_ok = algorithm.split(['+', '.', '_', '-']).all(|c| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    if components_ok {
        Ok(())
    } else {
        Err("algorithm is not lowercase alphanumeric components joined by + . _ -")
    }
}

/// `[a-zA-Z0-9=_-]+`.
fn check_encoded(encoded: &str) -> Result<(), &'static str> {
    if encoded.is_empty() {
        return Err("empty encoded part");
    }
    let ok = encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err("encoded part has characters outside [a-zA-Z0-9=_-]")
    }
}

/// The stricter rules of the registered algorithms.
fn check_registered(algorithm: &str, encoded: &str) -> Result<(), &'static str> {
    let (len, reason) = match algorithm {
        "sha256" => (64, "sha256 needs 64 lowercase hex digits"),
        "sha512" => (128, "sha512 needs 128 lowercase hex digits"),
        _ => return Ok(()),
    };
    let lower_hex = encoded
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if encoded.len() == len && lower_hex {
        Ok(())
    } else {
        Err(reason)
    }
}

/// Lowercase hex of a hash output.
fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl FromStr for Digest {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Digest, OciError> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A running hash for one of the algorithms metalor can verify.
///
/// An enum rather than a boxed trait object so that the per-chunk update in
/// the unpack hot path is a direct call.
#[derive(Clone)]
pub enum DigestHasher {
    /// SHA-256, the algorithm nearly every image uses.
    Sha256(Sha256),
    /// SHA-512, registered in the image spec and occasionally used.
    Sha512(Sha512),
}

impl DigestHasher {
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(bytes),
            DigestHasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Ends the hash and returns it as lowercase hex.
    pub fn finish_hex(self) -> String {
        match self {
            DigestHasher::Sha256(h) => hex(&h.finalize()),
            DigestHasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

impl fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestHasher::Sha256(_) => f.write_str("DigestHasher::Sha256"),
            DigestHasher::Sha512(_) => f.write_str("DigestHasher::Sha512"),
        }
    }
}

/// A reader that hashes and counts what passes through it and checks the
/// total against a descriptor's digest and size.
///
/// It is the streaming half of "verify before commit" for a caller that
/// reads a blob once and acts only on a yes, as
/// [`LayoutWriter::has_verified_blob`](super::LayoutWriter::has_verified_blob)
/// does before a pull trusts a blob already in the layout. The unpacker
/// does not read layers through it: its pipeline hashes and counts each
/// blob on the decoder thread, next to the decompression, and checks the
/// diff_id on a thread of its own (see `crate::unpack`).
///
/// The check happens when the inner reader reports end of file (the final
/// `read` then fails instead of returning 0) and in
/// [`DigestVerifier::finish`], which also drains unread trailing bytes so
/// that nothing after the part a consumer cared about goes unchecked.
/// Reading stops with an error as soon as the stream passes the expected
/// size.
///
/// Errors from `read` are `io::Error`s of kind `InvalidData` wrapping an
/// [`OciError`]; [`OciError::try_from_io`] gets the typed error back.
#[derive(Debug)]
pub struct DigestVerifier<R> {
    inner: R,
    digest: Digest,
    expected_size: u64,
    state: VerifyState,
    count: u64,
}

/// Where a [`DigestVerifier`] stands; a failure is remembered so that a
/// later `finish` cannot report success after a `read` reported an error.
// One verifier exists per blob and lives in place; boxing the hasher would
// add an allocation and an indirection to every chunk for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum VerifyState {
    Hashing(DigestHasher),
    Verified,
    /// Failed; holds the digest found when the failure was a hash mismatch.
    Failed(Option<String>),
}

impl<R: Read> DigestVerifier<R> {
    /// Wraps `inner`, which should yield exactly `expected_size` bytes
    /// hashing to `digest`. Fails at once for an algorithm that cannot be
    /// computed.
    pub fn new(inner: R, digest: Digest, expected_size: u64) -> Result<Self, OciError> {
        let state = VerifyState::Hashing(digest.hasher()?);
        Ok(DigestVerifier {
            inner,
            digest,
            expected_size,
            state,
            count: 0,
        })
    }

    /// The digest being checked.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes read through the verifier so far.
    pub fn bytes_read(&self) -> u64 {
        self.count
    }

    /// Reads whatever the consumer left unread, then checks size and digest.
    /// Returns the total byte count on success. After a failed `read` it
    /// returns that failure again.
    pub fn finish(mut self) -> Result<u64, OciError> {
        let mut buf = [0u8; 16 * 1024];
        while matches!(self.state, VerifyState::Hashing(_)) {
            match self.read(&mut buf) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.typed(err)),
            }
        }
        match self.state {
            VerifyState::Failed(_) => Err(self.failure()),
            _ => Ok(self.count),
        }
    }

    /// Turns a read error into an `OciError`, keeping I/O failures as I/O.
    fn typed(&self, err: io::Error) -> OciError {
        OciError::try_from_io(err).unwrap_or_else(|source| OciError::Io {
            op: "read blob",
            path: self.digest.as_str().into(),
            source,
        })
    }

    /// Describes the recorded failure from the counters and the found hash.
    fn failure(&self) -> OciError {
        let digest = self.digest.clone();
        let expected = self.expected_size;
        if self.count > expected {
            return OciError::BlobTooLong { digest, expected };
        }
        if self.count != expected {
            return OciError::SizeMismatch {
                digest,
                expected,
                found: self.count,
            };
        }
        let found = match &self.state {
            VerifyState::Failed(Some(hex)) => format!("{}:{hex}", digest.algorithm()),
            _ => "another digest".to_owned(),
        };
        OciError::DigestMismatch {
            expected: digest,
            found,
        }
    }

    /// The end-of-file check; runs once, then remembers its verdict.
    fn check_at_eof(&mut self) -> Result<(), OciError> {
        let hasher = match std::mem::replace(&mut self.state, VerifyState::Failed(None)) {
            VerifyState::Hashing(hasher) => hasher,
            VerifyState::Verified => {
                self.state = VerifyState::Verified;
                return Ok(());
            }
            failed @ VerifyState::Failed(_) => {
                self.state = failed;
                return Err(self.failure());
            }
        };
        if self.count != self.expected_size {
            return Err(self.failure());
        }
        let found = hasher.finish_hex();
        if found == self.digest.hex() {
            self.state = VerifyState::Verified;
            return Ok(());
        }
        self.state = VerifyState::Failed(Some(found));
        Err(self.failure())
    }
}

/// Wraps a verification failure so it can travel through `Read`.
fn invalid_data(err: OciError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<R: Read> Read for DigestVerifier<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            VerifyState::Hashing(_) if !buf.is_empty() => {}
            VerifyState::Failed(_) => return Err(invalid_data(self.failure())),
            _ => return Ok(0),
        }
        // Ask for one byte past the expected end at most, so an overlong
        // blob is caught without reading the rest of it.
        let room = self
            .expected_size
            .saturating_sub(self.count)
            .saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.check_at_eof().map_err(invalid_data)?;
            return Ok(0);
        }
        self.count += n as u64;
        if self.count > self.expected_size {
            self.state = VerifyState::Failed(None);
            return Err(invalid_data(self.failure()));
        }
        if let VerifyState::Hashing(hasher) = &mut self.state {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_registered_digests() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(Digest::parse(&sha512).unwrap().algorithm(), "sha512");
    }

    #[test]
    fn rejects_malformed_digests() {
        let upper = EMPTY_SHA256.to_uppercase().replacen("SHA256", "sha256", 1);
        let cases = [
            upper.as_str(),
            "sha256:abc",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:",
            ":abc",
            "SHA256:abc",
            "sha256+:abc",
            "sha256:ab/cd",
            "sha256:../../etc/passwd",
            "sha512:abcd",
        ];
        for case in cases {
            let err = Digest::parse(case).unwrap_err();
            assert!(
                matches!(err, OciError::InvalidDigest { .. }),
                "{case}: {err}"
            );
        }
    }

    #[test]
    fn unknown_algorithm_parses_but_cannot_verify() {
        let d = Digest::parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
            .unwrap();
        assert_eq!(d.algorithm(), "multihash+base58");
        let err = d.hasher().unwrap_err();
        assert!(
            err.to_string().contains("unsupported digest algorithm"),
            "{err}"
        );
        let err = DigestVerifier::new(&b""[..], d, 0).unwrap_err();
        assert!(matches!(err, OciError::UnsupportedDigestAlgorithm { .. }));
    }

    #[test]
    fn round_trips_through_serde() {
        let d: Digest = serde_json::from_str(&format!("\"{EMPTY_SHA256}\"")).unwrap();
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            format!("\"{EMPTY_SHA256}\"")
        );
        assert!(serde_json::from_str::<Digest>("\"sha256:xyz\"").is_err());
    }

    #[test]
    fn sha256_of_matches_parse() {
        assert_eq!(Digest::sha256_of(b""), Digest::parse(EMPTY_SHA256).unwrap());
        Digest::sha256_of(b"x").verify_bytes(b"x", 1).unwrap();
    }

    fn read_all<R: Read>(mut r: R) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn verifier_accepts_good_stream() {
        let data = b"hello layer".repeat(5000);
        let d = Digest::sha256_of(&data);
        let v = DigestVerifier::new(&data[..], d.clone(), data.len() as u64).unwrap();
        assert_eq!(read_all(v).unwrap(), data);
        let mut v = DigestVerifier::new(&data[..], d, data.len() as u64).unwrap();
        let mut head = [0u8; 10];
        v.read_exact(&mut head).unwrap();
        assert_eq!(v.finish().unwrap(), data.len() as u64);
    }

    #[test]
    fn verifier_rejects_wrong_digest() {
        let d = Digest::sha256_of(b"other");
        let v = DigestVerifier::new(&b"hello"[..], d.clone(), 5).unwrap();
        let err = read_all(v).unwrap_err();
        let typed = OciError::try_from_io(err).unwrap();
        assert!(matches!(typed, OciError::DigestMismatch { ref expected, .. } if *expected == d));
        assert!(typed
            .to_string()
            .contains(&Digest::sha256_of(b"hello").to_string()));
        let v = DigestVerifier::new(&b"hello"[..], d.clone(), 5).unwrap();
        assert!(matches!(v.finish(), Err(OciError::DigestMismatch { .. })));
        // A consumer that saw the read error must not get a pass from finish.
        let mut v = DigestVerifier::new(&b"hello"[..], d, 5).unwrap();
        assert!(io::copy(&mut v, &mut io::sink()).is_err());
        assert!(matches!(v.finish(), Err(OciError::DigestMismatch { .. })));
    }

    #[test]
    fn verifier_rejects_short_stream() {
        let d = Digest::sha256_of(b"hello");
        let v = DigestVerifier::new(&b"hell"[..], d, 5).unwrap();
        match v.finish() {
            Err(OciError::SizeMismatch {
                expected: 5,
                found: 4,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verifier_rejects_long_stream() {
        let d = Digest::sha256_of(b"hello");
        let v = DigestVerifier::new(&b"hello world"[..], d.clone(), 5).unwrap();
        let err = OciError::try_from_io(read_all(v).unwrap_err()).unwrap();
        assert!(
            matches!(err, OciError::BlobTooLong { expected: 5, .. }),
            "{err}"
        );
        let v = DigestVerifier::new(&b"hello world"[..], d, 5).unwrap();
        assert!(matches!(v.finish(), Err(OciError::BlobTooLong { .. })));
    }
}
