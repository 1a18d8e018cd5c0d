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
use std::process::Command;

pub use crate::runtime::macos_support::{
    helper_environment, load_request_from_env, prepare_helper_request, validate_bundle_identifier,
    validate_helper_target, validate_service_name, AppleLinuxProvider, HelperTarget,
    DEFAULT_APPLE_LINUX_BUNDLE, HELPER_INFO_PLIST_TEMPLATE, HELPER_REQUEST_ENV,
    NETWORKED_HELPER_ENTITLEMENTS_TEMPLATE, OFFLINE_HELPER_ENTITLEMENTS_TEMPLATE,
};
// The job staging logic is shared with Windows/macOS and lives, tested on
// Linux, in `worker_support`.
pub use crate::runtime::worker_support::{
    copy_worker_exports, load_request, prepare_job, sync_worker_caches, WorkerJob,
};

pub use crate::runtime::backend_caps;

/// The job's command: cwd mapped into the job root (and created), a clean
/// environment with only `spec.env`, inherited stdio. An absolute
/// executable is a host path. Limits and network policy are not applied.
pub fn build_worker_command(spec: &BuildCellSpec, job: &WorkerJob) -> Result<Command> {
    worker_support::build_worker_command(spec, job)
}
