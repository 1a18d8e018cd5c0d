//! Progress lines on stderr, only when a person is watching.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

/// Reports per-layer progress when stderr is a terminal and `--quiet` was
/// not given; stays silent otherwise so that scripts get clean output.
pub struct Progress {
    enabled: bool,
    total: usize,
}

impl Progress {
    /// A reporter for `total` steps.
    pub fn new(quiet: bool, total: usize) -> Self {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
            total,
        }
    }

    /// Announces that step `index` (from 0) finished.
    pub fn step(&self, index: usize, label: &str) {
        if self.enabled {
            let width = 24;
            let done = (index + 1) * width / self.total.max(1);
            eprint!(
                "\r[{}{}] {}/{} {label}",
                "#".repeat(done),
                " ".repeat(width - done),
                index + 1,
                self.total
            );
            if index + 1 == self.total {
                eprintln!();
            }
        }
    }
}
