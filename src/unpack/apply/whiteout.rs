//! Whiteouts: `.wh.NAME` deletes NAME and `.wh..wh..opq` empties its
//! directory, both only of what lower layers left; what the current layer
//! wrote is spared whatever the order of entries.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::FileType;
use rustix::io::Errno;

use super::{dir_id, location_key, Applier, DirId};
use crate::unpack::error::{io_error, UnpackError};
use crate::unpack::fsops;

impl Applier<'_> {
    /// `.wh.NAME`: delete NAME as lower layers left it, sparing what this
    /// layer wrote there.
    pub(super) fn whiteout(&mut self, parent: &[u8], target: &[u8]) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let path = join(parent, target);
        let Some(dir) = self.existing_dir(parent)? else {
            return Ok(());
        };
        self.forget_parents();
        let id = dir_id(dir.as_fd()).map_err(|e| io_error("stat directory", parent, e))?;
        self.remove_lower(dir.as_fd(), id, target, &path)
    }

    /// `.wh..wh..opq`: empty the directory of lower-layer content.
    pub(super) fn opaque(&mut self, dir_path: &[u8]) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let Some(dir) = self.existing_dir(dir_path)? else {
            return Ok(());
        };
        // Reopen readable: the resolved fd is O_PATH, which cannot list.
        let dir = fsops::open_subdir_nofollow(dir.as_fd(), b".")
            .map_err(|e| io_error("open directory", dir_path, e))?;
        self.forget_parents();
        let id = dir_id(dir.as_fd()).map_err(|e| io_error("stat directory", dir_path, e))?;
        self.remove_lower_children(dir.as_fd(), id, dir_path)
    }

    fn existing_dir(&self, dir_path: &[u8]) -> Result<Option<OwnedFd>, UnpackError> {
        match fsops::open_dir_in_root(self.root, dir_path) {
            Ok(fd) => Ok(Some(fd)),
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOENT) | Some(Errno::NOTDIR)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_error("open directory", dir_path, e)),
        }
    }

    /// Removes what lower layers left at `name` in `dir`. What this layer
    /// wrote stays: a directory that holds some of it is kept and only its
    /// lower-layer children go.
    fn remove_lower(
        &mut self,
        dir: BorrowedFd<'_>,
        id: DirId,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let written = self.written.contains(&location_key(id, name));
        let Some(st) = fsops::lstat_at(dir, name).map_err(|e| io_error("stat", path, e))? else {
            return Ok(());
        };
        if fsops::file_type(&st) != FileType::Directory {
            if written {
                return Ok(());
            }
            return fsops::remove_any_at(dir, name).map_err(|e| io_error("remove", path, e));
        }
        let child = fsops::open_subdir_nofollow(dir, name)
            .map_err(|e| io_error("open directory", path, e))?;
        let child_id = (st.st_dev, st.st_ino);
        self.remove_lower_children(child.as_fd(), child_id, path)?;
        if written {
            return Ok(());
        }
        // A lower directory that still holds this layer's entries stays.
        match fsops::rmdir_at(dir, name) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOTEMPTY) | Some(Errno::EXIST)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io_error("remove", path, e)),
        }
    }

    fn remove_lower_children(
        &mut self,
        dir: BorrowedFd<'_>,
        id: DirId,
        dir_path: &[u8],
    ) -> Result<(), UnpackError> {
        let names = fsops::list_dir(dir).map_err(|e| io_error("list", dir_path, e))?;
        for name in names {
            let child = join(dir_path, &name);
            self.remove_lower(dir, id, &name, &child)?;
        }
        Ok(())
    }
}

/// `parent/name`, or `name` at the root.
fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}
