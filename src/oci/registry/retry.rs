#![forbid(unsafe_code)]
//! When to try a request again, and how long to wait first.
//!
//! Only failures another attempt can fix are retried: a dropped
//! connection, a body cut short, a timeout, and the statuses that say
//! "later" (408, 429, 500, 502, 503, 504). Everything else (401 after one
//! fresh token, 403, 404, other 4xx and 5xx, a redirect loop, a refused
//! connection, a digest mismatch) ends the pull at once.
//!
//! A registry that sends `Retry-After` (seconds, or an HTTP date) is
//! waited for as it asks, up to [`MAX_RETRY_AFTER`]; one that asks for
//! longer fails the pull with a message naming the wait, rather than
//! hanging it. Otherwise the delay doubles from
//! [`RetryPolicy::base_delay`] up to [`RetryPolicy::max_delay`].
//!
//! The budget ([`RetryPolicy::attempts`]) counts attempts in a row that
//! made no progress: a download that moved bytes before it broke starts
//! the count again, so a long blob on a flaky link still finishes, while
//! a registry that keeps failing without sending anything gives up soon.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::RegistryError;

/// How often and how patiently failed requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in a row without progress, the first included.
    pub attempts: u32,
    /// Delay before the first retry; it doubles each time.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.min(16);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// The longest `Retry-After` metalor waits; containers/image caps its
/// waits near here too. Longer asks fail the pull, naming the wait.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why one attempt failed, and what that allows.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another attempt, after `after` when the server said so.
    Retry {
        /// What went wrong, for the final message.
        detail: String,
        /// The server's `Retry-After`, already capped.
        after: Option<Duration>,
    },
    /// The credentials were refused; a fresh token may help (once).
    Reauth(String),
    /// Give up with this error.
    Fatal(RegistryError),
}

impl Failure {
    /// A retryable failure without a server-given delay.
    pub fn retry(detail: impl Into<String>) -> Failure {
        Failure::Retry {
            detail: detail.into(),
            after: None,
        }
    }
}

/// The attempts made for one request.
pub(crate) struct Attempts<'a> {
    /// What is being fetched (`manifest latest`, `blob sha256:…`).
    pub what: String,
    policy: &'a RetryPolicy,
    failed: u32,
    /// Whether the one fresh authentication was used.
    pub reauthed: bool,
}

impl<'a> Attempts<'a> {
    pub fn new(what: String, policy: &'a RetryPolicy) -> Attempts<'a> {
        Attempts {
            what,
            policy,
            failed: 0,
            reauthed: false,
        }
    }

    /// The last attempt moved bytes: the budget starts again.
    pub fn progressed(&mut self) {
        self.failed = 0;
    }

    /// Counts a retryable failure: how long to wait before the next
    /// attempt, or `Err(detail)` with the attempts spelled out when the
    /// budget is spent.
    pub fn next_delay(
        &mut self,
        detail: String,
        after: Option<Duration>,
    ) -> Result<Duration, String> {
        self.failed += 1;
        if self.failed >= self.policy.attempts {
            return Err(format!(
                "gave up after {} attempts without progress: {detail}",
                self.policy.attempts
            ));
        }
        Ok(after.unwrap_or_else(|| self.policy.delay(self.failed - 1)))
    }
}

/// Logs, at debug level, why a request is tried again and after how long.
pub(crate) fn log_retry(what: &str, reason: &str, delay: Duration) {
    tracing::debug!(
        what,
        reason,
        delay_ms = delay.as_millis() as u64,
        "retrying"
    );
}

/// What a `Retry-After` header asks: `Ok(None)` when absent or unreadable
/// (the normal backoff applies), `Ok(Some(wait))` within the cap,
/// `Err(wait)` past it. `now` is passed in for the HTTP-date form.
pub fn retry_after(value: Option<&str>, now: SystemTime) -> Result<Option<Duration>, Duration> {
    let Some(value) = value.map(str::trim) else {
        return Ok(None);
    };
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else if let Some(at) = parse_http_date(value) {
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        return Ok(None);
    };
    if wait > MAX_RETRY_AFTER {
        Err(wait)
    } else {
        Ok(Some(wait))
    }
}

/// Parses the IMF-fixdate form of an HTTP date (`Sun, 06 Nov 1994
/// 08:49:37 GMT`), the one senders must use (RFC 9110 §5.6.7).
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let (_, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Waits `delay` before the next attempt.
pub(crate) async fn sleep(delay: Duration) {
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms_and_capped() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770); // 08:49:30
        assert_eq!(retry_after(None, now), Ok(None));
        assert_eq!(
            retry_after(Some("8"), now),
            Ok(Some(Duration::from_secs(8)))
        );
        assert_eq!(
            retry_after(Some("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Ok(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            retry_after(Some("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Ok(Some(Duration::ZERO))
        );
        assert_eq!(retry_after(Some("120"), now), Err(Duration::from_secs(120)));
        assert_eq!(retry_after(Some("soon"), now), Ok(None));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn progress_resets_the_budget() {
        let policy = RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(15),
        };
        let mut tries = Attempts::new("blob".into(), &policy);
        assert_eq!(
            tries.next_delay("a".into(), None),
            Ok(Duration::from_millis(10))
        );
        assert_eq!(
            tries.next_delay("b".into(), None),
            Ok(Duration::from_millis(15))
        );
        tries.progressed();
        assert!(tries.next_delay("c".into(), None).is_ok());
        assert!(tries.next_delay("d".into(), None).is_ok());
        let err = tries.next_delay("e".into(), None).unwrap_err();
        assert!(err.starts_with("gave up after 3 attempts"), "{err}");
    }
}
