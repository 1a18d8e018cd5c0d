//! The build-cell request file.
//!
//! A caller that re-executes itself inside fresh namespaces (or hands work
//! to a helper process) cannot pass a [`BuildCellSpec`] in memory, so it
//! writes the spec as JSON into the cell's scratch directory and passes the
//! path. The format is serde_json's pretty output with no trailing newline,
//! byte for byte what upstream writes, so either side of the hand-off may be
//! upstream `metalor`.
#![forbid(unsafe_code)]

use super::portable::BuildCellSpec;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// File name of the request inside the scratch directory.
const REQUEST_FILE_NAME: &str = "build-cell-request.json";

/// Returns where the request for a cell with this scratch directory lives:
/// `scratch/build-cell-request.json`.
///
/// Keeping the request in scratch means it is cleaned up with the cell.
pub fn build_cell_request_path(scratch: &Path) -> PathBuf {
    scratch.join(REQUEST_FILE_NAME)
}

/// Writes `spec` as pretty JSON (2-space indent, no trailing newline) to
/// `path`, creating its parent directories first.
///
/// # Errors
/// `failed to create <parent>`, `failed to serialize build cell request`
/// (for example a host path that is not UTF-8) or
/// `failed to write build cell request <path>`, each with the underlying
/// error as its cause.
pub fn write_build_cell_request(path: &Path, spec: &BuildCellSpec) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let payload =
        serde_json::to_vec_pretty(spec).context("failed to serialize build cell request")?;
    fs::write(path, payload)
        .with_context(|| format!("failed to write build cell request {}", path.display()))
}

/// Reads and parses a request file written by [`write_build_cell_request`]
/// (or by upstream `metalor`).
///
/// Unknown keys are ignored and defaulted fields may be missing, so requests
/// from other versions still load.
///
/// # Errors
/// `failed to read build cell request <path>`, or
/// `failed to parse build cell request` with serde's error as its cause.
pub fn read_build_cell_request(path: &Path) -> Result<BuildCellSpec> {
    let payload = fs::read(path)
        .with_context(|| format!("failed to read build cell request {}", path.display()))?;
    serde_json::from_slice(&payload).context("failed to parse build cell request")
}
