#![forbid(unsafe_code)]
//! The registry's write side, one request kind per method: is a blob
//! there (`HEAD`), mount it from another repository or open an upload
//! (`POST`), send it (`PUT`, or `PATCH` chunks and a closing `PUT`), and
//! store a manifest (`PUT`).
//!
//! A blob streams from its file in the layout, [`READ_CHUNK`] bytes at a
//! time, so memory stays bounded whatever its size. Blobs up to the chunk
//! size go in one `PUT`; larger ones in `PATCH` requests of that size,
//! each carrying its `Content-Range`, then a `PUT ?digest=`. When a
//! request fails, the upload's status (`GET` on its `Location`, answered
//! with `Range: 0-LAST`) says how much the registry holds, and the upload
//! carries on from there; when the registry no longer knows the upload
//! (distribution cancels one whose offset disagrees with its state), a new
//! one starts from byte 0. The retry budget is the pull's: attempts in a
//! row without progress.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::error::RegistryError;
use super::retry::{Attempts, Failure};
use super::transfer::Session;
use crate::oci::Digest;

/// Bytes read from the blob file per body chunk.
pub(crate) const READ_CHUNK: usize = 512 * 1024;

/// Chunks read ahead of the connection, per body.
const READ_AHEAD: usize = 4;

/// Called with the number of bytes handed to the connection.
pub(crate) type ByteCounter = Arc<dyn Fn(u64) + Send + Sync>;

/// An upload session the registry opened: where to send the next bytes,
/// and how many it holds.
#[derive(Clone, Debug)]
pub(crate) struct Upload {
    /// The absolute upload URL, the latest `Location` given.
    location: reqwest::Url,
    /// Bytes the registry has.
    offset: u64,
}

/// What a `POST …/blobs/uploads/` gave.
pub(crate) enum Started {
    /// The blob was mounted from the other repository (201).
    Mounted,
    /// An upload to send the blob to (202; for a mount, a refusal).
    Upload(Upload),
}

/// A blob to upload: its file in the layout, digest and size.
pub(crate) struct LocalBlob {
    /// The open blob file, read with positioned reads.
    pub file: Arc<File>,
    /// Its digest, which the registry checks.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

impl Session {
    /// Sends one request with the session's credentials, through the
    /// logged funnel ([`Session::send`]); a status in `ok` comes back as
    /// `Ok`, anything else is sorted into a [`Failure`].
    async fn send_expecting(
        &self,
        request: RequestBuilder,
        ok: &[StatusCode],
    ) -> Result<Response, Failure> {
        let mut request = request;
        if let Some(auth) = self.authorization.lock().expect("auth lock").clone() {
            request = request.header(AUTHORIZATION, auth);
        }
        let response = self.send(request).await?;
        if ok.contains(&response.status()) {
            return Ok(response);
        }
        Err(self.status_failure(response).await)
    }

    /// Runs `attempt` until it succeeds, with the session's retry rules.
    async fn retried<T, F, Fut>(&self, what: String, mut attempt: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut tries = Attempts::new(what, &self.retry);
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(failure) => self.after(&mut tries, failure).await?,
            }
        }
    }

    /// Whether the target repository has the blob (`HEAD`: 200 or 404).
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.url("blobs", digest.as_str());
        self.retried(format!("blob {digest}"), || async {
            let ok = [StatusCode::OK, StatusCode::NOT_FOUND];
            let response = self.send_expecting(self.http.head(&url), &ok).await?;
            Ok(response.status() == StatusCode::OK)
        })
        .await
    }

    /// Opens an upload, or with `mount` (`digest`, `from` repository) asks
    /// the registry to link the blob from there; a refused mount opens an
    /// upload instead (202), which the caller uses.
    pub async fn start_upload(
        &self,
        digest: &Digest,
        mount: Option<&str>,
    ) -> Result<Started, RegistryError> {
        let mut url = self.upload_url()?;
        if let Some(from) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from);
        }
        let what = match mount {
            Some(from) => format!("blob {digest} (mount from {from})"),
            None => format!("blob {digest}"),
        };
        self.retried(what, || async {
            let ok = [StatusCode::CREATED, StatusCode::ACCEPTED];
            let request = self.http.post(url.clone()).header(CONTENT_LENGTH, 0);
            let response = self.send_expecting(request, &ok).await?;
            if response.status() == StatusCode::CREATED && mount.is_some() {
                return Ok(Started::Mounted);
            }
            let location = self.location(&response, &url)?;
            Ok(Started::Upload(Upload {
                location,
                offset: 0,
            }))
        })
        .await
    }

    /// `…/v2/REPO/blobs/uploads/` as a URL.
    fn upload_url(&self) -> Result<reqwest::Url, RegistryError> {
        let text = format!(
            "{}/v2/{}/blobs/uploads/",
            self.base, self.reference.repository
        );
        reqwest::Url::parse(&text)
            .map_err(|e| RegistryError::Setup(format!("upload URL {text:?}: {e}")))
    }

    /// The `Location` of an answer, resolved against the request's URL.
    fn location(&self, response: &Response, base: &reqwest::Url) -> Result<reqwest::Url, Failure> {
        let value = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                let detail = format!("HTTP {} without a Location header", response.status());
                Failure::Fatal(self.transfer_error("", detail))
            })?;
        base.join(value).map_err(|e| {
            let detail = format!("upload Location {value:?} is not a URL: {e}");
            Failure::Fatal(self.transfer_error("", detail))
        })
    }

    /// Uploads `blob` into `upload` (or a new upload when `None`), in one
    /// `PUT` when it fits in `chunk` bytes, else in chunks; resumes from
    /// the registry's offset after a failure. Returns the bytes the
    /// registry acknowledged.
    pub async fn upload_blob(
        &self,
        blob: &LocalBlob,
        mut upload: Option<Upload>,
        chunk: u64,
        counter: &ByteCounter,
    ) -> Result<u64, RegistryError> {
        let mut tries = Attempts::new(format!("blob {}", blob.digest), &self.retry);
        let mut acknowledged = 0;
        loop {
            let mut current = match upload.take() {
                Some(current) => current,
                None => match self.start_upload(&blob.digest, None).await? {
                    Started::Upload(current) => current,
                    Started::Mounted => return Ok(0),
                },
            };
            let before = current.offset;
            let sent = self.send_from(&mut current, blob, chunk, &mut acknowledged, counter);
            let failure = match sent.await {
                Ok(()) => return Ok(acknowledged),
                Err(failure @ Failure::Fatal(_)) => failure,
                Err(failure) => {
                    upload = self.upload_status(&current).await;
                    upload = upload.filter(|u| u.offset <= blob.size);
                    if upload.as_ref().is_some_and(|u| u.offset > before) {
                        tries.progressed();
                    }
                    failure
                }
            };
            self.after(&mut tries, failure).await?;
        }
    }

    /// Sends the blob from `upload.offset` to the end and closes the
    /// upload with its digest, updating `upload` after each chunk.
    async fn send_from(
        &self,
        upload: &mut Upload,
        blob: &LocalBlob,
        chunk: u64,
        acknowledged: &mut u64,
        counter: &ByteCounter,
    ) -> Result<(), Failure> {
        let chunk = chunk.max(1);
        if upload.offset == 0 && blob.size <= chunk {
            self.close_upload(upload, blob, Some(blob.size), counter)
                .await?;
            *acknowledged += blob.size;
            return Ok(());
        }
        while upload.offset < blob.size {
            let end = blob.size.min(upload.offset + chunk);
            self.patch_chunk(upload, blob, end, counter).await?;
            *acknowledged += end - upload.offset;
            upload.offset = end;
        }
        self.close_upload(upload, blob, None, counter).await
    }

    /// `PATCH` bytes `upload.offset..end`; keeps the new `Location`. An
    /// answer that says the upload is gone or elsewhere (404, 416, 400)
    /// is worth a status check and another attempt, not the end.
    async fn patch_chunk(
        &self,
        upload: &mut Upload,
        blob: &LocalBlob,
        end: u64,
        counter: &ByteCounter,
    ) -> Result<(), Failure> {
        let start = upload.offset;
        let request = self
            .http
            .patch(upload.location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, end - start)
            .header("Content-Range", format!("{start}-{}", end - 1))
            .body(file_body(blob, start, end, counter.clone()));
        let response = match self.send_expecting(request, &[StatusCode::ACCEPTED]).await {
            Ok(response) => response,
            Err(Failure::Fatal(err)) if upload_lost(&err) => {
                return Err(Failure::retry(format!("chunk at {start}: {err}")))
            }
            Err(failure) => return Err(failure),
        };
        upload.location = self.location(&response, &upload.location)?;
        Ok(())
    }

    /// The closing `PUT ?digest=`, with the bytes `offset..offset+len`
    /// as its body when `len` is given (a monolithic upload).
    async fn close_upload(
        &self,
        upload: &Upload,
        blob: &LocalBlob,
        len: Option<u64>,
        counter: &ByteCounter,
    ) -> Result<(), Failure> {
        let mut url = upload.location.clone();
        url.query_pairs_mut()
            .append_pair("digest", blob.digest.as_str());
        let mut request = self
            .http
            .put(url)
            .header(CONTENT_TYPE, "application/octet-stream");
        request = match len {
            Some(len) => {
                let (start, end) = (upload.offset, upload.offset + len);
                request.header(CONTENT_LENGTH, len).body(file_body(
                    blob,
                    start,
                    end,
                    counter.clone(),
                ))
            }
            None => request.header(CONTENT_LENGTH, 0),
        };
        self.send_expecting(request, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Where the upload stands, from `GET` on its URL (`204` with
    /// `Range: 0-LAST`); `None` when the registry no longer has it.
    async fn upload_status(&self, upload: &Upload) -> Option<Upload> {
        let response = self
            .send_expecting(
                self.http.get(upload.location.clone()),
                &[StatusCode::NO_CONTENT, StatusCode::OK],
            )
            .await
            .ok()?;
        let offset = response
            .headers()
            .get("Range")
            .and_then(|v| v.to_str().ok())
            .and_then(range_end)?;
        let location = self
            .location(&response, &upload.location)
            .unwrap_or_else(|_| upload.location.clone());
        Some(Upload { location, offset })
    }

    /// Stores a manifest or index, byte for byte, under `reference` (a
    /// tag or its digest), and checks the digest the registry computed.
    pub async fn put_manifest(
        &self,
        reference: &str,
        digest: &Digest,
        media_type: &str,
        bytes: &Arc<[u8]>,
    ) -> Result<(), RegistryError> {
        let url = self.url("manifests", reference);
        let what = if reference == digest.as_str() {
            format!("manifest {digest}")
        } else {
            format!("manifest {digest} (tag {reference})")
        };
        let content_type = HeaderValue::from_str(media_type).map_err(|_| {
            let detail = format!("media type {media_type:?} cannot be a header");
            RegistryError::Setup(detail)
        })?;
        self.retried(what, || async {
            let body = bytes::Bytes::copy_from_slice(bytes);
            let request = self
                .http
                .put(&url)
                .header(CONTENT_TYPE, content_type.clone());
            let response = self
                .send_expecting(request.body(body), &[StatusCode::CREATED])
                .await?;
            let served = response
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok());
            match served {
                Some(served) if served != digest.as_str() => {
                    let detail = format!("the registry stored it as {served}");
                    Err(Failure::Fatal(self.transfer_error("", detail)))
                }
                _ => Ok(()),
            }
        })
        .await
    }
}

/// Whether a refused chunk means the upload itself is gone or out of
/// step (the registry's status then says where to go on).
fn upload_lost(err: &RegistryError) -> bool {
    match err {
        RegistryError::NotFound { .. } => true,
        RegistryError::Transfer { detail, .. } => {
            detail.starts_with("HTTP 416") || detail.contains("BLOB_UPLOAD_INVALID")
        }
        _ => false,
    }
}

/// The offset after `0-LAST` (a `Range` header of an upload status):
/// `LAST + 1`. Distribution answers `0-0` for an empty upload too; it is
/// taken as empty, and a wrong guess is corrected by the next refusal.
fn range_end(value: &str) -> Option<u64> {
    let (start, last) = value
        .trim()
        .strip_prefix("bytes=")
        .unwrap_or(value.trim())
        .split_once('-')?;
    let (start, last): (u64, u64) = (start.trim().parse().ok()?, last.trim().parse().ok()?);
    if start != 0 {
        return None;
    }
    Some(if last == 0 { 0 } else { last + 1 })
}

/// A request body streaming bytes `start..end` of the blob's file. A
/// blocking-pool thread reads ahead, [`READ_CHUNK`] bytes at a time and
/// at most [`READ_AHEAD`] chunks in front of the connection, so the disk
/// and the network overlap while memory stays bounded. When the request
/// ends early, the closed channel stops the reader.
fn file_body(blob: &LocalBlob, start: u64, end: u64, counter: ByteCounter) -> reqwest::Body {
    let file = blob.file.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut at = start;
        while at < end {
            let len = (end - at).min(READ_CHUNK as u64) as usize;
            let mut buf = vec![0u8; len];
            let read = file
                .read_exact_at(&mut buf, at)
                .map(|()| bytes::Bytes::from(buf));
            let failed = read.is_err();
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
            at += len as u64;
        }
    });
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let counter = counter.clone();
        async move {
            let chunk = rx.recv().await?;
            if let Ok(bytes) = &chunk {
                counter(bytes.len() as u64);
            }
            Some((chunk, rx))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ranges() {
        assert_eq!(range_end("0-1023"), Some(1024));
        assert_eq!(range_end("bytes=0-99"), Some(100));
        assert_eq!(range_end("0-0"), Some(0));
        assert_eq!(range_end("5-9"), None);
        assert_eq!(range_end("junk"), None);
    }
}
