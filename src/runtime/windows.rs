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
use std::process::Command;

pub use crate::runtime::windows_support::{
    appcontainer_profile_name, build_worker_command, installed_wsl_distros, load_request_from_env,
    parse_wsl_list_output, prepare_worker_request, resolve_wsl_distro, validate_application_id,
    validate_worker_target, WorkerTarget, WslProvider, WslResolution, DEFAULT_WSL_DISTRO,
    WORKER_REQUEST_ENV,
};
// The job staging logic is shared with Windows/macOS and lives, tested on
// Linux, in `worker_support`.
pub use crate::runtime::worker_support::{
    copy_worker_exports, load_request, prepare_job, sync_worker_caches, WorkerJob,
};

pub use crate::runtime::backend_caps;

/// The job's command inside the worker: cwd mapped into the job root (and
/// created), a clean environment with only `spec.env`, inherited stdio. An
/// absolute executable is a host path. Limits and network policy are not
/// applied here. Named apart from the broker's `build_worker_command`.
pub fn build_worker_process_command(spec: &BuildCellSpec, job: &WorkerJob) -> Result<Command> {
    worker_support::build_worker_command(spec, job)
}
