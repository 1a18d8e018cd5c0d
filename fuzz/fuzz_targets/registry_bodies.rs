//! Fuzz the registry answers a pull reads before anything is verified: the
//! distribution-spec error envelope (summarised into one line of an error
//! message), the bearer token answer, the `WWW-Authenticate` challenge and
//! the `Retry-After` header, and the tag list's `Link` header. Each parser gets the same bytes, and each
//! result is checked against the promise its doc makes.
//!
//! Run: `cargo +nightly fuzz run registry_bodies` from the repository root.
#![no_main]

use std::time::{Duration, SystemTime};

use metalor::oci::registry::error::summarize_error_body;
use metalor::oci::registry::remote::parse_next_link;
use metalor::oci::registry::retry::retry_after;
use metalor::oci::registry::token::{parse_challenge, parse_token_response, Challenge};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_error_body(data);
    if let Ok(token) = parse_token_response(data) {
        assert!(!token.is_empty(), "an empty token is refused");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_challenge(text);
    check_retry_after(text);
    check_link(text);
});

/// One line, whatever the registry sent.
fn check_error_body(body: &[u8]) {
    let line = summarize_error_body(body);
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert_eq!(line.trim(), line, "{line:?}");
}

/// A bearer challenge always names a realm, and parsing is a function.
fn check_challenge(header: &str) {
    let challenge = parse_challenge(header);
    if let Some(Challenge::Bearer { realm, .. }) = &challenge {
        assert!(!realm.is_empty());
    }
    assert_eq!(challenge, parse_challenge(header));
}

/// A wait inside the cap is honoured, one past it is an error, never both.
fn check_retry_after(value: &str) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_633_600);
    match retry_after(Some(value), now) {
        Ok(Some(wait)) => assert!(wait <= Duration::from_secs(60), "{wait:?}"),
        Err(wait) => assert!(wait > Duration::from_secs(60), "{wait:?}"),
        Ok(None) => {}
    }
}

/// A next link is text that stood between `<` and `>` in the header.
fn check_link(header: &str) {
    if let Some(link) = parse_next_link(header) {
        assert!(!link.contains('>') && !link.contains('<'), "{link:?}");
        assert!(header.contains(link.as_str()), "{link:?}");
    }
}
