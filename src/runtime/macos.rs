//! macOS integration (upstream `metalor::runtime::macos`): a host app runs
//! build cells in a sandboxed XPC helper, or in a Linux VM through an Apple
//! Linux provider helper.
//!
//! The logic lives in the ungated `macos_support` and `worker_support`
//! modules so that Linux CI tests it; this module keeps upstream's public
//! path and names.
#![forbid(unsafe_code)]

use crate::runtime::{worker_support, BuildCellSpec};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

pub use crate::runtime::macos_support::{
    helper_environment, load_request_from_env, prepare_helper_request, validate_bundle_identifier,
    validate_helper_target, validate_service_name, AppleLinuxProvider, HelperTarget,
    DEFAULT_APPLE_LINUX_BUNDLE, HELPER_INFO_PLIST_TEMPLATE, HELPER_REQUEST_ENV,
    NETWORKED_HELPER_ENTITLEMENTS_TEMPLATE, OFFLINE_HELPER_ENTITLEMENTS_TEMPLATE,
};
pub use crate::runtime::worker_support::WorkerJob;

pub use crate::runtime::backend_caps;

/// Reads a request file, for a helper given its path some other way.
pub fn load_request(request_path: &Path) -> Result<BuildCellSpec> {
    worker_support::load_request(request_path)
}

/// Resets `job_root` (absolute, no `..`) and stages the workspace seed,
/// imports and caches into it; cell path `/a/b` maps to `job_root/a/b`.
pub fn prepare_job(job_root: &Path, spec: &BuildCellSpec) -> Result<WorkerJob> {
    worker_support::prepare_job(job_root, spec)
}

/// The job's command: cwd mapped into the job root (and created), a clean
/// environment with only `spec.env`, inherited stdio. An absolute
/// executable is a host path. Limits and network policy are not applied.
pub fn build_worker_command(spec: &BuildCellSpec, job: &WorkerJob) -> Result<Command> {
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
