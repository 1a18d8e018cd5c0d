//! The Linux execution layer (upstream-api.md, "Linux runtime"): validation, host preparation,
//! the namespace re-exec, and the inner runner that mounts, `chroot`s and
//! spawns the payload. Every namespace and mount operation is a direct
//! syscall; nothing here spawns a helper program.
//!
//! Split by phase: validation rules, host preparation, re-exec
//! construction, the in-process probe, mount-target preparation, the
//! inner runner and its privilege narrowing, the QEMU emulator, build
//! cells and the OCI rootfs.
#![forbid(unsafe_code)]

mod build_cell;
mod emulator;
mod host;
mod inner;
mod mounts;
mod oci_rootfs;
mod overlay;
mod privileges;
mod probe;
mod reexec;
mod validate;

use std::path::PathBuf;
use std::process::ExitStatus;

pub use build_cell::{
    build_cell_reexec_command, build_cell_reexec_command_with_backend, finalize_build_cell,
    run_build_cell, BUILD_CELL_REQUEST_ARG,
};
pub use emulator::prepare_runtime_emulator;
pub use inner::{
    run_isolated_container_command, run_isolated_container_command_with_options, ContainerExit,
    RunOptions,
};
pub use oci_rootfs::prepare_oci_rootfs;
pub use overlay::{check_upper_dir, OverlayUpper, OverlayView};
pub use probe::probe_rootless_userns;
pub use reexec::{
    build_unshare_reexec_command, build_unshare_reexec_command_with_backend,
    build_unshare_reexec_command_with_options, ReexecOptions,
};

/// Where runtime helpers (the QEMU emulator) are staged inside a root.
pub const RUN_HELPER_DIR: &str = "/.metalor-run";

/// The in-container path of a staged helper binary: `/.metalor-run/<name>`.
/// Like upstream, `name` is not validated.
pub fn helper_binary_path(name: &str) -> String {
    format!("{RUN_HELPER_DIR}/{name}")
}

/// A bind mount from the host into the container.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct BindMount {
    /// Host path; symlinks are followed, and it must exist at run time.
    pub source: PathBuf,
    /// Absolute path inside the container root.
    pub destination: String,
    /// Make the mount read-only.
    pub read_only: bool,
}

/// One command to run inside a prepared root.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ContainerRunCommand {
    /// The root directory (under the runtime root prefix).
    pub root: PathBuf,
    /// Working directory inside the root.
    pub cwd: String,
    /// Bind mounts, applied in order.
    pub mounts: Vec<BindMount>,
    /// The payload's whole environment; nothing is inherited.
    pub env: Vec<(String, String)>,
    /// A staged emulator under [`RUN_HELPER_DIR`], for foreign-arch roots.
    pub emulator: Option<String>,
    /// An absolute path inside the root, or a bare name looked up in the
    /// payload's `PATH`.
    pub executable: String,
    /// Arguments after the executable.
    pub argv: Vec<String>,
}

/// How the re-exec gets its namespaces.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum LinuxNamespaceBackend {
    /// A user namespace mapping root to the caller, so no privilege is
    /// needed.
    RootlessUser,
    /// The caller's own user namespace; needs `CAP_SYS_ADMIN`.
    Privileged,
}

/// The result of [`probe_rootless_userns`].
#[derive(Clone, Debug)]
pub struct LinuxNamespaceProbe {
    /// Always [`LinuxNamespaceBackend::RootlessUser`].
    pub backend: LinuxNamespaceBackend,
    /// Whether a network namespace was part of the probe.
    pub disable_network: bool,
    /// Whether the namespaces could be entered.
    pub ok: bool,
    /// The probe child's exit status, or None if it could not be forked.
    pub status: Option<ExitStatus>,
    /// Why the probe failed, or empty.
    pub stderr: String,
}
