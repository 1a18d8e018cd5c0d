#![forbid(unsafe_code)]
//! The registry auth handshake: read the `WWW-Authenticate` challenge of
//! `GET /v2/`, then either present basic credentials or trade them for a
//! bearer token at the challenge's realm (the Docker token protocol).
//!
//! The parsers take bytes or text and nothing else, so they can be fuzzed
//! and tested without a server. The token response is read with the same
//! bound as a manifest ([`MAX_DOCUMENT_SIZE`](crate::oci::layout::MAX_DOCUMENT_SIZE)):
//! a hostile token server cannot make the pull buffer more.

use super::auth::Credentials;
use super::error::RegistryError;
use super::retry::{Attempts, Failure};
use super::transfer::{name_what, read_capped, Session};
use crate::oci::layout::MAX_DOCUMENT_SIZE;
use base64::Engine as _;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

/// What a registry's `WWW-Authenticate` header asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// A bearer token from `realm`, for `service`.
    Bearer {
        /// The token endpoint URL.
        realm: String,
        /// The `service` parameter to pass on, if given.
        service: Option<String>,
    },
    /// HTTP basic authentication.
    Basic,
}

/// Parses a `WWW-Authenticate` value (`Bearer realm="…",service="…"` or
/// `Basic realm="…"`); `None` for a scheme metalor does not speak or a
/// bearer challenge without a realm.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm").filter(|r| !r.is_empty())?,
        service: get("service"),
    })
}

/// `key=value` and `key="quoted, value"` pairs separated by commas.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The bearer token in a token server's JSON answer (`token`, or OAuth's
/// `access_token`).
pub fn parse_token_response(body: &[u8]) -> Result<String, String> {
    let parsed: TokenBody =
        serde_json::from_slice(body).map_err(|e| format!("token response is not JSON: {e}"))?;
    parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| "token response has no token".to_owned())
}

impl Session {
    /// Runs the auth handshake (or learns that none is needed) and keeps
    /// the `Authorization` value for later requests. Called up front, so
    /// that bad credentials fail before anything is fetched, and again
    /// once when a request meets a 401 (an expired token).
    pub async fn authenticate(&self) -> Result<(), RegistryError> {
        let mut tries = Attempts::new("authenticate".to_owned(), &self.retry);
        loop {
            match self.handshake().await {
                Ok(value) => {
                    *self.authorization.lock().expect("auth lock") = value;
                    return Ok(());
                }
                Err(Failure::Reauth(detail)) => return Err(self.denied(&tries.what, detail)),
                Err(Failure::Fatal(err)) => return Err(name_what(err, &tries.what)),
                Err(Failure::Retry { detail, after }) => {
                    match tries.next_delay(detail.clone(), after) {
                        Ok(delay) => {
                            super::retry::log_retry(&tries.what, &detail, delay);
                            super::retry::sleep(delay).await
                        }
                        Err(detail) => return Err(self.transfer_error(&tries.what, detail)),
                    }
                }
            }
        }
    }

    /// One round of the handshake: the `Authorization` value to use.
    async fn handshake(&self) -> Result<Option<HeaderValue>, Failure> {
        let url = format!("{}/v2/", self.base);
        let response = self.send(self.http.get(&url)).await?;
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        match (response.status(), challenge) {
            (StatusCode::UNAUTHORIZED, Some(Challenge::Bearer { realm, service })) => {
                let token = self.fetch_token(&realm, service.as_deref()).await?;
                header(&format!("Bearer {token}")).map(Some)
            }
            (StatusCode::UNAUTHORIZED, _) => Ok(self.basic()),
            // "Later": worth another round.
            (status, _) if matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504) => {
                Err(self.status_failure(response).await)
            }
            // No challenge: requests go out without credentials, and the
            // registry's answers to them tell what is wrong (as oci-client
            // and containers/image do with a /v2/ that is not 200).
            _ => Ok(None),
        }
    }

    /// `Basic …` for the session's credentials, if it has some.
    fn basic(&self) -> Option<HeaderValue> {
        let Credentials::Basic { username, password } = &self.credentials else {
            return None;
        };
        let pair =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        header(&format!("Basic {pair}")).ok()
    }

    /// Trades the credentials (or none) for a token at `realm` covering
    /// the session's scopes.
    async fn fetch_token(&self, realm: &str, service: Option<&str>) -> Result<String, Failure> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| Failure::Reauth(format!("token realm {realm:?} is not a URL: {e}")))?;
        for scope in &self.scopes {
            url.query_pairs_mut().append_pair("scope", scope);
        }
        if let Some(service) = service {
            url.query_pairs_mut().append_pair("service", service);
        }
        let mut request = self.http.get(url);
        if let Some(basic) = self.basic() {
            request = request.header(reqwest::header::AUTHORIZATION, basic);
        }
        let response = self.send(request).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let status = response.status();
                let body = read_capped(response, MAX_DOCUMENT_SIZE).await;
                let summary = super::error::summarize_error_body(&body);
                return Err(Failure::Reauth(format!(
                    "token server {realm} refused: HTTP {status} {summary}"
                )));
            }
            _ => return Err(self.status_failure(response).await),
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_SIZE)
        {
            return Err(Failure::Fatal(self.transfer_error(
                "authenticate",
                format!("token response from {realm} larger than {MAX_DOCUMENT_SIZE} bytes"),
            )));
        }
        let body = read_capped(response, MAX_DOCUMENT_SIZE + 1).await;
        if body.len() as u64 > MAX_DOCUMENT_SIZE {
            let detail =
                format!("token response from {realm} larger than {MAX_DOCUMENT_SIZE} bytes");
            return Err(Failure::Fatal(self.transfer_error("authenticate", detail)));
        }
        parse_token_response(&body).map_err(|reason| {
            Failure::Fatal(self.transfer_error("authenticate", format!("{realm}: {reason}")))
        })
    }
}

/// A header value from text a server chose (a token): refused when it
/// holds bytes a header cannot carry.
fn header(text: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::from_str(text)
        .map_err(|_| Failure::Reauth("the token has bytes a header cannot carry".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="metalor-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge("bearer realm=http://h/t"),
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: None
            })
        );
    }

    #[test]
    fn token_bodies() {
        assert_eq!(parse_token_response(br#"{"token":"a"}"#).unwrap(), "a");
        assert_eq!(
            parse_token_response(br#"{"token":"","access_token":"b"}"#).unwrap(),
            "b"
        );
        assert!(parse_token_response(b"{}").is_err());
        assert!(parse_token_response(b"<html>").is_err());
    }
}
