//! A session against one provider: every operation is a short POSIX script
//! run through the caller's [`ProviderShell`].
#![forbid(unsafe_code)]

use super::layout::{
    is_portable_name_char, join_posix, provider_metadata_path, ProviderRuntimeLayout,
};
use super::metadata::{render_provider_metadata_env, ProviderRuntimeMetadata};
use super::shell::{append_output, failure_message, quote, split_provider_path};
use super::transfer;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// How to start a POSIX shell inside the provider. Implementations return a
/// `Command` that runs `script` there (for example `wsl.exe ... bash -lc`),
/// so the session stays independent of the provider technology and tests
/// can use a local shell.
pub trait ProviderShell {
    /// Builds, but does not spawn, the command that runs `script`.
    fn spawn_shell(&self, script: &str) -> anyhow::Result<Command>;
}

/// Any closure that builds the command is a shell, which keeps ad-hoc
/// providers and test doubles to one line.
impl<F> ProviderShell for F
where
    F: Fn(&str) -> anyhow::Result<Command>,
{
    fn spawn_shell(&self, script: &str) -> anyhow::Result<Command> {
        self(script)
    }
}

/// A job directory created inside the provider by
/// [`ProviderSession::prepare_job_root`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RemoteJobRoot {
    /// Absolute provider path of the job directory.
    pub root: String,
}

/// Whether [`ProviderSession::ensure_warm_state`] found the work already
/// done (`Warm`) or had to run the cold path (`Cold`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum WarmState {
    /// The cold path ran and the stamp was written.
    Cold,
    /// The stamp and every required path were present.
    Warm,
}

/// Runs scripts and transfers through one provider shell. It holds no other
/// state, so it is cheap to build per operation.
#[derive(Clone, Debug)]
pub struct ProviderSession<S> {
    shell: S,
}

impl<S> ProviderSession<S> {
    /// Wraps the shell that reaches the provider.
    pub fn new(shell: S) -> Self {
        Self { shell }
    }
}

impl<S: ProviderShell> ProviderSession<S> {
    /// Runs `script`, appending its stdout and then its stderr to `log`.
    /// A non-zero exit fails with the status and the trimmed output, because
    /// the provider's own messages are usually the only diagnosis.
    pub fn run(&self, script: &str, log: &mut String) -> Result<()> {
        let output = self.output(script)?;
        append_output(log, &output);
        check_shell_status(&output)
    }

    /// Whether `path` exists inside the provider (`[ -e ]`, so a dangling
    /// symlink counts as missing).
    pub fn path_exists(&self, path: &str) -> Result<bool> {
        let script = format!(
            "if [ -e {path} ]; then printf 1; else printf 0; fi",
            path = quote(path)
        );
        let output = self.output(&script)?;
        check_shell_status(&output)?;
        Ok(output.stdout.starts_with(b"1"))
    }

    /// Creates a fresh, empty job directory under `<root>/jobs`. The name
    /// joins the sanitized label (or `job`), the host PID and the time in
    /// nanoseconds, so parallel jobs from one or many hosts do not collide;
    /// a leftover directory with the same name is removed first.
    pub fn prepare_job_root(
        &self,
        runtime: &ProviderRuntimeLayout,
        label: &str,
        log: &mut String,
    ) -> Result<RemoteJobRoot> {
        let jobs = runtime.jobs_root();
        let root = join_posix(&jobs, &unique_job_name(label));
        let script = format!(
            "mkdir -p {jobs} && rm -rf {root} && mkdir -p {root}",
            jobs = quote(&jobs),
            root = quote(&root)
        );
        self.run(&script, log)?;
        log.push_str(&format!("provider job root: {root}\n"));
        Ok(RemoteJobRoot { root })
    }

    /// Writes the metadata file under the runtime root inside the provider.
    /// The payload goes through a quoted heredoc, so the shell expands
    /// nothing in it.
    pub fn write_runtime_metadata(
        &self,
        metadata: &ProviderRuntimeMetadata,
        log: &mut String,
    ) -> Result<()> {
        let payload = render_provider_metadata_env(metadata)?;
        let script = format!(
            "mkdir -p {root} && cat > {path} <<'EOF'\n{payload}EOF\n",
            root = quote(&metadata.runtime_root),
            path = quote(&provider_metadata_path(&metadata.runtime_root))
        );
        self.run(&script, log)
    }

    /// Runs `cold` unless the work it does is already present. It is warm
    /// when the stamp exists and then every required path exists (checked in
    /// order, stopping at the first miss, to keep round trips down). After a
    /// successful cold run the stamp is touched, so a failed run is retried.
    pub fn ensure_warm_state<F>(
        &self,
        label: &str,
        stamp_path: &str,
        required_paths: &[&str],
        log: &mut String,
        cold: F,
    ) -> Result<WarmState>
    where
        F: FnOnce(&Self, &mut String) -> Result<()>,
    {
        if label.trim().is_empty() {
            bail!("warm-state label must not be empty");
        }
        let warm = self.all_exist(stamp_path, required_paths)?;
        let state = if warm { "warm" } else { "cold" };
        log.push_str(&format!("provider {label}: {state}\n"));
        if warm {
            return Ok(WarmState::Warm);
        }
        cold(self, log)?;
        self.touch(stamp_path, log)?;
        Ok(WarmState::Cold)
    }

    /// Copies the host path `local_path` (resolved with `canonicalize`) into
    /// the provider directory `remote_parent` and returns
    /// `<remote_parent>/<name>`. The archive is built in-process and
    /// streamed into the provider's `tar -xf -`. With
    /// `restore_executable_bins`, every file under `<name>/bin` is made
    /// executable afterwards, for hosts whose file systems lose the bit.
    pub fn stage_host_path(
        &self,
        local_path: &Path,
        remote_parent: &str,
        restore_executable_bins: bool,
        log: &mut String,
    ) -> Result<String> {
        let source = transfer::HostSource::resolve(local_path)?;
        let remote_root = join_posix(remote_parent, source.name());
        let script = extract_script(remote_parent, &remote_root, restore_executable_bins);
        let consumer = self.shell.spawn_shell(&script)?;
        transfer::push(&source, consumer, log)?;
        Ok(remote_root)
    }

    /// Copies the provider path `remote_path` into the host directory
    /// `local_parent` (created if missing). The provider runs
    /// `tar -cf -`; the host side reads that stream in-process and refuses
    /// entries that would land or point outside `local_parent`.
    pub fn collect_path(
        &self,
        remote_path: &str,
        local_parent: &Path,
        log: &mut String,
    ) -> Result<()> {
        std::fs::create_dir_all(local_parent)
            .with_context(|| format!("failed to create {}", local_parent.display()))?;
        let (parent, name) = split_provider_path(remote_path)?;
        let script = format!("tar -cf - -C {} {}", quote(&parent), quote(&name));
        let producer = self.shell.spawn_shell(&script)?;
        transfer::pull(producer, local_parent, log)
    }

    /// Removes a provider path recursively; a missing path is not an error.
    pub fn remove_path(&self, remote_path: &str, log: &mut String) -> Result<()> {
        self.run(&format!("rm -rf {}", quote(remote_path)), log)
    }

    fn output(&self, script: &str) -> Result<Output> {
        self.shell
            .spawn_shell(script)?
            .output()
            .context("failed to spawn provider shell")
    }

    fn all_exist(&self, stamp_path: &str, required_paths: &[&str]) -> Result<bool> {
        for path in std::iter::once(&stamp_path).chain(required_paths) {
            if !self.path_exists(path)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn touch(&self, path: &str, log: &mut String) -> Result<()> {
        let script = match split_provider_path(path) {
            Ok((parent, _)) => format!("mkdir -p {} && touch {}", quote(&parent), quote(path)),
            Err(_) => format!("touch {}", quote(path)),
        };
        self.run(&script, log)
    }
}

fn check_shell_status(output: &Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{}",
        failure_message(
            "provider shell command",
            output.status,
            &output.stdout,
            &output.stderr
        )
    )
}

fn extract_script(remote_parent: &str, remote_root: &str, restore_bins: bool) -> String {
    let parent = quote(remote_parent);
    let mut script = format!("mkdir -p {parent} && tar -xf - -C {parent}");
    if restore_bins {
        let bin = quote(&format!("{remote_root}/bin"));
        script.push_str(&format!(
            " && if [ -d {bin} ]; then find {bin} -type f -exec chmod a+rx {{}} +; fi"
        ));
    }
    script
}

fn unique_job_name(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{}-{nanos}", sanitize_label(label), std::process::id())
}

fn sanitize_label(label: &str) -> String {
    let sanitized: String = label
        .chars()
        .map(|ch| if is_portable_name_char(ch) { ch } else { '-' })
        .collect();
    if sanitized.is_empty() {
        "job".to_string()
    } else {
        sanitized
    }
}
