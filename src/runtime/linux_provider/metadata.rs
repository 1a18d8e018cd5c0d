//! The provider metadata record and its `key=value` file format.
//!
//! The file is plain `key=value` lines rather than JSON so that the provider
//! side can write it with a heredoc and read it with POSIX shell tools.
#![forbid(unsafe_code)]

use super::selection::LocalLinuxProviderKind;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::str::FromStr;

/// What a provider runtime tree was built by and for. A caller compares the
/// stored record with the one it expects to decide whether the tree can be
/// reused.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct ProviderRuntimeMetadata {
    /// The provider that owns the runtime tree.
    pub kind: LocalLinuxProviderKind,
    /// Which instance of that provider (a distro or VM name).
    pub identity: String,
    /// Absolute POSIX path of the runtime tree inside the provider.
    pub runtime_root: String,
    /// Layout version, normally [`super::PROVIDER_RUNTIME_LAYOUT_VERSION`].
    pub runtime_layout_version: String,
    /// Version of the caller's bootstrap step.
    pub bootstrap_version: String,
    /// Provider path of the stamp that marks the bootstrap as done.
    pub bootstrap_stamp: String,
}

impl ProviderRuntimeMetadata {
    /// Rejects blank fields, because a blank value cannot round-trip through
    /// the `key=value` file and would make every later comparison ambiguous.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("provider_identity", &self.identity),
            ("runtime_root", &self.runtime_root),
            ("runtime_layout_version", &self.runtime_layout_version),
            ("bootstrap_version", &self.bootstrap_version),
            ("bootstrap_stamp", &self.bootstrap_stamp),
        ];
        for (key, value) in fields {
            if value.trim().is_empty() {
                bail!("{key} must not be empty");
            }
        }
        Ok(())
    }
}

/// Renders the metadata as six `key=value` lines in a fixed order, after
/// validating it, so that equal records produce byte-identical files.
pub fn render_provider_metadata_env(metadata: &ProviderRuntimeMetadata) -> Result<String> {
    metadata.validate()?;
    let lines = [
        ("provider_kind", metadata.kind.as_str()),
        ("provider_identity", metadata.identity.as_str()),
        ("runtime_root", metadata.runtime_root.as_str()),
        (
            "runtime_layout_version",
            metadata.runtime_layout_version.as_str(),
        ),
        ("bootstrap_version", metadata.bootstrap_version.as_str()),
        ("bootstrap_stamp", metadata.bootstrap_stamp.as_str()),
    ];
    Ok(lines
        .iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect())
}

/// Parses the `key=value` format leniently enough for hand edits: blank
/// lines are skipped, unknown keys are ignored and a later duplicate wins.
/// The value keeps everything after the first `=`, since paths may contain
/// `=`.
pub fn parse_provider_metadata_env(contents: &str) -> Result<ProviderRuntimeMetadata> {
    let values = parse_key_values(contents)?;
    let metadata = ProviderRuntimeMetadata {
        kind: LocalLinuxProviderKind::from_str(required(&values, "provider_kind")?)?,
        identity: required(&values, "provider_identity")?.to_string(),
        runtime_root: required(&values, "runtime_root")?.to_string(),
        runtime_layout_version: required(&values, "runtime_layout_version")?.to_string(),
        bootstrap_version: required(&values, "bootstrap_version")?.to_string(),
        bootstrap_stamp: required(&values, "bootstrap_stamp")?.to_string(),
    };
    metadata.validate()?;
    Ok(metadata)
}

/// Writes the rendered metadata, creating the parent directories first so a
/// fresh runtime root needs no separate setup.
pub fn write_provider_metadata_env(
    path: impl AsRef<Path>,
    metadata: &ProviderRuntimeMetadata,
) -> Result<()> {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let payload = render_provider_metadata_env(metadata)?;
    fs::write(path, payload)
        .with_context(|| format!("failed to write provider metadata {}", path.display()))
}

/// Reads and parses a metadata file. The outer message names the file and
/// says whether reading or parsing failed; the cause stays in the chain.
pub fn read_provider_metadata_env(path: impl AsRef<Path>) -> Result<ProviderRuntimeMetadata> {
    let path = path.as_ref();
    let payload = fs::read_to_string(path)
        .with_context(|| format!("failed to read provider metadata {}", path.display()))?;
    parse_provider_metadata_env(&payload)
        .with_context(|| format!("failed to parse provider metadata {}", path.display()))
}

fn parse_key_values(contents: &str) -> Result<BTreeMap<&str, &str>> {
    let mut values = BTreeMap::new();
    for line in contents.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| {
            anyhow!("invalid provider metadata line {line:?}: expected key=value")
        })?;
        values.insert(key.trim(), value);
    }
    Ok(values)
}

fn required<'a>(values: &BTreeMap<&str, &'a str>, key: &str) -> Result<&'a str> {
    values
        .get(key)
        .copied()
        .ok_or_else(|| anyhow!("missing required provider metadata key {key}"))
}
