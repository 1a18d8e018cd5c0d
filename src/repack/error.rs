//! Typed errors of a repack.
#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use crate::oci::{Digest, OciError};
use crate::unpack::UnpackError;

/// Everything that can stop a repack. Each message names the path, layer
/// or document it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepackError {
    /// Reading the image or writing the layout failed.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// A layer of the image could not be scanned.
    #[error("scan layer {digest}")]
    Layer {
        /// The layer blob.
        digest: Digest,
        /// What went wrong in it.
        #[source]
        source: UnpackError,
    },
    /// A filesystem operation on the rootfs, the upper dir or the new blob
    /// failed.
    #[error("{op} {}", path.display())]
    Io {
        /// The operation, such as `lstat` or `read`.
        op: &'static str,
        /// The path it was about.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A path, link target or xattr cannot be written into a tar layer.
    #[error("cannot represent {path} in a tar layer: {reason}")]
    Unrepresentable {
        /// The path in the tree (lossy UTF-8).
        path: String,
        /// Why not.
        reason: &'static str,
    },
    /// The upper dir holds overlayfs metadata metalor cannot turn into a
    /// layer.
    #[error("overlay metadata metalor does not understand on {path}: xattr {name}")]
    OverlayXattr {
        /// The path in the upper dir (lossy UTF-8).
        path: String,
        /// The xattr, such as `trusted.overlay.redirect`.
        name: String,
    },
    /// The image's config or manifest cannot take a new layer.
    #[error("{what} {digest}: {reason}")]
    Image {
        /// `config` or `manifest`.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// What is wrong with it.
        reason: String,
    },
}

/// An I/O error on `path`.
pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> RepackError {
    RepackError::Io {
        op,
        path: path.into(),
        source,
    }
}
