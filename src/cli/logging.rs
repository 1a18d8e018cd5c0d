//! Logs for debugging: `tracing` events to stderr, chosen by `-v` or
//! `METALOR_LOG`.
//!
//! - No `-v` and no `METALOR_LOG`: warnings and errors only.
//! - `-v`, `-vv`, `-vvv`: metalor's own events at info, debug and trace;
//!   the HTTP stack and other crates stay at warn.
//! - `METALOR_LOG`: an `EnvFilter` directive list
//!   (`metalor=debug,hyper_util=debug`), used when no `-v` is given. As with
//!   podman's `--log-level`, the explicit flag wins over the environment,
//!   so a command line copied into a bug report means the same anywhere.
//!
//! Lines carry no colour when stderr is not a terminal, and are written
//! with the progress bars lifted (see [`super::progress::suspend`]). The
//! hidden re-exec verbs never get here: they skip clap and this set-up.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// The environment variable with an `EnvFilter` directive list.
pub const LOG_ENV: &str = "METALOR_LOG";

/// The filter directives for `verbose` (the count of `-v`) and the value
/// of [`LOG_ENV`]; the flag wins when both are given.
pub fn directives(verbose: u8, env: Option<&str>) -> String {
    let level = match verbose {
        0 => None,
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    };
    match (level, env.map(str::trim).filter(|e| !e.is_empty())) {
        (Some(level), _) => format!("warn,metalor={level}"),
        (None, Some(env)) => env.to_owned(),
        (None, None) => "warn".to_owned(),
    }
}

/// Installs the process's subscriber. A `METALOR_LOG` that does not parse
/// is reported and replaced by the default, rather than failing the verb.
pub fn init(verbose: u8) {
    let env = std::env::var(LOG_ENV).ok();
    let filter = EnvFilter::try_new(directives(verbose, env.as_deref())).unwrap_or_else(|err| {
        eprintln!("metalor: warning: ignoring {LOG_ENV}: {err}");
        EnvFilter::new("warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| StderrBelowBars)
        .try_init();
}

/// Stderr, with the progress bars lifted while a line is written.
struct StderrBelowBars;

impl Write for StderrBelowBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        super::progress::suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_the_environment() {
        assert_eq!(directives(0, None), "warn");
        assert_eq!(directives(0, Some("  ")), "warn");
        assert_eq!(directives(1, None), "warn,metalor=info");
        assert_eq!(directives(2, Some("trace")), "warn,metalor=debug");
        assert_eq!(directives(5, None), "warn,metalor=trace");
        assert_eq!(directives(0, Some("metalor=debug")), "metalor=debug");
    }

    #[test]
    fn every_choice_parses() {
        for verbose in 0..4 {
            let d = directives(verbose, None);
            assert!(EnvFilter::try_new(&d).is_ok(), "{d}");
        }
    }
}
