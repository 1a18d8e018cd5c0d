//! Job staging shared by the macOS XPC helper and the Windows worker.
//!
//! Neither OS runs a build cell in namespaces: the cell is a plain host
//! directory (the job root) into which the workspace, imports and caches are
//! copied, and the command runs with its cwd inside it. This module is
//! compiled on every OS so that Linux CI tests it, although only the gated
//! `macos` and `windows` modules call it.
//!
//! A workspace seed archive is untrusted: `tree::seed` unpacks it with the
//! portable extractor, whose rules (written in `tree::extract`) refuse
//! absolute names, `..`, links that leave the workspace, and device nodes.
#![forbid(unsafe_code)]
#![cfg_attr(not(any(target_os = "macos", target_os = "windows")), allow(dead_code))]

use crate::runtime::tree::seed::{copy_seed_directory, unpack_seed_archive};
use crate::runtime::tree::{copy_path, remove_path_if_exists};
use crate::runtime::{read_build_cell_request, BuildCellSpec, CommandSpec, WorkspaceSeed};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A staged job: the host directory that stands in for the cell's `/`.
///
/// The macOS and Windows modules hand it back from `prepare_job` so later
/// steps (command, cache sync, exports) map cell paths the same way.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WorkerJob {
    /// The job root; the cell path `/a/b` lives at `root/a/b`.
    pub root: PathBuf,
}

/// Maps a cell path onto the job root: `/` is the root itself, empty and
/// `.` segments are skipped.
pub(crate) fn map_cell_path(job_root: &Path, cell_path: &str) -> Result<PathBuf> {
    validate_cell_path(cell_path, "build cell path")?;
    let mut mapped = job_root.to_path_buf();
    for segment in cell_path.split('/') {
        if !matches!(segment, "" | ".") {
            mapped.push(segment);
        }
    }
    Ok(mapped)
}

/// Cell paths are POSIX-style whatever the host is, so a `\` is refused
/// rather than silently becoming a separator on Windows.
fn validate_cell_path(path: &str, context: &str) -> Result<()> {
    if !path.starts_with('/') {
        bail!("{context} must be absolute: {path}");
    }
    if path.contains('\\') {
        bail!("{context} must use '/' separators: {path}");
    }
    if path.split('/').any(|segment| segment == "..") {
        bail!("{context} must not contain '..': {path}");
    }
    Ok(())
}

fn validate_job_root(job_root: &Path) -> Result<()> {
    if !job_root.is_absolute() {
        bail!("worker job root must be absolute: {}", job_root.display());
    }
    if job_root
        .components()
        .any(|component| component == Component::ParentDir)
    {
        bail!(
            "worker job root must not contain '..': {}",
            job_root.display()
        );
    }
    Ok(())
}

/// Resets `job_root` and stages the workspace seed, imports and caches.
///
/// The root is removed first so that nothing from an earlier job leaks in.
/// Like upstream, this does not run the Linux build-cell validation and
/// ignores `spec.root`.
pub fn prepare_job(job_root: &Path, spec: &BuildCellSpec) -> Result<WorkerJob> {
    validate_job_root(job_root)?;
    remove_path_if_exists(job_root)
        .with_context(|| format!("failed to reset worker job root {}", job_root.display()))?;
    fs::create_dir_all(job_root)
        .with_context(|| format!("failed to create worker job root {}", job_root.display()))?;
    let job = WorkerJob {
        root: job_root.to_path_buf(),
    };
    stage_workspace(spec, &job)?;
    for import in &spec.imports {
        let destination = map_cell_path(&job.root, import.destination.as_str())?;
        copy_path(import.source.as_path(), &destination)?;
    }
    for cache in &spec.caches {
        let destination = map_cell_path(&job.root, cache.destination.as_str())?;
        if cache.source.as_path().exists() {
            copy_path(cache.source.as_path(), &destination)?;
        } else {
            // A cache that does not exist yet starts empty; the job fills it.
            fs::create_dir_all(&destination)
                .with_context(|| format!("failed to create {}", destination.display()))?;
        }
    }
    Ok(job)
}

fn stage_workspace(spec: &BuildCellSpec, job: &WorkerJob) -> Result<()> {
    let workspace = map_cell_path(&job.root, spec.workspace_path.as_str())?;
    fs::create_dir_all(&workspace)
        .with_context(|| format!("failed to create {}", workspace.display()))?;
    match &spec.workspace_seed {
        WorkspaceSeed::Empty => Ok(()),
        WorkspaceSeed::SnapshotDir(seed) => copy_seed_directory(seed.as_path(), &workspace),
        WorkspaceSeed::Archive(archive) => unpack_seed_archive(archive.as_path(), &workspace),
    }
}

/// Builds the job's command: cwd mapped into the job root, a clean
/// environment holding only `spec.env`, inherited stdio.
///
/// An absolute executable is a host path and is not mapped, because the
/// job root is not a rootfs. Limits and network policy cannot be enforced
/// here and are ignored, as upstream does.
pub(crate) fn build_worker_command(spec: &BuildCellSpec, job: &WorkerJob) -> Result<Command> {
    validate_command(&spec.command)?;
    let cwd = map_cell_path(&job.root, spec.command.cwd.as_str())?;
    fs::create_dir_all(&cwd).with_context(|| format!("failed to create {}", cwd.display()))?;
    let mut command = Command::new(&spec.command.executable);
    command
        .args(&spec.command.argv)
        .current_dir(&cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    Ok(command)
}

fn validate_command(command: &CommandSpec) -> Result<()> {
    validate_cell_path(command.cwd.as_str(), "build cell cwd")?;
    validate_executable(&command.executable)
}

fn validate_executable(executable: &str) -> Result<()> {
    if executable.starts_with('/') {
        return validate_cell_path(executable, "build cell executable");
    }
    if executable.is_empty() {
        bail!("build cell executable must not be empty");
    }
    if executable.contains(['/', '\\']) {
        bail!("build cell executable must be absolute or a bare command name: {executable}");
    }
    if executable == ".." {
        bail!("build cell executable must not contain '..': {executable}");
    }
    Ok(())
}

/// Copies each staged cache back over its host source, replacing it, so
/// files the job deleted disappear from the cache too.
pub fn sync_worker_caches(spec: &BuildCellSpec, job: &WorkerJob) -> Result<()> {
    for cache in &spec.caches {
        let staged = map_cell_path(&job.root, cache.destination.as_str())?;
        copy_path(&staged, cache.source.as_path())?;
    }
    Ok(())
}

/// Copies each export out of the job root. A missing export is an error
/// only when the command succeeded: a failed job may stop before writing.
pub fn copy_worker_exports(
    spec: &BuildCellSpec,
    job: &WorkerJob,
    command_succeeded: bool,
) -> Result<()> {
    for export in &spec.exports {
        let staged = map_cell_path(&job.root, export.source.as_str())?;
        // Like upstream, a dangling symlink counts as missing.
        if !staged.exists() {
            if command_succeeded {
                bail!(
                    "expected build export {} to exist at {}",
                    export.source.as_str(),
                    staged.display()
                );
            }
            continue;
        }
        copy_path(&staged, export.destination.as_path())?;
    }
    Ok(())
}

/// Reads the request file written by the host app for its helper/worker.
pub fn load_request(request_path: &Path) -> Result<BuildCellSpec> {
    read_build_cell_request(request_path)
}

/// Reads the request whose path is in `variable`; `missing_message` is the
/// OS-specific top-level error when the variable is unset.
pub(crate) fn load_request_from_env_var(
    variable: &str,
    missing_message: &'static str,
) -> Result<BuildCellSpec> {
    let Some(path) = std::env::var_os(variable) else {
        bail!("{missing_message}");
    };
    load_request(Path::new(&path))
}

/// Checks a reverse-DNS style identifier (bundle identifier, XPC service
/// name, Windows application id): dot-separated components of ASCII
/// letters, digits, `-` and `_`. `context` names the value in errors.
pub(crate) fn validate_dot_identifier(value: &str, context: &str) -> Result<()> {
    if value.is_empty() {
        bail!("{context} must not be empty");
    }
    if value.starts_with('.') || value.ends_with('.') || value.contains("..") {
        bail!("{context} must be dot-separated and must not contain empty components: {value}");
    }
    let allowed = |ch: char| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.';
    if !value.chars().all(allowed) {
        bail!("{context} must contain only ASCII letters, digits, '-', '_', and '.': {value}");
    }
    Ok(())
}

/// Runs a host program (the Apple helper, `wsl.exe`), recording the call
/// and its output in `log` so callers can show what happened.
pub(crate) fn run_host_command(program: &OsStr, args: &[&str], log: &mut String) -> Result<Output> {
    let display = Path::new(program).display();
    log.push_str(&format!("run host {display} {}\n", args.join(" ")));
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("failed to spawn {display}"))?;
    log.push_str(&String::from_utf8_lossy(&output.stdout));
    log.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        let mut message = format!(
            "host command '{display}' failed with status {}",
            output.status
        );
        for (label, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            if !text.trim().is_empty() {
                message.push_str(&format!("\n{label}: {}", text.trim()));
            }
        }
        bail!("{message}");
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tree::test_tar::{tar_bytes, Member};
    use crate::runtime::{
        write_build_cell_request, CacheSpec, CellPath, CommandSpec, ExportSpec, HostPath,
        ImportSpec,
    };
    use tempfile::TempDir;

    fn spec(scratch: &Path) -> BuildCellSpec {
        BuildCellSpec {
            root: HostPath::new("/unused-root"),
            scratch: HostPath::new(scratch),
            workspace_path: "/workspace".into(),
            workspace_seed: WorkspaceSeed::Empty,
            imports: Vec::new(),
            caches: Vec::new(),
            exports: Vec::new(),
            command: CommandSpec {
                cwd: "/workspace".into(),
                executable: "env".to_string(),
                argv: Vec::new(),
            },
            env: Vec::new(),
            network: Default::default(),
            limits: Default::default(),
            cleanup: Default::default(),
        }
    }

    fn error_text(result: Result<impl std::fmt::Debug>) -> String {
        result.expect_err("expected an error").to_string()
    }

    /// Lays out `<tmp>/outside`, `<tmp>/job` and an archive seed; returns the
    /// spec and job root.
    fn archive_fixture(tmp: &TempDir, file_name: &str, bytes: &[u8]) -> (BuildCellSpec, PathBuf) {
        let archive = tmp.path().join(file_name);
        fs::write(&archive, bytes).unwrap();
        fs::create_dir_all(tmp.path().join("outside")).unwrap();
        let mut spec = spec(&tmp.path().join("scratch"));
        spec.workspace_seed = WorkspaceSeed::Archive(HostPath::new(archive));
        (spec, tmp.path().join("job"))
    }

    fn outside_is_untouched(tmp: &TempDir) {
        let entries: Vec<_> = fs::read_dir(tmp.path().join("outside")).unwrap().collect();
        assert!(entries.is_empty(), "something escaped: {entries:?}");
        let mut names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("seed."))
            .collect();
        names.sort();
        assert_eq!(names, ["job", "outside"]);
    }

    #[test]
    fn cell_paths_map_onto_the_job_root() {
        let root = Path::new("/jobs/one");
        assert_eq!(map_cell_path(root, "/").unwrap(), root);
        assert_eq!(map_cell_path(root, "//./").unwrap(), root);
        assert_eq!(
            map_cell_path(root, "/a//./b/").unwrap(),
            root.join("a").join("b")
        );
        assert_eq!(
            error_text(map_cell_path(root, "a/b")),
            "build cell path must be absolute: a/b"
        );
        assert_eq!(
            error_text(map_cell_path(root, "/a\\b")),
            "build cell path must use '/' separators: /a\\b"
        );
        assert_eq!(
            error_text(map_cell_path(root, "/a/../b")),
            "build cell path must not contain '..': /a/../b"
        );
        // `..` inside a name is not a parent segment.
        assert_eq!(map_cell_path(root, "/a..b").unwrap(), root.join("a..b"));
    }

    #[test]
    fn job_root_must_be_absolute_without_parent_segments() {
        let tmp = TempDir::new().unwrap();
        let spec = spec(tmp.path());
        assert_eq!(
            error_text(prepare_job(Path::new("relative/job"), &spec)),
            "worker job root must be absolute: relative/job"
        );
        let climbing = tmp.path().join("a").join("..").join("job");
        assert_eq!(
            error_text(prepare_job(&climbing, &spec)),
            format!(
                "worker job root must not contain '..': {}",
                climbing.display()
            )
        );
        assert!(!tmp.path().join("job").exists());
    }

    #[test]
    fn prepare_job_removes_and_recreates_the_job_root() {
        let tmp = TempDir::new().unwrap();
        let job_root = tmp.path().join("job");
        fs::create_dir_all(job_root.join("stale/deeper")).unwrap();
        fs::write(job_root.join("stale/deeper/file"), "old").unwrap();
        let job = prepare_job(&job_root, &spec(tmp.path())).unwrap();
        assert_eq!(
            job,
            WorkerJob {
                root: job_root.clone()
            }
        );
        assert!(!job_root.join("stale").exists());
        let names: Vec<_> = fs::read_dir(&job_root).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(job_root.join("workspace").is_dir());
        // A plain file in the way is replaced by the directory too.
        fs::remove_dir_all(&job_root).unwrap();
        fs::write(&job_root, "not a dir").unwrap();
        prepare_job(&job_root, &spec(tmp.path())).unwrap();
        assert!(job_root.join("workspace").is_dir());
    }

    /// Seeds are staged by `tree::seed` (tested there); this checks the
    /// wiring, and that a hostile seed fails the job before anything runs.
    #[test]
    fn archive_seeds_are_unpacked_into_the_workspace() {
        let tmp = TempDir::new().unwrap();
        let members = [Member::File("src/main.txt", b"main", 0o644)];
        let (spec, job_root) = archive_fixture(&tmp, "seed.tar", &tar_bytes(&members));
        let job = prepare_job(&job_root, &spec).unwrap();
        let main = job.root.join("workspace/src/main.txt");
        assert_eq!(fs::read_to_string(main).unwrap(), "main");

        let members = [Member::Symlink("to-job-root", "..")];
        let (spec, job_root) = archive_fixture(&tmp, "seed.tar", &tar_bytes(&members));
        let message = format!("{:#}", prepare_job(&job_root, &spec).unwrap_err());
        assert!(
            message.contains("refusing symlink to-job-root -> .."),
            "{message}"
        );
        outside_is_untouched(&tmp);
    }

    #[test]
    fn imports_and_caches_are_staged_at_their_cell_paths() {
        let tmp = TempDir::new().unwrap();
        let import_file = tmp.path().join("imported.txt");
        let import_dir = tmp.path().join("tool");
        let cache = tmp.path().join("cache");
        fs::write(&import_file, "imported").unwrap();
        fs::create_dir_all(import_dir.join("bin")).unwrap();
        fs::write(import_dir.join("bin/tool"), "tool").unwrap();
        fs::create_dir_all(&cache).unwrap();
        fs::write(cache.join("state"), "cached").unwrap();
        let mut spec = spec(tmp.path());
        spec.imports = vec![
            ImportSpec {
                source: HostPath::new(&import_file),
                destination: "/workspace/imported.txt".into(),
            },
            ImportSpec {
                source: HostPath::new(&import_dir),
                destination: "/opt/tool".into(),
            },
        ];
        spec.caches = vec![
            CacheSpec {
                source: HostPath::new(&cache),
                destination: "/cache".into(),
            },
            CacheSpec {
                source: HostPath::new(tmp.path().join("missing-cache")),
                destination: "/var/new-cache".into(),
            },
        ];
        let job = prepare_job(&tmp.path().join("job"), &spec).unwrap();
        let read = |relative: &str| fs::read_to_string(job.root.join(relative)).unwrap();
        assert_eq!(read("workspace/imported.txt"), "imported");
        assert_eq!(read("opt/tool/bin/tool"), "tool");
        assert_eq!(read("cache/state"), "cached");
        let new_cache = job.root.join("var/new-cache");
        assert!(new_cache.is_dir());
        assert_eq!(fs::read_dir(new_cache).unwrap().count(), 0);
        assert!(!tmp.path().join("missing-cache").exists());
    }

    #[test]
    fn a_missing_import_source_fails() {
        let tmp = TempDir::new().unwrap();
        let missing = tmp.path().join("nope");
        let mut spec = spec(tmp.path());
        spec.imports = vec![ImportSpec {
            source: HostPath::new(&missing),
            destination: "/in".into(),
        }];
        assert_eq!(
            error_text(prepare_job(&tmp.path().join("job"), &spec)),
            format!("failed to inspect {}", missing.display())
        );
    }

    #[test]
    fn worker_command_maps_cwd_and_clears_the_environment() {
        let tmp = TempDir::new().unwrap();
        let job = prepare_job(&tmp.path().join("job"), &spec(tmp.path())).unwrap();
        let mut spec = spec(tmp.path());
        spec.command = CommandSpec {
            cwd: "/work/dir".into(),
            executable: "/usr/bin/env".to_string(),
            argv: vec!["-0".to_string()],
        };
        spec.env = vec![
            ("B".to_string(), "2".to_string()),
            ("A".to_string(), "1".to_string()),
        ];
        spec.limits.max_processes = Some(1);
        let mut command = build_worker_command(&spec, &job).unwrap();
        let cwd = job.root.join("work/dir");
        assert!(cwd.is_dir());
        assert_eq!(command.get_current_dir(), Some(cwd.as_path()));
        // An absolute executable is a host path, not mapped into the job.
        assert_eq!(command.get_program(), "/usr/bin/env");
        assert_eq!(command.get_args().collect::<Vec<_>>(), ["-0"]);
        let output = command.stdout(Stdio::piped()).output().unwrap();
        assert!(output.status.success());
        let mut lines: Vec<_> = output.stdout.split(|&b| b == 0).collect();
        lines.retain(|line| !line.is_empty());
        lines.sort();
        assert_eq!(lines, [&b"A=1"[..], &b"B=2"[..]]);
    }

    #[test]
    fn worker_command_validates_cwd_and_executable() {
        let tmp = TempDir::new().unwrap();
        let job = WorkerJob {
            root: tmp.path().join("job"),
        };
        let attempt = |cwd: &str, executable: &str| {
            let mut spec = spec(tmp.path());
            spec.command.cwd = CellPath::new(cwd);
            spec.command.executable = executable.to_string();
            build_worker_command(&spec, &job)
                .map(|command| command.get_program().to_string_lossy().into_owned())
        };
        assert_eq!(
            error_text(attempt("w", "make")),
            "build cell cwd must be absolute: w"
        );
        assert_eq!(
            error_text(attempt("/w\\x", "make")),
            "build cell cwd must use '/' separators: /w\\x"
        );
        assert_eq!(
            error_text(attempt("/w/..", "make")),
            "build cell cwd must not contain '..': /w/.."
        );
        assert_eq!(
            error_text(attempt("/w", "")),
            "build cell executable must not be empty"
        );
        assert_eq!(
            error_text(attempt("/w", "bin/make")),
            "build cell executable must be absolute or a bare command name: bin/make"
        );
        assert_eq!(
            error_text(attempt("/w", "make\\x")),
            "build cell executable must be absolute or a bare command name: make\\x"
        );
        assert_eq!(
            error_text(attempt("/w", "..")),
            "build cell executable must not contain '..': .."
        );
        assert_eq!(
            error_text(attempt("/w", "/usr/../bin/make")),
            "build cell executable must not contain '..': /usr/../bin/make"
        );
        assert_eq!(
            error_text(attempt("/w", "/usr\\make")),
            "build cell executable must use '/' separators: /usr\\make"
        );
        assert!(
            !job.root.exists(),
            "validation must fail before creating the cwd"
        );
        assert_eq!(attempt("/w", "make").unwrap(), "make");
        assert!(job.root.join("w").is_dir());
    }

    #[test]
    fn cache_sync_replaces_the_host_cache() {
        let tmp = TempDir::new().unwrap();
        let cache = tmp.path().join("cache");
        fs::create_dir_all(&cache).unwrap();
        fs::write(cache.join("kept"), "old").unwrap();
        fs::write(cache.join("deleted"), "old").unwrap();
        let mut spec = spec(tmp.path());
        spec.caches = vec![CacheSpec {
            source: HostPath::new(&cache),
            destination: "/cache".into(),
        }];
        let job = prepare_job(&tmp.path().join("job"), &spec).unwrap();
        fs::remove_file(job.root.join("cache/deleted")).unwrap();
        fs::write(job.root.join("cache/kept"), "new").unwrap();
        fs::write(job.root.join("cache/added"), "added").unwrap();
        sync_worker_caches(&spec, &job).unwrap();
        assert_eq!(fs::read_to_string(cache.join("kept")).unwrap(), "new");
        assert_eq!(fs::read_to_string(cache.join("added")).unwrap(), "added");
        assert!(!cache.join("deleted").exists());
    }

    #[test]
    fn exports_are_copied_and_missing_ones_fail_only_after_success() {
        let tmp = TempDir::new().unwrap();
        let out_dir = tmp.path().join("out");
        fs::create_dir_all(out_dir.join("stale-dir")).unwrap();
        let mut spec = spec(tmp.path());
        spec.exports = vec![ExportSpec {
            source: "/workspace/out.txt".into(),
            destination: HostPath::new(out_dir.join("stale-dir")),
        }];
        let job = prepare_job(&tmp.path().join("job"), &spec).unwrap();

        copy_worker_exports(&spec, &job, false).unwrap();
        assert!(
            out_dir.join("stale-dir").is_dir(),
            "skipped export must not touch"
        );
        assert_eq!(
            error_text(copy_worker_exports(&spec, &job, true)),
            format!(
                "expected build export /workspace/out.txt to exist at {}",
                job.root.join("workspace/out.txt").display()
            )
        );

        fs::write(job.root.join("workspace/out.txt"), "built").unwrap();
        copy_worker_exports(&spec, &job, true).unwrap();
        assert_eq!(
            fs::read_to_string(out_dir.join("stale-dir")).unwrap(),
            "built"
        );
    }

    #[test]
    fn requests_load_from_a_path_or_an_environment_variable() {
        let tmp = TempDir::new().unwrap();
        let request = tmp.path().join("request.json");
        let spec = spec(tmp.path());
        write_build_cell_request(&request, &spec).unwrap();
        assert_eq!(load_request(&request).unwrap(), spec);

        let variable = format!("METALOR_WORKER_SUPPORT_TEST_{}", std::process::id());
        assert_eq!(
            error_text(load_request_from_env_var(
                &variable,
                "missing test variable"
            )),
            "missing test variable"
        );
        std::env::set_var(&variable, &request);
        let loaded = load_request_from_env_var(&variable, "missing test variable");
        std::env::remove_var(&variable);
        assert_eq!(loaded.unwrap(), spec);
    }

    #[test]
    fn dot_identifiers_follow_reverse_dns_rules() {
        validate_dot_identifier("com.example-app.my_worker2", "bundle identifier").unwrap();
        validate_dot_identifier("single", "bundle identifier").unwrap();
        assert_eq!(
            error_text(validate_dot_identifier("", "bundle identifier")),
            "bundle identifier must not be empty"
        );
        for bad in [".com.x", "com.x.", "com..x", "."] {
            assert_eq!(
                error_text(validate_dot_identifier(bad, "service name")),
                format!(
                    "service name must be dot-separated and must not contain empty components: {bad}"
                )
            );
        }
        for bad in ["com.ex ample", "com/x", "caf\u{e9}.x", "a.b+c"] {
            assert_eq!(
                error_text(validate_dot_identifier(bad, "application identifier")),
                format!(
                    "application identifier must contain only ASCII letters, digits, '-', '_', and '.': {bad}"
                )
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn host_commands_are_logged_and_failures_reported() {
        let mut log = String::new();
        let missing = "/nonexistent/metalor-helper";
        assert_eq!(
            error_text(run_host_command(OsStr::new(missing), &["a", "b"], &mut log)),
            format!("failed to spawn {missing}")
        );
        assert_eq!(log, format!("run host {missing} a b\n"));

        let mut log = String::new();
        let message = error_text(run_host_command(OsStr::new("false"), &[], &mut log));
        assert!(
            message.starts_with("host command 'false' failed with status"),
            "{message}"
        );
        assert_eq!(log, "run host false \n");

        let mut log = String::new();
        let output = run_host_command(OsStr::new("echo"), &["hello"], &mut log).unwrap();
        assert_eq!(output.stdout, b"hello\n");
        assert_eq!(log, "run host echo hello\nhello\n");
    }
}
