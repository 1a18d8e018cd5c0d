//! Fuzz the reference parsers: transport recognition, `[oci:]DIR[:REF]`
//! and `[docker://]HOST/REPO[:TAG][@DIGEST]`, with round-trip properties.
//!
//! Run: `cargo +nightly fuzz run references` from the repository root.
#![no_main]

use metalor::oci::registry::{ImageReference, PullSource};
use metalor::oci::{named_transport, LayoutRef};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(transport) = named_transport(text) {
        assert!(text.starts_with(transport), "{text:?}: {transport:?}");
    }
    check_layout(text);
    check_registry(text);
    check_source(text);
});

/// A layout reference displays as `oci:DIR[:REF]`, which reads back the same.
fn check_layout(text: &str) {
    let Ok(layout) = LayoutRef::parse(text) else {
        return;
    };
    assert!(!layout.dir.as_os_str().is_empty(), "{text:?}");
    let shown = PullSource::Layout(layout.clone()).to_string();
    let again = LayoutRef::parse(&shown);
    assert_eq!(again.as_ref().ok(), Some(&layout), "{text:?} -> {shown:?}");
}

/// A registry reference displays as `docker://…`, which reads back the
/// same; bare and `docker://` spellings of one name agree.
fn check_registry(text: &str) {
    let Ok(reference) = ImageReference::parse(text) else {
        return;
    };
    let shown = reference.to_string();
    let again = ImageReference::parse(&shown);
    assert_eq!(
        again.as_ref().ok(),
        Some(&reference),
        "{text:?} -> {shown:?}"
    );
    let _ = (reference.endpoint(), reference.is_loopback());
    let manifest_ref = reference.manifest_ref();
    assert!(!manifest_ref.is_empty(), "{text:?}");
    if !text.starts_with("docker://") {
        let named = ImageReference::parse(&format!("docker://{text}"));
        assert_eq!(named.as_ref().ok(), Some(&reference), "{text:?}");
    }
}

/// A pull source displays as text that parses to the same source.
fn check_source(text: &str) {
    let Ok(source) = PullSource::parse(text) else {
        return;
    };
    let shown = source.to_string();
    let again = PullSource::parse(&shown);
    assert_eq!(again.as_ref().ok(), Some(&source), "{text:?} -> {shown:?}");
    assert!(!source.default_ref_name().is_empty(), "{text:?}");
}
