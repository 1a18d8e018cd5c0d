//! Streaming digest checks for blobs and diff_ids.
#![forbid(unsafe_code)]

use sha2::{Digest as _, Sha256, Sha512};

use super::error::UnpackError;

/// An incremental hash of one of the algorithms OCI registers.
#[derive(Clone)]
pub enum Hasher {
    /// `sha256`
    Sha256(Sha256),
    /// `sha512`
    Sha512(Sha512),
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish_hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An expected digest, parsed once, that streams are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCheck {
    algorithm: &'static str,
    hex: String,
}

impl DigestCheck {
    /// Parses `sha256:<64 hex>` or `sha512:<128 hex>` (lowercase).
    pub fn parse(digest: &str) -> Result<Self, UnpackError> {
        let bad = || UnpackError::Mismatch {
            what: "digest format",
            expected: "sha256:<64 hex> or sha512:<128 hex>".into(),
            found: digest.to_string(),
        };
        let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
        let (algorithm, len) = match algorithm {
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            _ => return Err(bad()),
        };
        let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if hex.len() != len || !hex.bytes().all(lower_hex) {
            return Err(bad());
        }
        Ok(DigestCheck {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// A fresh hasher of this digest's algorithm.
    pub fn hasher(&self) -> Hasher {
        match self.algorithm {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }

    /// Compares what `hasher` saw with the expected digest.
    pub fn verify(&self, what: &'static str, hasher: Hasher) -> Result<(), UnpackError> {
        let found = hasher.finish_hex();
        if found == self.hex {
            return Ok(());
        }
        Err(UnpackError::Mismatch {
            what,
            expected: format!("{}:{}", self.algorithm, self.hex),
            found: format!("{}:{found}", self.algorithm),
        })
    }
}
