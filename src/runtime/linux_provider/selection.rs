//! Which local Linux provider the user asked for, and which one is in use.
#![forbid(unsafe_code)]

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The provider a user selects in configuration. `Auto` lets the caller pick
/// the platform's natural provider, which is why it exists only here and not
/// in [`LocalLinuxProviderKind`].
#[derive(Clone, Copy, Debug, Eq, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalLinuxProviderSelection {
    /// Let the caller choose the provider that fits the host OS.
    Auto,
    /// A WSL2 distribution on Windows.
    Wsl2,
    /// A Linux VM on the local Mac.
    MacLocal,
}

impl LocalLinuxProviderSelection {
    /// The configuration spelling, identical to the serde name, so that text
    /// written by either path parses back with [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Wsl2 => "wsl2",
            Self::MacLocal => "mac-local",
        }
    }
}

impl FromStr for LocalLinuxProviderSelection {
    type Err = anyhow::Error;

    /// Trims the input; an empty value means `auto`, so an unset
    /// configuration field behaves like the default.
    fn from_str(value: &str) -> Result<Self> {
        match value.trim() {
            "" | "auto" => Ok(Self::Auto),
            "wsl2" => Ok(Self::Wsl2),
            "mac-local" => Ok(Self::MacLocal),
            other => bail!(
                "unsupported local Linux provider selection {other:?}; expected one of: auto, wsl2, mac-local"
            ),
        }
    }
}

/// The provider actually in use. It is recorded in the provider metadata,
/// so it has no `Auto`: a runtime tree always belongs to one concrete kind.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalLinuxProviderKind {
    /// A WSL2 distribution on Windows.
    Wsl2,
    /// A Linux VM on the local Mac.
    MacLocal,
}

impl LocalLinuxProviderKind {
    /// The spelling used in configuration and in the metadata file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wsl2 => "wsl2",
            Self::MacLocal => "mac-local",
        }
    }
}

impl FromStr for LocalLinuxProviderKind {
    type Err = anyhow::Error;

    /// Trims the input. Unlike the selection there is no default: a metadata
    /// file without a kind is corrupt.
    fn from_str(value: &str) -> Result<Self> {
        match value.trim() {
            "wsl2" => Ok(Self::Wsl2),
            "mac-local" => Ok(Self::MacLocal),
            other => bail!(
                "unsupported local Linux provider kind {other:?}; expected one of: wsl2, mac-local"
            ),
        }
    }
}
