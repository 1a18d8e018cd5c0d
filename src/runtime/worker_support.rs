//! Job staging shared by the macOS XPC helper and the Windows worker.
//!
//! Neither OS runs a build cell in namespaces: the cell is a plain host
//! directory (the job root) into which the workspace, imports and caches are
//! copied, and the command runs with its cwd inside it. This module is
//! compiled on every OS so that Linux CI tests it, although only the gated
//! `macos` and `windows` modules call it.
#![forbid(unsafe_code)]
#![cfg_attr(not(any(target_os = "macos", target_os = "windows")), allow(dead_code))]

use crate::runtime::{read_build_cell_request, BuildCellSpec, CommandSpec, WorkspaceSeed};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs;
use std::io;
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
pub(crate) fn prepare_job(job_root: &Path, spec: &BuildCellSpec) -> Result<WorkerJob> {
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
        if fs::symlink_metadata(cache.source.as_path()).is_ok() {
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
        WorkspaceSeed::Archive(archive) => {
            let depth = workspace
                .strip_prefix(&job.root)
                .map(|relative| relative.components().count())
                .unwrap_or(0);
            seed_archive::unpack(archive.as_path(), &workspace, depth)
        }
    }
}

fn copy_seed_directory(seed: &Path, workspace: &Path) -> Result<()> {
    let metadata = fs::metadata(seed)
        .with_context(|| format!("failed to inspect build workspace seed {}", seed.display()))?;
    if !metadata.is_dir() {
        bail!(
            "build workspace seed must be a directory: {}",
            seed.display()
        );
    }
    fs::set_permissions(workspace, metadata.permissions())
        .with_context(|| format!("failed to apply permissions to {}", workspace.display()))?;
    copy_directory_entries(seed, workspace)
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
pub(crate) fn sync_worker_caches(spec: &BuildCellSpec, job: &WorkerJob) -> Result<()> {
    for cache in &spec.caches {
        let staged = map_cell_path(&job.root, cache.destination.as_str())?;
        copy_path(&staged, cache.source.as_path())?;
    }
    Ok(())
}

/// Copies each export out of the job root. A missing export is an error
/// only when the command succeeded: a failed job may stop before writing.
pub(crate) fn copy_worker_exports(
    spec: &BuildCellSpec,
    job: &WorkerJob,
    command_succeeded: bool,
) -> Result<()> {
    for export in &spec.exports {
        let staged = map_cell_path(&job.root, export.source.as_str())?;
        if fs::symlink_metadata(&staged).is_err() {
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
pub(crate) fn load_request(request_path: &Path) -> Result<BuildCellSpec> {
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

/// Replaces `destination` with a copy of `source`: a symlink is recreated
/// with the same target text, a directory is copied recursively with its
/// permissions, a file with `fs::copy`. Owners, times and xattrs are not kept.
fn copy_path(source: &Path, destination: &Path) -> Result<()> {
    let metadata = fs::symlink_metadata(source)
        .with_context(|| format!("failed to inspect {}", source.display()))?;
    remove_path_if_exists(destination)
        .with_context(|| format!("failed to replace {}", destination.display()))?;
    create_parent(destination)?;
    if metadata.file_type().is_symlink() {
        let target = fs::read_link(source)
            .with_context(|| format!("failed to read symlink {}", source.display()))?;
        let target_is_dir = fs::metadata(source).is_ok_and(|resolved| resolved.is_dir());
        return create_symlink(&target, destination, target_is_dir);
    }
    if metadata.is_dir() {
        fs::create_dir(destination)
            .with_context(|| format!("failed to create {}", destination.display()))?;
        fs::set_permissions(destination, metadata.permissions())
            .with_context(|| format!("failed to apply permissions to {}", destination.display()))?;
        return copy_directory_entries(source, destination);
    }
    fs::copy(source, destination).with_context(|| {
        format!(
            "failed to copy {} to {}",
            source.display(),
            destination.display()
        )
    })?;
    fs::set_permissions(destination, metadata.permissions())
        .with_context(|| format!("failed to apply permissions to {}", destination.display()))
}

fn copy_directory_entries(source: &Path, destination: &Path) -> Result<()> {
    let entries = fs::read_dir(source)
        .with_context(|| format!("failed to read directory {}", source.display()))?;
    for entry in entries {
        let entry =
            entry.with_context(|| format!("failed to read entry in {}", source.display()))?;
        copy_path(&entry.path(), &destination.join(entry.file_name()))?;
    }
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display())),
        _ => Ok(()),
    }
}

/// Removes whatever is at `path` without following a symlink there.
fn remove_path_if_exists(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        // A Windows directory symlink needs remove_dir; elsewhere remove_file works.
        Ok(_) => fs::remove_file(path).or_else(|_| fs::remove_dir(path)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(unix)]
fn create_symlink(target: &Path, link: &Path, _target_is_dir: bool) -> Result<()> {
    std::os::unix::fs::symlink(target, link).with_context(|| {
        format!(
            "failed to create symlink {} -> {}",
            link.display(),
            target.display()
        )
    })
}

#[cfg(windows)]
fn create_symlink(target: &Path, link: &Path, target_is_dir: bool) -> Result<()> {
    use std::os::windows::fs::{symlink_dir, symlink_file};
    let created = if target_is_dir {
        symlink_dir(target, link)
    } else {
        symlink_file(target, link)
    };
    created.with_context(|| {
        format!(
            "failed to create symlink {} -> {}",
            link.display(),
            target.display()
        )
    })
}

/// Unpacks a workspace seed archive without letting it reach outside the
/// job root.
///
/// Upstream extracted with `tar::Entry::unpack` and confined only member
/// names. Here every write also refuses to pass through a symlink, hard
/// links must name a regular file already extracted, and symlink targets
/// must be relative and may only climb (`../`) before descending, and no
/// higher than the job root. With every link confined that way and no
/// write following a link, later links cannot chain their way out either.
mod seed_archive {
    use super::{create_symlink, remove_path_if_exists};
    use anyhow::{bail, Context, Result};
    use flate2::read::GzDecoder;
    use std::fs;
    use std::io::{self, Read};
    use std::path::{Component, Path, PathBuf};
    use tar::{Archive, Entry, EntryType};

    /// Unpacks `archive` into `workspace`, which sits `depth` directories
    /// below the job root.
    pub(super) fn unpack(archive: &Path, workspace: &Path, depth: usize) -> Result<()> {
        let name = archive
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        let gzipped = name.ends_with(".tar.gz") || name.ends_with(".tgz");
        if !gzipped && !name.ends_with(".tar") {
            bail!(
                "unsupported workspace archive format {} (expected .tar, .tar.gz, or .tgz)",
                archive.display()
            );
        }
        let file = fs::File::open(archive)
            .with_context(|| format!("failed to open workspace archive {}", archive.display()))?;
        let unpacker = Unpacker {
            archive,
            workspace,
            depth,
        };
        if gzipped {
            unpacker.run(GzDecoder::new(file))
        } else {
            unpacker.run(file)
        }
    }

    struct Unpacker<'a> {
        archive: &'a Path,
        workspace: &'a Path,
        depth: usize,
    }

    impl Unpacker<'_> {
        fn run(&self, reader: impl Read) -> Result<()> {
            let mut archive = Archive::new(reader);
            let entries = archive.entries().with_context(|| {
                format!(
                    "failed to read workspace archive {}",
                    self.archive.display()
                )
            })?;
            for entry in entries {
                let mut entry = entry.with_context(|| {
                    format!(
                        "failed to read workspace archive {}",
                        self.archive.display()
                    )
                })?;
                let name = entry
                    .path()
                    .with_context(|| {
                        format!(
                            "failed to read an entry name in workspace archive {}",
                            self.archive.display()
                        )
                    })?
                    .into_owned();
                // No extra context: the unsafe-path phrase must stay on top.
                self.apply(&mut entry, &name)?;
            }
            Ok(())
        }

        fn apply<R: Read>(&self, entry: &mut Entry<'_, R>, name: &Path) -> Result<()> {
            let relative = self.confined_member(name)?;
            let kind = entry.header().entry_type();
            if is_metadata(kind) || is_special(kind) {
                // Metadata is consumed by the tar crate; device nodes and FIFOs
                // have no meaning in a workspace and are skipped.
                return Ok(());
            }
            let is_dir = kind.is_dir()
                || (entry.header().as_ustar().is_none() && entry.path_bytes().ends_with(b"/"));
            if relative.as_os_str().is_empty() && !is_dir {
                bail!(self.unsafe_path(name));
            }
            let target = self.workspace.join(&relative);
            self.walk_parents(&relative, true)?;
            let existing = fs::symlink_metadata(&target);
            if !(is_dir && existing.as_ref().is_ok_and(|meta| meta.is_dir())) {
                remove_path_if_exists(&target)
                    .with_context(|| format!("failed to replace {}", target.display()))?;
            }
            if kind.is_symlink() {
                self.unpack_symlink(entry, &relative, &target)
            } else if kind.is_hard_link() {
                self.unpack_hard_link(entry, &target)
            } else {
                entry
                    .unpack(&target)
                    .with_context(|| format!("failed to write {}", target.display()))?;
                Ok(())
            }
        }

        fn unsafe_path(&self, name: &Path) -> String {
            format!(
                "workspace archive {} contained an unsafe path {}",
                self.archive.display(),
                name.display()
            )
        }

        /// Member names must be plain relative paths: no root, drive prefix
        /// or `..`.
        fn confined_member(&self, name: &Path) -> Result<PathBuf> {
            let mut relative = PathBuf::new();
            for component in name.components() {
                match component {
                    Component::Normal(part) => relative.push(part),
                    Component::CurDir => {}
                    Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                        bail!(self.unsafe_path(name))
                    }
                }
            }
            Ok(relative)
        }

        /// Checks the parents of `relative`, refusing to pass through a
        /// symlink or a non-directory that an earlier member left there, and
        /// creates missing ones when `create` is set.
        fn walk_parents(&self, relative: &Path, create: bool) -> Result<()> {
            let Some(parent) = relative.parent() else {
                return Ok(());
            };
            let mut current = self.workspace.to_path_buf();
            for component in parent.components() {
                current.push(component);
                match fs::symlink_metadata(&current) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        bail!(
                            "workspace archive {} entry {} traverses a symlink at {}",
                            self.archive.display(),
                            relative.display(),
                            current.display()
                        )
                    }
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => bail!(
                        "workspace archive {} entry {} traverses a non-directory at {}",
                        self.archive.display(),
                        relative.display(),
                        current.display()
                    ),
                    // Nothing to link to; the caller reports the missing source.
                    Err(error) if error.kind() == io::ErrorKind::NotFound && !create => {
                        return Ok(())
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir(&current)
                            .with_context(|| format!("failed to create {}", current.display()))?;
                    }
                    Err(error) => {
                        return Err(error)
                            .with_context(|| format!("failed to inspect {}", current.display()))
                    }
                }
            }
            Ok(())
        }

        fn unpack_symlink<R: Read>(
            &self,
            entry: &Entry<'_, R>,
            relative: &Path,
            target: &Path,
        ) -> Result<()> {
            let link_target = link_name(entry)?;
            let parent_depth = self.depth + relative.components().count() - 1;
            if !link_stays_inside(&link_target, parent_depth) {
                bail!(
                    "workspace archive {} entry {} links outside the job root: {}",
                    self.archive.display(),
                    relative.display(),
                    link_target.display()
                );
            }
            let resolved = target
                .parent()
                .map(|parent| parent.join(&link_target))
                .unwrap_or_default();
            let target_is_dir = fs::metadata(resolved).is_ok_and(|meta| meta.is_dir());
            create_symlink(&link_target, target, target_is_dir)
        }

        fn unpack_hard_link<R: Read>(&self, entry: &Entry<'_, R>, target: &Path) -> Result<()> {
            let link_name = link_name(entry)?;
            let source_relative = self.confined_member(&link_name)?;
            if source_relative.as_os_str().is_empty() {
                bail!(self.unsafe_path(&link_name));
            }
            self.walk_parents(&source_relative, false)?;
            let source = self.workspace.join(&source_relative);
            let is_file = fs::symlink_metadata(&source).is_ok_and(|meta| meta.is_file());
            if !is_file {
                bail!(
                    "workspace archive {} hard link {} must name a regular file already in the archive",
                    self.archive.display(),
                    link_name.display()
                );
            }
            fs::hard_link(&source, target).with_context(|| {
                format!(
                    "failed to hard link {} to {}",
                    target.display(),
                    source.display()
                )
            })
        }
    }

    fn link_name<R: Read>(entry: &Entry<'_, R>) -> Result<PathBuf> {
        match entry.link_name().context("failed to read link name")? {
            Some(name) if !name.as_os_str().is_empty() => Ok(name.into_owned()),
            _ => bail!("link entry has no link name"),
        }
    }

    /// True when a symlink in a directory `parent_depth` levels below the job
    /// root, pointing at `target`, resolves inside the job root: relative,
    /// every `..` before the first name, and no more `..` than levels.
    pub(super) fn link_stays_inside(target: &Path, parent_depth: usize) -> bool {
        let mut climbs = 0usize;
        let mut descended = false;
        for component in target.components() {
            match component {
                Component::CurDir => {}
                Component::Normal(_) => descended = true,
                Component::ParentDir if !descended => climbs += 1,
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
            }
        }
        climbs <= parent_depth
    }

    fn is_metadata(kind: EntryType) -> bool {
        kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
    }

    fn is_special(kind: EntryType) -> bool {
        kind.is_character_special() || kind.is_block_special() || kind.is_fifo()
    }
}
