//! Directories: a new one is created, an existing one is merged into, and a
//! lower layer's symlink to a directory is kept (keep-dirlinks).
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::FileType;
use rustix::io::Errno;
use tar::Entry;

use super::Applier;
use crate::unpack::error::{io_error, UnpackError};
use crate::unpack::{fsops, path};

impl Applier<'_> {
    pub(super) fn directory<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        let chown_new = self.chown_on_create(entry, parent, path)?;
        let chown = match fsops::mkdir_at(dir.as_fd(), name, 0o700) {
            Ok(()) => chown_new,
            Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {
                match self.merge_into_existing(dir.as_fd(), name, path)? {
                    // keep-dirlinks: a symlink to a directory stays, and the
                    // layer's children go through it.
                    Slot::DirLink => return Ok(()),
                    Slot::Created => chown_new,
                    Slot::Existing => {
                        // Its owner and mode change, and it may be a kept
                        // parent whose group is then stale.
                        self.forget_parents();
                        self.privileges.chown
                    }
                }
            }
            Err(e) => return Err(io_error("mkdir", path, e)),
        };
        let fd = fsops::open_subdir_nofollow(dir.as_fd(), name)
            .map_err(|e| io_error("open directory", path, e))?;
        self.stats.dirs += 1;
        self.finish_metadata(fd.as_fd(), entry, path, chown, false)?;
        let mtime = entry.header().mtime().map_err(UnpackError::Stream)?;
        self.dir_times.push((path.to_vec(), mtime));
        Ok(())
    }

    /// A directory entry met an existing name: says what is there now.
    fn merge_into_existing(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<Slot, UnpackError> {
        let st = fsops::lstat_at(dir, name).map_err(|e| io_error("stat", path, e))?;
        match st.map(|st| fsops::file_type(&st)) {
            Some(FileType::Directory) => return Ok(Slot::Existing),
            Some(FileType::Symlink) if fsops::open_dir_in_root(self.root, path).is_ok() => {
                return Ok(Slot::DirLink)
            }
            _ => {}
        }
        self.clear_slot(dir, name, path)?;
        self.forget_parents();
        fsops::mkdir_at(dir, name, 0o700).map_err(|e| io_error("mkdir", path, e))?;
        Ok(Slot::Created)
    }
}

/// What a directory entry found at an existing name.
enum Slot {
    /// A directory, which the entry merges into.
    Existing,
    /// A symlink to a directory, kept (keep-dirlinks).
    DirLink,
    /// Something else, replaced by a new directory.
    Created,
}
