//! Fuzz the auth-file parser and key lookup.
//!
//! Input: the first line is the image reference, the rest the file. When
//! credentials are found, a file holding only those credentials under the
//! exact `registry/repository` key must give them back.
//!
//! Run: `cargo +nightly fuzz run auth_file` from the repository root.
#![no_main]

use std::path::Path;

use base64::Engine as _;
use metalor::oci::registry::auth::lookup_in_bytes;
use metalor::oci::registry::{Credentials, ImageReference};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (first, file) = data.split_at(split);
    let reference = std::str::from_utf8(first)
        .ok()
        .and_then(|text| ImageReference::parse(text).ok())
        .unwrap_or_else(|| ImageReference::parse("127.0.0.1:5000/a/b:c").unwrap());
    let path = Path::new("auth.json");
    let Ok(found) = lookup_in_bytes(path, file, &reference) else {
        return;
    };
    let again = lookup_in_bytes(path, file, &reference).ok().flatten();
    assert_eq!(again, found, "lookup is deterministic");
    let Some(Credentials::Basic { username, password }) = found else {
        return;
    };
    let key = format!("{}/{}", reference.registry, reference.repository);
    // `auth` splits at the first `:` (RFC 7617 user-ids hold none), so a
    // user name with one can only be written in the plain form.
    let entry = if username.contains(':') {
        serde_json::json!({"username": username, "password": password})
    } else {
        let pair = format!("{username}:{password}");
        serde_json::json!({"auth": base64::engine::general_purpose::STANDARD.encode(pair)})
    };
    let minimal = serde_json::json!({"auths": {key: entry}});
    let minimal = serde_json::to_vec(&minimal).unwrap();
    let back = lookup_in_bytes(path, &minimal, &reference).ok().flatten();
    assert_eq!(
        back,
        Some(Credentials::Basic { username, password }),
        "re-encoded credentials read back"
    );
});
