//! Unpack into a staging directory beside the target and rename it into
//! place only when every layer applied and verified, so that a failure
//! never leaves a half-finished rootfs at the target.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};

use super::apply::{Applier, Privileges};
use super::error::UnpackError;
use super::fsops;
use super::pipeline::{apply_layers, LayerInput};
use super::{LayerStats, UnpackOptions};
use crate::oci::Digest;

/// Why an image could not be unpacked to its target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StagedUnpackError {
    /// The target cannot take a new rootfs.
    #[error("rootfs target {path}: {reason}")]
    Target {
        /// The target path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Preparing, renaming or cleaning the staging directory failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A layer failed to apply or verify.
    #[error("apply layer {digest}")]
    Layer {
        /// The layer's position in the manifest, from 0.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// What went wrong inside the layer.
        #[source]
        source: UnpackError,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StagedUnpackError + 'a {
    move |source| StagedUnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Applies `layers` in order to a new rootfs at `target`, which must not
/// exist or be an empty directory. The rootfs appears only when complete.
pub fn unpack_layers_into(
    target: &Path,
    layers: Vec<LayerInput>,
    options: UnpackOptions,
    on_layer: &mut dyn FnMut(usize, &Digest),
) -> Result<LayerStats, StagedUnpackError> {
    check_target(target)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().ok_or(StagedUnpackError::Target {
        path: target.to_path_buf(),
        reason: "has no final name",
    })?;
    let parent_fd = rustix::fs::open(
        &parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .map_err(io_err("open parent directory", &parent))?;
    let staging = staging_name(name.as_bytes());
    let staging_path = parent.join(std::ffi::OsStr::from_bytes(&staging));
    fsops::mkdir_at(parent_fd.as_fd(), &staging, 0o755)
        .map_err(io_err("create staging directory", &staging_path))?;
    let result = fill_staging(
        &parent_fd,
        &staging,
        &staging_path,
        layers,
        options,
        on_layer,
    )
    .and_then(|stats| {
        fsops::rename_at(
            parent_fd.as_fd(),
            &staging,
            parent_fd.as_fd(),
            name.as_bytes(),
        )
        .map_err(io_err("rename staging directory into", target))?;
        Ok(stats)
    });
    if result.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fsops::remove_tree_at(parent_fd.as_fd(), &staging);
    }
    result
}

fn fill_staging(
    parent_fd: &OwnedFd,
    staging: &[u8],
    staging_path: &Path,
    layers: Vec<LayerInput>,
    options: UnpackOptions,
    on_layer: &mut dyn FnMut(usize, &Digest),
) -> Result<LayerStats, StagedUnpackError> {
    let root = fsops::open_subdir_nofollow(parent_fd.as_fd(), staging)
        .map_err(io_err("open staging directory", staging_path))?;
    let digests: Vec<Digest> = layers.iter().map(|l| l.digest.clone()).collect();
    let mut applier = Applier::new(root.as_fd(), options, Privileges::detect());
    apply_layers(&mut applier, layers, on_layer).map_err(|(index, source)| {
        StagedUnpackError::Layer {
            index,
            // apply_layers reports the index of one of `layers`.
            digest: digests[index].clone(),
            source,
        }
    })?;
    Ok(*applier.stats())
}

fn check_target(target: &Path) -> Result<(), StagedUnpackError> {
    let refuse = |reason| StagedUnpackError::Target {
        path: target.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", target)(e)),
        Ok(meta) if meta.file_type().is_symlink() => Err(refuse("is a symlink")),
        Ok(meta) if !meta.is_dir() => Err(refuse("exists and is not a directory")),
        Ok(_) => {
            let mut entries = std::fs::read_dir(target).map_err(io_err("list", target))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(refuse("exists and is not empty")),
            }
        }
    }
}

fn staging_name(target_name: &[u8]) -> Vec<u8> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = b".".to_vec();
    name.extend_from_slice(target_name);
    name.extend_from_slice(
        format!(".metalor-staging-{}-{nanos:09}", std::process::id()).as_bytes(),
    );
    name
}
