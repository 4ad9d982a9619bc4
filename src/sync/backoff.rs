//! Retry timing: exponential backoff with full jitter, and `Retry-After`.
//! Pure: the caller supplies the random draw and the clock.

use std::time::{Duration, SystemTime};

/// Exponential backoff with full jitter ("AWS architecture blog" style):
/// the n-th delay is uniform in `[0, min(max, initial * 2^n)]`, with a
/// floor of `initial / 2` so a retry is never immediate (no busy loop).
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        Backoff {
            initial_ms: initial_ms.max(1),
            max_ms: max_ms.max(initial_ms.max(1)),
            attempt: 0,
        }
    }

    /// Failures since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay.
    pub fn ceiling_ms(&self) -> u64 {
        let exp = self
            .initial_ms
            .saturating_mul(1u64.checked_shl(self.attempt.min(40)).unwrap_or(u64::MAX));
        exp.min(self.max_ms)
    }

    /// Records a failure and returns the delay before the next try.
    /// `unit` is a uniform draw in `[0, 1)`.
    pub fn fail(&mut self, unit: f64) -> u64 {
        let ceil = self.ceiling_ms();
        self.attempt = self.attempt.saturating_add(1);
        let floor = (self.initial_ms / 2).max(1);
        let d = (ceil as f64 * unit.clamp(0.0, 1.0)) as u64;
        d.clamp(floor, ceil.max(floor))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Applies new limits (config reload) without losing the attempt count.
    pub fn set_limits(&mut self, initial_ms: u64, max_ms: u64) {
        self.initial_ms = initial_ms.max(1);
        self.max_ms = max_ms.max(self.initial_ms);
    }
}

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
    fn grows_and_caps_with_jitter() {
        let mut b = Backoff::new(100, 1000);
        assert_eq!(b.ceiling_ms(), 100);
        assert_eq!(b.fail(1.0), 100);
        assert_eq!(b.ceiling_ms(), 200);
        b.fail(0.5);
        assert_eq!(b.ceiling_ms(), 400);
        for _ in 0..50 {
            let d = b.fail(0.999);
            assert!(d <= 1000);
        }
        assert_eq!(b.ceiling_ms(), 1000);
        // Never zero: no busy loop even on a zero draw.
        assert_eq!(b.fail(0.0), 50);
        b.reset();
        assert_eq!(b.ceiling_ms(), 100);
    }

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
