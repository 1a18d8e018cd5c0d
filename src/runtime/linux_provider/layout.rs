//! Where things live under the provider's runtime root.
//!
//! Provider paths are POSIX strings, not host `Path`s: the host may be
//! Windows, where `Path` would rewrite separators and prefixes.
#![forbid(unsafe_code)]

use super::metadata::ProviderRuntimeMetadata;
use super::selection::LocalLinuxProviderKind;
use super::{PROVIDER_METADATA_FILE, PROVIDER_RUNTIME_LAYOUT_VERSION};
use anyhow::{bail, Result};

/// A validated runtime root inside the provider and the paths derived from
/// it. Validation happens once, in [`ProviderRuntimeLayout::new`], so every
/// derived path is a clean absolute POSIX path that is safe to quote into a
/// provider script.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ProviderRuntimeLayout {
    root: String,
}

impl ProviderRuntimeLayout {
    /// Trims and validates the root: absolute, `/` separators only, and no
    /// `.` or `..` segment, because scripts and `rm -rf` are run against
    /// paths derived from it. A trailing `/` is dropped (`/` stays `/`).
    pub fn new(root: impl Into<String>) -> Result<Self> {
        Ok(Self {
            root: normalize_root(&root.into())?,
        })
    }

    /// The normalized runtime root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>/jobs`, the parent of every per-job directory.
    pub fn jobs_root(&self) -> String {
        join_posix(&self.root, "jobs")
    }

    /// `<root>/provider-metadata.env`.
    pub fn metadata_path(&self) -> String {
        provider_metadata_path(&self.root)
    }

    /// Joins a relative path under the root. The trimmed form is validated
    /// (non-empty, relative, no `\`, no empty, `.` or `..` segment, hence no
    /// trailing `/`), but the original string is joined, as upstream does.
    pub fn join(&self, relative_path: &str) -> Result<String> {
        validate_relative(relative_path)?;
        Ok(join_posix(&self.root, relative_path))
    }

    /// `<root>/<label>-<version>.stamp`. Both parts are limited to
    /// `[A-Za-z0-9._-]+` so the stamp stays one file directly under the root.
    pub fn stamp_path(&self, label: &str, version: &str) -> Result<String> {
        validate_stamp_part(label, "provider stamp label")?;
        validate_stamp_part(version, "provider stamp version")?;
        Ok(join_posix(&self.root, &format!("{label}-{version}.stamp")))
    }

    /// The metadata record for this layout: layout version
    /// [`PROVIDER_RUNTIME_LAYOUT_VERSION`] and the `bootstrap` stamp for
    /// `bootstrap_version`, validated before it is returned.
    pub fn metadata(
        &self,
        kind: LocalLinuxProviderKind,
        identity: impl Into<String>,
        bootstrap_version: &str,
    ) -> Result<ProviderRuntimeMetadata> {
        let metadata = ProviderRuntimeMetadata {
            kind,
            identity: identity.into(),
            runtime_root: self.root.clone(),
            runtime_layout_version: PROVIDER_RUNTIME_LAYOUT_VERSION.to_string(),
            bootstrap_version: bootstrap_version.to_string(),
            bootstrap_stamp: self.stamp_path("bootstrap", bootstrap_version)?,
        };
        metadata.validate()?;
        Ok(metadata)
    }
}

/// The metadata file path for a runtime root given as a raw string, for
/// callers that hold a root from an older record rather than a layout.
/// `/` gives `/provider-metadata.env`; otherwise trailing slashes are
/// dropped, and a root that was only slashes or empty gives the bare name.
pub fn provider_metadata_path(runtime_root: impl AsRef<str>) -> String {
    let root = runtime_root.as_ref();
    if root == "/" {
        return format!("/{PROVIDER_METADATA_FILE}");
    }
    match root.trim_end_matches('/') {
        "" => PROVIDER_METADATA_FILE.to_string(),
        trimmed => format!("{trimmed}/{PROVIDER_METADATA_FILE}"),
    }
}

/// Joins a child onto a POSIX parent without doubling the separator.
pub(super) fn join_posix(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{}/{child}", parent.trim_end_matches('/'))
    }
}

fn normalize_root(root: &str) -> Result<String> {
    let trimmed = root.trim();
    if trimmed.is_empty() {
        bail!("provider runtime root must not be empty");
    }
    if !trimmed.starts_with('/') {
        bail!("provider runtime root must be an absolute Linux path: {trimmed}");
    }
    if trimmed.contains('\\') {
        bail!("provider runtime root must use '/' separators: {trimmed}");
    }
    if trimmed
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        bail!("provider runtime root must not contain '.' or '..': {trimmed}");
    }
    match trimmed.trim_end_matches('/') {
        "" => Ok("/".to_string()),
        normalized => Ok(normalized.to_string()),
    }
}

fn validate_relative(path: &str) -> Result<()> {
    const WHAT: &str = "provider runtime relative path";
    let trimmed = path.trim();
    if trimmed.is_empty() {
        bail!("{WHAT} must not be empty");
    }
    if trimmed.starts_with('/') {
        bail!("{WHAT} must be relative: {trimmed}");
    }
    if trimmed.contains('\\') {
        bail!("{WHAT} must use '/' separators: {trimmed}");
    }
    if trimmed
        .split('/')
        .any(|segment| matches!(segment, "" | "." | ".."))
    {
        bail!("{WHAT} must not contain empty, '.' or '..' components: {trimmed}");
    }
    Ok(())
}

fn validate_stamp_part(value: &str, what: &str) -> Result<()> {
    if value.is_empty() {
        bail!("{what} must not be empty");
    }
    if !value.chars().all(is_portable_name_char) {
        bail!("{what} must contain only ASCII letters, digits, '-', '_', and '.': {value}");
    }
    Ok(())
}

/// The portable file-name characters used for stamps and job labels.
pub(super) fn is_portable_name_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')
}
