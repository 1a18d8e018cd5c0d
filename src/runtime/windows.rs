//! Windows integration (upstream `metalor::runtime::windows`): a broker
//! launches a worker process (typically in an AppContainer) for a build
//! cell, or runs Linux jobs in a WSL 2 distro.
//!
//! The logic lives in the ungated `windows_support` and `worker_support`
//! modules so that Linux CI tests it; this module keeps upstream's public
//! path and names.
#![forbid(unsafe_code)]

use crate::runtime::{worker_support, BuildCellSpec};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

pub use crate::runtime::windows_support::{
    appcontainer_profile_name, build_worker_command, installed_wsl_distros, load_request_from_env,
    parse_wsl_list_output, prepare_worker_request, resolve_wsl_distro, validate_application_id,
    validate_worker_target, WorkerTarget, WslProvider, WslResolution, DEFAULT_WSL_DISTRO,
    WORKER_REQUEST_ENV,
};
pub use crate::runtime::worker_support::WorkerJob;

pub use crate::runtime::backend_caps;

/// Reads a request file, for a worker given its path some other way.
pub fn load_request(request_path: &Path) -> Result<BuildCellSpec> {
    worker_support::load_request(request_path)
}

/// Resets `job_root` (absolute, no `..`; a drive prefix is fine) and stages
/// the workspace seed, imports and caches into it; cell path `/a/b` maps to
/// `job_root\a\b`.
pub fn prepare_job(job_root: &Path, spec: &BuildCellSpec) -> Result<WorkerJob> {
    worker_support::prepare_job(job_root, spec)
}

/// The job's command inside the worker: cwd mapped into the job root (and
/// created), a clean environment with only `spec.env`, inherited stdio. An
/// absolute executable is a host path. Limits and network policy are not
/// applied here. Named apart from the broker's `build_worker_command`.
pub fn build_worker_process_command(spec: &BuildCellSpec, job: &WorkerJob) -> Result<Command> {
    worker_support::build_worker_command(spec, job)
}

/// Copies each staged cache back over its host source, replacing it.
pub fn sync_worker_caches(spec: &BuildCellSpec, job: &WorkerJob) -> Result<()> {
    worker_support::sync_worker_caches(spec, job)
}

/// Copies exports out of the job root; a missing export fails only when the
/// command succeeded.
pub fn copy_worker_exports(
    spec: &BuildCellSpec,
    job: &WorkerJob,
    command_succeeded: bool,
) -> Result<()> {
    worker_support::copy_worker_exports(spec, job, command_succeeded)
}
