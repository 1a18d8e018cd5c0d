//! Fuzz the layer applier with an escape oracle: arbitrary entry sequences,
//! and afterwards nothing outside the target has changed.
//!
//! Run: `cargo fuzz run apply_layer` from the repository root.
#![no_main]

#[path = "../oracle.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
