//! What the build-cell backend of the current OS can do: feature flags of
//! the backend, not Linux process capabilities (those are dropped in
//! `linux::privileges`).
//!
//! Build tools run on Linux, macOS and Windows hosts with very different
//! isolation machinery. Rather than probing at run time, each OS reports a
//! fixed set of capabilities so a tool can decide up front, for example,
//! whether it may ask for an OCI rootfs or must fall back to something else.
#![forbid(unsafe_code)]

/// The features the current platform's backend supports.
///
/// The fields are public so callers can build values in tests and compare
/// them with [`backend_caps`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct BackendCaps {
    /// The backend can run a cell in a root filesystem unpacked from an OCI
    /// image.
    pub oci_rootfs: bool,
    /// Host directories can be bind-mounted live into the cell, rather than
    /// copied.
    pub live_bind_mounts: bool,
    /// Binaries for another CPU architecture can run (through an emulator).
    pub foreign_arch_exec: bool,
    /// Network access can be switched on or off for each job.
    pub per_job_network_toggle: bool,
    /// Network access is fixed by the sandbox profile chosen for the worker,
    /// not by the job.
    pub profile_selected_network: bool,
}

/// Returns the capabilities of this OS's backend.
///
/// Linux has namespaces, bind mounts and binfmt emulation, so it supports
/// everything that is toggled per job.
#[cfg(target_os = "linux")]
pub fn backend_caps() -> BackendCaps {
    BackendCaps {
        oci_rootfs: true,
        live_bind_mounts: true,
        foreign_arch_exec: true,
        per_job_network_toggle: true,
        profile_selected_network: false,
    }
}

/// Returns the capabilities of this OS's backend.
///
/// The macOS helper runs in an App Sandbox whose entitlements, chosen with
/// the helper's profile, decide network access; there is no OCI rootfs,
/// bind mount or emulation support.
#[cfg(target_os = "macos")]
pub fn backend_caps() -> BackendCaps {
    BackendCaps {
        oci_rootfs: false,
        live_bind_mounts: false,
        foreign_arch_exec: false,
        per_job_network_toggle: false,
        profile_selected_network: true,
    }
}

/// Returns the capabilities of this OS's backend.
///
/// The Windows broker launches a worker process per job and can choose its
/// AppContainer profile, and with it network access, each time; there is no
/// OCI rootfs, bind mount or emulation support.
#[cfg(target_os = "windows")]
pub fn backend_caps() -> BackendCaps {
    BackendCaps {
        oci_rootfs: false,
        live_bind_mounts: false,
        foreign_arch_exec: false,
        per_job_network_toggle: true,
        profile_selected_network: false,
    }
}
