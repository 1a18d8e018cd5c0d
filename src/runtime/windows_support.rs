//! The portable part of the Windows integration: the broker's worker
//! target and request, AppContainer naming, and the WSL provider (output
//! parsing, distro choice and `wsl.exe` command lines).
//!
//! It is compiled on every OS so that Linux CI tests it; the gated
//! `runtime::windows` module re-exports it under upstream's names. The
//! only functions that touch the host are the ones that run `wsl.exe`.
#![forbid(unsafe_code)]
#![cfg_attr(not(target_os = "windows"), allow(dead_code))]

use crate::runtime::worker_support::{
    load_request_from_env_var, run_host_command, validate_dot_identifier,
};
use crate::runtime::{build_cell_request_path, write_build_cell_request, BuildCellSpec};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable through which the broker passes the request
/// file path to the worker process.
pub const WORKER_REQUEST_ENV: &str = "METALOR_WINDOWS_BUILD_CELL_REQUEST";

/// The distro chosen when the caller names none and it is installed, or
/// when nothing is installed (then it is auto-installed).
pub const DEFAULT_WSL_DISTRO: &str = "Ubuntu-24.04";

const WSL_EXE: &str = "wsl.exe";

/// The worker program the broker launches for a build cell.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WorkerTarget {
    /// The worker executable; absolute so no search path is involved.
    pub executable: PathBuf,
    /// An optional first argument selecting the worker mode of a
    /// multi-purpose binary.
    pub subcommand: Option<String>,
}

impl WorkerTarget {
    /// Builds a target and validates it, so a bad target fails before
    /// anything is launched.
    pub fn new(executable: impl Into<PathBuf>, subcommand: Option<String>) -> Result<Self> {
        let target = Self {
            executable: executable.into(),
            subcommand,
        };
        validate_worker_target(&target)?;
        Ok(target)
    }
}

/// Checks that the executable is absolute and that a subcommand, if any,
/// is not empty (an empty first argument would confuse most parsers).
pub fn validate_worker_target(target: &WorkerTarget) -> Result<()> {
    if !target.executable.is_absolute() {
        bail!(
            "Windows worker executable must be absolute: {}",
            target.executable.display()
        );
    }
    if target.subcommand.as_deref() == Some("") {
        bail!("Windows worker subcommand must not be empty");
    }
    Ok(())
}

/// Checks an application identifier against the dot-identifier rules,
/// since it names the AppContainer profile.
pub fn validate_application_id(application_id: &str) -> Result<()> {
    validate_dot_identifier(application_id, "application identifier")
}

/// Derives an AppContainer profile name from an application id by turning
/// every character other than ASCII letters, digits, `.`, `-` and `_` into
/// `-`.
pub fn appcontainer_profile_name(application_id: &str) -> String {
    application_id
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_') {
                ch
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes the request file into `scratch` and returns its path, which
/// `build_worker_command` passes to the worker.
pub fn prepare_worker_request(scratch: &Path, spec: &BuildCellSpec) -> Result<PathBuf> {
    let request_path = build_cell_request_path(scratch);
    write_build_cell_request(&request_path, spec)?;
    Ok(request_path)
}

/// The broker's command for the worker: the executable, the optional
/// subcommand, and the request path in `WORKER_REQUEST_ENV`. The parent
/// environment is kept; the worker clears it for the job itself.
pub fn build_worker_command(target: &WorkerTarget, request_path: &Path) -> Result<Command> {
    validate_worker_target(target)?;
    let mut command = Command::new(&target.executable);
    if let Some(subcommand) = &target.subcommand {
        command.arg(subcommand);
    }
    command.env(WORKER_REQUEST_ENV, request_path.display().to_string());
    Ok(command)
}

/// Reads the request whose path the broker put in `WORKER_REQUEST_ENV`;
/// this is how the worker learns its job.
pub fn load_request_from_env() -> Result<BuildCellSpec> {
    load_request_from_env_var(
        WORKER_REQUEST_ENV,
        "missing required Windows worker request environment variable",
    )
}

/// The distro to use and whether `WslProvider::ensure_available` may
/// install it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WslResolution {
    /// The distro name as `wsl.exe --distribution` expects it.
    pub distro: String,
    /// True when metalor chose the default distro and may install it.
    pub auto_install: bool,
}

/// A WSL 2 distro used as the local Linux provider on Windows.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WslProvider {
    distro: String,
}

impl WslProvider {
    /// Stores the distro name; a blank one would make `wsl.exe` pick the
    /// user's default distro silently, so it is refused.
    pub fn new(distro: impl Into<String>) -> Result<Self> {
        let distro = distro.into();
        if distro.trim().is_empty() {
            bail!("WSL distro name must not be empty");
        }
        Ok(Self { distro })
    }

    /// The distro name.
    pub fn distro(&self) -> &str {
        &self.distro
    }

    /// Makes sure the distro exists (installing it when allowed) and can
    /// run a root shell, logging every `wsl.exe` call into `log`.
    pub fn ensure_available(&self, auto_install: bool, log: &mut String) -> Result<()> {
        let installed = installed_wsl_distros()?;
        self.ensure_with(&installed, auto_install, log, &mut |args, log| {
            run_host_command(OsStr::new(WSL_EXE), args, log).map(drop)
        })
    }

    /// The logic of `ensure_available` with the installed list and the
    /// host runner passed in, so it is testable without `wsl.exe`.
    fn ensure_with(
        &self,
        installed: &[String],
        auto_install: bool,
        log: &mut String,
        run: &mut dyn FnMut(&[&str], &mut String) -> Result<()>,
    ) -> Result<()> {
        if !installed.iter().any(|name| name == &self.distro) {
            if !auto_install {
                bail!(
                    "WSL distro '{}' is not installed and auto-install is disabled",
                    self.distro
                );
            }
            run(&install_args(&self.distro), log)
                .with_context(|| format!("failed to install WSL distro '{}'", self.distro))?;
        }
        run(&root_shell_args(&self.distro, "true"), log)
            .with_context(|| format!("failed to use WSL distro '{}'", self.distro))
    }

    /// A command that runs `script` with `bash -lc` as root in the distro.
    // TODO(merge): impl linux_provider::ProviderShell
    pub fn spawn_shell(&self, script: &str) -> Result<Command> {
        let mut command = Command::new(WSL_EXE);
        command.args(root_shell_args(&self.distro, script));
        Ok(command)
    }
}

fn install_args(distro: &str) -> [&str; 5] {
    [
        "--install",
        "--distribution",
        distro,
        "--no-launch",
        "--web-download",
    ]
}

fn root_shell_args<'a>(distro: &'a str, script: &'a str) -> [&'a str; 8] {
    [
        "--distribution",
        distro,
        "--user",
        "root",
        "--",
        "bash",
        "-lc",
        script,
    ]
}

/// Lists installed distros with `wsl.exe --list --quiet`.
pub fn installed_wsl_distros() -> Result<Vec<String>> {
    let mut log = String::new();
    let output = run_host_command(OsStr::new(WSL_EXE), &["--list", "--quiet"], &mut log)?;
    parse_wsl_list_output(&output.stdout)
}

/// Picks the distro: a non-blank explicit name (trimmed) as is, otherwise
/// the installed default, else the first installed distro, else the
/// default to be installed. `wsl.exe` runs only when no name is given.
pub fn resolve_wsl_distro(explicit: Option<&str>) -> Result<WslResolution> {
    resolve_wsl_distro_with(explicit, installed_wsl_distros)
}

/// `resolve_wsl_distro` with the installed-distro lookup passed in, so the
/// choice is testable without `wsl.exe`.
fn resolve_wsl_distro_with(
    explicit: Option<&str>,
    installed: impl FnOnce() -> Result<Vec<String>>,
) -> Result<WslResolution> {
    if let Some(name) = explicit.map(str::trim).filter(|name| !name.is_empty()) {
        return Ok(WslResolution {
            distro: name.to_string(),
            auto_install: false,
        });
    }
    let installed = installed()?;
    let default = || WslResolution {
        distro: DEFAULT_WSL_DISTRO.to_string(),
        auto_install: true,
    };
    if installed.iter().any(|name| name == DEFAULT_WSL_DISTRO) {
        return Ok(default());
    }
    Ok(installed
        .into_iter()
        .next()
        .map(|distro| WslResolution {
            distro,
            auto_install: false,
        })
        .unwrap_or_else(default))
}

/// Parses `wsl.exe --list --quiet` output. `wsl.exe` writes UTF-16LE to a
/// pipe (often without a BOM), so the bytes count as UTF-16LE when they
/// start with `FF FE` or have a zero byte at an odd index, and as strict
/// UTF-8 otherwise. Lines are trimmed, a leading U+FEFF is dropped, and
/// empty lines are skipped.
pub fn parse_wsl_list_output(stdout: &[u8]) -> Result<Vec<String>> {
    let text = decode_wsl_output(stdout)?;
    Ok(text
        .lines()
        .map(|line| line.trim().trim_start_matches('\u{feff}'))
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect())
}

fn decode_wsl_output(bytes: &[u8]) -> Result<String> {
    let utf16 =
        bytes.starts_with(&[0xff, 0xfe]) || bytes.iter().skip(1).step_by(2).any(|&b| b == 0);
    if !utf16 {
        return String::from_utf8(bytes.to_vec()).context("wsl.exe output was not valid UTF-8");
    }
    // An odd trailing byte cannot be part of a UTF-16 unit; treat it as
    // the low half of a unit with a zero high byte rather than dropping it.
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]))
        .collect();
    String::from_utf16(&units).context("wsl.exe output was not valid UTF-16LE")
}
