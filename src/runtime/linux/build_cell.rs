//! Build cells (upstream-api.md, "Build cells"): a command run in a prepared root with a
//! staged workspace, read-only imports and read-write caches, then caches
//! synced back and exports copied out.
//!
//! The flow has three steps, each a public function:
//! 1. outer: [`build_cell_reexec_command`] validates the spec, stages the
//!    scratch directory (`workspace/`, `imports/<i>`, `caches/<i>`, the
//!    request file) and returns the re-exec `Command`;
//! 2. inner (the caller's hidden subcommand, in the namespaces):
//!    [`run_build_cell`] mounts the staged directories and runs the command;
//! 3. outer, after the child exits: [`finalize_build_cell`] syncs caches,
//!    copies exports and applies the cleanup policy.
//!
//! A workspace seed archive is untrusted and goes through
//! `unpack::Applier` into the freshly created workspace directory, so every
//! write is resolved inside it. The workspace is mounted into the cell, so
//! links behave as in a rootfs: any target is kept, and resolves inside the
//! workspace while unpacking. Before that, upstream's name rule refuses a
//! rooted or `..` member name (the applier would confine it instead). The
//! applier reads `.wh.` names as OCI whiteouts; the workspace is new, so
//! they have nothing to delete and leave no file. Device nodes are skipped,
//! since the seed is unpacked without `CAP_MKNOD` rights, as upstream's
//! `tar` unpack did; FIFOs are created.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use rustix::fs::{Mode, OFlags};

use super::host::{
    canonicalize_runtime_root_prefix, prepare_runtime_root, prepare_runtime_workspace,
};
use super::inner::{ensure_isolated_runtime, run_phase, RunOptions};
use super::reexec::{private_namespace_command, ReexecOptions};
use super::validate::{
    mount_covers, validate_container_absolute, validate_env, validate_executable,
    validate_host_absolute,
};
use super::{BindMount, ContainerRunCommand, LinuxNamespaceBackend};
use crate::runtime::tree::extract::check_seed_member_names;
use crate::runtime::tree::seed::{copy_seed_directory, workspace_archive_is_gzipped};
use crate::runtime::tree::{copy_path, remove_path_if_exists};
use crate::runtime::{
    build_cell_request_path, write_build_cell_request, BuildCellResult, BuildCellSpec,
    CleanupPolicy, NetworkPolicy, WorkspaceSeed,
};
use crate::unpack::decode::GzipReader;
use crate::unpack::{Applier, Privileges, UnpackOptions};

/// The arg that carries the request file path to the inner side.
pub const BUILD_CELL_REQUEST_ARG: &str = "--build-cell-request";

const WORKSPACE_DIR: &str = "workspace";
const IMPORTS_DIR: &str = "imports";
const CACHES_DIR: &str = "caches";

/// The privileged build-cell re-exec:
/// [`build_cell_reexec_command_with_backend`] with
/// [`LinuxNamespaceBackend::Privileged`].
pub fn build_cell_reexec_command(
    current_exe: &Path,
    subcommand: &str,
    runtime_root_prefix: &Path,
    spec: &BuildCellSpec,
) -> Result<Command> {
    build_cell_reexec_command_with_backend(
        current_exe,
        subcommand,
        runtime_root_prefix,
        spec,
        LinuxNamespaceBackend::Privileged,
    )
}

/// Validates `spec`, prepares its root (with the sentinel) and its scratch
/// under the prefix, stages the workspace seed, imports and caches into
/// the scratch (which is reset first), writes the request file, and returns
/// `current_exe subcommand [--net] --build-cell-request <scratch>/build-cell-request.json`
/// set up to start in private namespaces (a network namespace too when the
/// spec disables networking).
pub fn build_cell_reexec_command_with_backend(
    current_exe: &Path,
    subcommand: &str,
    runtime_root_prefix: &Path,
    spec: &BuildCellSpec,
    backend: LinuxNamespaceBackend,
) -> Result<Command> {
    validate_build_cell_spec(spec)?;
    let prefix = canonicalize_runtime_root_prefix(runtime_root_prefix)?;
    let root = prepare_runtime_root(spec.root.as_path(), &prefix)?.path;
    let scratch = prepare_runtime_workspace(spec.scratch.as_path(), &prefix, "build scratch")?.path;
    ensure_distinct(&root, &scratch)?;
    stage_scratch(spec, &scratch)?;
    let request = build_cell_request_path(&scratch);
    // The original spec, as upstream writes it, not the canonical paths.
    write_build_cell_request(&request, spec)?;
    let disable_network = spec.network == NetworkPolicy::Disabled;
    let options = ReexecOptions {
        backend,
        disable_network,
        signal_as_exit_code: false,
    };
    let mut command = private_namespace_command(current_exe, subcommand, &prefix, options)?;
    let mut args: Vec<OsString> = Vec::with_capacity(3);
    if disable_network {
        args.push("--net".into());
    }
    args.push(BUILD_CELL_REQUEST_ARG.into());
    args.push(request.into());
    command.args(args);
    Ok(command)
}

/// The inner side: runs the cell's command in `spec.root`, with the staged
/// workspace and caches mounted read-write and the imports read-only, the
/// spec's limits applied, and no resolv.conf bind when networking is
/// disabled. Must run in the namespaces [`build_cell_reexec_command`] set
/// up; the isolation proof refuses anything else.
pub fn run_build_cell(spec: &BuildCellSpec) -> Result<()> {
    validate_build_cell_spec(spec)?;
    let command = cell_container_command(spec);
    let root = ensure_isolated_runtime(&command.root)?;
    let networked = spec.network == NetworkPolicy::Enabled;
    let options = RunOptions {
        mount_host_network_config: networked,
        disable_network: !networked,
        limits: spec.limits,
        ..RunOptions::default()
    };
    run_phase(&command, &root, &options)
}

/// The outer side after the child exits: copies each cache back over its
/// host source, copies each export out, then applies the cleanup policy.
///
/// Unlike upstream, the cleanup policy is honoured even when a cache sync
/// or an export fails; every step is attempted and the first error is
/// returned after the cleanup.
pub fn finalize_build_cell(
    spec: &BuildCellSpec,
    command_succeeded: bool,
) -> Result<BuildCellResult> {
    validate_build_cell_spec(spec)?;
    let scratch = spec.scratch.as_path();
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |result: Result<()>| {
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    };
    for (index, cache) in spec.caches.iter().enumerate() {
        let staged = scratch.join(CACHES_DIR).join(index.to_string());
        note(copy_path(&staged, cache.source.as_path()));
    }
    for export in &spec.exports {
        note(copy_export(
            spec,
            export.source.as_str(),
            export.destination.as_path(),
            command_succeeded,
        ));
    }
    let scratch_preserved = match spec.cleanup {
        CleanupPolicy::Always => false,
        CleanupPolicy::PreserveOnFailure => !command_succeeded,
        CleanupPolicy::Never => true,
    };
    if !scratch_preserved {
        note(
            remove_path_if_exists(scratch)
                .with_context(|| format!("failed to remove build scratch {}", scratch.display())),
        );
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(BuildCellResult { scratch_preserved }),
    }
}

/// Upstream's `validate_build_cell_spec`, in its order and with its
/// messages.
pub(crate) fn validate_build_cell_spec(spec: &BuildCellSpec) -> Result<()> {
    let root = spec.root.as_path();
    let scratch = spec.scratch.as_path();
    if root == Path::new("/") {
        bail!("build cell root must not be /");
    }
    if scratch == Path::new("/") {
        bail!("build scratch must not be /");
    }
    validate_host_absolute(root, "build cell root")?;
    validate_host_absolute(scratch, "build scratch")?;
    validate_cell_dir(spec.workspace_path.as_str(), "build cell workspace path")?;
    match &spec.workspace_seed {
        WorkspaceSeed::Empty => {}
        WorkspaceSeed::SnapshotDir(seed) => {
            validate_host_absolute(seed.as_path(), "build workspace seed")?
        }
        WorkspaceSeed::Archive(archive) => {
            validate_host_absolute(archive.as_path(), "build workspace archive")?
        }
    }
    for import in &spec.imports {
        validate_host_absolute(import.source.as_path(), "build import source")?;
        validate_cell_dir(import.destination.as_str(), "build import destination")?;
    }
    for cache in &spec.caches {
        validate_host_absolute(cache.source.as_path(), "build cache source")?;
        validate_cell_dir(cache.destination.as_str(), "build cache destination")?;
    }
    for export in &spec.exports {
        validate_container_absolute(export.source.as_str(), "build export source")?;
        validate_host_absolute(export.destination.as_path(), "build export destination")?;
    }
    let destinations: Vec<(&str, &str)> = spec
        .imports
        .iter()
        .map(|i| ("import", i.destination.as_str()))
        .chain(
            spec.caches
                .iter()
                .map(|c| ("cache", c.destination.as_str())),
        )
        .collect();
    for (i, (kind_a, a)) in destinations.iter().enumerate() {
        for (kind_b, b) in &destinations[i + 1..] {
            if mount_covers(a, b) || mount_covers(b, a) {
                bail!("portable {kind_a} destination {a} conflicts with {kind_b} destination {b}");
            }
        }
    }
    validate_container_absolute(spec.command.cwd.as_str(), "build cell cwd")?;
    validate_executable(&spec.command.executable)?;
    validate_env(&spec.env)
}

/// A container-absolute directory that is not `/` itself.
fn validate_cell_dir(path: &str, ctx: &str) -> Result<()> {
    validate_container_absolute(path, ctx)?;
    if path == "/" {
        bail!("{ctx} must not be /");
    }
    Ok(())
}

fn ensure_distinct(root: &Path, scratch: &Path) -> Result<()> {
    if root == scratch {
        bail!("build scratch must not equal the build cell root");
    }
    if root.starts_with(scratch) || scratch.starts_with(root) {
        bail!(
            "build scratch {} must not overlap build cell root {}",
            scratch.display(),
            root.display()
        );
    }
    Ok(())
}

/// Resets the scratch and stages the workspace, imports and caches.
fn stage_scratch(spec: &BuildCellSpec, scratch: &Path) -> Result<()> {
    fs::remove_dir_all(scratch)
        .with_context(|| format!("failed to reset build scratch {}", scratch.display()))?;
    fs::create_dir(scratch)
        .with_context(|| format!("failed to create build scratch {}", scratch.display()))?;
    let workspace = scratch.join(WORKSPACE_DIR);
    for dir in [
        &workspace,
        &scratch.join(IMPORTS_DIR),
        &scratch.join(CACHES_DIR),
    ] {
        fs::create_dir(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    match &spec.workspace_seed {
        WorkspaceSeed::Empty => {}
        WorkspaceSeed::SnapshotDir(seed) => copy_seed_directory(seed.as_path(), &workspace)?,
        WorkspaceSeed::Archive(archive) => seed_from_archive(archive.as_path(), &workspace)?,
    }
    for (index, import) in spec.imports.iter().enumerate() {
        let staged = scratch.join(IMPORTS_DIR).join(index.to_string());
        copy_path(import.source.as_path(), &staged)?;
    }
    for (index, cache) in spec.caches.iter().enumerate() {
        let staged = scratch.join(CACHES_DIR).join(index.to_string());
        if cache.source.as_path().exists() {
            copy_path(cache.source.as_path(), &staged)?;
        } else {
            // A cache that does not exist yet starts empty; the job fills it.
            fs::create_dir_all(&staged)
                .with_context(|| format!("failed to create {}", staged.display()))?;
        }
    }
    Ok(())
}

/// Unpacks a `.tar`, `.tar.gz` or `.tgz` seed (chosen by suffix, as
/// upstream) with the layer applier, so no member, link target or
/// hardlink can reach outside the workspace. Member names are checked
/// first, in a separate pass over the file, with upstream's message for a
/// rooted or `..` name.
fn seed_from_archive(archive: &Path, workspace: &Path) -> Result<()> {
    let gzipped = workspace_archive_is_gzipped(archive)?;
    let open = || -> Result<Box<dyn Read>> {
        let file = fs::File::open(archive)
            .with_context(|| format!("failed to open workspace archive {}", archive.display()))?;
        Ok(if gzipped {
            Box::new(GzipReader::new(file))
        } else {
            Box::new(file)
        })
    };
    check_seed_member_names(archive, open()?)?;
    let root = rustix::fs::open(
        workspace,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .with_context(|| format!("failed to open {}", workspace.display()))?;
    // Like upstream's tar unpack: the caller owns what it extracts, and
    // device nodes are not created.
    let privileges = Privileges {
        chown: false,
        mknod: false,
    };
    let mut applier = Applier::new(root.as_fd(), UnpackOptions::default(), privileges);
    let mut unpack = || -> Result<()> {
        let mut rest = applier.apply_layer(open()?)?;
        // The gzip trailer is checked only when the stream is read to its end.
        io::copy(&mut rest, &mut io::sink())?;
        Ok(())
    };
    unpack().with_context(|| format!("failed to unpack workspace archive {}", archive.display()))
}

/// The container command of a cell: the staged workspace, imports (ro)
/// and caches (rw) bound at their destinations, in that order.
fn cell_container_command(spec: &BuildCellSpec) -> ContainerRunCommand {
    let scratch = spec.scratch.as_path();
    let mut mounts = vec![BindMount {
        source: scratch.join(WORKSPACE_DIR),
        destination: spec.workspace_path.as_str().to_owned(),
        read_only: false,
    }];
    for (index, import) in spec.imports.iter().enumerate() {
        mounts.push(BindMount {
            source: scratch.join(IMPORTS_DIR).join(index.to_string()),
            destination: import.destination.as_str().to_owned(),
            read_only: true,
        });
    }
    for (index, cache) in spec.caches.iter().enumerate() {
        mounts.push(BindMount {
            source: scratch.join(CACHES_DIR).join(index.to_string()),
            destination: cache.destination.as_str().to_owned(),
            read_only: false,
        });
    }
    ContainerRunCommand {
        root: spec.root.as_path().to_path_buf(),
        cwd: spec.command.cwd.as_str().to_owned(),
        mounts,
        env: spec.env.clone(),
        emulator: None,
        executable: spec.command.executable.clone(),
        argv: spec.command.argv.clone(),
    }
}

/// Where an export's cell path lives on the host after the run: under the
/// covering mount with the longest destination (the earliest on a tie,
/// workspace first), else straight in the rootfs.
pub(crate) fn resolve_export_source(spec: &BuildCellSpec, source: &str) -> PathBuf {
    let scratch = spec.scratch.as_path();
    let mut candidates = vec![(scratch.join(WORKSPACE_DIR), spec.workspace_path.as_str())];
    for (index, import) in spec.imports.iter().enumerate() {
        candidates.push((
            scratch.join(IMPORTS_DIR).join(index.to_string()),
            import.destination.as_str(),
        ));
    }
    for (index, cache) in spec.caches.iter().enumerate() {
        candidates.push((
            scratch.join(CACHES_DIR).join(index.to_string()),
            cache.destination.as_str(),
        ));
    }
    let mut best: Option<(PathBuf, &str)> = None;
    for (staged, destination) in candidates {
        if !mount_covers(destination, source) {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(_, d)| destination.len() > d.len())
        {
            best = Some((staged, destination));
        }
    }
    match best {
        Some((staged, destination)) => {
            let rest = if destination == "/" {
                source
            } else {
                &source[destination.len()..]
            };
            staged.join(rest.trim_start_matches('/'))
        }
        None => spec.root.as_path().join(source.trim_start_matches('/')),
    }
}

fn copy_export(
    spec: &BuildCellSpec,
    source: &str,
    destination: &Path,
    command_succeeded: bool,
) -> Result<()> {
    let resolved = resolve_export_source(spec, source);
    if fs::symlink_metadata(&resolved).is_err() {
        if command_succeeded {
            bail!(
                "expected build export {source} to exist at {}",
                resolved.display()
            );
        }
        return Ok(());
    }
    copy_path(&resolved, destination)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{CacheSpec, CommandSpec, HostPath, ImportSpec};

    fn spec() -> BuildCellSpec {
        BuildCellSpec {
            root: HostPath::new("/p/root"),
            scratch: HostPath::new("/p/scratch"),
            workspace_path: "/workspace".into(),
            workspace_seed: WorkspaceSeed::Empty,
            imports: vec![ImportSpec {
                source: HostPath::new("/host/in"),
                destination: "/workspace/in".into(),
            }],
            caches: vec![CacheSpec {
                source: HostPath::new("/host/cache"),
                destination: "/cache".into(),
            }],
            exports: vec![],
            command: CommandSpec {
                cwd: "/workspace".into(),
                executable: "sh".into(),
                argv: vec![],
            },
            env: vec![],
            network: NetworkPolicy::Enabled,
            limits: Default::default(),
            cleanup: CleanupPolicy::Always,
        }
    }

    #[test]
    fn exports_resolve_to_the_longest_covering_mount() {
        let spec = spec();
        let at = |s| resolve_export_source(&spec, s);
        assert_eq!(
            at("/workspace/out"),
            PathBuf::from("/p/scratch/workspace/out")
        );
        assert_eq!(
            at("/workspace/in/x"),
            PathBuf::from("/p/scratch/imports/0/x")
        );
        assert_eq!(at("/workspace/in"), PathBuf::from("/p/scratch/imports/0"));
        assert_eq!(at("/cache/a/b"), PathBuf::from("/p/scratch/caches/0/a/b"));
        assert_eq!(at("/etc/hostname"), PathBuf::from("/p/root/etc/hostname"));
        assert_eq!(at("/workspacex"), PathBuf::from("/p/root/workspacex"));
    }

    #[test]
    fn conflicts_name_both_destinations() {
        let mut spec = spec();
        spec.caches[0].destination = "/workspace/in/sub".into();
        let err = validate_build_cell_spec(&spec).unwrap_err().to_string();
        assert_eq!(
            err,
            "portable import destination /workspace/in conflicts with cache destination /workspace/in/sub"
        );
    }
}
