//! Device nodes and fifos. Devices need `CAP_MKNOD`; without it they are
//! skipped and counted, as a rootless umoci does.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::fd::AsFd;

use rustix::fs::FileType;
use tar::{Entry, EntryType, Header};

use super::metadata::owner;
use super::Applier;
use crate::unpack::error::{io_error, UnpackError};
use crate::unpack::{fsops, path};

impl Applier<'_> {
    pub(super) fn special<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let kind = match header.entry_type() {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        // A fifo has no device number; a device's is read even when the node
        // will be skipped, so that a broken header fails whatever our
        // privileges.
        let dev = match kind {
            FileType::Fifo => 0,
            _ => device_number(header, path)?,
        };
        if kind != FileType::Fifo && !self.privileges.mknod {
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        let mode = header.mode().map_err(UnpackError::Stream)?;
        let mtime = header.mtime().map_err(UnpackError::Stream)?;
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        self.clear_slot(dir.as_fd(), name, path)?;
        self.forget_parents();
        fsops::mknod_at(dir.as_fd(), name, kind, mode, dev)
            .map_err(|e| io_error("mknod", path, e))?;
        if self.privileges.chown {
            let (uid, gid) = owner(entry, path)?;
            fsops::lchown_at(dir.as_fd(), name, uid, gid)
                .map_err(|e| io_error("chown", path, e))?;
        }
        fsops::chmod_at(dir.as_fd(), name, mode).map_err(|e| io_error("chmod", path, e))?;
        fsops::set_times_at_nofollow(dir.as_fd(), name, mtime)
            .map_err(|e| io_error("set mtime of", path, e))?;
        self.stats.devices += 1;
        Ok(())
    }
}

/// The `major:minor` of a device entry. An unreadable field fails the layer
/// with the path: guessing 0:0 would turn the node into a different device.
fn device_number(header: &Header, path: &[u8]) -> Result<rustix::fs::Dev, UnpackError> {
    let read = |field: std::io::Result<Option<u32>>| match field {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(UnpackError::Unsupported {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: "device entry in a header without device number fields".into(),
        }),
        Err(e) => Err(io_error("read device number of", path, e)),
    };
    let major = read(header.device_major())?;
    let minor = read(header.device_minor())?;
    Ok(rustix::fs::makedev(major, minor))
}
