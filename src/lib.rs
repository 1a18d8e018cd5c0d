//! metalor: OCI image pull, layer unpack and namespace execution for build
//! tools, with a pure-Rust runtime.
//!
//! The crate keeps the public API of upstream `metalor` 0.3.2 (`parser`,
//! `runtime` and the crate-root re-exports) and adds typed layers beside it.
//!
//! Module docs that say "upstream-api.md" cite the upstream description
//! kept with the project's shared specs (`shared/spec/upstream-api.md`, beside
//! this repository), by the title of the section they implement.
// Unsafe code is confined to the `sys` module, which opts back in.
#![deny(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod cleanup;
#[cfg(target_os = "linux")]
pub mod oci;
pub mod parser;
#[cfg(target_os = "linux")]
pub mod repack;
pub mod runtime;
#[cfg(target_os = "linux")]
pub mod store;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys;
#[cfg(target_os = "linux")]
pub mod unpack;

pub use parser::{
    interpolate_braced_variables, parse_exec_array, significant_lines, valid_identifier,
    SignificantLine,
};
pub use runtime::{
    backend_caps, build_cell_request_path, read_build_cell_request, write_build_cell_request,
    BackendCaps, BuildCellResult, BuildCellSpec, CacheSpec, CellPath, CleanupPolicy, CommandSpec,
    ExportSpec, HostPath, ImportSpec, NetworkPolicy, ResourceLimits, WorkspaceSeed,
};
#[cfg(target_os = "linux")]
pub use runtime::{
    build_cell_reexec_command, build_cell_reexec_command_with_backend,
    build_unshare_reexec_command, build_unshare_reexec_command_with_backend, finalize_build_cell,
    helper_binary_path, prepare_oci_rootfs, prepare_runtime_emulator, probe_rootless_userns,
    run_build_cell, run_isolated_container_command, BindMount, ContainerRunCommand,
    LinuxNamespaceBackend, LinuxNamespaceProbe, RUN_HELPER_DIR,
};
