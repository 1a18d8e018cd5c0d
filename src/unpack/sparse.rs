//! PAX sparse files (`GNU.sparse.*` records, formats 0.0, 0.1 and 1.0), as
//! GNU tar `--format=pax --sparse` and bsdtar write them. The `tar` crate
//! handles old-GNU sparse headers itself but hands these over as ordinary
//! files whose data is the concatenation of the non-hole segments.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use tar::Entry;

use super::error::{hostile, io_error, UnpackError};

/// A sparse file's layout, from its PAX records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PaxSparse {
    /// The real member name (`GNU.sparse.name`), when the header carries a
    /// placeholder such as `GNUSparseFile.123/name`.
    pub name: Option<Vec<u8>>,
    /// The file's apparent size.
    pub real_size: u64,
    /// `(offset, length)` of each data segment; for format 1.0 the map is at
    /// the start of the data instead.
    map: Vec<(u64, u64)>,
    map_in_data: bool,
}

/// Reads the `GNU.sparse.*` records of an entry, if it has any.
pub fn detect<R: Read>(entry: &mut Entry<'_, R>) -> Result<Option<PaxSparse>, UnpackError> {
    let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Stream)? else {
        return Ok(None);
    };
    let mut sparse = PaxSparse::default();
    let mut seen = false;
    let mut pending_offset = None;
    for ext in extensions {
        let ext = ext.map_err(UnpackError::Stream)?;
        let Some(key) = ext.key_bytes().strip_prefix(b"GNU.sparse.") else {
            continue;
        };
        seen = true;
        let value = ext.value_bytes();
        match key {
            b"name" => sparse.name = Some(value.to_vec()),
            b"realsize" | b"size" => sparse.real_size = number(value)?,
            b"major" => sparse.map_in_data = number(value)? == 1,
            b"map" => sparse.map = pairs(value.split(|&b| b == b','))?,
            b"offset" => pending_offset = Some(number(value)?),
            b"numbytes" => {
                let offset = pending_offset
                    .take()
                    .ok_or_else(|| bad_map("numbytes without offset"))?;
                sparse.map.push((offset, number(value)?));
            }
            _ => {}
        }
    }
    Ok(seen.then_some(sparse))
}

fn bad_map(what: &'static str) -> UnpackError {
    hostile(b"(sparse map)", what)
}

fn number(value: &[u8]) -> Result<u64, UnpackError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad_map("sparse record is not a number"))
}

fn pairs<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<(u64, u64)>, UnpackError> {
    let mut map = Vec::new();
    while let Some(offset) = values.next() {
        if offset.is_empty() {
            continue;
        }
        let length = values.next().ok_or_else(|| bad_map("odd sparse map"))?;
        map.push((number(offset)?, number(length)?));
    }
    Ok(map)
}

impl PaxSparse {
    /// Writes the segments at their offsets and sizes the file, holes left
    /// as holes. `count` is told of every data byte, for the byte limit.
    pub fn write<R: Read>(
        &self,
        entry: &mut Entry<'_, R>,
        file: &mut File,
        path: &[u8],
        buffer: &mut [u8],
        count: &mut dyn FnMut(u64) -> Result<(), UnpackError>,
    ) -> Result<(), UnpackError> {
        let in_data;
        let map = if self.map_in_data {
            in_data = read_data_map(entry)?;
            &in_data
        } else {
            &self.map
        };
        for &(offset, length) in map {
            let end = offset
                .checked_add(length)
                .ok_or_else(|| bad_map("segment overflows"))?;
            if end > self.real_size {
                return Err(hostile(path, "sparse segment beyond the file size"));
            }
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io_error("seek", path, e))?;
            copy_exact(entry, file, length, path, buffer, count)?;
        }
        file.set_len(self.real_size)
            .map_err(|e| io_error("set size of", path, e))
    }
}

fn copy_exact<R: Read>(
    entry: &mut Entry<'_, R>,
    file: &mut File,
    mut left: u64,
    path: &[u8],
    buffer: &mut [u8],
    count: &mut dyn FnMut(u64) -> Result<(), UnpackError>,
) -> Result<(), UnpackError> {
    while left > 0 {
        let want = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match entry.read(&mut buffer[..want]) {
            Ok(0) => {
                return Err(UnpackError::Stream(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sparse data shorter than its map",
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Stream(e)),
        };
        count(n as u64)?;
        file.write_all(&buffer[..n])
            .map_err(|e| io_error("write", path, e))?;
        left -= n as u64;
    }
    Ok(())
}

/// Format 1.0: the map is decimal text at the start of the data (count,
/// then offset and length per segment, one per line), padded to 512 bytes.
fn read_data_map<R: Read>(entry: &mut Entry<'_, R>) -> Result<Vec<(u64, u64)>, UnpackError> {
    let mut consumed = 0u64;
    let mut line = || -> Result<u64, UnpackError> {
        let mut digits = Vec::new();
        loop {
            let mut byte = [0u8];
            entry.read_exact(&mut byte).map_err(UnpackError::Stream)?;
            consumed += 1;
            match byte[0] {
                b'\n' => return number(&digits),
                b if digits.len() < 20 => digits.push(b),
                _ => return Err(bad_map("sparse map line too long")),
            }
        }
    };
    let count = line()?;
    // Each segment needs two lines; a map cannot claim more than the data.
    if count > (1 << 20) {
        return Err(bad_map("sparse map too large"));
    }
    let mut map = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let offset = line()?;
        let length = line()?;
        map.push((offset, length));
    }
    let padding = (512 - consumed % 512) % 512;
    io::copy(&mut entry.by_ref().take(padding), &mut io::sink()).map_err(UnpackError::Stream)?;
    Ok(map)
}
