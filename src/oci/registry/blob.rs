#![forbid(unsafe_code)]
//! Downloading one blob into the layout: streamed, hashed on the way,
//! resumed with `Range` after a failure.
//!
//! The blob streams into a [`BlobWriter`], which keeps the bytes in a
//! partial file named by the digest (so a later pull, even from another
//! process, resumes it; see [`layout_write`](crate::oci::layout_write)).
//! A resumed request must come back as 206 with a `Content-Range` that
//! starts where it was asked to; a 206 starting anywhere else, or without
//! the header, throws the partial away and starts over from byte 0, as
//! does a 200 (a registry that ignores `Range`). Reading stops at the
//! descriptor's size: a server that announces more and keeps the
//! connection open is not waited for; the digest check decides.

use reqwest::header::CONTENT_RANGE;
use reqwest::{Response, StatusCode};

use super::error::RegistryError;
use super::retry::{Attempts, Failure};
use super::transfer::{chain, Session};
use crate::oci::layout_write::{BlobWriter, LayoutWriter};
use crate::oci::{Digest, OciError};

/// Chunks in flight between the network and the blob writer thread.
const CHANNEL_CHUNKS: usize = 4;

impl Session {
    /// Downloads one blob into the layout, verified, unless an intact copy
    /// is already there. Returns the bytes transferred.
    pub async fn fetch_blob(
        &self,
        layout: &LayoutWriter,
        digest: &Digest,
        size: u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, RegistryError> {
        let layout_err = |e| RegistryError::layout(&self.reference, e);
        if layout.has_verified_blob(digest, size).map_err(layout_err)? {
            return Ok(0);
        }
        let url = self.url("blobs", digest.as_str());
        let mut writer = Some(layout.begin_blob(digest, size).map_err(layout_err)?);
        let written = |w: &Option<BlobWriter>| w.as_ref().map_or(0, BlobWriter::written);
        let mut tries = Attempts::new(format!("blob {digest}"), &self.retry);
        let mut transferred = 0u64;
        loop {
            let before = written(&writer);
            let attempt = self.blob_attempt(&url, &mut writer, &mut transferred, progress);
            match attempt.await {
                Ok(()) => {}
                Err(failure) => {
                    if written(&writer) > before {
                        tries.progressed();
                    }
                    self.after(&mut tries, failure).await?;
                    continue;
                }
            }
            let w = writer
                .as_mut()
                .expect("blob writer returned by every attempt");
            // A partial from an earlier process that does not add up (its
            // last writes never reached the disk, say) is worth one fresh
            // download before the digest check fails the pull.
            if w.resumed() > 0 && !w.is_intact() {
                w.restart().map_err(layout_err)?;
                continue;
            }
            break;
        }
        let writer = writer.expect("blob writer returned by every attempt");
        writer.commit().map_err(layout_err)?;
        Ok(transferred)
    }

    /// One request for the rest of a blob; `Ok` once every byte is
    /// written. The network side stays on the runtime thread; hashing and
    /// writing run on a blocking-pool thread fed through a bounded
    /// channel, so the two overlap on two cores while memory stays
    /// bounded. The writer goes back into `writer` after the attempt,
    /// whatever its outcome, so a retry resumes it.
    async fn blob_attempt(
        &self,
        url: &str,
        writer: &mut Option<BlobWriter>,
        transferred: &mut u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Failure> {
        let layout_err = |e| Failure::Fatal(RegistryError::layout(&self.reference, e));
        let mut owned = writer.take().ok_or_else(|| {
            layout_err(OciError::Io {
                op: "resume blob",
                path: url.into(),
                source: std::io::Error::other("blob writer lost"),
            })
        })?;
        let offset = owned.written();
        let response = match self.get(url, None, offset).await {
            Ok(response) => response,
            Err(failure) => {
                *writer = Some(owned);
                return Err(failure);
            }
        };
        if let Err(discard) = check_resume(&response, offset) {
            // The partial goes either way: this answer is the whole blob
            // (a 200), or it cannot be trusted to continue it.
            if let Err(e) = owned.restart() {
                *writer = Some(owned);
                return Err(layout_err(e));
            }
            if let Some(detail) = discard {
                *writer = Some(owned);
                return Err(Failure::retry(detail));
            }
        }
        let size = owned.expected_size();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHANNEL_CHUNKS);
        let sink = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = owned.write(&chunk) {
                    return (owned, Err(e));
                }
            }
            (owned, Ok(()))
        });
        let network = stream_body(response, offset, size, &tx, transferred, progress).await;
        drop(tx);
        let (owned, wrote) = sink.await.map_err(|e| {
            layout_err(OciError::Io {
                op: "write blob",
                path: url.into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        let done = owned.written();
        *writer = Some(owned);
        wrote.map_err(layout_err)?;
        network?;
        if done < size {
            let detail = format!("body ended early: {done} of {size} bytes");
            return Err(Failure::retry(detail));
        }
        Ok(())
    }
}

/// Whether a response continues the blob at `offset`: `Ok` for a 206 whose
/// `Content-Range` starts there, or any answer to a request from byte 0.
/// `Err(None)`: a 200 to a resumed request, the whole blob, to be read
/// from the start now, over a restarted partial. `Err(Some(why))`: a 206 that starts elsewhere; the
/// partial is thrown away and the next attempt starts from 0.
fn check_resume(response: &Response, offset: u64) -> Result<(), Option<String>> {
    if offset == 0 {
        return Ok(());
    }
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Err(None);
    }
    let range = response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    match range.and_then(content_range_start) {
        Some(start) if start == offset => Ok(()),
        Some(start) => Err(Some(format!(
            "asked for bytes from {offset}, the registry sent from {start}; restarting from 0"
        ))),
        None => Err(Some(format!(
            "asked for bytes from {offset}, the registry sent 206 with Content-Range {range:?}; \
             restarting from 0"
        ))),
    }
}

/// The first byte of `bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

/// Sends the body's chunks to the writer until `size` bytes are in (from
/// `offset`), the body ends, or the connection fails.
async fn stream_body(
    mut response: Response,
    offset: u64,
    size: u64,
    tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    transferred: &mut u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), Failure> {
    let mut at = if response.status() == StatusCode::OK {
        0
    } else {
        offset
    };
    while at < size {
        let mut chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Err(Failure::retry(chain(&e))),
        };
        // Bytes past the descriptor's size are never written: a server
        // that announced more is cut off here, not waited for.
        let room = size - at;
        if chunk.len() as u64 > room {
            chunk.truncate(room as usize);
        }
        let n = chunk.len() as u64;
        // A closed channel means the writer failed; its error is
        // reported by the caller.
        if tx.send(chunk).await.is_err() {
            break;
        }
        at += n;
        *transferred += n;
        progress(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_starts() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }
}
