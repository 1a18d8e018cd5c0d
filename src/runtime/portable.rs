//! The portable build-cell contract.
//!
//! A build cell is one command run in a prepared root filesystem with a
//! seeded workspace, staged imports, persistent caches and collected
//! exports. These types describe such a run independently of the operating
//! system that carries it out, so a build tool can write one request and
//! hand it to the Linux runtime, the macOS helper or the Windows broker.
//! They travel as JSON (see the request file in `runtime::protocol`), which
//! is why their serde shapes are part of the contract. Nothing here
//! validates: each backend checks the paths against its own rules.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A path on the host, outside the cell.
///
/// A newtype keeps host paths and in-cell paths from being mixed up. In JSON
/// it is a plain string; a path that is not valid UTF-8 cannot be
/// represented and fails to serialize rather than being silently altered.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostPath(PathBuf);

impl HostPath {
    /// Wraps a host path as given; nothing is checked or normalised.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// Borrows the path for use with `std::fs`.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// Unwraps the path without copying it.
    pub fn into_path_buf(self) -> PathBuf {
        self.0
    }
}

impl AsRef<Path> for HostPath {
    fn as_ref(&self) -> &Path {
        self.as_path()
    }
}

impl From<PathBuf> for HostPath {
    fn from(path: PathBuf) -> Self {
        Self(path)
    }
}

impl From<&Path> for HostPath {
    fn from(path: &Path) -> Self {
        Self(path.to_path_buf())
    }
}

/// A path inside the cell, such as `/workspace`.
///
/// It is a string rather than a `PathBuf` because it names a location in the
/// guest filesystem, whose conventions need not match the host's (a Linux
/// cell driven from Windows still uses `/`). In JSON it is a plain string.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CellPath(String);

impl CellPath {
    /// Wraps an in-cell path as given; the backend validates it later.
    pub fn new(path: impl Into<String>) -> Self {
        Self(path.into())
    }

    /// Borrows the path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unwraps the path text without copying it.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for CellPath {
    fn from(path: String) -> Self {
        Self(path)
    }
}

impl From<&str> for CellPath {
    fn from(path: &str) -> Self {
        Self(path.to_string())
    }
}

/// What the workspace contains before the command starts.
///
/// Serialized with serde's external tagging: `"Empty"`,
/// `{"SnapshotDir":"/p"}` or `{"Archive":"/p.tar"}`.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub enum WorkspaceSeed {
    /// Start from an empty workspace directory.
    Empty,
    /// Copy the contents of this host directory into the workspace.
    SnapshotDir(HostPath),
    /// Unpack this host tar archive into the workspace.
    Archive(HostPath),
}

/// A host file or directory copied into the cell before the command runs.
///
/// Imports are copies, not mounts, so the command cannot alter the host
/// original.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct ImportSpec {
    /// The host file or directory to copy.
    pub source: HostPath,
    /// Where the copy appears inside the cell.
    pub destination: CellPath,
}

/// A host directory whose contents persist across cells.
///
/// It is staged into the cell before the run and synced back afterwards, so
/// package caches and the like survive from one build to the next.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// The host directory holding the cache between runs.
    pub source: HostPath,
    /// Where the cache appears inside the cell.
    pub destination: CellPath,
}

/// A file or directory copied out of the cell after the command succeeds.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct ExportSpec {
    /// The in-cell path of the build output.
    pub source: CellPath,
    /// Where the output is written on the host.
    pub destination: HostPath,
}

/// The command a cell runs.
///
/// The executable is kept apart from its arguments so no shell is involved
/// and no quoting can go wrong.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The in-cell working directory.
    pub cwd: CellPath,
    /// The program to run, resolved inside the cell.
    pub executable: String,
    /// Arguments after the program name; `[]` when absent from the JSON.
    #[serde(default)]
    pub argv: Vec<String>,
}

/// Whether the command may use the network.
///
/// Enabled by default because most builds fetch dependencies; hermetic
/// builds opt out. JSON uses the variant names `"Enabled"` and `"Disabled"`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, Serialize, Deserialize)]
pub enum NetworkPolicy {
    /// The cell shares the host's network.
    #[default]
    Enabled,
    /// The cell gets a private network namespace with no interfaces up.
    Disabled,
}

/// Optional ceilings on the resources the command may use.
///
/// Each limit is `None` (serialized as `null`, and also read back from a
/// missing key) when the backend should not impose it.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// CPU time limit in seconds.
    pub cpu_time_seconds: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes.
    pub max_processes: Option<u64>,
}

impl ResourceLimits {
    /// True when no limit is set, so a backend can skip limit setup
    /// entirely.
    pub fn is_unbounded(&self) -> bool {
        self.cpu_time_seconds.is_none()
            && self.memory_bytes.is_none()
            && self.max_processes.is_none()
    }
}

/// When the cell's scratch directory is removed after the run.
///
/// Keeping scratch after a failure lets a user inspect what went wrong;
/// removing it always keeps disks clean on build farms. JSON uses the
/// variant names.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, Serialize, Deserialize)]
pub enum CleanupPolicy {
    /// Remove scratch whatever the outcome.
    #[default]
    Always,
    /// Keep scratch when the run failed, remove it otherwise.
    PreserveOnFailure,
    /// Never remove scratch.
    Never,
}

/// Everything a backend needs to run one build cell.
///
/// This is the payload of the request file. The list fields, `env`,
/// `network`, `limits` and `cleanup` take their defaults when missing from
/// the JSON, and unknown keys are ignored, so requests written by older or
/// newer tools still load.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct BuildCellSpec {
    /// The prepared root filesystem the cell runs in.
    pub root: HostPath,
    /// Host directory for the cell's working state and its request file.
    pub scratch: HostPath,
    /// Where the workspace appears inside the cell.
    pub workspace_path: CellPath,
    /// How the workspace is populated before the run.
    pub workspace_seed: WorkspaceSeed,
    /// Host files copied into the cell.
    #[serde(default)]
    pub imports: Vec<ImportSpec>,
    /// Host directories staged in and synced back.
    #[serde(default)]
    pub caches: Vec<CacheSpec>,
    /// Outputs copied out after a successful run.
    #[serde(default)]
    pub exports: Vec<ExportSpec>,
    /// The command to run.
    pub command: CommandSpec,
    /// The command's complete environment, in order. A list of pairs rather
    /// than a map keeps the caller's order; in JSON it is
    /// `[["KEY","value"], ...]`.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Network access for the command.
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Resource ceilings for the command.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// When scratch is removed afterwards.
    #[serde(default)]
    pub cleanup: CleanupPolicy,
}

/// What finishing a build cell did that the caller may need to know.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct BuildCellResult {
    /// True when the cleanup policy left the scratch directory in place.
    pub scratch_preserved: bool,
}
