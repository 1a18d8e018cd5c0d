//! The portable part of the macOS integration: XPC helper naming and
//! validation, the bundle templates, the helper request, and the Apple
//! Linux VM provider's command lines.
//!
//! It is compiled on every OS so that Linux CI tests it; the gated
//! `runtime::macos` module re-exports it under upstream's names.
#![forbid(unsafe_code)]
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use crate::runtime::worker_support::{
    load_request_from_env_var, run_host_command, validate_dot_identifier,
};
use crate::runtime::{build_cell_request_path, write_build_cell_request, BuildCellSpec};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable through which the host app passes the request
/// file path to its XPC helper.
pub const HELPER_REQUEST_ENV: &str = "METALOR_MACOS_BUILD_CELL_REQUEST";

/// The bundle that `AppleLinuxProvider::ensure_available` installs when the
/// caller has no preference, matching the Windows default distro.
pub const DEFAULT_APPLE_LINUX_BUNDLE: &str = "ubuntu-24.04";

/// An Info.plist for the XPC helper bundle. Callers replace
/// `__METALOR_HELPER_EXECUTABLE__`, `__METALOR_HELPER_BUNDLE_IDENTIFIER__`
/// and `__METALOR_HELPER_SERVICE_NAME__` themselves, because the values come
/// from their own build settings.
pub const HELPER_INFO_PLIST_TEMPLATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>CFBundleDevelopmentRegion</key>
	<string>en</string>
	<key>CFBundleDisplayName</key>
	<string>__METALOR_HELPER_SERVICE_NAME__</string>
	<key>CFBundleExecutable</key>
	<string>__METALOR_HELPER_EXECUTABLE__</string>
	<key>CFBundleIdentifier</key>
	<string>__METALOR_HELPER_BUNDLE_IDENTIFIER__</string>
	<key>CFBundleInfoDictionaryVersion</key>
	<string>6.0</string>
	<key>CFBundleName</key>
	<string>__METALOR_HELPER_SERVICE_NAME__</string>
	<key>CFBundlePackageType</key>
	<string>XPC!</string>
	<key>CFBundleShortVersionString</key>
	<string>1.0</string>
	<key>CFBundleVersion</key>
	<string>1</string>
	<key>XPCService</key>
	<dict>
		<key>ServiceType</key>
		<string>Application</string>
	</dict>
</dict>
</plist>
"#;

/// Entitlements for a sandboxed helper that may reach the network, for
/// profiles whose jobs fetch dependencies.
pub const NETWORKED_HELPER_ENTITLEMENTS_TEMPLATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>com.apple.security.app-sandbox</key>
	<true/>
	<key>com.apple.security.network.client</key>
	<true/>
</dict>
</plist>
"#;

/// Entitlements for a sandboxed helper without network access: on macOS
/// the network is chosen by the signing profile, not per job.
pub const OFFLINE_HELPER_ENTITLEMENTS_TEMPLATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>com.apple.security.app-sandbox</key>
	<true/>
</dict>
</plist>
"#;

/// Names an XPC helper embedded in a host app, so the app and its build
/// scripts derive the same bundle paths.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct HelperTarget {
    /// The host app's bundle identifier, e.g. `com.example.app`.
    pub bundle_identifier: String,
    /// The XPC service name; it must extend the bundle identifier.
    pub service_name: String,
}

impl HelperTarget {
    /// Builds a target and validates it, so a bad name fails here rather
    /// than at code-signing or launch time.
    pub fn new(
        bundle_identifier: impl Into<String>,
        service_name: impl Into<String>,
    ) -> Result<Self> {
        let target = Self {
            bundle_identifier: bundle_identifier.into(),
            service_name: service_name.into(),
        };
        validate_helper_target(&target)?;
        Ok(target)
    }

    /// The helper bundle's directory name, `<service>.xpc`.
    pub fn xpc_bundle_name(&self) -> String {
        format!("{}.xpc", self.service_name)
    }

    /// Where the helper bundle lives inside the app bundle.
    pub fn bundle_relative_path(&self) -> PathBuf {
        Path::new("Contents")
            .join("XPCServices")
            .join(self.xpc_bundle_name())
    }

    /// Where the helper's executable lives inside the app bundle.
    pub fn executable_relative_path(&self) -> PathBuf {
        self.bundle_relative_path()
            .join("Contents")
            .join("MacOS")
            .join(self.executable_name())
    }

    /// The executable name: the last `.`-separated component of the
    /// service name (`com.x.app.worker` gives `worker`).
    pub fn executable_name(&self) -> &str {
        self.service_name
            .rsplit('.')
            .next()
            .unwrap_or(&self.service_name)
    }
}

/// Checks both names and that the service name extends the bundle
/// identifier, which macOS requires of embedded XPC services.
pub fn validate_helper_target(target: &HelperTarget) -> Result<()> {
    validate_bundle_identifier(&target.bundle_identifier)?;
    validate_service_name(&target.service_name)?;
    if !target
        .service_name
        .starts_with(&format!("{}.", target.bundle_identifier))
    {
        bail!(
            "service name {} must start with bundle identifier {}.",
            target.service_name,
            target.bundle_identifier
        );
    }
    Ok(())
}

/// Checks a bundle identifier against the dot-identifier rules.
pub fn validate_bundle_identifier(identifier: &str) -> Result<()> {
    validate_dot_identifier(identifier, "bundle identifier")
}

/// Checks an XPC service name against the dot-identifier rules.
pub fn validate_service_name(service_name: &str) -> Result<()> {
    validate_dot_identifier(service_name, "service name")
}

/// Writes the request file into `scratch` and returns its path, which the
/// host app passes to the helper through `helper_environment`.
pub fn prepare_helper_request(scratch: &Path, spec: &BuildCellSpec) -> Result<PathBuf> {
    let request_path = build_cell_request_path(scratch);
    write_build_cell_request(&request_path, spec)?;
    Ok(request_path)
}

/// The environment to give the helper so `load_request_from_env` finds the
/// request.
pub fn helper_environment(request_path: &Path) -> Vec<(String, String)> {
    vec![(
        HELPER_REQUEST_ENV.to_string(),
        request_path.display().to_string(),
    )]
}

/// Reads the request whose path the host app put in `HELPER_REQUEST_ENV`;
/// this is how the helper learns its job.
pub fn load_request_from_env() -> Result<BuildCellSpec> {
    load_request_from_env_var(
        HELPER_REQUEST_ENV,
        "missing required macOS helper request environment variable",
    )
}

/// A Linux VM on macOS, driven through a caller-supplied helper program
/// (for example one built on Virtualization.framework).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AppleLinuxProvider {
    helper: PathBuf,
    vm_name: String,
}

impl AppleLinuxProvider {
    /// Validates and stores the helper path and VM name. The helper must be
    /// absolute so a `PATH` lookup cannot pick a different program.
    pub fn new(helper: impl Into<PathBuf>, vm_name: impl Into<String>) -> Result<Self> {
        let helper = helper.into();
        let vm_name = vm_name.into();
        if !helper.is_absolute() {
            bail!(
                "Apple Linux provider helper must be an absolute path: {}",
                helper.display()
            );
        }
        if vm_name.trim().is_empty() {
            bail!("Apple Linux provider VM name must not be empty");
        }
        Ok(Self { helper, vm_name })
    }

    /// The helper program.
    pub fn helper(&self) -> &Path {
        &self.helper
    }

    /// The VM the helper manages.
    pub fn vm_name(&self) -> &str {
        &self.vm_name
    }

    /// Has the helper create or resume the VM from `bundle`, logging the
    /// call and its output into `log`.
    pub fn ensure_available(&self, bundle: &str, log: &mut String) -> Result<()> {
        if bundle.trim().is_empty() {
            bail!("Apple Linux provider bundle name must not be empty");
        }
        let args = ensure_args(&self.vm_name, bundle);
        run_host_command(self.helper.as_os_str(), &args, log).with_context(|| {
            format!(
                "failed to use Apple Linux provider helper {} for VM '{}'",
                self.helper.display(),
                self.vm_name
            )
        })?;
        Ok(())
    }
}

impl crate::runtime::linux_provider::ProviderShell for AppleLinuxProvider {
    /// A command that runs `script` in the VM's shell through the helper.
    fn spawn_shell(&self, script: &str) -> Result<Command> {
        let mut command = Command::new(&self.helper);
        command.args(shell_args(&self.vm_name, script));
        Ok(command)
    }
}

fn ensure_args<'a>(vm_name: &'a str, bundle: &'a str) -> [&'a str; 5] {
    ["ensure", "--vm-name", vm_name, "--bundle", bundle]
}

fn shell_args<'a>(vm_name: &'a str, script: &'a str) -> [&'a str; 5] {
    ["shell", "--vm-name", vm_name, "--script", script]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::linux_provider::ProviderShell;
    use crate::runtime::{read_build_cell_request, CommandSpec, HostPath, WorkspaceSeed};

    fn error_text(result: Result<impl std::fmt::Debug>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn helper_target_derives_bundle_paths() {
        let target = HelperTarget::new("com.example.app", "com.example.app.worker").unwrap();
        assert_eq!(target.xpc_bundle_name(), "com.example.app.worker.xpc");
        assert_eq!(
            target.bundle_relative_path(),
            Path::new("Contents/XPCServices/com.example.app.worker.xpc")
        );
        assert_eq!(
            target.executable_relative_path(),
            Path::new("Contents/XPCServices/com.example.app.worker.xpc/Contents/MacOS/worker")
        );
        assert_eq!(target.executable_name(), "worker");
        let nested = HelperTarget::new("com.x", "com.x.tools.build-helper").unwrap();
        assert_eq!(nested.executable_name(), "build-helper");
    }

    #[test]
    fn helper_target_validation_names_the_bad_part() {
        assert_eq!(
            error_text(HelperTarget::new("", "com.x.worker")),
            "bundle identifier must not be empty"
        );
        assert_eq!(
            error_text(HelperTarget::new("com.x", "com..x.worker")),
            "service name must be dot-separated and must not contain empty components: com..x.worker"
        );
        assert_eq!(
            error_text(HelperTarget::new("com.x!", "com.x!.worker")),
            "bundle identifier must contain only ASCII letters, digits, '-', '_', and '.': com.x!"
        );
        assert_eq!(
            error_text(HelperTarget::new("com.x", "com.other.worker")),
            "service name com.other.worker must start with bundle identifier com.x."
        );
        assert_eq!(
            error_text(HelperTarget::new("com.x", "com.x")),
            "service name com.x must start with bundle identifier com.x."
        );
        assert_eq!(
            error_text(HelperTarget::new("com.x", "com.xy.worker")),
            "service name com.xy.worker must start with bundle identifier com.x."
        );
        // Fields are public, so a target built by hand is checked on its own.
        let by_hand = HelperTarget {
            bundle_identifier: "com.x".to_string(),
            service_name: "com.x.".to_string(),
        };
        assert_eq!(
            error_text(validate_helper_target(&by_hand)),
            "service name must be dot-separated and must not contain empty components: com.x."
        );
        validate_bundle_identifier("com.example").unwrap();
        validate_service_name("com.example.worker").unwrap();
    }

    #[test]
    fn templates_carry_placeholders_and_entitlements() {
        for placeholder in [
            "__METALOR_HELPER_EXECUTABLE__",
            "__METALOR_HELPER_BUNDLE_IDENTIFIER__",
            "__METALOR_HELPER_SERVICE_NAME__",
            "<string>XPC!</string>",
            "<key>ServiceType</key>",
            "<string>Application</string>",
            "CFBundleIdentifier",
        ] {
            assert!(
                HELPER_INFO_PLIST_TEMPLATE.contains(placeholder),
                "{placeholder}"
            );
        }
        assert!(NETWORKED_HELPER_ENTITLEMENTS_TEMPLATE.contains("com.apple.security.app-sandbox"));
        assert!(
            NETWORKED_HELPER_ENTITLEMENTS_TEMPLATE.contains("com.apple.security.network.client")
        );
        assert!(OFFLINE_HELPER_ENTITLEMENTS_TEMPLATE.contains("com.apple.security.app-sandbox"));
        assert!(!OFFLINE_HELPER_ENTITLEMENTS_TEMPLATE.contains("network"));
    }

    #[test]
    fn helper_request_is_written_and_passed_by_environment() {
        let tmp = tempfile::TempDir::new().unwrap();
        let scratch = tmp.path().join("scratch");
        let spec = BuildCellSpec {
            root: HostPath::new("/root"),
            scratch: HostPath::new(&scratch),
            workspace_path: "/workspace".into(),
            workspace_seed: WorkspaceSeed::Empty,
            imports: Vec::new(),
            caches: Vec::new(),
            exports: Vec::new(),
            command: CommandSpec {
                cwd: "/workspace".into(),
                executable: "make".to_string(),
                argv: vec!["all".to_string()],
            },
            env: vec![("PATH".to_string(), "/bin".to_string())],
            network: Default::default(),
            limits: Default::default(),
            cleanup: Default::default(),
        };
        let request = prepare_helper_request(&scratch, &spec).unwrap();
        assert_eq!(request, scratch.join("build-cell-request.json"));
        assert_eq!(read_build_cell_request(&request).unwrap(), spec);
        assert_eq!(
            helper_environment(&request),
            vec![(
                "METALOR_MACOS_BUILD_CELL_REQUEST".to_string(),
                request.display().to_string()
            )]
        );
        assert_eq!(HELPER_REQUEST_ENV, "METALOR_MACOS_BUILD_CELL_REQUEST");
    }

    #[test]
    fn helper_request_env_loader_reports_a_missing_variable() {
        // Nothing in the test suite sets this variable.
        assert!(std::env::var_os(HELPER_REQUEST_ENV).is_none());
        assert_eq!(
            error_text(load_request_from_env()),
            "missing required macOS helper request environment variable"
        );
    }

    #[test]
    fn apple_provider_validates_and_builds_helper_argv() {
        let provider = AppleLinuxProvider::new("/opt/metalor/avf-helper", "metalor").unwrap();
        assert_eq!(provider.helper(), Path::new("/opt/metalor/avf-helper"));
        assert_eq!(provider.vm_name(), "metalor");
        let command = provider.spawn_shell("printf ready").unwrap();
        assert_eq!(command.get_program(), "/opt/metalor/avf-helper");
        assert_eq!(
            command.get_args().collect::<Vec<_>>(),
            ["shell", "--vm-name", "metalor", "--script", "printf ready"]
        );
        assert_eq!(
            ensure_args("metalor", DEFAULT_APPLE_LINUX_BUNDLE),
            ["ensure", "--vm-name", "metalor", "--bundle", "ubuntu-24.04"]
        );
        assert_eq!(
            error_text(AppleLinuxProvider::new("relative-helper", "metalor")),
            "Apple Linux provider helper must be an absolute path: relative-helper"
        );
        assert_eq!(
            error_text(AppleLinuxProvider::new("/opt/helper", "  \t")),
            "Apple Linux provider VM name must not be empty"
        );
    }

    #[test]
    fn apple_provider_ensure_logs_the_helper_call() {
        let provider = AppleLinuxProvider::new("/nonexistent/avf-helper", "vm1").unwrap();
        let mut log = String::new();
        assert_eq!(
            error_text(provider.ensure_available(" ", &mut log)),
            "Apple Linux provider bundle name must not be empty"
        );
        assert!(log.is_empty());
        let message = error_text(provider.ensure_available(DEFAULT_APPLE_LINUX_BUNDLE, &mut log));
        assert_eq!(
            message,
            "failed to use Apple Linux provider helper /nonexistent/avf-helper for VM 'vm1'"
        );
        assert_eq!(
            log,
            "run host /nonexistent/avf-helper ensure --vm-name vm1 --bundle ubuntu-24.04\n"
        );
    }
}
