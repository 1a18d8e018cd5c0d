#![forbid(unsafe_code)]
//! `copy SRC DST` in any direction between registries and layouts,
//! built from the pull and the push:
//! - registry → layout and layout → layout are the [pull](super::pull);
//! - layout → registry is the [push](super::push);
//! - registry → registry pulls into a private temp layout, then pushes
//!   from it, mounting from the source repository when both are on the
//!   same registry (so the blobs the target lacks are linked, not sent).
//!
//! With `all`, an index is copied whole in every direction but layout
//! to layout (refused by name rather than copying less than asked); the
//! registry side of it is [`pull_all`](super::pull_all).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::auth;
use super::error::RegistryError;
use super::pull_all::pull_all;
use super::push::{self, PushOptions, PushReport};
use super::reference::{ImageReference, PullSource};
use super::{block_on, pull, PullOptions, PullReport};
use crate::cleanup::TempGuard;
use crate::oci::layout_write::pid_alive;
use crate::oci::LayoutRef;

/// What a copy did: the pull half, the push half, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The pull (into the target layout, or into the temp layout).
    pub pull: Option<PullReport>,
    /// The push, when the target is a registry.
    pub push: Option<PushReport>,
}

/// The ref a copy's temp layout stores the image under.
const TEMP_REF: &str = "copy";

/// Distinguishes temp layouts of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Copies `source` to `target`, each `docker://…`, a bare reference or
/// `oci:DIR[:REF]`. A layout target's ref defaults to the source's tag,
/// else `latest`.
pub fn copy_str(
    source: &str,
    target: &str,
    options: &PushOptions,
) -> Result<CopyReport, RegistryError> {
    let source = PullSource::parse(source)?;
    let target = PullSource::parse(target)?;
    match (&source, target) {
        (PullSource::Layout(layout), PullSource::Registry(to)) => Ok(CopyReport {
            pull: None,
            push: Some(push::push(layout, &to, options)?),
        }),
        (_, PullSource::Layout(to)) => {
            let ref_name = to
                .reference
                .clone()
                .unwrap_or_else(|| source.default_ref_name());
            let pulled = pull_into(&source, &to.dir, &ref_name, options)?;
            Ok(CopyReport {
                pull: Some(pulled),
                push: None,
            })
        }
        (PullSource::Registry(from), PullSource::Registry(to)) => {
            registry_to_registry(from, &to, options)
        }
    }
}

/// The pull half: one image for the platform, or with `all` from a
/// registry the whole index.
fn pull_into(
    source: &PullSource,
    dir: &Path,
    ref_name: &str,
    options: &PushOptions,
) -> Result<PullReport, RegistryError> {
    let pull_options = pull_options(options, source)?;
    match source {
        PullSource::Registry(from) if options.all => {
            block_on(pull_all(from, dir, ref_name, &pull_options))?
        }
        PullSource::Layout(_) if options.all => Err(RegistryError::InvalidReference {
            value: "--all".to_owned(),
            reason: "a copy from a layout to a layout takes one platform (--platform)".into(),
        }),
        _ => pull(source, dir, ref_name, &pull_options),
    }
}

/// The pull half's options: the copy's, with credentials for the source.
fn pull_options(options: &PushOptions, source: &PullSource) -> Result<PullOptions, RegistryError> {
    let credentials = match (&options.auth_file, source) {
        (Some(file), PullSource::Registry(reference)) => {
            Some(auth::lookup_in(std::slice::from_ref(file), reference)?)
        }
        _ => None,
    };
    Ok(PullOptions {
        platform: options.platform.clone(),
        insecure: options.insecure,
        credentials,
        concurrency: options.concurrency,
        retry: options.retry.clone(),
        progress: None,
    })
}

/// Pulls into a temp layout (removed afterwards, and on an interrupt),
/// then pushes from it.
fn registry_to_registry(
    from: &ImageReference,
    to: &ImageReference,
    options: &PushOptions,
) -> Result<CopyReport, RegistryError> {
    reclaim_abandoned_layouts();
    let dir = temp_layout_dir();
    let _guard = TempGuard::new(&dir);
    let result = pull_then_push(from, to, &dir, options);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn pull_then_push(
    from: &ImageReference,
    to: &ImageReference,
    dir: &Path,
    options: &PushOptions,
) -> Result<CopyReport, RegistryError> {
    let source = PullSource::Registry(from.clone());
    let pulled = pull_into(&source, dir, TEMP_REF, options)?;
    let mut push_options = options.clone();
    if from.registry == to.registry {
        push_options.mount_from.insert(0, from.repository.clone());
    }
    let layout = LayoutRef {
        dir: dir.to_path_buf(),
        reference: Some(TEMP_REF.to_owned()),
    };
    let pushed = push::push(&layout, to, &push_options)?;
    Ok(CopyReport {
        pull: Some(pulled),
        push: Some(pushed),
    })
}

/// The prefix of a copy's temp layout, `metalor-copy-PID-N`.
const TEMP_LAYOUT_PREFIX: &str = "metalor-copy-";

/// A fresh directory name under the temp dir for one copy.
fn temp_layout_dir() -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("{TEMP_LAYOUT_PREFIX}{}-{n}", std::process::id()))
}

/// Removes the temp layouts of copies whose process is gone (a SIGKILL
/// leaves one behind). Best effort: what cannot be read or removed stays.
fn reclaim_abandoned_layouts() {
    let Ok(listing) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_LAYOUT_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, n)| Some((pid.parse::<i32>().ok()?, n.parse::<u64>().ok()?)));
        if let Some((pid, _)) = owner {
            if pid != std::process::id() as i32 && !pid_alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_copys_temp_layout_is_reclaimed_and_a_live_ones_kept() {
        // No process has this PID (above the kernel's pid_max).
        let dead = std::env::temp_dir().join(format!("{TEMP_LAYOUT_PREFIX}999999999-0"));
        let live = temp_layout_dir();
        for dir in [&dead, &live] {
            std::fs::create_dir_all(dir.join("blobs")).unwrap();
        }
        reclaim_abandoned_layouts();
        assert!(!dead.exists(), "the dead copy's layout is removed");
        assert!(live.exists(), "this process's layout stays");
        std::fs::remove_dir_all(&live).unwrap();
    }
}
