//! Re-exec construction (upstream-api.md, `build_unshare_reexec_command`): validate, prepare the root on the
//! host, and return a `Command` that re-runs the caller inside fresh
//! namespaces. Where upstream wraps the caller in the `unshare` program,
//! this returns `Command::new(current_exe)` with a `pre_exec` hook (see
//! `crate::sys`) that unshares, makes `/` private and forks, so the
//! re-executed caller is PID 1 of the new PID namespace.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::emulator::binfmt_misc_per_user_namespace;
use super::host::{canonicalize_runtime_root_prefix, prepare_runtime_root};
use super::validate::validate_container_request;
use super::{ContainerRunCommand, LinuxNamespaceBackend};
use crate::sys;

/// Marks the re-executed process as running in private namespaces.
pub(crate) const ENV_PRIVATE_NS: &str = "METALOR_PRIVATE_NS";
/// The canonical runtime root prefix, for the inner checks.
pub(crate) const ENV_RUNTIME_ROOT_PREFIX: &str = "METALOR_RUNTIME_ROOT_PREFIX";
/// The caller's mount namespace, so the inner side can prove it left it.
pub(crate) const ENV_PARENT_MOUNT_NS: &str = "METALOR_PARENT_MOUNT_NS";

/// Options of the re-exec beyond upstream's two builders.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ReexecOptions {
    /// Which namespaces back the run.
    pub backend: LinuxNamespaceBackend,
    /// Add a network namespace (only `lo`). `--net` then precedes the
    /// trailing args so the inner side knows to bring `lo` up.
    pub disable_network: bool,
    /// When the re-executed child dies of signal N, the process the caller
    /// holds exits with 128+N instead of re-raising N on itself. A command
    /// line that `exec`s the returned `Command` wants this: its own caller
    /// then sees the shell's exit code convention.
    ///
    /// `exec` runs the namespace hook in the calling process itself, so
    /// only `exec` from a single-threaded process (the kernel refuses a new
    /// user namespace to a multithreaded one), and exit when `exec`
    /// returns: its error may come after the process entered the new
    /// namespaces.
    pub signal_as_exit_code: bool,
}

/// The privileged re-exec: [`build_unshare_reexec_command_with_backend`]
/// with [`LinuxNamespaceBackend::Privileged`].
pub fn build_unshare_reexec_command(
    current_exe: &Path,
    subcommand: &str,
    runtime_root_prefix: &Path,
    command: &ContainerRunCommand,
) -> Result<Command> {
    build_unshare_reexec_command_with_backend(
        current_exe,
        subcommand,
        runtime_root_prefix,
        command,
        LinuxNamespaceBackend::Privileged,
    )
}

/// Validates `command`, prepares its root under the prefix (creating it
/// and writing the sentinel), and returns `current_exe subcommand
/// <trailing args>` set up to start in private mount, PID, UTS and IPC
/// namespaces (plus a user namespace for the rootless backend).
pub fn build_unshare_reexec_command_with_backend(
    current_exe: &Path,
    subcommand: &str,
    runtime_root_prefix: &Path,
    command: &ContainerRunCommand,
    backend: LinuxNamespaceBackend,
) -> Result<Command> {
    let options = ReexecOptions {
        backend,
        disable_network: false,
        signal_as_exit_code: false,
    };
    build_unshare_reexec_command_with_options(
        current_exe,
        subcommand,
        runtime_root_prefix,
        command,
        options,
    )
}

/// [`build_unshare_reexec_command_with_backend`] with a network toggle.
pub fn build_unshare_reexec_command_with_options(
    current_exe: &Path,
    subcommand: &str,
    runtime_root_prefix: &Path,
    command: &ContainerRunCommand,
    options: ReexecOptions,
) -> Result<Command> {
    validate_container_request(command)?;
    let prefix = canonicalize_runtime_root_prefix(runtime_root_prefix)?;
    let root = prepare_runtime_root(&command.root, &prefix)?;
    let mut args: Vec<OsString> = Vec::new();
    if options.disable_network {
        args.push("--net".into());
    }
    args.extend(trailing_args(&root.path, command));
    // A foreign-arch rule registered in the host's binfmt_misc would
    // outlive a caller killed with -9 (the runner dies before it can
    // unregister) and keep pointing into the rootfs. In a user namespace
    // of its own, the run registers in its own instance, which the kernel
    // discards with the namespace.
    let private_binfmt = command.emulator.is_some()
        && options.backend == LinuxNamespaceBackend::Privileged
        && binfmt_misc_per_user_namespace();
    let mut reexec = namespace_command(current_exe, subcommand, &prefix, options, private_binfmt)?;
    reexec.args(args);
    Ok(reexec)
}

/// `current_exe subcommand` with the re-exec env vars and the namespace
/// hook; the caller appends its own trailing args.
pub(crate) fn private_namespace_command(
    current_exe: &Path,
    subcommand: &str,
    prefix: &Path,
    options: ReexecOptions,
) -> Result<Command> {
    namespace_command(current_exe, subcommand, prefix, options, false)
}

/// [`private_namespace_command`]; with `identity_userns`, the privileged
/// backend also gets a user namespace that maps every id to itself.
fn namespace_command(
    current_exe: &Path,
    subcommand: &str,
    prefix: &Path,
    options: ReexecOptions,
    identity_userns: bool,
) -> Result<Command> {
    let parent_ns = fs::read_link("/proc/self/ns/mnt")
        .context("failed to read parent mount namespace for container isolation check")?;
    let mut reexec = Command::new(current_exe);
    reexec
        .arg(subcommand)
        .env(ENV_PRIVATE_NS, "1")
        .env(ENV_RUNTIME_ROOT_PREFIX, prefix)
        .env(ENV_PARENT_MOUNT_NS, parent_ns);
    let rootless = options.backend == LinuxNamespaceBackend::RootlessUser;
    let mut plan = sys::NamespacePlan::new(
        rootless,
        options.disable_network,
        options.signal_as_exit_code,
    );
    if identity_userns {
        plan = plan.with_identity_user_namespace();
    }
    sys::install_namespace_hook(&mut reexec, plan);
    Ok(reexec)
}

/// Upstream's trailing args, in its order, with no `--` before argv.
fn trailing_args(root: &Path, command: &ContainerRunCommand) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--root".into(), root.into()];
    args.extend(["--cwd".into(), command.cwd.clone().into()]);
    for mount in &command.mounts {
        args.extend([
            "--mount-source".into(),
            mount.source.clone().into(),
            "--mount-dest".into(),
            mount.destination.clone().into(),
            "--mount-mode".into(),
            if mount.read_only { "ro" } else { "rw" }.into(),
        ]);
    }
    for (key, value) in &command.env {
        args.extend(["--env".into(), format!("{key}={value}").into()]);
    }
    if let Some(emulator) = &command.emulator {
        args.extend(["--emulator".into(), emulator.clone().into()]);
    }
    args.extend(["--executable".into(), command.executable.clone().into()]);
    args.extend(command.argv.iter().map(OsString::from));
    args
}
