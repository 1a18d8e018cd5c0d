//! The fuzz target's escape oracle over a deterministic pseudo-random
//! corpus, so that CI exercises it without a fuzzer.
#![cfg(target_os = "linux")]

#[path = "../fuzz/oracle.rs"]
mod oracle;

/// xorshift64*: a fixed, dependency-free sequence of test inputs.
fn corpus(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    };
    (0..count).map(move |i| (0..16 + i % 96).map(|_| next()).collect())
}

#[test]
fn no_entry_sequence_changes_anything_outside_the_target() {
    // METALOR_ORACLE_CASES raises the count for a longer local run.
    let count = std::env::var("METALOR_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut cases = 0;
    for input in corpus(0x6d65_7461_6c6f_7221, count) {
        oracle::check(&input);
        cases += 1;
    }
    assert_eq!(cases, count);
}
