#![forbid(unsafe_code)]
//! Talking to the registry: one request, its failure sorted by
//! [`retry`](super::retry), and bounded reads of manifests, configs,
//! token answers and error bodies.
//!
//! Requests go through reqwest directly, not a registry client library,
//! because the decisions here need the response headers: `Retry-After`
//! for the wait, `Content-Length` to refuse an oversized document before
//! reading it, and `Content-Range` to check a resumed download (see
//! [`blob`](super::blob)). Every body is read with a bound: a document
//! above [`MAX_DOCUMENT_SIZE`] (4 MiB, containers/image's manifest limit)
//! is refused from its `Content-Length`, or after limit + 1 bytes when
//! the header lies or is absent; an error body is read to the same bound
//! and summarized.
//!
//! Every request, to the registry or its token server, is sent through
//! [`Session::send`]: the one place that logs it (debug level: method,
//! URL, status, size, time). New request kinds (push) go through it too,
//! so that nothing logs a header, a body or a credential on the side.

use std::sync::Mutex;
use std::time::SystemTime;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RANGE, RETRY_AFTER};
use reqwest::{Response, StatusCode};

use super::auth::Credentials;
use super::client::{Endpoint, MAX_REDIRECTS};
use super::error::{summarize_error_body, RegistryError};
use super::reference::ImageReference;
pub use super::retry::RetryPolicy;
use super::retry::{self, Attempts, Failure, MAX_RETRY_AFTER};
use crate::oci::layout::MAX_DOCUMENT_SIZE;
use crate::oci::{media, Digest, OciError};

/// The accepted manifest types, most preferred first.
pub(crate) const MANIFEST_TYPES: [&str; 4] = [
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_MANIFEST,
];

/// One registry session: the HTTP client, the credentials, the current
/// `Authorization` value and the reference being pulled, for messages.
pub(crate) struct Session {
    pub http: reqwest::Client,
    /// `http(s)://HOST`.
    pub base: String,
    pub reference: ImageReference,
    pub credentials: Credentials,
    /// What requests to the registry carry, once authenticated.
    pub authorization: Mutex<Option<HeaderValue>>,
    pub retry: RetryPolicy,
    /// The token scopes asked for: `repository:REPO:pull` for a pull; a
    /// push asks for `pull,push` on its target and `pull` on the
    /// repositories it mounts from.
    pub scopes: Vec<String>,
}

impl Session {
    pub fn new(
        http: reqwest::Client,
        endpoint: &Endpoint,
        reference: ImageReference,
        credentials: &Credentials,
        retry: RetryPolicy,
    ) -> Session {
        let scopes = vec![format!("repository:{}:pull", reference.repository)];
        Session {
            http,
            base: endpoint.base_url(),
            reference,
            credentials: credentials.clone(),
            authorization: Mutex::new(None),
            retry,
            scopes,
        }
    }

    /// `…/v2/REPO/KIND/NAME`.
    pub fn url(&self, kind: &str, name: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{name}",
            self.base, self.reference.repository
        )
    }

    /// Sends one GET to the registry with the session's credentials, and
    /// `Range: bytes=OFFSET-` when `offset` is not 0. Only a 200 or 206
    /// comes back as `Ok`; anything else is sorted into a [`Failure`].
    pub async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        offset: u64,
    ) -> Result<Response, Failure> {
        let mut request = self.http.get(url);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(auth) = self.authorization.lock().expect("auth lock").clone() {
            request = request.header(AUTHORIZATION, auth);
        }
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let response = self.send(request).await?;
        match response.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(response),
            _ => Err(self.status_failure(response).await),
        }
    }

    /// Sends one request: every request to the registry or its token
    /// server goes through here, so that each is logged once at debug
    /// level with its method, URL, status, size and time. Only those are
    /// logged: never a header (the `Authorization` value is a password or a
    /// token), never a body, and the URL without any user or password in
    /// it.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, Failure> {
        let request = request.build().map_err(|e| self.send_failure(e))?;
        let method = request.method().clone();
        let url = loggable_url(request.url());
        let started = std::time::Instant::now();
        match self.http.execute(request).await {
            Ok(response) => {
                tracing::debug!(
                    %method,
                    %url,
                    status = response.status().as_u16(),
                    bytes = response.content_length(),
                    ms = started.elapsed().as_millis() as u64,
                    "registry request"
                );
                Ok(response)
            }
            Err(err) => {
                tracing::debug!(%method, %url, error = %chain(&err), "registry request failed");
                Err(self.send_failure(err))
            }
        }
    }

    /// Sorts a request that got no response.
    pub fn send_failure(&self, err: reqwest::Error) -> Failure {
        let at = err
            .url()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_else(|| self.reference.endpoint().to_owned());
        if err.is_redirect() {
            let detail = format!("redirect loop: more than {MAX_REDIRECTS} redirects in a row");
            return Failure::Fatal(self.transfer_error("", detail));
        }
        if err.is_connect() {
            // Refused, unreachable or no such host: skopeo does not retry
            // these either, and the address is what the user must check.
            let detail = format!("connect to {at}: {}", chain(&err));
            return Failure::Fatal(self.transfer_error("", detail));
        }
        if err.is_builder() {
            return Failure::Fatal(self.transfer_error("", chain(&err)));
        }
        Failure::retry(chain(&err))
    }

    /// Sorts an answer with a status other than 200 and 206, reading a
    /// bounded part of its body for the message.
    pub async fn status_failure(&self, response: Response) -> Failure {
        let status = response.status();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_capped(response, MAX_DOCUMENT_SIZE).await;
        let mut detail = format!("HTTP {status}");
        let summary = summarize_error_body(&body);
        if !summary.is_empty() {
            detail = format!("{detail}: {summary}");
        }
        let fatal = |make: fn(String, String, String, String) -> RegistryError| {
            let reference = self.reference.to_string();
            let registry = self.reference.endpoint().to_owned();
            Failure::Fatal(make(reference, registry, String::new(), detail.clone()))
        };
        match status.as_u16() {
            401 => Failure::Reauth(detail),
            403 => fatal(|reference, registry, what, detail| RegistryError::Denied {
                reference,
                registry,
                what,
                detail,
            }),
            404 => fatal(
                |reference, registry, what, detail| RegistryError::NotFound {
                    reference,
                    registry,
                    what,
                    detail,
                },
            ),
            408 | 429 | 500 | 502 | 503 | 504 => {
                match retry::retry_after(after.as_deref(), SystemTime::now()) {
                    Ok(after) => Failure::Retry { detail, after },
                    Err(wait) => Failure::Fatal(self.transfer_error(
                        "",
                        format!(
                            "{detail}; the registry asks to retry after {} s, longer than the {} s \
                             metalor waits",
                            wait.as_secs(),
                            MAX_RETRY_AFTER.as_secs()
                        ),
                    )),
                }
            }
            _ => Failure::Fatal(self.transfer_error("", detail)),
        }
    }

    /// Handles a failed attempt of `tries`: waits and returns `Ok` when
    /// another attempt may follow (after a fresh token for a 401), or
    /// returns the error that ends the pull, naming what was fetched.
    pub async fn after(
        &self,
        tries: &mut Attempts<'_>,
        failure: Failure,
    ) -> Result<(), RegistryError> {
        match failure {
            Failure::Fatal(err) => Err(name_what(err, &tries.what)),
            Failure::Reauth(detail) => {
                if std::mem::replace(&mut tries.reauthed, true) {
                    return Err(self.denied(&tries.what, detail));
                }
                tracing::debug!(what = %tries.what, reason = %detail, "authenticating again");
                self.authenticate().await
            }
            Failure::Retry { detail, after } => match tries.next_delay(detail.clone(), after) {
                Ok(delay) => {
                    retry::log_retry(&tries.what, &detail, delay);
                    retry::sleep(delay).await;
                    Ok(())
                }
                Err(detail) => Err(self.transfer_error(&tries.what, detail)),
            },
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
        let name = expected.map_or(reference.to_owned(), |(d, _)| d.to_string());
        let accept = MANIFEST_TYPES.join(", ");
        let url = self.url("manifests", &name);
        let size = expected.map(|e| e.1);
        let bytes = self
            .fetch_document(("manifest", reference), &url, Some(&accept), size)
            .await?;
        let bad = |reason: String| RegistryError::BadDocument {
            reference: self.reference.to_string(),
            what: what.clone(),
            reason,
        };
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
        Ok((bytes, digest))
    }

    /// Fetches an image config into memory, verified against `digest` and
    /// `size`. Choosing among index entries that declare no platform needs
    /// their configs before the layout is touched.
    pub async fn fetch_config(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, RegistryError> {
        let url = self.url("blobs", digest.as_str());
        let name = ("config", digest.as_str());
        let bytes = self.fetch_document(name, &url, None, Some(size)).await?;
        digest
            .verify_bytes(&bytes, size)
            .map_err(|e| RegistryError::layout(&self.reference, e))?;
        Ok(bytes)
    }

    /// A whole small document, with retries; `size` when the descriptor
    /// gives it.
    async fn fetch_document(
        &self,
        (kind, name): (&'static str, &str),
        url: &str,
        accept: Option<&str>,
        size: Option<u64>,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{kind} {name}");
        let too_large = |size| {
            let err = OciError::DocumentTooLarge {
                what: kind,
                name: name.to_owned(),
                size,
                limit: MAX_DOCUMENT_SIZE,
            };
            RegistryError::layout(&self.reference, err)
        };
        if let Some(size) = size.filter(|s| *s > MAX_DOCUMENT_SIZE) {
            return Err(too_large(size));
        }
        let mut tries = Attempts::new(what, &self.retry);
        loop {
            let result = match self.get(url, accept, 0).await {
                Ok(response) => read_document(response, size).await,
                Err(failure) => Err(DocumentError::Request(failure)),
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err(DocumentError::TooLarge(n)) => return Err(too_large(n)),
                Err(DocumentError::Request(f)) => self.after(&mut tries, f).await?,
            }
        }
    }

    /// A [`RegistryError::Transfer`] for this session.
    pub fn transfer_error(&self, what: &str, detail: String) -> RegistryError {
        RegistryError::Transfer {
            reference: self.reference.to_string(),
            registry: self.reference.endpoint().to_owned(),
            what: what.to_owned(),
            detail,
        }
    }

    pub fn denied(&self, what: &str, detail: String) -> RegistryError {
        RegistryError::Denied {
            reference: self.reference.to_string(),
            registry: self.reference.endpoint().to_owned(),
            what: what.to_owned(),
            detail,
        }
    }
}

/// `url` as a log may show it: without the user and password a URL can
/// carry (none of metalor's own do, but a token realm is the server's).
fn loggable_url(url: &reqwest::Url) -> reqwest::Url {
    let mut url = url.clone();
    // Both fail only for URLs that cannot have credentials at all.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// Fills in what was being fetched in an error sorted before it was known.
pub(crate) fn name_what(mut err: RegistryError, name: &str) -> RegistryError {
    match &mut err {
        RegistryError::NotFound { what, .. }
        | RegistryError::Denied { what, .. }
        | RegistryError::Transfer { what, .. }
            if what.is_empty() =>
        {
            name.clone_into(what);
        }
        _ => {}
    }
    err
}

/// Why reading one document failed.
enum DocumentError {
    /// Over [`MAX_DOCUMENT_SIZE`]: declared or read.
    TooLarge(u64),
    /// The request failed.
    Request(Failure),
}

/// Reads a document body: refused from its `Content-Length` or after
/// limit + 1 bytes; with a known `size`, reading stops there, so a server
/// that announces more and holds the connection open is not waited for
/// (the digest check then decides).
async fn read_document(
    mut response: Response,
    size: Option<u64>,
) -> Result<Vec<u8>, DocumentError> {
    if let Some(len) = response.content_length().filter(|n| *n > MAX_DOCUMENT_SIZE) {
        return Err(DocumentError::TooLarge(len));
    }
    let stop = size.unwrap_or(MAX_DOCUMENT_SIZE + 1);
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < stop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return Err(DocumentError::Request(Failure::retry(chain(&e)))),
        }
    }
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(DocumentError::TooLarge(bytes.len() as u64));
    }
    if let Some(size) = size.filter(|s| (bytes.len() as u64) < *s) {
        let detail = format!("body ended early: {} of {size} bytes", bytes.len());
        return Err(DocumentError::Request(Failure::retry(detail)));
    }
    Ok(bytes)
}

/// Up to `limit` bytes of a body, for messages and token answers; a read
/// error ends it quietly (the status already tells what happened).
pub(crate) async fn read_capped(mut response: Response, limit: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit.saturating_sub(bytes.len() as u64) as usize;
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() as u64 >= limit {
            break;
        }
    }
    bytes
}

/// An error and its sources on one line; reqwest hides the useful part
/// ("connection reset") in the source chain.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
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
