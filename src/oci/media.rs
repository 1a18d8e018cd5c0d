#![forbid(unsafe_code)]
//! Media types metalor understands, and what each means for reading.
//!
//! Documents are the OCI image-spec types plus Docker's v2 schema 2 ones
//! (registries and skopeo still hand those out). Layer types map to a
//! [`Compression`]; how that declaration and a blob's magic bytes together
//! choose the decoder is written down once, in [`crate::unpack::decode`].

use serde::Serialize;

/// OCI image index (`index.json` and nested indexes).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable uncompressed layer (deprecated, still readable).
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable gzip layer (deprecated, still readable).
pub const OCI_LAYER_NONDIST_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable zstd layer (deprecated, still readable).
pub const OCI_LAYER_NONDIST_TAR_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Docker v2 schema 2 manifest list, Docker's name for an index.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The two kinds of JSON document a descriptor in an index can point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentKind {
    /// An OCI index or a Docker manifest list: a list of manifests.
    Index,
    /// An OCI or Docker image manifest: a config and layers.
    Manifest,
}

impl DocumentKind {
    /// Classifies a media type, or `None` for anything that is not an index
    /// or manifest type.
    pub fn from_media_type(media_type: &str) -> Option<DocumentKind> {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(DocumentKind::Index),
            OCI_MANIFEST | DOCKER_MANIFEST => Some(DocumentKind::Manifest),
            _ => None,
        }
    }

    /// A short word for messages.
    pub fn name(self) -> &'static str {
        match self {
            DocumentKind::Index => "an index",
            DocumentKind::Manifest => "a manifest",
        }
    }
}

/// Whether a config media type describes a runnable image config.
pub fn is_image_config(media_type: &str) -> bool {
    matches!(media_type, OCI_CONFIG | DOCKER_CONFIG)
}

/// How a layer blob is compressed: what its media type declares, or what
/// its magic bytes show.
///
/// The one type for both, so that the unpacker can compare the two (see
/// [`crate::unpack::decode`] for the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (RFC 1952) around a tar stream, one or more members.
    Gzip,
    /// zstd frames around a tar stream, one or more frames.
    Zstd,
}

impl Compression {
    /// Maps a layer media type to its compression, or `None` when the type
    /// is not a layer type metalor unpacks.
    pub fn from_layer_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            OCI_LAYER_TAR | OCI_LAYER_NONDIST_TAR => Some(Compression::None),
            OCI_LAYER_TAR_GZIP | OCI_LAYER_NONDIST_TAR_GZIP | DOCKER_LAYER_TAR_GZIP => {
                Some(Compression::Gzip)
            }
            OCI_LAYER_TAR_ZSTD | OCI_LAYER_NONDIST_TAR_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// A short word for messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "plain tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types_map_to_compressions() {
        let cases = [
            (OCI_LAYER_TAR, Compression::None),
            (OCI_LAYER_NONDIST_TAR, Compression::None),
            (OCI_LAYER_TAR_GZIP, Compression::Gzip),
            (OCI_LAYER_NONDIST_TAR_GZIP, Compression::Gzip),
            (DOCKER_LAYER_TAR_GZIP, Compression::Gzip),
            (OCI_LAYER_TAR_ZSTD, Compression::Zstd),
            (OCI_LAYER_NONDIST_TAR_ZSTD, Compression::Zstd),
        ];
        for (media_type, compression) in cases {
            assert_eq!(
                Compression::from_layer_media_type(media_type),
                Some(compression)
            );
        }
        for other in [
            OCI_MANIFEST,
            "application/vnd.docker.image.rootfs.diff.tar",
            "",
        ] {
            assert_eq!(Compression::from_layer_media_type(other), None);
        }
    }

    #[test]
    fn document_kinds() {
        assert_eq!(
            DocumentKind::from_media_type(DOCKER_MANIFEST_LIST),
            Some(DocumentKind::Index)
        );
        assert_eq!(
            DocumentKind::from_media_type(DOCKER_MANIFEST),
            Some(DocumentKind::Manifest)
        );
        assert_eq!(DocumentKind::from_media_type(OCI_CONFIG), None);
    }
}
