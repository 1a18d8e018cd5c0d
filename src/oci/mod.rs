#![forbid(unsafe_code)]
//! OCI images: digests, media types, platforms, `oci:DIR[:REF]` references
//! and the image layout store.
//!
//! Everything here treats image data as untrusted: digests are validated
//! before they become file names, documents are size-capped and verified
//! before they are parsed, a document that could be read as both manifest
//! and index is refused (CVE-2021-41190), and layer blobs are handed out
//! only together with the digests the unpacker must check them against.
//! Errors are [`OciError`], with messages that name the operation, the path
//! or digest, and what was expected and found.

pub mod digest;
mod document;
pub mod error;
pub mod layout;
pub mod layout_write;
pub mod media;
pub mod platform;
pub mod reference;
pub mod registry;
pub(crate) mod select;
#[doc(hidden)]
pub use select::{fuzz_document, fuzz_walk};

pub use digest::{Digest, DigestHasher, DigestVerifier};
pub use error::OciError;
pub use layout::{ImageLayout, LayerDescriptor, ResolvedImage};
pub use layout_write::{LayoutWriter, NewBlob, RefTarget};
pub use media::{Compression, DocumentKind};
pub use platform::{normalize_arch_name, oci_arch_name, Platform};
pub use reference::{named_transport, LayoutRef, SKOPEO_TRANSPORTS};
