//! The upstream-compatible runtime tree: the portable build-cell contract,
//! its request file, the Linux provider helpers and the per-OS integrations.

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
compile_error!("metalor supports Linux, macOS and Windows only");

mod backend_caps;
mod portable;
mod protocol;
mod tree;

#[cfg(target_os = "linux")]
pub mod linux;
pub mod linux_provider;
#[cfg(target_os = "macos")]
pub mod macos;
#[cfg(target_os = "windows")]
pub mod windows;

mod macos_support;
mod windows_support;
mod worker_support;

pub use backend_caps::{backend_caps, BackendCaps};
#[cfg(target_os = "linux")]
pub use linux::{
    build_cell_reexec_command, build_cell_reexec_command_with_backend,
    build_unshare_reexec_command, build_unshare_reexec_command_with_backend, finalize_build_cell,
    helper_binary_path, prepare_oci_rootfs, prepare_runtime_emulator, probe_rootless_userns,
    run_build_cell, run_isolated_container_command, BindMount, ContainerRunCommand,
    LinuxNamespaceBackend, LinuxNamespaceProbe, RUN_HELPER_DIR,
};
pub use portable::{
    BuildCellResult, BuildCellSpec, CacheSpec, CellPath, CleanupPolicy, CommandSpec, ExportSpec,
    HostPath, ImportSpec, NetworkPolicy, ResourceLimits, WorkspaceSeed,
};
pub use protocol::{build_cell_request_path, read_build_cell_request, write_build_cell_request};
