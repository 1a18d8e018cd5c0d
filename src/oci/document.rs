//! Indexes and manifests as written in JSON, shared by the layout reader
//! and the registry client. Every field is optional so that a document's
//! shape is checked explicitly (CVE-2021-41190) rather than guessed by serde.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::OciError;
use super::layout::REF_NAME_ANNOTATION;
use super::media::DocumentKind;

/// A descriptor as written in JSON; digests stay text until checked so
/// that a bad one yields a precise [`OciError::InvalidDigest`].
#[derive(Debug, Deserialize)]
pub(crate) struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) platform: Option<RawPlatform>,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
}

impl RawDescriptor {
    /// The ref name annotation, if any.
    pub(crate) fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
    }
}

/// The platform object of an index entry.
#[derive(Debug, Deserialize)]
pub(crate) struct RawPlatform {
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

/// Any index or manifest. All fields are optional so that the shape can be
/// checked explicitly (CVE-2021-41190) instead of by serde's guesswork.
#[derive(Debug, Deserialize)]
pub(crate) struct RawDocument {
    #[serde(rename = "schemaVersion", default)]
    pub(crate) schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: Option<String>,
    #[serde(default)]
    pub(crate) manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    pub(crate) config: Option<RawDescriptor>,
    #[serde(default)]
    pub(crate) layers: Option<Vec<RawDescriptor>>,
}

impl RawDocument {
    /// What the fields say the document is, whatever it claims.
    pub(crate) fn shape(&self) -> Option<DocumentKind> {
        if self.manifests.is_some() {
            Some(DocumentKind::Index)
        } else if self.config.is_some() {
            Some(DocumentKind::Manifest)
        } else {
            None
        }
    }

    /// Rejects a document readable as both kinds.
    pub(crate) fn check_unambiguous(&self, name: &str) -> Result<(), OciError> {
        if self.manifests.is_some() && (self.layers.is_some() || self.config.is_some()) {
            return Err(OciError::AmbiguousDocument {
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}
