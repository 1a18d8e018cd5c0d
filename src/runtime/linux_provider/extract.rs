//! Host-side extraction of a tree collected from the provider.
//!
//! The provider is a separate machine from the host's point of view, so its
//! archive is untrusted. Every member must pass the rules of the portable
//! extractor (`runtime::tree::extract`): relative names without `..`, no
//! write through a symlink, links that stay inside the destination, hard
//! links to regular files already extracted, no device nodes or FIFOs, no
//! `.wh.` names, and no setuid or setgid bits.
//!
//! How the tree is written depends on the host:
//! - on Linux the stream is first checked whole, and re-emitted as a clean
//!   archive into an unlinked spool file beside the destination; only then
//!   does `unpack::Applier` write it, with every path resolved inside the
//!   destination. A refused archive thus leaves nothing behind. `.wh.`
//!   names are refused rather than read as whiteouts, which would delete
//!   what the host already had in the destination;
//! - on macOS and Windows, which lack `openat2`, the portable extractor
//!   checks and writes member by member.
#![forbid(unsafe_code)]

use anyhow::Result;
use std::io::Read;
use std::path::Path;

/// Extracts the tar stream `reader` under `root`, which must exist. The
/// caller drains whatever follows the end-of-archive marker.
#[cfg(not(target_os = "linux"))]
pub(super) fn unpack<R: Read>(reader: R, root: &Path) -> Result<()> {
    crate::runtime::tree::extract::unpack(reader, root).map(drop)
}

/// Extracts the tar stream `reader` under `root`, which must exist. The
/// caller drains whatever follows the end-of-archive marker.
#[cfg(target_os = "linux")]
pub(super) fn unpack<R: Read>(reader: R, root: &Path) -> Result<()> {
    use crate::runtime::tree::extract::sanitize;
    use crate::unpack::{Applier, Privileges, UnpackOptions};
    use anyhow::Context;
    use rustix::fs::{Mode, OFlags};
    use std::io::{self, BufReader, BufWriter, Seek};
    use std::os::fd::AsFd;

    let destination = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .with_context(|| format!("failed to open {}", root.display()))?;
    let mut spool = sanitize(reader, BufWriter::new(spool_file(root)?))?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)
        .context("failed to write the checked archive")?;
    spool
        .rewind()
        .context("failed to rewind the checked archive")?;
    // The files belong to the host user, and device nodes were refused.
    let privileges = Privileges {
        chown: false,
        mknod: false,
    };
    let mut applier = Applier::new(destination.as_fd(), UnpackOptions::default(), privileges);
    applier.apply_layer(BufReader::new(spool))?;
    Ok(())
}

/// An anonymous file in `root`, so the spool lands on the destination's
/// file system (not a possibly memory-backed temp directory) and vanishes
/// with the process: the name is unlinked as soon as it is open, before
/// anything is extracted.
#[cfg(target_os = "linux")]
fn spool_file(root: &Path) -> Result<std::fs::File> {
    use anyhow::Context;
    use std::time::{SystemTime, UNIX_EPOCH};

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let path = root.join(format!(".metalor-collect-{}-{nanos}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("failed to create spool file {}", path.display()))?;
    std::fs::remove_file(&path)
        .with_context(|| format!("failed to unlink spool file {}", path.display()))?;
    Ok(file)
}
