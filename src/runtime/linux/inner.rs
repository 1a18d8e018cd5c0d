//! The inner runner (upstream-api.md, `run_isolated_container_command`): runs in the re-executed process, which
//! is PID 1 of fresh namespaces. It proves the isolation, mounts, `chroot`s
//! and spawns the payload.
//!
//! The root is opened once, by the isolation proof; the prefix and sentinel
//! checks, every mount target and the `chroot` (`fchdir` + `chroot(".")`)
//! go through that fd, so what was checked is what is entered.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};
use rustix::process::{setrlimit, Resource, Rlimit};

use super::emulator::{BinfmtRule, BINFMT_MISC_DIR};
use super::host::{
    canonicalize_runtime_root_prefix, open_dir_canonical, verify_sentinel, DirHandle,
};
use super::mounts::{
    attach_bind, clone_bind_source, is_directory, is_root_destination, mount_binfmt_misc_onto,
    mount_proc_onto, prepare_container_mount_target, TargetKind,
};
use super::overlay::{mount_overlay_onto, OverlayUpper, OverlayView};
use super::privileges::restrict_privileges;
use super::reexec::{ENV_PARENT_MOUNT_NS, ENV_PRIVATE_NS, ENV_RUNTIME_ROOT_PREFIX};
use super::validate::{mount_covers, validate_container_request};
use super::ContainerRunCommand;
use crate::runtime::ResourceLimits;
use crate::sys;

/// Host files bound into every container unless a user mount covers them.
const AUTO_DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"];
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How the run phase behaves beyond upstream's fixed defaults. Build cells
/// and `metalor run` set these; [`run_isolated_container_command`] uses
/// [`RunOptions::default`], which is upstream's behaviour.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunOptions {
    /// Bind the host's `/etc/resolv.conf` (upstream's
    /// `mount_host_network_config`; build cells without network skip it).
    pub mount_host_network_config: bool,
    /// rlimits applied to the runner and inherited by the payload.
    pub limits: ResourceLimits,
    /// The re-exec entered a new network namespace: bring `lo` up.
    pub disable_network: bool,
    /// Drop every capability outside Docker's default set from the
    /// payload's bounding set, and set no_new_privs. Upstream does neither.
    pub restrict_privileges: bool,
    /// Replace the runner with the payload (`execve`) instead of spawning
    /// it and waiting, as `unshare --fork chroot` does: the payload becomes
    /// PID 1 of the namespace, its exit status reaches the re-exec's waiting
    /// parent unchanged, and a fork is saved. The call then only returns on
    /// error. Ignored when an emulator is set, whose binfmt rule must be
    /// unregistered after the payload ends.
    pub exec_payload: bool,
    /// Run on an overlay of a pristine tree instead of the root directory
    /// itself: the overlay is mounted onto the root (an empty mount point
    /// holding only the sentinel) inside the private mount namespace,
    /// after the isolation proof and before every other mount.
    pub overlay: Option<OverlayView>,
    /// Run the payload as this `(uid, gid)`, with no supplementary groups,
    /// instead of as root.
    pub user: Option<(u32, u32)>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            mount_host_network_config: true,
            limits: ResourceLimits::default(),
            disable_network: false,
            restrict_privileges: false,
            exec_payload: false,
            overlay: None,
            user: None,
        }
    }
}

/// The payload ran but did not succeed. Its `Display` is upstream's
/// top-level message; callers that need the code downcast to it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerExit {
    /// The payload exited with a non-zero code.
    #[error("container command {executable} exited with status {status}")]
    Exited {
        /// The executable as requested.
        executable: String,
        /// Its wait status.
        status: ExitStatus,
    },
    /// The payload was killed by a signal.
    #[error("container command {executable} terminated by signal {signal}")]
    Signaled {
        /// The executable as requested.
        executable: String,
        /// The signal number.
        signal: i32,
    },
}

impl ContainerExit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn exit_code(&self) -> i32 {
        match self {
            ContainerExit::Exited { status, .. } => status.code().unwrap_or(1),
            ContainerExit::Signaled { signal, .. } => 128 + signal,
        }
    }
}

/// Runs `command` inside its root, in the private namespaces the re-exec
/// created; upstream's inner entry point. Validation comes first, then the
/// isolation proof, then the mounts, `chroot` and the payload. A payload
/// that fails is a [`ContainerExit`] error.
pub fn run_isolated_container_command(command: &ContainerRunCommand) -> Result<()> {
    run_isolated_container_command_with_options(command, &RunOptions::default())
}

/// [`run_isolated_container_command`] with explicit [`RunOptions`].
pub fn run_isolated_container_command_with_options(
    command: &ContainerRunCommand,
    options: &RunOptions,
) -> Result<()> {
    validate_container_request(command)?;
    let root = ensure_isolated_runtime(&command.root)?;
    let root = match &options.overlay {
        Some(view) => overlay_root(view, root)?,
        None => root,
    };
    run_phase(command, &root, options)
}

/// Mounts the overlay onto the proven root; its mount is the root for
/// everything after, as a bind at `/` would be.
fn overlay_root(view: &OverlayView, root: DirHandle) -> Result<DirHandle> {
    let fd = mount_overlay_onto(view, &root.fd).with_context(|| {
        format!(
            "failed to mount the run's overlay on {}",
            root.path.display()
        )
    })?;
    Ok(DirHandle {
        fd,
        path: root.path,
    })
}

/// Upstream's `ensure_isolated_runtime`: refuse to mount anything unless
/// this process is in a private mount namespace and the root carries the
/// sentinel of the declared prefix. Returns the root, opened once: the
/// checks here and the mounts and `chroot` after them all go through that
/// fd.
pub(crate) fn ensure_isolated_runtime(root: &Path) -> Result<DirHandle> {
    if std::env::var_os(ENV_PRIVATE_NS).is_none() {
        bail!("refusing to run container command without {ENV_PRIVATE_NS}=1");
    }
    let own = fs::read_link("/proc/self/ns/mnt")
        .context("failed to read /proc/self/ns/mnt for container isolation check")?;
    let reference = match std::env::var_os(ENV_PARENT_MOUNT_NS) {
        Some(parent) => PathBuf::from(parent),
        None => fs::read_link("/proc/1/ns/mnt")
            .context("failed to read /proc/1/ns/mnt for container isolation check")?,
    };
    if own == reference {
        bail!("refusing to run container command in the host mount namespace");
    }
    let prefix = std::env::var_os(ENV_RUNTIME_ROOT_PREFIX)
        .with_context(|| format!("missing required env {ENV_RUNTIME_ROOT_PREFIX}"))?;
    let prefix = canonicalize_runtime_root_prefix(Path::new(&prefix))?;
    open_container_root(root, &prefix)
}

/// Opens the root (following symlinks, as upstream's canonicalization
/// did), checks that it is under the prefix and that its sentinel holds
/// the prefix.
fn open_container_root(root: &Path, prefix: &Path) -> Result<DirHandle> {
    if root == Path::new("/") {
        bail!("container root must not be /");
    }
    let root = open_dir_canonical(root)
        .with_context(|| format!("failed to canonicalize container root {}", root.display()))?;
    if !root.path.starts_with(prefix) {
        bail!(
            "refusing to run container command outside runtime root prefix: {} is not under {}",
            root.path.display(),
            prefix.display()
        );
    }
    verify_sentinel(&root, prefix)?;
    Ok(root)
}

/// Upstream's `run_container_command_inner_with_options`, after the proof.
pub(crate) fn run_phase(
    command: &ContainerRunCommand,
    root: &DirHandle,
    options: &RunOptions,
) -> Result<()> {
    let binfmt = command
        .emulator
        .as_deref()
        .map(BinfmtRule::for_emulator)
        .transpose()?;
    // A user mount at `/` replaces the root for everything after it.
    let replaced = mount_user_binds(command, root)?;
    let base = replaced.as_ref().unwrap_or(&root.fd);
    let proc_target = prepare_container_mount_target(
        base,
        &root.path,
        "/proc",
        TargetKind::Directory,
        "container auto-mount target",
    )?;
    mount_proc_onto(&proc_target).with_context(|| {
        format!(
            "failed to mount proc at {}",
            root.path.join("proc").display()
        )
    })?;
    let binfmt_mount = match binfmt {
        Some(_) => Some(mount_binfmt_misc(base, &root.path)?),
        None => None,
    };
    mount_auto_binds(command, base, &root.path, options)?;
    if options.disable_network {
        sys::loopback_up().context("failed to bring up the loopback interface")?;
    }
    if options
        .overlay
        .as_ref()
        .is_some_and(|view| view.upper == OverlayUpper::ReadOnly)
    {
        // After the runner's own mount points were made in the tmpfs
        // upper; the binds on top keep their own modes.
        sys::mount_set_readonly(root.fd.as_fd())
            .with_context(|| format!("failed to make {} read-only", root.path.display()))?;
    }
    // On a writable overlay a missing cwd (an image's WorkingDir that no
    // layer made) is created, as runc and crun do; the writes land in the
    // upper, never in the pristine tree.
    let create_cwd = options
        .overlay
        .as_ref()
        .is_some_and(|view| view.upper != OverlayUpper::ReadOnly);
    enter_root(base, &root.path, &command.cwd, create_cwd)?;
    let (Some(rule), Some(mount)) = (binfmt, binfmt_mount) else {
        return start_payload(command, options, options.exec_payload);
    };
    let registered = rule.register(mount, &binfmt_misc_path(&root.path))?;
    let outcome = start_payload(command, options, false);
    // Always unregister; when both fail, the payload's error is the one
    // that matters.
    let unregistered = registered.unregister();
    outcome.and(unregistered)
}

/// Limits, privilege narrowing and descriptor hygiene, then the payload:
/// in place of this process when `in_place`, else as its child.
fn start_payload(
    command: &ContainerRunCommand,
    options: &RunOptions,
    in_place: bool,
) -> Result<()> {
    apply_limits(&options.limits)?;
    if options.restrict_privileges {
        restrict_privileges()?;
    }
    sys::cloexec_above_stderr().context("failed to mark inherited descriptors close-on-exec")?;
    let mut payload = payload_command(command);
    if let Some((uid, gid)) = options.user {
        payload.uid(uid).gid(gid);
    }
    if in_place {
        let err = payload.exec();
        return Err(err).with_context(|| spawn_failure(command));
    }
    let status = payload.status().with_context(|| spawn_failure(command))?;
    check_exit(command, status)
}

/// Where the run's binfmt_misc is, seen from the host.
fn binfmt_misc_path(root: &Path) -> PathBuf {
    root.join(BINFMT_MISC_DIR.trim_start_matches('/'))
}

/// Mounts binfmt_misc at `<root>/proc/sys/fs/binfmt_misc` (inside the
/// fresh procfs) and returns the mount's fd, through which the rule is
/// registered after the `chroot`.
fn mount_binfmt_misc(base: &OwnedFd, shown: &Path) -> Result<OwnedFd> {
    let target = prepare_container_mount_target(
        base,
        shown,
        BINFMT_MISC_DIR,
        TargetKind::Directory,
        "container auto-mount target",
    )?;
    mount_binfmt_misc_onto(&target).with_context(|| {
        format!(
            "failed to mount binfmt_misc at {}",
            binfmt_misc_path(shown).display()
        )
    })
}

/// Binds each user mount, in order. The source is cloned first and its
/// type read from the clone, so the target kind matches what is mounted.
/// Returns the mount that replaced the root, if one was made at `/`.
fn mount_user_binds(command: &ContainerRunCommand, root: &DirHandle) -> Result<Option<OwnedFd>> {
    let mut replaced: Option<OwnedFd> = None;
    for mount in &command.mounts {
        let tree = clone_bind_source(&mount.source)
            .with_context(|| format!("missing bind mount source {}", mount.source.display()))?;
        let failed = || {
            format!(
                "failed to bind mount {} onto {}",
                mount.source.display(),
                mount.destination
            )
        };
        let kind = match is_directory(&tree).with_context(failed)? {
            true => TargetKind::Directory,
            false => TargetKind::File,
        };
        let target = prepare_container_mount_target(
            replaced.as_ref().unwrap_or(&root.fd),
            &root.path,
            &mount.destination,
            kind,
            "container mount destination",
        )?;
        attach_bind(&tree, &target, mount.read_only).with_context(failed)?;
        if is_root_destination(&mount.destination) {
            replaced = Some(tree);
        }
    }
    Ok(replaced)
}

fn mount_auto_binds(
    command: &ContainerRunCommand,
    base: &OwnedFd,
    shown: &Path,
    options: &RunOptions,
) -> Result<()> {
    let covered = |target: &str| {
        command
            .mounts
            .iter()
            .any(|m| mount_covers(&m.destination, target))
    };
    let mut targets = Vec::with_capacity(5);
    if options.mount_host_network_config && !covered(RESOLV_CONF) {
        targets.push(RESOLV_CONF);
    }
    targets.extend(AUTO_DEVICES.iter().copied().filter(|d| !covered(d)));
    for target in targets {
        let failed = || format!("failed to bind mount {target} into the container");
        let tree = match clone_bind_source(Path::new(target)) {
            Ok(tree) => tree,
            // Upstream skips what the host lacks.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(failed),
        };
        let fd = prepare_container_mount_target(
            base,
            shown,
            target,
            TargetKind::File,
            "container auto-mount target",
        )?;
        attach_bind(&tree, &fd, false).with_context(failed)?;
    }
    Ok(())
}

/// `chroot` into the held root (`fchdir` to it, then `chroot(".")`),
/// then `chdir("/")` so no directory outside the root stays reachable,
/// then the requested cwd, first made (mode 0755, as root) when
/// `create_cwd` and it is missing. After the `chroot`, every component,
/// symlinks included, resolves inside the root.
fn enter_root(root: &OwnedFd, shown: &Path, cwd: &str, create_cwd: bool) -> Result<()> {
    rustix::process::fchdir(root)
        .and_then(|()| rustix::process::chroot("."))
        .with_context(|| format!("failed to chroot into {}", shown.display()))?;
    rustix::process::chdir("/").context("failed to chdir to /")?;
    if create_cwd && !Path::new(cwd).is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(cwd)
            .with_context(|| format!("failed to create the working directory {cwd}"))?;
    }
    rustix::process::chdir(cwd).with_context(|| format!("failed to chdir to {cwd}"))?;
    Ok(())
}

fn apply_limits(limits: &ResourceLimits) -> Result<()> {
    let pairs = [
        (limits.cpu_time_seconds, Resource::Cpu, "RLIMIT_CPU"),
        (limits.memory_bytes, Resource::As, "RLIMIT_AS"),
        (limits.max_processes, Resource::Nproc, "RLIMIT_NPROC"),
    ];
    for (value, resource, name) in pairs {
        if let Some(value) = value {
            let limit = Rlimit {
                current: Some(value),
                maximum: Some(value),
            };
            setrlimit(resource, limit).with_context(|| format!("set {name} for build cell"))?;
        }
    }
    Ok(())
}

/// The payload with exactly the requested environment; a bare name is
/// looked up on that environment's `PATH` inside the root.
fn payload_command(command: &ContainerRunCommand) -> Command {
    let mut payload = Command::new(&command.executable);
    payload
        .args(&command.argv)
        .env_clear()
        .envs(command.env.iter().map(|(k, v)| (k, v)));
    payload
}

fn spawn_failure(command: &ContainerRunCommand) -> String {
    format!("failed to spawn container command {}", command.executable)
}

/// Upstream's exit handling: success, or a [`ContainerExit`] error.
fn check_exit(command: &ContainerRunCommand, status: ExitStatus) -> Result<()> {
    let executable = &command.executable;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let exit = match status.signal() {
        Some(signal) => ContainerExit::Signaled {
            executable: executable.clone(),
            signal,
        },
        None => ContainerExit::Exited {
            executable: executable.clone(),
            status,
        },
    };
    Err(exit.into())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn sh() -> ContainerRunCommand {
        ContainerRunCommand {
            root: PathBuf::from("/srv/root"),
            cwd: "/".into(),
            mounts: Vec::new(),
            env: Vec::new(),
            emulator: None,
            executable: "sh".into(),
            argv: Vec::new(),
        }
    }

    #[test]
    fn payload_failures_read_as_upstreams_messages() {
        assert!(check_exit(&sh(), ExitStatus::from_raw(0)).is_ok());

        let err = check_exit(&sh(), ExitStatus::from_raw(3 << 8)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container command sh exited with status exit status: 3"
        );
        assert_eq!(err.downcast_ref::<ContainerExit>().unwrap().exit_code(), 3);

        let err = check_exit(&sh(), ExitStatus::from_raw(libc::SIGTERM)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container command sh terminated by signal 15"
        );
        assert_eq!(
            err.downcast_ref::<ContainerExit>().unwrap().exit_code(),
            143
        );
    }
}
