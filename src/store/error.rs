//! The store's error type.

use std::io;
use std::path::{Path, PathBuf};

use crate::oci::registry::RegistryError;
use crate::oci::{Digest, OciError};
use crate::unpack::StagedUnpackError;

/// Why a store operation failed. Messages name the store path, the
/// reference or the digest involved; the cause, if any, is the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory holds files a store does not have.
    #[error("refusing {path} as an image store: it holds {found:?}, which no metalor store has (move it, or pick an empty directory)")]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// The first foreign entry found.
        found: String,
    },
    /// The version marker is of another layout.
    #[error("refusing image store marker {path}: expected version {expected}, found {found}")]
    WrongVersion {
        /// The marker file.
        path: PathBuf,
        /// The version this build understands.
        expected: u64,
        /// What the marker says.
        found: String,
    },
    /// No store was given and none can be derived.
    #[error("no image store: set --store, METALOR_STORE, XDG_DATA_HOME or HOME")]
    NoDefault,
    /// `--pull never` and the store lacks the reference.
    #[error("image {reference} is not in the store {store} (and pulling is off)")]
    NotInStore {
        /// The reference, normalized.
        reference: String,
        /// The store.
        store: PathBuf,
    },
    /// The reference cannot name an image of the store.
    #[error("cannot store {reference}: {reason}")]
    InvalidName {
        /// The reference as given.
        reference: String,
        /// Why not.
        reason: &'static str,
    },
    /// The image config is not what the image spec says.
    #[error("image config {digest}: {reason}")]
    Config {
        /// The config blob.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// The image's `User` (or `--user`) is not in its passwd or group
    /// file.
    #[error("user {user:?}: no {what} {name:?} in the image's {file}")]
    UnknownUser {
        /// The user spec.
        user: String,
        /// `user` or `group`.
        what: &'static str,
        /// The name looked up.
        name: String,
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
    },
    /// Pulling failed.
    #[error(transparent)]
    Pull(Box<RegistryError>),
    /// Reading the store's layout failed.
    #[error(transparent)]
    Layout(Box<OciError>),
    /// Unpacking an image into its tree failed; nothing of it is left.
    #[error("unpack {digest} into {path}")]
    Unpack {
        /// The manifest.
        digest: Digest,
        /// The staging directory.
        path: PathBuf,
        /// The unpacker's error.
        #[source]
        source: Box<StagedUnpackError>,
    },
    /// A filesystem operation on the store failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// Its path.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<RegistryError> for StoreError {
    fn from(err: RegistryError) -> Self {
        StoreError::Pull(Box::new(err))
    }
}

impl From<OciError> for StoreError {
    fn from(err: OciError) -> Self {
        StoreError::Layout(Box::new(err))
    }
}
