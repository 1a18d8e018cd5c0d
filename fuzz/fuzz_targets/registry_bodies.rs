//! Fuzz the registry response bodies a pull reads: the distribution-spec
//! error envelope (which decides retry, re-auth, not-found or denied) and
//! the bearer token answer, parsed the way the registry client parses
//! them, then carried into metalor's errors.
//!
//! Run: `cargo +nightly fuzz run registry_bodies` from the repository root.
#![no_main]

use metalor::oci::registry::RegistryError;
use oci_client::errors::OciEnvelope;
use oci_client::token_cache::RegistryToken;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_envelope(data);
    check_token(data);
});

/// An envelope that parses re-serialises to one that parses the same, and
/// its text fits in an error message.
fn check_envelope(body: &[u8]) {
    let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body) else {
        return;
    };
    let value = serde_json::to_value(&envelope).expect("an envelope serialises");
    let again: OciEnvelope = serde_json::from_value(value.clone()).expect("and reads back");
    assert_eq!(serde_json::to_value(&again).unwrap(), value);
    let detail = envelope.to_string();
    let err = RegistryError::NotFound {
        reference: "docker://r/a:b".into(),
        registry: "r".into(),
        what: "manifest b".into(),
        detail: detail.clone(),
    };
    assert!(err.to_string().contains(&detail));
}

/// A token answer gives a bearer header built from its token.
fn check_token(body: &[u8]) {
    let Ok(token) = serde_json::from_slice::<RegistryToken>(body) else {
        return;
    };
    assert_eq!(token.bearer_token(), format!("Bearer {}", token.token()));
    // Tokens end up in debug logs; the client redacts them.
    let debug = format!("{token:?}");
    let redacted = [
        r#"Token { token: "<redacted>" }"#,
        r#"AccessToken { access_token: "<redacted>" }"#,
    ];
    assert!(redacted.contains(&debug.as_str()), "{debug}");
}
