//! Typed errors of the layer applier.
#![forbid(unsafe_code)]

use std::io;

use crate::oci::Digest;

/// Everything that can stop a layer from being applied.
///
/// Messages read like strace: the operation, then the member path, then
/// what was expected and what was found. [`UnpackError::Hostile`] is kept
/// apart so callers can tell a broken image from one that tried to escape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// A filesystem operation on a member failed.
    #[error("{op} {path}")]
    Io {
        /// The operation, such as `create` or `hardlink`.
        op: &'static str,
        /// The member path, as normalized.
        path: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// An extended attribute from the layer could not be set, for a reason
    /// other than missing support or privilege (those are only counted):
    /// the tree would otherwise differ from the image without a word.
    #[error("set xattr {name} on {path}")]
    Xattr {
        /// The member path, as normalized.
        path: String,
        /// The attribute name, such as `security.capability`.
        name: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The layer stream itself could not be read or decoded.
    #[error("read layer stream")]
    Stream(#[source] io::Error),
    /// A member tried to leave the rootfs or abuse a whiteout or link.
    #[error("hostile layer member {path}: {reason}")]
    Hostile {
        /// The member name as found in the archive (lossy UTF-8).
        path: String,
        /// What the member tried.
        reason: &'static str,
    },
    /// A member that is well-formed but cannot be applied.
    #[error("unsupported layer member {path}: {reason}")]
    Unsupported {
        /// The member name as found in the archive (lossy UTF-8).
        path: String,
        /// Why it cannot be applied.
        reason: String,
    },
    /// A configured limit was exceeded (decompression-bomb guard).
    #[error("layer exceeds the {what} limit of {limit}")]
    Limit {
        /// `entries` or `bytes`.
        what: &'static str,
        /// The configured limit.
        limit: u64,
    },
    /// A digest names an algorithm metalor cannot compute, so the layer
    /// could not be verified; content that cannot be verified is not
    /// applied.
    #[error("cannot verify {what} {digest}: unsupported digest algorithm")]
    UnverifiableDigest {
        /// `blob digest` or `diff_id`.
        what: &'static str,
        /// The digest as the image gives it.
        digest: Digest,
    },
    /// A digest, size or compression did not match what the image declares.
    #[error("{what} mismatch: expected {expected}, found {found}")]
    Mismatch {
        /// `blob digest`, `blob size`, `diff_id` or `layer compression`.
        what: &'static str,
        /// The declared value.
        expected: String,
        /// The computed value.
        found: String,
    },
}

impl UnpackError {
    /// True when the layer tried to escape the rootfs or abuse links or
    /// whiteouts.
    pub fn is_hostile(&self) -> bool {
        matches!(self, UnpackError::Hostile { .. })
    }
}

/// Attaches the operation and member path to an I/O error. Called only on
/// the error path, so the hot path never formats a name.
pub(crate) fn io_error(op: &'static str, path: &[u8], source: io::Error) -> UnpackError {
    UnpackError::Io {
        op,
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

/// A hostile-member error.
pub(crate) fn hostile(path: &[u8], reason: &'static str) -> UnpackError {
    UnpackError::Hostile {
        path: String::from_utf8_lossy(path).into_owned(),
        reason,
    }
}
