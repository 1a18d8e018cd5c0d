#![forbid(unsafe_code)]
//! The typed error of the OCI layer.
//!
//! Messages read like strace output: the operation first, then the path or
//! digest it touched, then what was expected and what was found. Callers add
//! their own context in front ("unpack layer sha256:…: …") instead of every
//! layer repeating it.

use std::io;
use std::path::PathBuf;

use super::digest::Digest;

/// Everything that can go wrong while reading references, digests,
/// platforms and OCI image layouts.
///
/// The enum is `#[non_exhaustive]` so that new checks (for example for the
/// registry side) do not break callers that match on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// A string does not follow the OCI `algorithm:encoded` digest grammar,
    /// or uses a registered algorithm with a malformed encoding.
    #[error("parse digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The offending text, verbatim.
        digest: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The digest is grammatical but names an algorithm metalor cannot
    /// compute, so the content cannot be verified and is refused.
    #[error("verify {digest}: unsupported digest algorithm {algorithm:?} (known: sha256, sha512)")]
    UnsupportedDigestAlgorithm {
        /// The digest whose algorithm is unknown.
        digest: Digest,
        /// The algorithm part of it.
        algorithm: String,
    },

    /// Content hashed to something other than its descriptor promised.
    #[error("verify {expected}: digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// The digest the descriptor promised.
        expected: Digest,
        /// The digest of the bytes actually read.
        found: String,
    },

    /// Content ended before, or had a length other than, the descriptor's size.
    #[error("verify {digest}: size mismatch: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// The blob being verified.
        digest: Digest,
        /// The size the descriptor promised.
        expected: u64,
        /// The number of bytes actually present.
        found: u64,
    },

    /// A stream went on past the descriptor's size; reading stops there so
    /// a lying blob cannot feed unbounded data to the consumer.
    #[error("verify {digest}: size mismatch: expected {expected} bytes, found more")]
    BlobTooLong {
        /// The blob being verified.
        digest: Digest,
        /// The size the descriptor promised.
        expected: u64,
    },

    /// A system call on the layout failed.
    #[error("{op} {}", path.display())]
    Io {
        /// The operation, for example `open blob` or `read index`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A descriptor points at a blob the layout does not contain.
    #[error("open blob {}: missing (digest {digest})", path.display())]
    MissingBlob {
        /// The missing blob.
        digest: Digest,
        /// Where it was expected.
        path: PathBuf,
    },

    /// A JSON document (index, manifest, config) is bigger than metalor is
    /// willing to hold in memory; real ones are a few KiB.
    #[error("read {what} {name}: document too large: {size} bytes, limit {limit}")]
    DocumentTooLarge {
        /// The kind of document (`index`, `manifest`, `config`).
        what: &'static str,
        /// Its digest or path.
        name: String,
        /// The size announced or found.
        size: u64,
        /// The cap.
        limit: u64,
    },

    /// A JSON document does not parse.
    #[error("parse {what} {name}")]
    Json {
        /// The kind of document.
        what: &'static str,
        /// Its digest or path.
        name: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },

    /// A document's own `mediaType`, or its shape, disagrees with the
    /// descriptor that points at it (CVE-2021-41190: the same bytes must not
    /// be readable both as a manifest and as an index).
    #[error("read {name}: media type mismatch: expected {expected}, document is {document}")]
    MediaTypeMismatch {
        /// The document's digest, or `index.json`.
        name: String,
        /// The media type the pointing descriptor (or the position) implies.
        expected: String,
        /// What the document says or looks like.
        document: String,
    },

    /// A manifest or index is not schema version 2 (Docker schema 1
    /// manifests are signed JSON of another shape and are not read).
    #[error("read {name}: unsupported schemaVersion {}: expected 2 (Docker schema 1 is not supported)", found.map_or("none".to_owned(), |v| v.to_string()))]
    UnsupportedSchemaVersion {
        /// The document's digest.
        name: String,
        /// The version it declares, if any.
        found: Option<u32>,
    },

    /// A document has both `manifests` and `layers`/`config`, so it could
    /// be read as either kind (CVE-2021-41190).
    #[error("read {name}: ambiguous document: it has both manifests and layers or config")]
    AmbiguousDocument {
        /// Its digest, or `index.json`.
        name: String,
    },

    /// A descriptor has a media type that is not valid at its position
    /// (for example a layer type in an index, or an unknown config type).
    #[error("read {digest}: unexpected media type {media_type:?} for {position}")]
    UnexpectedMediaType {
        /// The descriptor's digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// Where it appeared (`index entry`, `config`).
        position: &'static str,
    },

    /// A layer's media type names no compression metalor can unpack.
    #[error("layer {digest}: unknown layer media type {media_type:?}")]
    UnknownLayerMediaType {
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },

    /// The config lists a different number of `rootfs.diff_ids` than the
    /// manifest has layers, so layers cannot be checked one by one.
    #[error("config {config}: diff_ids count mismatch: expected {layers} (one per layer), found {diff_ids}")]
    DiffIdCount {
        /// The config blob.
        config: Digest,
        /// The number of layers in the manifest.
        layers: usize,
        /// The number of diff_ids in the config.
        diff_ids: usize,
    },

    /// `index.json` has no manifest with the requested ref name.
    #[error("resolve {reference:?} in {}: ref not found (available: {})", layout.display(), list(available))]
    RefNotFound {
        /// The requested ref name.
        reference: String,
        /// The layout directory.
        layout: PathBuf,
        /// The ref names that do exist.
        available: Vec<String>,
    },

    /// No ref was given and `index.json` holds several manifests.
    #[error("resolve {}: no ref given and the index holds {count} manifests (ref names: {})", layout.display(), list(names))]
    AmbiguousRef {
        /// The layout directory.
        layout: PathBuf,
        /// How many manifests the index holds.
        count: usize,
        /// The ref names present.
        names: Vec<String>,
    },

    /// `index.json` has no manifests at all.
    #[error("resolve {}: the index holds no manifests", layout.display())]
    EmptyIndex {
        /// The layout directory.
        layout: PathBuf,
    },

    /// No manifest in an index or manifest list matches the wanted platform.
    #[error(
        "choose platform {wanted} in {index}: no match (available: {})",
        list(available)
    )]
    NoMatchingPlatform {
        /// The requested platform.
        wanted: String,
        /// The index that was searched.
        index: Digest,
        /// The platforms it offers.
        available: Vec<String>,
    },

    /// Indexes nest deeper than metalor follows; real images use one level.
    #[error("peel index {digest}: nested deeper than {limit} levels")]
    IndexTooDeep {
        /// The index at which the limit was reached.
        digest: Digest,
        /// The depth limit.
        limit: usize,
    },

    /// An architecture name outside upstream's supported set.
    #[error("unsupported architecture {0}")]
    UnsupportedArchitecture(String),

    /// A `--platform` value is not `linux/ARCH[/VARIANT]`.
    #[error("parse platform {value:?}: {reason}")]
    InvalidPlatform {
        /// The text given.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// An image reference that cannot name a layout.
    #[error("parse image reference {value:?}: {reason}")]
    InvalidReference {
        /// The text given.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A reference uses a transport this part of metalor does not read.
    #[error("parse image reference {value:?}: unsupported transport {transport:?} here (expected oci:DIR[:REF] or DIR[:REF])")]
    UnsupportedTransport {
        /// The text given.
        value: String,
        /// The transport prefix found.
        transport: String,
    },
}

/// Renders a name list for messages, with a marker when it is empty so the
/// message never ends in a dangling colon.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

impl OciError {
    /// Finds the `OciError` a [`DigestVerifier`](super::DigestVerifier)
    /// wrapped into an `io::Error`, because `Read` can only return
    /// `io::Error`; callers use it to keep the typed error.
    pub fn from_io_ref(err: &io::Error) -> Option<&OciError> {
        err.get_ref()?.downcast_ref::<OciError>()
    }

    /// Unwraps an `io::Error` coming from a verifying reader back into the
    /// typed error, or returns the original `io::Error` when it is not one.
    pub fn try_from_io(err: io::Error) -> Result<OciError, io::Error> {
        if err.get_ref().is_none() {
            return Err(err);
        }
        let kind = err.kind();
        match err.into_inner() {
            Some(inner) => inner
                .downcast::<OciError>()
                .map(|typed| *typed)
                .map_err(|other| io::Error::new(kind, other)),
            None => Err(io::Error::from(kind)),
        }
    }
}
