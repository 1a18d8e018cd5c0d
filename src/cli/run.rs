//! `metalor run [--bind SRC:DST[:ro]]... [--env K=V]... [--cwd DIR]
//! [--arch ARCH] [--net none] [--rootless] [--privileged] --rootfs DIR --
//! CMD [ARG]...`, or `--image REF [--pull missing|always|never] [--upper
//! DIR | --read-only] [--entrypoint CMD] [--user U[:G]] [--store DIR]
//! [-- CMD [ARG]...]` in place of `--rootfs`.
//!
//! Goes through the library's own re-exec: the rootfs's parent directory is
//! the runtime root prefix, and the hidden `__inner-run` verb runs the
//! command inside the namespaces. With `--image`, the root is the image's
//! mount point in the store, and the inner verb mounts the overlay there.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use metalor::runtime::linux::{build_unshare_reexec_command_with_options, ReexecOptions};
use metalor::{prepare_runtime_emulator, BindMount, ContainerRunCommand, LinuxNamespaceBackend};

use super::inner::{ENV_KEEP_PRIVILEGES, INNER_RUN_VERB};

/// Arguments of `metalor run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Bind a host path into the rootfs, read-only with `:ro`.
    #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
    binds: Vec<String>,
    /// Set a variable in the command's environment, which starts empty.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the rootfs (`/`, or the image's
    /// `WorkingDir`, by default).
    #[arg(long)]
    cwd: Option<String>,
    /// The rootfs's architecture (x86_64/amd64, aarch64/arm64, riscv64).
    /// When it is not the host's, `qemu-ARCH-static` from `PATH` is staged
    /// in the rootfs and registered with binfmt_misc for this run.
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// `none`: a private network namespace with only `lo`.
    #[arg(long, value_name = "none")]
    net: Option<String>,
    /// Use a user namespace mapping root to the caller (no privilege needed).
    #[arg(long)]
    rootless: bool,
    /// Keep every capability and allow privilege gains (no no_new_privs).
    #[arg(long)]
    privileged: bool,
    /// The rootfs directory to run in.
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    rootfs: Option<PathBuf>,
    #[command(flatten)]
    image: super::run_image::ImageArgs,
    /// The command and its arguments (with `--image`, they replace the
    /// image's `Cmd`).
    #[arg(last = true, value_name = "CMD", required_unless_present = "image")]
    command: Vec<String>,
}

/// Runs the command in place of this process, which then exits with the
/// payload's code (128+N for signal N). Returns only when the run could not
/// start.
pub fn run(args: &RunArgs) -> Result<Infallible> {
    let Some(rootfs) = &args.rootfs else {
        return super::run_image::run(args);
    };
    let (prefix, root) = split_rootfs(rootfs)?;
    let emulator = match &args.arch {
        Some(arch) => prepare_runtime_emulator(&root, std::env::consts::ARCH, arch)?,
        None => None,
    };
    let command = ContainerRunCommand {
        root,
        cwd: args.cwd.clone().unwrap_or_else(|| "/".to_owned()),
        mounts: args.parsed_binds()?,
        env: args.parsed_env()?,
        emulator,
        executable: args.command[0].clone(),
        argv: args.command[1..].to_vec(),
    };
    exec_run(args, &prefix, &command, &[])
}

impl RunArgs {
    pub(super) fn parsed_binds(&self) -> Result<Vec<BindMount>> {
        self.binds.iter().map(|b| parse_bind(b)).collect()
    }

    pub(super) fn parsed_env(&self) -> Result<Vec<(String, String)>> {
        self.env.iter().map(|e| parse_env(e)).collect()
    }

    pub(super) fn image_args(&self) -> &super::run_image::ImageArgs {
        &self.image
    }

    pub(super) fn arch(&self) -> Option<&str> {
        self.arch.as_deref()
    }

    pub(super) fn rootless(&self) -> bool {
        self.rootless
    }

    pub(super) fn cwd(&self) -> Option<&str> {
        self.cwd.as_deref()
    }

    pub(super) fn command(&self) -> &[String] {
        &self.command
    }
}

/// Starts `command` through the re-exec, with `extra_env` for the inner
/// verb, in place of this process.
pub(super) fn exec_run(
    args: &RunArgs,
    prefix: &Path,
    command: &ContainerRunCommand,
    extra_env: &[(&str, std::ffi::OsString)],
) -> Result<Infallible> {
    let disable_network = match args.net.as_deref() {
        None => false,
        Some("none") => true,
        Some(other) => bail!("unsupported --net mode {other}: only none is supported"),
    };
    let backend = if args.rootless {
        LinuxNamespaceBackend::RootlessUser
    } else {
        LinuxNamespaceBackend::Privileged
    };
    let current_exe = std::env::current_exe().context("failed to locate the metalor binary")?;
    let options = ReexecOptions {
        backend,
        disable_network,
        signal_as_exit_code: true,
    };
    let mut reexec = build_unshare_reexec_command_with_options(
        &current_exe,
        INNER_RUN_VERB,
        prefix,
        command,
        options,
    )?;
    if args.privileged {
        reexec.env(ENV_KEEP_PRIVILEGES, "1");
    }
    reexec.envs(extra_env.iter().map(|(k, v)| (k, v)));
    // This process enters the namespaces itself and becomes the waiting
    // parent that exits with the payload's code: no extra fork, and killing
    // it takes the whole container down.
    let err = reexec.exec();
    // This process is single-threaded, so the pre_exec hook's only EINVAL
    // is making `/` private where `/` is not a mount point (a plain
    // chroot): say what to do about it.
    let hint = if err.raw_os_error() == Some(libc::EINVAL) {
        " (is / a mount point? metalor run makes / recursively private; \
         under a plain chroot, bind-mount the root onto itself first)"
    } else {
        ""
    };
    Err(anyhow::Error::new(err).context(format!("failed to start {}{hint}", current_exe.display())))
}

/// The canonical parent of the rootfs is the prefix; the root is spelled
/// under it, as the prefix rules require. The rootfs must exist.
fn split_rootfs(rootfs: &Path) -> Result<(PathBuf, PathBuf)> {
    let absolute = std::path::absolute(rootfs)
        .with_context(|| format!("failed to resolve rootfs {}", rootfs.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        bail!("rootfs {} must have a parent directory", rootfs.display());
    };
    let prefix = parent
        .canonicalize()
        .with_context(|| format!("failed to canonicalize {}", parent.display()))?;
    let root = prefix.join(name);
    // The library would create a missing root; for the CLI a missing
    // rootfs is a typo, not a request for an empty one.
    if !root.is_dir() {
        bail!("rootfs {} is not a directory", rootfs.display());
    }
    Ok((prefix, root))
}

/// `SRC:DST` or `SRC:DST:ro` / `SRC:DST:rw`.
fn parse_bind(spec: &str) -> Result<BindMount> {
    let (rest, read_only) = if let Some(rest) = spec.strip_suffix(":ro") {
        (rest, true)
    } else {
        (spec.strip_suffix(":rw").unwrap_or(spec), false)
    };
    let Some((source, destination)) = rest.split_once(':') else {
        bail!("invalid --bind {spec}: expected SRC:DST[:ro]");
    };
    Ok(BindMount {
        source: PathBuf::from(source),
        destination: destination.to_string(),
        read_only,
    })
}

fn parse_env(pair: &str) -> Result<(String, String)> {
    let Some((key, value)) = pair.split_once('=') else {
        bail!("invalid --env {pair}: expected K=V");
    };
    Ok((key.to_string(), value.to_string()))
}
