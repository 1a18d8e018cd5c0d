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
}

impl crate::runtime::linux_provider::ProviderShell for WslProvider {
    /// A command that runs `script` with `bash -lc` as root in the distro.
    fn spawn_shell(&self, script: &str) -> Result<Command> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::linux_provider::ProviderShell;
    use crate::runtime::{read_build_cell_request, CommandSpec, HostPath, WorkspaceSeed};
    use std::cell::Cell;

    fn error_text(result: Result<impl std::fmt::Debug>) -> String {
        result.expect_err("expected an error").to_string()
    }

    fn utf16le(text: &str, bom: bool) -> Vec<u8> {
        let mut bytes = if bom { vec![0xff, 0xfe] } else { Vec::new() };
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        bytes
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn worker_target_validation_messages() {
        let absolute = std::env::temp_dir().join("worker.exe");
        let target = WorkerTarget::new(&absolute, Some("build".to_string())).unwrap();
        validate_worker_target(&target).unwrap();
        WorkerTarget::new(&absolute, None).unwrap();
        assert_eq!(
            error_text(WorkerTarget::new("worker.exe", None)),
            "Windows worker executable must be absolute: worker.exe"
        );
        assert_eq!(
            error_text(WorkerTarget::new(&absolute, Some(String::new()))),
            "Windows worker subcommand must not be empty"
        );
    }

    #[test]
    fn broker_command_passes_the_request_path() {
        let executable = std::env::temp_dir().join("worker.exe");
        let request = Path::new("/scratch/build-cell-request.json");
        let target = WorkerTarget::new(&executable, Some("worker-run".to_string())).unwrap();
        let command = build_worker_command(&target, request).unwrap();
        assert_eq!(command.get_program(), executable.as_os_str());
        assert_eq!(command.get_args().collect::<Vec<_>>(), ["worker-run"]);
        let envs: Vec<_> = command.get_envs().collect();
        assert_eq!(
            envs,
            [(
                OsStr::new("METALOR_WINDOWS_BUILD_CELL_REQUEST"),
                Some(request.as_os_str())
            )]
        );

        let bare = WorkerTarget::new(&executable, None).unwrap();
        let command = build_worker_command(&bare, request).unwrap();
        assert_eq!(command.get_args().count(), 0);

        let by_hand = WorkerTarget {
            executable: PathBuf::from("relative.exe"),
            subcommand: None,
        };
        assert_eq!(
            error_text(build_worker_command(&by_hand, request)),
            "Windows worker executable must be absolute: relative.exe"
        );
    }

    #[test]
    fn application_ids_and_profile_names() {
        validate_application_id("com.example.metalorexample").unwrap();
        assert_eq!(
            error_text(validate_application_id("")),
            "application identifier must not be empty"
        );
        assert_eq!(
            error_text(validate_application_id("com..x")),
            "application identifier must be dot-separated and must not contain empty components: com..x"
        );
        assert_eq!(
            error_text(validate_application_id("com.x y")),
            "application identifier must contain only ASCII letters, digits, '-', '_', and '.': com.x y"
        );
        assert_eq!(
            appcontainer_profile_name("com.example.metalorexample"),
            "com.example.metalorexample"
        );
        assert_eq!(
            appcontainer_profile_name("My App/v2:caf\u{e9}_x-y.z"),
            "My-App-v2-caf-_x-y.z"
        );
    }

    #[test]
    fn worker_request_is_written_and_loaded() {
        let tmp = tempfile::TempDir::new().unwrap();
        let spec = BuildCellSpec {
            root: HostPath::new("/root"),
            scratch: HostPath::new(tmp.path()),
            workspace_path: "/workspace".into(),
            workspace_seed: WorkspaceSeed::Empty,
            imports: Vec::new(),
            caches: Vec::new(),
            exports: Vec::new(),
            command: CommandSpec {
                cwd: "/workspace".into(),
                executable: "pwsh.exe".to_string(),
                argv: Vec::new(),
            },
            env: Vec::new(),
            network: Default::default(),
            limits: Default::default(),
            cleanup: Default::default(),
        };
        let request = prepare_worker_request(tmp.path(), &spec).unwrap();
        assert_eq!(request, tmp.path().join("build-cell-request.json"));
        assert_eq!(read_build_cell_request(&request).unwrap(), spec);
    }

    #[test]
    fn worker_request_env_loader_reports_a_missing_variable() {
        // Nothing in the test suite sets this variable.
        assert!(std::env::var_os(WORKER_REQUEST_ENV).is_none());
        assert_eq!(
            error_text(load_request_from_env()),
            "missing required Windows worker request environment variable"
        );
    }

    #[test]
    fn wsl_list_output_decodes_utf16le_and_utf8() {
        let expected = names(&["Ubuntu-24.04", "Debian"]);
        let text = "Ubuntu-24.04\r\nDebian\r\n";
        assert_eq!(
            parse_wsl_list_output(&utf16le(text, true)).unwrap(),
            expected
        );
        assert_eq!(
            parse_wsl_list_output(&utf16le(text, false)).unwrap(),
            expected
        );
        assert_eq!(parse_wsl_list_output(text.as_bytes()).unwrap(), expected);
        // A BOM character, padding and blank lines are dropped.
        assert_eq!(
            parse_wsl_list_output("\u{feff}Ubuntu-24.04\n  \r\n  Debian  \n\n".as_bytes()).unwrap(),
            expected
        );
        assert_eq!(
            parse_wsl_list_output(&utf16le("\u{feff}Alpine\r\n\r\n", false)).unwrap(),
            names(&["Alpine"])
        );
        assert!(parse_wsl_list_output(b"").unwrap().is_empty());
        assert!(parse_wsl_list_output(&[0xff, 0xfe]).unwrap().is_empty());
    }

    #[test]
    fn wsl_list_output_rejects_undecodable_bytes() {
        assert_eq!(
            error_text(parse_wsl_list_output(&[b'a', 0xc3, b'b'])),
            "wsl.exe output was not valid UTF-8"
        );
        // A lone high surrogate (D800) is not UTF-16.
        assert_eq!(
            error_text(parse_wsl_list_output(&[0xff, 0xfe, 0x00, 0xd8, b'a', 0])),
            "wsl.exe output was not valid UTF-16LE"
        );
    }

    #[test]
    fn wsl_distro_resolution_prefers_explicit_then_default_then_first() {
        let called = Cell::new(false);
        let resolved = resolve_wsl_distro_with(Some("  Debian \n"), || {
            called.set(true);
            Ok(Vec::new())
        })
        .unwrap();
        assert_eq!(
            resolved,
            WslResolution {
                distro: "Debian".to_string(),
                auto_install: false
            }
        );
        assert!(
            !called.get(),
            "an explicit distro must not list installed ones"
        );

        let resolve = |explicit: Option<&str>, installed: &[&str]| {
            resolve_wsl_distro_with(explicit, || Ok(names(installed))).unwrap()
        };
        let default = WslResolution {
            distro: DEFAULT_WSL_DISTRO.to_string(),
            auto_install: true,
        };
        assert_eq!(resolve(None, &["Debian", "Ubuntu-24.04"]), default);
        assert_eq!(resolve(Some("   "), &["Ubuntu-24.04"]), default);
        assert_eq!(
            resolve(None, &["Debian", "Alpine"]),
            WslResolution {
                distro: "Debian".to_string(),
                auto_install: false
            }
        );
        assert_eq!(resolve(None, &[]), default);
        assert_eq!(DEFAULT_WSL_DISTRO, "Ubuntu-24.04");

        let failure = resolve_wsl_distro_with(None, || bail!("wsl.exe is missing"));
        assert_eq!(error_text(failure), "wsl.exe is missing");
    }

    #[test]
    fn wsl_provider_validates_and_builds_wsl_argv() {
        let provider = WslProvider::new(DEFAULT_WSL_DISTRO).unwrap();
        assert_eq!(provider.distro(), "Ubuntu-24.04");
        let command = provider.spawn_shell("printf ready").unwrap();
        assert_eq!(command.get_program(), "wsl.exe");
        assert_eq!(
            command.get_args().collect::<Vec<_>>(),
            [
                "--distribution",
                "Ubuntu-24.04",
                "--user",
                "root",
                "--",
                "bash",
                "-lc",
                "printf ready"
            ]
        );
        assert_eq!(
            error_text(WslProvider::new("  ")),
            "WSL distro name must not be empty"
        );
    }

    fn ensure_calls(
        installed: &[&str],
        auto_install: bool,
        fail: bool,
    ) -> (Result<()>, Vec<Vec<String>>) {
        let provider = WslProvider::new("Debian").unwrap();
        let mut calls = Vec::new();
        let mut log = String::new();
        let result = provider.ensure_with(
            &names(installed),
            auto_install,
            &mut log,
            &mut |args, _log| {
                calls.push(args.iter().map(|arg| arg.to_string()).collect());
                if fail {
                    bail!("wsl.exe failed");
                }
                Ok(())
            },
        );
        (result, calls)
    }

    #[test]
    fn wsl_provider_ensure_installs_only_when_allowed() {
        let probe = names(&[
            "--distribution",
            "Debian",
            "--user",
            "root",
            "--",
            "bash",
            "-lc",
            "true",
        ]);
        let install = names(&[
            "--install",
            "--distribution",
            "Debian",
            "--no-launch",
            "--web-download",
        ]);

        let (result, calls) = ensure_calls(&["Debian"], false, false);
        result.unwrap();
        assert_eq!(calls, std::slice::from_ref(&probe));

        let (result, calls) = ensure_calls(&["Ubuntu-24.04"], false, false);
        assert_eq!(
            error_text(result),
            "WSL distro 'Debian' is not installed and auto-install is disabled"
        );
        assert!(calls.is_empty());

        let (result, calls) = ensure_calls(&[], true, false);
        result.unwrap();
        assert_eq!(calls, [install, probe.clone()]);

        let (result, _) = ensure_calls(&[], true, true);
        assert_eq!(error_text(result), "failed to install WSL distro 'Debian'");
        let (result, calls) = ensure_calls(&["Debian"], false, true);
        assert_eq!(error_text(result), "failed to use WSL distro 'Debian'");
        assert_eq!(calls, [probe]);
    }
}
