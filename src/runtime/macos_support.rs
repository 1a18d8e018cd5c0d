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

    /// A command that runs `script` in the VM's shell through the helper.
    // TODO(merge): impl linux_provider::ProviderShell
    pub fn spawn_shell(&self, script: &str) -> Result<Command> {
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
