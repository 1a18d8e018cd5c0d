//! Regular files, sparse ones included: content is streamed into a file
//! created in place of whatever the path held.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;
use tar::Entry;

use super::{Applier, Lend};
use crate::unpack::error::{io_error, UnpackError};
use crate::unpack::sparse::PaxSparse;
use crate::unpack::{fsops, path, LayerStats};

impl Applier<'_> {
    /// A PAX sparse file: its data segments, then its holes.
    pub(super) fn sparse<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
        sparse: &PaxSparse,
    ) -> Result<(), UnpackError> {
        let (parent, name) = path::split_parent(path);
        let chown = self.chown_on_create(entry, parent, path)?;
        let (file, mode_set) = self.create_file(entry, parent, name, path)?;
        let mut file = File::from(file);
        let (stats, limit) = (&mut self.stats, self.options.max_bytes);
        let mut count = |n: u64| count_bytes(stats, limit, n);
        sparse.write(entry, &mut file, path, &mut self.buffer, &mut count)?;
        self.stats.files += 1;
        self.finish_metadata(file.as_fd(), entry, path, chown, mode_set)
    }

    /// A plain regular file, its content written straight from the
    /// `lender`'s chunks when there is one, else read through the entry.
    pub(super) fn regular<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
        lender: Option<&dyn Lend>,
    ) -> Result<(), UnpackError> {
        let (parent, name) = path::split_parent(path);
        // Asked before the create, while the parent is still kept; the file
        // is always new (O_EXCL).
        let chown = self.chown_on_create(entry, parent, path)?;
        let (file, mode_set) = self.create_file(entry, parent, name, path)?;
        let mut file = File::from(file);
        let written = match lender {
            Some(lender) => self.write_lent(lender, entry.size(), &mut file, path)?,
            None => self.write_read(entry, &mut file, path)?,
        };
        if written != entry.size() {
            return Err(UnpackError::Stream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {written} of {} bytes before the stream ended",
                    String::from_utf8_lossy(path),
                    entry.size()
                ),
            )));
        }
        self.stats.files += 1;
        self.finish_metadata(file.as_fd(), entry, path, chown, mode_set)
    }

    /// Copies the entry's data to `file` through the applier's buffer.
    /// Returns the bytes written, short if the stream ended early.
    fn write_read<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        file: &mut File,
        path: &[u8],
    ) -> Result<u64, UnpackError> {
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => return Ok(written),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Stream(e)),
            };
            written += n as u64;
            count_bytes(&mut self.stats, self.options.max_bytes, n as u64)?;
            file.write_all(&self.buffer[..n])
                .map_err(|e| io_error("write", path, e))?;
        }
    }

    /// Writes the entry's `size` bytes of data to `file` as the lender
    /// holds them. Returns the bytes written, short if the stream ended.
    fn write_lent(
        &mut self,
        lender: &dyn Lend,
        size: u64,
        file: &mut File,
        path: &[u8],
    ) -> Result<u64, UnpackError> {
        let mut written = 0u64;
        while written < size {
            let want = usize::try_from(size - written).unwrap_or(usize::MAX);
            let bytes = lender.lend(want).map_err(UnpackError::Stream)?;
            if bytes.is_empty() {
                break;
            }
            written += bytes.len() as u64;
            count_bytes(&mut self.stats, self.options.max_bytes, bytes.len() as u64)?;
            file.write_all(&bytes)
                .map_err(|e| io_error("write", path, e))?;
        }
        Ok(written)
    }

    /// Creates the entry's file, in place of whatever `path` held; says
    /// whether it has its final mode already ([`Applier::creation_mode`]).
    fn create_file<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
        parent: &[u8],
        name: &[u8],
        path: &[u8],
    ) -> Result<(OwnedFd, bool), UnpackError> {
        let mode = entry.header().mode().map_err(UnpackError::Stream)?;
        let (mode, mode_set) = self.creation_mode(mode);
        let dir = self.parent_fd(parent)?;
        match fsops::create_file_at(dir, name, mode) {
            Ok(fd) => return Ok((fd, mode_set)),
            Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {}
            Err(e) => return Err(io_error("create", path, e)),
        }
        let dir = self.parent_dir(parent)?;
        self.clear_slot(dir.as_fd(), name, path)?;
        self.forget_parents();
        let fd = fsops::create_file_at(dir.as_fd(), name, mode)
            .map_err(|e| io_error("create", path, e))?;
        Ok((fd, mode_set))
    }
}

/// Adds file content to the totals and enforces the byte limit.
fn count_bytes(stats: &mut LayerStats, limit: Option<u64>, n: u64) -> Result<(), UnpackError> {
    stats.bytes += n;
    match limit {
        Some(limit) if stats.bytes > limit => Err(UnpackError::Limit {
            what: "bytes",
            limit,
        }),
        _ => Ok(()),
    }
}
