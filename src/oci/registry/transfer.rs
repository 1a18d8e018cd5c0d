#![forbid(unsafe_code)]
//! Fetching manifests and blobs with retries, resume and verification.
//!
//! A blob streams into a [`BlobWriter`] (hashed and counted as it
//! arrives). When the connection drops, the body comes up short, or the
//! registry answers 5xx or 429, the request is retried after a backoff,
//! asking with `Range` for the bytes not yet written; a registry that
//! ignores the range and sends everything restarts the temp file. A 401 in
//! the middle of a pull (an expired bearer token) triggers one fresh token
//! exchange. 403 and 404 end the pull at once. Too many bytes, or a digest
//! that does not match, end it too, and the temp file is removed.

use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::RegistryOperation;

use super::auth::Credentials;
use super::error::RegistryError;
use super::reference::ImageReference;
use crate::oci::layout::MAX_DOCUMENT_SIZE;
use crate::oci::layout_write::{BlobWriter, LayoutWriter};
use crate::oci::{media, Digest, OciError};

/// How often and how patiently failed requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Delay before the first retry; it doubles each time.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.min(16);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// The accepted manifest types, most preferred first.
pub(crate) const MANIFEST_TYPES: [&str; 4] = [
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_MANIFEST,
];

/// Chunks in flight between the network and the blob writer thread.
const CHANNEL_CHUNKS: usize = 4;

/// What to do about a failed request.
enum Verdict {
    /// Try again after a backoff.
    Retry(String),
    /// Get a fresh token, then try again (once).
    Reauth(String),
    /// Give up with this error.
    Fatal(RegistryError),
}

/// One registry session: a client, its credentials and the reference
/// being pulled, for messages.
pub(crate) struct Session {
    pub client: oci_client::Client,
    pub reference: ImageReference,
    pub client_ref: oci_client::Reference,
    pub auth: oci_client::secrets::RegistryAuth,
    pub retry: RetryPolicy,
}

impl Session {
    pub fn new(
        client: oci_client::Client,
        reference: ImageReference,
        credentials: &Credentials,
        retry: RetryPolicy,
    ) -> Session {
        Session {
            client,
            client_ref: reference.to_client_ref(),
            reference,
            auth: credentials.to_client_auth(),
            retry,
        }
    }

    /// Runs the token exchange (or learns that none is needed) up front,
    /// so that bad credentials fail here with a clear message.
    pub async fn authenticate(&self) -> Result<(), RegistryError> {
        let what = "authenticate".to_owned();
        let mut retry = 0;
        loop {
            let result = self
                .client
                .auth(&self.client_ref, &self.auth, RegistryOperation::Pull)
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) => match self.judge(&what, e) {
                    Verdict::Retry(detail) => self.backoff(&what, &mut retry, detail).await?,
                    Verdict::Reauth(detail)
                    | Verdict::Fatal(RegistryError::Denied { detail, .. }) => {
                        return Err(self.denied(&what, detail))
                    }
                    Verdict::Fatal(err) => return Err(err),
                },
            }
        }
    }

    /// Fetches a manifest or index by tag or digest: raw bytes, exactly as
    /// served, checked against `expected` (digest and size) when given.
    pub async fn fetch_manifest(
        &self,
        reference: &str,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let what = format!("manifest {reference}");
        let target = match expected {
            Some((digest, _)) => self.client_ref.clone_with_digest(digest.to_string()),
            None if reference.contains(':') => self.client_ref.clone_with_digest(reference.into()),
            None => oci_client::Reference::with_tag(
                self.client_ref.registry().to_owned(),
                self.client_ref.repository().to_owned(),
                reference.to_owned(),
            ),
        };
        let mut retry = 0;
        let mut reauthed = false;
        let bytes = loop {
            match self
                .client
                .pull_manifest_raw(&target, &self.auth, &MANIFEST_TYPES)
                .await
            {
                Ok((bytes, _)) => break bytes,
                Err(e) => match self.judge(&what, e) {
                    Verdict::Retry(detail) => self.backoff(&what, &mut retry, detail).await?,
                    Verdict::Reauth(detail) => self.reauth(&what, &mut reauthed, detail).await?,
                    Verdict::Fatal(err) => return Err(err),
                },
            }
        };
        let bad = |reason: String| RegistryError::BadDocument {
            reference: self.reference.to_string(),
            what: what.clone(),
            reason,
        };
        if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
            return Err(bad(format!(
                "document too large: {} bytes, limit {MAX_DOCUMENT_SIZE}",
                bytes.len()
            )));
        }
        let digest = match expected {
            Some((digest, size)) => {
                digest
                    .verify_bytes(&bytes, size)
                    .map_err(|e| bad(e.to_string()))?;
                digest.clone()
            }
            None => match Digest::parse(reference) {
                Ok(digest) => {
                    digest
                        .verify_bytes(&bytes, bytes.len() as u64)
                        .map_err(|e| bad(e.to_string()))?;
                    digest
                }
                Err(_) => Digest::sha256_of(&bytes),
            },
        };
        Ok((bytes.to_vec(), digest))
    }

    /// Fetches an image config into memory, verified against `digest` and
    /// `size`. Choosing among index entries that declare no platform needs
    /// their configs before the layout is touched.
    pub async fn fetch_config(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, RegistryError> {
        let what = format!("config {digest}");
        if size > MAX_DOCUMENT_SIZE {
            let err = OciError::DocumentTooLarge {
                what: "config",
                name: digest.to_string(),
                size,
                limit: MAX_DOCUMENT_SIZE,
            };
            return Err(RegistryError::layout(&self.reference, err));
        }
        let descriptor = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..OciDescriptor::default()
        };
        let mut retry = 0;
        let mut reauthed = false;
        loop {
            match self.small_blob_attempt(&descriptor, size).await {
                Ok(bytes) if bytes.len() as u64 == size => {
                    digest
                        .verify_bytes(&bytes, size)
                        .map_err(|e| RegistryError::layout(&self.reference, e))?;
                    return Ok(bytes);
                }
                Ok(bytes) => {
                    let detail = format!("body ended early: {} of {size} bytes", bytes.len());
                    self.backoff(&what, &mut retry, detail).await?;
                }
                Err(e) => match self.judge(&what, e) {
                    Verdict::Retry(detail) => self.backoff(&what, &mut retry, detail).await?,
                    Verdict::Reauth(detail) => self.reauth(&what, &mut reauthed, detail).await?,
                    Verdict::Fatal(err) => return Err(err),
                },
            }
        }
    }

    /// One request for a whole small blob; stops reading one byte past
    /// `size`, so a lying registry cannot make it buffer more.
    async fn small_blob_attempt(
        &self,
        descriptor: &OciDescriptor,
        size: u64,
    ) -> Result<Vec<u8>, OciDistributionError> {
        let response = self
            .client
            .pull_blob_stream_partial(&self.client_ref, descriptor, 0, None)
            .await?;
        let mut stream = match response {
            BlobResponse::Full(stream) | BlobResponse::Partial(stream) => stream,
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() as u64 > size {
                break;
            }
        }
        Ok(bytes)
    }

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
        let what = format!("blob {digest}");
        let mut writer = Some(layout.begin_blob(digest, size).map_err(layout_err)?);
        let written = |w: &Option<BlobWriter>| w.as_ref().map_or(0, BlobWriter::written);
        let descriptor = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..OciDescriptor::default()
        };
        let mut retry = 0;
        let mut reauthed = false;
        let mut transferred = 0u64;
        loop {
            match self
                .blob_attempt(&descriptor, &mut writer, &mut transferred, progress)
                .await
            {
                Ok(()) if written(&writer) == size => break,
                Ok(()) => {
                    let detail = format!("body ended early: {} of {size} bytes", written(&writer));
                    self.backoff(&what, &mut retry, detail).await?;
                }
                Err(AttemptError::Layout(e)) => return Err(layout_err(e)),
                // Every byte arrived but the connection did not end cleanly
                // (a Content-Length larger than the blob): the digest
                // check in commit decides, not another request.
                Err(AttemptError::Client(_)) if written(&writer) == size => break,
                Err(AttemptError::Client(e)) => match self.judge(&what, e) {
                    Verdict::Retry(detail) => self.backoff(&what, &mut retry, detail).await?,
                    Verdict::Reauth(detail) => self.reauth(&what, &mut reauthed, detail).await?,
                    Verdict::Fatal(err) => return Err(err),
                },
            }
        }
        let writer = writer.expect("blob writer returned by every attempt");
        writer.commit().map_err(layout_err)?;
        Ok(transferred)
    }

    /// One request for the rest of a blob. The network side stays on the
    /// runtime thread; hashing and writing run on a blocking-pool thread
    /// fed through a bounded channel, so the two overlap on two cores
    /// while memory stays bounded. The writer goes back into `writer`
    /// after the attempt, whatever its outcome, so a retry resumes it.
    async fn blob_attempt(
        &self,
        descriptor: &OciDescriptor,
        writer: &mut Option<BlobWriter>,
        transferred: &mut u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), AttemptError> {
        let offset = writer.as_ref().map_or(0, BlobWriter::written);
        let response = self
            .client
            .pull_blob_stream_partial(&self.client_ref, descriptor, offset, None)
            .await?;
        let mut stream = match response {
            BlobResponse::Full(stream) => {
                if offset > 0 {
                    if let Some(w) = writer.as_mut() {
                        w.restart()?;
                    }
                }
                stream
            }
            BlobResponse::Partial(stream) => stream,
        };
        let mut owned = writer.take().ok_or_else(|| {
            AttemptError::Layout(OciError::Io {
                op: "resume blob",
                path: descriptor.digest.clone().into(),
                source: std::io::Error::other("blob writer lost"),
            })
        })?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHANNEL_CHUNKS);
        let sink = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = owned.write(&chunk) {
                    return (owned, Err(e));
                }
            }
            (owned, Ok(()))
        });
        let mut network = Ok(());
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    let n = chunk.len() as u64;
                    // A closed channel means the writer failed; its error
                    // is reported below.
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                    *transferred += n;
                    progress(n);
                }
                Err(e) => {
                    network = Err(AttemptError::from(e));
                    break;
                }
            }
        }
        drop(tx);
        let (owned, wrote) = sink.await.map_err(|e| {
            AttemptError::Layout(OciError::Io {
                op: "write blob",
                path: descriptor.digest.clone().into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        *writer = Some(owned);
        wrote?;
        network
    }

    /// Sorts an `oci-client` error into retry, re-auth or give up.
    fn judge(&self, what: &str, err: OciDistributionError) -> Verdict {
        let fatal = |make: fn(String, String, String, String) -> RegistryError, detail: String| {
            Verdict::Fatal(make(
                self.reference.to_string(),
                self.reference.endpoint().to_owned(),
                what.to_owned(),
                detail,
            ))
        };
        let not_found = |reference, registry, what, detail| RegistryError::NotFound {
            reference,
            registry,
            what,
            detail,
        };
        let denied = |reference, registry, what, detail| RegistryError::Denied {
            reference,
            registry,
            what,
            detail,
        };
        let other = |reference, registry, what, detail| RegistryError::Transfer {
            reference,
            registry,
            what,
            detail,
        };
        let text = err.to_string();
        match &err {
            OciDistributionError::UnauthorizedError { .. } => Verdict::Reauth(text),
            OciDistributionError::AuthenticationFailure(_) => fatal(denied, text),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    Verdict::Retry(text)
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized))
                {
                    Verdict::Reauth(text)
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                    fatal(denied, text)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    fatal(not_found, text)
                } else {
                    fatal(other, text)
                }
            }
            OciDistributionError::ServerError { code, .. } => match code {
                401 => Verdict::Reauth(text),
                403 => fatal(denied, text),
                404 => fatal(not_found, text),
                429 | 500..=599 => Verdict::Retry(text),
                _ => fatal(other, text),
            },
            OciDistributionError::ImageManifestNotFoundError(_) => fatal(not_found, text),
            OciDistributionError::RequestError(e) if e.is_builder() => fatal(other, text),
            OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
                Verdict::Retry(chain(&err))
            }
            _ => fatal(other, text),
        }
    }

    /// Sleeps before the next attempt, or gives up when attempts are spent.
    async fn backoff(
        &self,
        what: &str,
        retry: &mut u32,
        detail: String,
    ) -> Result<(), RegistryError> {
        *retry += 1;
        if *retry >= self.retry.attempts {
            return Err(RegistryError::Transfer {
                reference: self.reference.to_string(),
                registry: self.reference.endpoint().to_owned(),
                what: what.to_owned(),
                detail: format!("gave up after {} attempts: {detail}", self.retry.attempts),
            });
        }
        tokio::time::sleep(self.retry.delay(*retry - 1)).await;
        Ok(())
    }

    /// Fetches a fresh token once per request; a second 401 is final.
    async fn reauth(
        &self,
        what: &str,
        done: &mut bool,
        detail: String,
    ) -> Result<(), RegistryError> {
        if std::mem::replace(done, true) {
            return Err(self.denied(what, detail));
        }
        self.client
            .auth(&self.client_ref, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.denied(what, e.to_string()))?;
        Ok(())
    }

    fn denied(&self, what: &str, detail: String) -> RegistryError {
        RegistryError::Denied {
            reference: self.reference.to_string(),
            registry: self.reference.endpoint().to_owned(),
            what: what.to_owned(),
            detail,
        }
    }
}

/// Why one blob request failed.
enum AttemptError {
    Client(OciDistributionError),
    Layout(OciError),
}

impl From<OciDistributionError> for AttemptError {
    fn from(e: OciDistributionError) -> Self {
        AttemptError::Client(e)
    }
}

impl From<std::io::Error> for AttemptError {
    fn from(e: std::io::Error) -> Self {
        AttemptError::Client(OciDistributionError::IoError(e))
    }
}

impl From<OciError> for AttemptError {
    fn from(e: OciError) -> Self {
        AttemptError::Layout(e)
    }
}

/// An error and its sources on one line; reqwest hides the useful part
/// ("connection reset") in the source chain.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
