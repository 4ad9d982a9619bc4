//! The `Retry-After` header (seconds or an HTTP date), read where replies
//! are read: an HTTP detail of the backend client, handed to the sync
//! engine as a number of milliseconds.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured: a server asking for more is taken
/// to mean "a day", not "never" (nor an overflow).
pub const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date. Returns the
/// wait in ms from `now` (0 for a date in the past), at most a day.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<u64> {
    let v = v.trim();
    let ms = if let Ok(secs) = v.parse::<u64>() {
        secs.saturating_mul(1000)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        u64::try_from(at.duration_since(now).unwrap_or(Duration::ZERO).as_millis())
            .unwrap_or(u64::MAX)
    };
    Some(ms.min(MAX_RETRY_AFTER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("2", now), Some(2000));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(5));
        assert_eq!(parse_retry_after(&later, now), Some(5000));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(parse_retry_after(&earlier, now), Some(0));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("99999999999999999999", now), None);
        assert_eq!(
            parse_retry_after("9223372036854775807", now),
            Some(MAX_RETRY_AFTER_MS)
        );
    }
}
