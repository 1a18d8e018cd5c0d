//! Helpers for driving a local Linux provider (a WSL2 distro or a macOS VM)
//! from the host: provider choice, the runtime layout inside the provider,
//! its metadata file, and a shell session that runs scripts and moves trees
//! in and out.
//!
//! The module is not cfg-gated: the host side is plain Rust, so Linux CI can
//! exercise it with a "provider" that is just a local shell. Only the script
//! that runs inside the provider is shell; the host half of every transfer
//! builds or reads the tar stream in-process, so metalor never spawns a host
//! `tar` or `sh`.
#![forbid(unsafe_code)]

mod extract;
mod layout;
mod metadata;
mod selection;
mod session;
mod shell;
mod transfer;

pub use layout::{provider_metadata_path, ProviderRuntimeLayout};
pub use metadata::{
    parse_provider_metadata_env, read_provider_metadata_env, render_provider_metadata_env,
    write_provider_metadata_env, ProviderRuntimeMetadata,
};
pub use selection::{LocalLinuxProviderKind, LocalLinuxProviderSelection};
pub use session::{ProviderSession, ProviderShell, RemoteJobRoot, WarmState};

/// File name of the metadata record kept at the root of the provider's
/// runtime tree, so a later run can tell which provider and layout built it.
pub const PROVIDER_METADATA_FILE: &str = "provider-metadata.env";

/// Version of the directory layout under the provider runtime root. It is
/// recorded in the metadata so that a layout change forces a cold start.
pub const PROVIDER_RUNTIME_LAYOUT_VERSION: &str = "v1";
