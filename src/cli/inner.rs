//! The hidden verb the re-exec runs inside the namespaces: parses
//! upstream's trailing args back into a `ContainerRunCommand` and calls the
//! inner runner. Not a user interface; `metalor run` is.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use metalor::runtime::linux::{
    run_isolated_container_command_with_options, ContainerExit, OverlayUpper, OverlayView,
    RunOptions,
};
use metalor::{BindMount, ContainerRunCommand};

/// The subcommand name `metalor run` re-executes.
pub const INNER_RUN_VERB: &str = "__inner-run";
/// Set by `metalor run --privileged`: keep every capability.
pub const ENV_KEEP_PRIVILEGES: &str = "METALOR_RUN_KEEP_PRIVILEGES";
/// Set by `metalor run --image`: the pristine tree to mount as lowerdir.
pub const ENV_OVERLAY_LOWER: &str = "METALOR_RUN_OVERLAY_LOWER";
/// `tmpfs`, `ro` or `dir:PATH`: where the overlay's writes go.
pub const ENV_OVERLAY_UPPER: &str = "METALOR_RUN_OVERLAY_UPPER";
/// Mount the overlay with `userxattr` (the rootless backend).
pub const ENV_OVERLAY_USERXATTR: &str = "METALOR_RUN_OVERLAY_USERXATTR";
/// `UID:GID` to run the payload as.
pub const ENV_RUN_USER: &str = "METALOR_RUN_USER";

/// Runs the payload in place of this process. Returns only when the run
/// failed before the payload started (or, with an emulator, the payload's
/// exit code: 128+N for signal N).
pub fn run(args: &[OsString]) -> Result<i32> {
    let (command, disable_network) = parse_trailing_args(args)?;
    let mut options = RunOptions::default();
    options.disable_network = disable_network;
    options.mount_host_network_config = !disable_network;
    options.restrict_privileges = std::env::var_os(ENV_KEEP_PRIVILEGES).is_none();
    // The payload replaces this process (it becomes PID 1), and the
    // re-exec's waiting parent passes its status on: the exit code, or the
    // signal (re-raised, or as 128+N when the re-exec was built with
    // `signal_as_exit_code`, as `metalor run` builds it).
    options.exec_payload = true;
    options.overlay = overlay_from_env()?;
    options.user = user_from_env()?;
    match run_isolated_container_command_with_options(&command, &options) {
        Ok(()) => Ok(0),
        Err(err) => match err.downcast_ref::<ContainerExit>() {
            Some(exit) => Ok(exit.exit_code()),
            None => Err(err),
        },
    }
}

/// The overlay `metalor run --image` asked for, if any. The payload's
/// environment is built from scratch, so these never reach it.
fn overlay_from_env() -> Result<Option<OverlayView>> {
    let Some(lower) = std::env::var_os(ENV_OVERLAY_LOWER) else {
        return Ok(None);
    };
    let upper = std::env::var_os(ENV_OVERLAY_UPPER).unwrap_or_else(|| "tmpfs".into());
    let upper = match upper.to_str() {
        Some("tmpfs") => OverlayUpper::Tmpfs,
        Some("ro") => OverlayUpper::ReadOnly,
        _ => match upper.as_encoded_bytes().strip_prefix(b"dir:") {
            Some(dir) => OverlayUpper::Dir(PathBuf::from(std::ffi::OsStr::from_bytes(dir))),
            None => bail!("invalid {ENV_OVERLAY_UPPER} {}", upper.to_string_lossy()),
        },
    };
    Ok(Some(OverlayView {
        lower: PathBuf::from(lower),
        upper,
        userxattr: std::env::var_os(ENV_OVERLAY_USERXATTR).is_some(),
    }))
}

fn user_from_env() -> Result<Option<(u32, u32)>> {
    let Some(value) = std::env::var_os(ENV_RUN_USER) else {
        return Ok(None);
    };
    let value = utf8(value, ENV_RUN_USER)?;
    let parsed = value
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    parsed
        .map(Some)
        .with_context(|| format!("invalid {ENV_RUN_USER} {value}"))
}

fn utf8(value: OsString, flag: &str) -> Result<String> {
    value
        .into_string()
        .map_err(|v| anyhow::anyhow!("{flag} value is not UTF-8: {}", v.to_string_lossy()))
}

/// `[--net] --root R --cwd C (--mount-source S --mount-dest D --mount-mode
/// ro|rw)* (--env K=V)* [--emulator E] --executable X [ARG]...`
fn parse_trailing_args(args: &[OsString]) -> Result<(ContainerRunCommand, bool)> {
    let mut iter = args.iter().cloned();
    let mut disable_network = false;
    let mut root = None;
    let mut cwd = None;
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    let mut emulator = None;
    let mut pending_source: Option<PathBuf> = None;
    let mut pending_dest: Option<String> = None;
    let executable = loop {
        let Some(flag) = iter.next() else {
            bail!("missing --executable");
        };
        let flag = utf8(flag, "flag")?;
        if flag == "--net" {
            disable_network = true;
            continue;
        }
        let value = iter
            .next()
            .with_context(|| format!("missing value after {flag}"))?;
        match flag.as_str() {
            "--root" => root = Some(PathBuf::from(value)),
            "--cwd" => cwd = Some(utf8(value, "--cwd")?),
            "--mount-source" => pending_source = Some(PathBuf::from(value)),
            "--mount-dest" => pending_dest = Some(utf8(value, "--mount-dest")?),
            "--mount-mode" => {
                let read_only = match utf8(value, "--mount-mode")?.as_str() {
                    "ro" => true,
                    "rw" => false,
                    other => bail!("invalid --mount-mode {other}"),
                };
                let (Some(source), Some(destination)) =
                    (pending_source.take(), pending_dest.take())
                else {
                    bail!("--mount-mode without --mount-source and --mount-dest");
                };
                mounts.push(BindMount {
                    source,
                    destination,
                    read_only,
                });
            }
            "--env" => {
                let pair = utf8(value, "--env")?;
                let (key, value) = pair.split_once('=').context("--env value without '='")?;
                env.push((key.to_string(), value.to_string()));
            }
            "--emulator" => emulator = Some(utf8(value, "--emulator")?),
            "--executable" => break utf8(value, "--executable")?,
            other => bail!("unexpected argument {other}"),
        }
    };
    let argv = iter
        .map(|a| utf8(a, "argument"))
        .collect::<Result<Vec<_>>>()?;
    let command = ContainerRunCommand {
        root: root.context("missing --root")?,
        cwd: cwd.context("missing --cwd")?,
        mounts,
        env,
        emulator,
        executable,
        argv,
    };
    Ok((command, disable_network))
}
