#![forbid(unsafe_code)]
//! Reading a registry without pulling: a manifest exactly as served, the
//! image a reference resolves to with its config, the repository's tags,
//! and a credential check. This is what `metalor inspect docker://…`,
//! `metalor list-tags` and `metalor login` run.
//!
//! Everything goes through the pull's [`Session`]: the same auth
//! handshake, retries and bounded reads, and the same index walk
//! ([`oci::select`](crate::oci::select)), so an inspect shows the image a
//! pull of the same reference and platform would copy. Documents are
//! verified as a pull verifies them: a manifest fetched by digest must
//! hash to it, and an index entry or config to its descriptor.
//!
//! The tag list follows the distribution API's pagination: each page may
//! name the next in a `Link: <URL>; rel="next"` header, relative or
//! absolute. Pages are followed on the same registry only, each page is
//! bounded like a manifest, and the walk stops with an error after
//! [`MAX_TAG_PAGES`] pages, [`MAX_TAG_BYTES`] bytes or a page seen twice.

use std::collections::BTreeSet;

use reqwest::header::LINK;
use serde::Deserialize;

use super::auth::Credentials;
use super::error::RegistryError;
use super::reference::ImageReference;
use super::retry::{Attempts, Failure};
use super::transfer::{read_capped, Session};
use super::{block_on, connect, resolve, PullOptions};
use crate::oci::layout::MAX_DOCUMENT_SIZE;
use crate::oci::Digest;

/// Pages of a tag list followed before the walk counts as runaway.
pub const MAX_TAG_PAGES: usize = 10_000;

/// Bytes of tag-list pages read in all before the walk gives up.
pub const MAX_TAG_BYTES: u64 = 64 << 20;

/// A manifest or index exactly as the registry served it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawManifest {
    /// The digest of `bytes` (checked against the reference's digest
    /// when it names one).
    pub digest: Digest,
    /// Its media type, from the document (or its shape).
    pub media_type: String,
    /// The bytes as served.
    pub bytes: Vec<u8>,
}

/// One layer of a remote image, as its manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteLayer {
    /// The blob digest.
    pub digest: Digest,
    /// The blob size.
    pub size: u64,
    /// The layer media type.
    pub media_type: String,
    /// The descriptor's annotations.
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The image a registry reference resolves to, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteImage {
    /// The digest of what the reference names: the index when it names
    /// one (as `skopeo inspect` reports), else the manifest.
    pub digest: Digest,
    /// The manifest chosen (the index's entry for the platform).
    pub manifest: RawManifest,
    /// The config digest.
    pub config_digest: Digest,
    /// The config blob, verified, exactly as served.
    pub config: Vec<u8>,
    /// The layers, in order.
    pub layers: Vec<RemoteLayer>,
}

/// The outcome of a credential check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginCheck {
    /// The registry (or its token server) accepted the credentials.
    Accepted,
    /// It refused them; the registry's words.
    Refused(String),
}

/// Fetches the manifest or index `reference` names, without resolving an
/// index: what `inspect --raw` prints.
pub fn fetch_raw_manifest(
    reference: &ImageReference,
    options: &PullOptions,
) -> Result<RawManifest, RegistryError> {
    block_on(async {
        let session = connect(reference, options).await?;
        fetch_top(&session).await
    })?
}

/// Resolves `reference` to one image (an index by `options.platform`, as
/// a pull does) and fetches its config.
pub fn resolve_image(
    reference: &ImageReference,
    options: &PullOptions,
) -> Result<RemoteImage, RegistryError> {
    block_on(async {
        let session = connect(reference, options).await?;
        resolve_remote(&session, options).await
    })?
}

/// [`resolve_image`] and the repository's tags, over one session: what
/// `inspect` summarizes. A registry that refuses to list tags (some do)
/// gives an empty list rather than failing the inspect, as skopeo does.
pub fn inspect(
    reference: &ImageReference,
    options: &PullOptions,
) -> Result<(RemoteImage, Vec<String>), RegistryError> {
    block_on(async {
        let session = connect(reference, options).await?;
        let image = resolve_remote(&session, options).await?;
        let tags = match list_tags_in(&session, None).await {
            Err(RegistryError::Denied { .. }) => Vec::new(),
            other => other?,
        };
        Ok((image, tags))
    })?
}

/// Lists the tags of `reference`'s repository (its tag or digest is not
/// used), following every `Link` page. `page_size` asks the registry for
/// that many tags a page (`?n=`); registries may give fewer.
pub fn list_tags(
    reference: &ImageReference,
    options: &PullOptions,
    page_size: Option<u32>,
) -> Result<Vec<String>, RegistryError> {
    block_on(async {
        let session = connect(reference, options).await?;
        list_tags_in(&session, page_size).await
    })?
}

/// Checks `credentials` against `registry`: the bearer-token exchange
/// when the registry asks for it, then `GET /v2/` with what it gave. A
/// registry without auth accepts anything, as for `podman login`.
pub fn check_login(
    registry: &str,
    credentials: &Credentials,
    options: &PullOptions,
) -> Result<LoginCheck, RegistryError> {
    let reference = login_reference(registry)?;
    let options = PullOptions {
        credentials: Some(credentials.clone()),
        ..options.clone()
    };
    block_on(async {
        let session = match connect(&reference, &options).await {
            Err(RegistryError::Denied { detail, .. }) => return Ok(LoginCheck::Refused(detail)),
            other => other?,
        };
        match ping(&session).await {
            Err(RegistryError::Denied { detail, .. }) => Ok(LoginCheck::Refused(detail)),
            other => other.map(|()| LoginCheck::Accepted),
        }
    })?
}

/// A reference into `registry` for the session a login check runs on: the
/// token exchange needs a repository to scope its token to, and any name
/// will do to prove the credentials. Refuses text that is not a bare
/// registry host (`HOST[:PORT]`), such as a name Docker would read as a
/// Docker Hub repository.
pub fn login_reference(registry: &str) -> Result<ImageReference, RegistryError> {
    let host = registry.trim_end_matches('/');
    let parsed = ImageReference::parse(&format!("{host}/metalor-login"));
    let bad = || RegistryError::InvalidReference {
        value: registry.to_owned(),
        reason: "not a registry host (HOST[:PORT], with a dot, a port or localhost)".to_owned(),
    };
    match parsed {
        Ok(r)
            if r.registry == host
                || (r.registry == super::reference::DOCKER_HUB && is_hub(host)) =>
        {
            Ok(r)
        }
        _ => Err(bad()),
    }
}

/// The names Docker Hub answers to.
fn is_hub(host: &str) -> bool {
    ["docker.io", "index.docker.io", "registry-1.docker.io"].contains(&host)
}

/// `GET /v2/` with the session's authorization: 200 is accepted, a 401
/// or 403 refused.
async fn ping(session: &Session) -> Result<(), RegistryError> {
    let url = format!("{}/v2/", session.base);
    let mut tries = Attempts::new("GET /v2/".to_owned(), &session.retry);
    loop {
        match session.get(&url, None, 0).await {
            Ok(_) => return Ok(()),
            Err(Failure::Reauth(detail)) => return Err(session.denied(&tries.what, detail)),
            Err(failure) => session.after(&mut tries, failure).await?,
        }
    }
}

/// The document the reference names, verified when it names a digest.
async fn fetch_top(session: &Session) -> Result<RawManifest, RegistryError> {
    let named = session.reference.manifest_ref();
    let (bytes, digest) = session.fetch_manifest(&named, None).await?;
    let doc = crate::oci::select::Document::parse(digest, None, bytes, "reference")
        .map_err(|e| RegistryError::layout(&session.reference, e))?;
    Ok(RawManifest {
        digest: doc.digest,
        media_type: doc.media_type,
        bytes: doc.bytes,
    })
}

/// Runs the pull's walk to one manifest, then takes its config (fetched
/// while choosing, or now) and its layer list.
async fn resolve_remote(
    session: &Session,
    options: &PullOptions,
) -> Result<RemoteImage, RegistryError> {
    let wrap = |e| RegistryError::layout(&session.reference, e);
    let chosen = resolve(session, &options.platform).await?;
    let manifest = chosen.manifest;
    let descriptor = (manifest.body.config.as_ref())
        .ok_or_else(|| wrap(crate::oci::layout::missing_config(&manifest.digest)))?;
    let config_digest = Digest::parse(&descriptor.digest).map_err(wrap)?;
    let config = match chosen.config {
        Some((digest, bytes)) if digest == config_digest => bytes,
        _ => {
            session
                .fetch_config(&config_digest, descriptor.size)
                .await?
        }
    };
    let mut layers = Vec::new();
    for layer in manifest.body.layers.iter().flatten() {
        layers.push(RemoteLayer {
            digest: Digest::parse(&layer.digest).map_err(wrap)?,
            size: layer.size,
            media_type: layer.media_type.clone(),
            annotations: layer.annotations.clone(),
        });
    }
    let digest = chosen
        .index_digest
        .unwrap_or_else(|| manifest.digest.clone());
    Ok(RemoteImage {
        digest,
        manifest: RawManifest {
            digest: manifest.digest,
            media_type: manifest.media_type,
            bytes: manifest.bytes,
        },
        config_digest,
        config,
        layers,
    })
}

/// One page of `GET /v2/REPO/tags/list`.
#[derive(Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Walks the tag list from its first page, following `Link` headers.
async fn list_tags_in(
    session: &Session,
    page_size: Option<u32>,
) -> Result<Vec<String>, RegistryError> {
    let repository = &session.reference.repository;
    let mut url = format!("{}/v2/{repository}/tags/list", session.base);
    if let Some(n) = page_size {
        url = format!("{url}?n={n}");
    }
    let mut seen = BTreeSet::new();
    let mut tags = Vec::new();
    let mut total = 0u64;
    loop {
        let fail = |detail: String| session.transfer_error("tag list", detail);
        if !seen.insert(url.clone()) {
            return Err(fail(format!("the pages loop back to {url}")));
        }
        if seen.len() > MAX_TAG_PAGES {
            return Err(fail(format!("more than {MAX_TAG_PAGES} pages")));
        }
        let (link, body) = fetch_tag_page(session, &url).await?;
        total += body.len() as u64;
        if total > MAX_TAG_BYTES {
            return Err(fail(format!("more than {MAX_TAG_BYTES} bytes of pages")));
        }
        let page: TagPage = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("page {url} is not a tag list: {e}")))?;
        tags.extend(page.tags.unwrap_or_default());
        match link.as_deref().and_then(parse_next_link) {
            Some(next) => url = next_page_url(session, &url, &next)?,
            None => return Ok(tags),
        }
    }
}

/// One tag-list page with retries: its `Link` header and its body, read
/// to the document bound.
async fn fetch_tag_page(
    session: &Session,
    url: &str,
) -> Result<(Option<String>, Vec<u8>), RegistryError> {
    let mut tries = Attempts::new("tag list".to_owned(), &session.retry);
    let too_large = || {
        let detail = format!("page {url} is larger than {MAX_DOCUMENT_SIZE} bytes");
        session.transfer_error("tag list", detail)
    };
    loop {
        match session.get(url, Some("application/json"), 0).await {
            Ok(response) => {
                let link = response
                    .headers()
                    .get(LINK)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if response.content_length().unwrap_or(0) > MAX_DOCUMENT_SIZE {
                    return Err(too_large());
                }
                let body = read_capped(response, MAX_DOCUMENT_SIZE + 1).await;
                if body.len() as u64 > MAX_DOCUMENT_SIZE {
                    return Err(too_large());
                }
                return Ok((link, body));
            }
            Err(failure) => session.after(&mut tries, failure).await?,
        }
    }
}

/// The absolute URL of the next page, `link` resolved against the page
/// that named it; refused when it leaves the registry, so credentials
/// never follow a link to another host.
fn next_page_url(session: &Session, current: &str, link: &str) -> Result<String, RegistryError> {
    let fail = |detail: String| session.transfer_error("tag list", detail);
    let base =
        reqwest::Url::parse(current).map_err(|e| fail(format!("page URL {current}: {e}")))?;
    let next = base
        .join(link)
        .map_err(|e| fail(format!("next page link {link:?}: {e}")))?;
    let origin = reqwest::Url::parse(&session.base)
        .map_err(|e| fail(format!("registry URL {}: {e}", session.base)))?;
    if next.origin() != origin.origin() {
        return Err(fail(format!(
            "next page link {next} leaves the registry {}",
            session.base
        )));
    }
    Ok(next.to_string())
}

/// The target of the `rel="next"` link in a `Link` header value
/// (RFC 8288: `<URI>; rel="next"`, several links separated by commas,
/// `rel` possibly unquoted or listing several relations), as written.
pub fn parse_next_link(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params_end = after[close..].find('<').map_or(after.len(), |i| close + i);
        let params = &after[close + 1..params_end];
        if params.split(';').any(is_rel_next) {
            return Some(target.trim().to_owned());
        }
        rest = &after[params_end..];
    }
    None
}

/// Whether one `key=value` link parameter is `rel` naming `next`.
fn is_rel_next(param: &str) -> bool {
    let Some((key, value)) = param.trim().trim_end_matches(',').split_once('=') else {
        return false;
    };
    let value = value.trim().trim_end_matches(',').trim().trim_matches('"');
    key.trim().eq_ignore_ascii_case("rel")
        && value
            .split_whitespace()
            .any(|rel| rel.eq_ignore_ascii_case("next"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        let distribution = r#"</v2/a/tags/list?last=t3&n=3>; rel="next""#;
        assert_eq!(
            parse_next_link(distribution).as_deref(),
            Some("/v2/a/tags/list?last=t3&n=3")
        );
        let several = r#"<https://r.example/v2/a/tags/list?last=x>; rel="prev", <https://r.example/v2/a/tags/list?last=y>; rel=next"#;
        assert_eq!(
            parse_next_link(several).as_deref(),
            Some("https://r.example/v2/a/tags/list?last=y")
        );
        assert_eq!(
            parse_next_link(r#"<p?a=1,2>; title="x"; rel="prefetch next""#).as_deref(),
            Some("p?a=1,2")
        );
        assert_eq!(parse_next_link(r#"</v2/a/tags/list>; rel="prev""#), None);
        assert_eq!(parse_next_link("garbage"), None);
        assert_eq!(parse_next_link("<unclosed; rel=next"), None);
        assert_eq!(parse_next_link(""), None);
    }

    #[test]
    fn login_hosts() {
        let r = login_reference("127.0.0.1:5000").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.endpoint()),
            ("127.0.0.1:5000", "127.0.0.1:5000")
        );
        assert_eq!(
            login_reference("docker.io").unwrap().endpoint(),
            "registry-1.docker.io"
        );
        assert_eq!(login_reference("localhost/").unwrap().registry, "localhost");
        for bad in ["myhost", "127.0.0.1:5000/team", "", "UPPER.example:x"] {
            assert!(login_reference(bad).is_err(), "{bad}");
        }
    }
}
