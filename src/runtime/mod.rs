//! The upstream-compatible runtime tree: the portable build-cell contract,
//! its request file, the Linux provider helpers and the per-OS integrations.

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
compile_error!("metalor supports Linux, macOS and Windows only");

pub mod linux_provider;
