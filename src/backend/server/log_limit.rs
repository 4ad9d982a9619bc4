//! A log line at most once per interval for a failure that repeats.
//!
//! Why it exists: load balancers and devices probe `v1/health` every second
//! or two, so while the store is down an unlimited log says the same thing
//! hundreds of times a minute and buries the line that tells why. The
//! first failure is logged at once; the repeats within the interval are
//! counted and reported with the next line.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// One limited log line.
pub struct LogLimit {
    interval_ms: i64,
    /// When the last line was written (ms since the epoch; `i64::MIN`: never).
    last_ms: AtomicI64,
    /// Lines suppressed since then.
    suppressed: AtomicU64,
}

impl LogLimit {
    pub const fn new(interval_ms: i64) -> Self {
        LogLimit {
            interval_ms,
            last_ms: AtomicI64::new(i64::MIN),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, `n` lines were suppressed since the last one;
    /// `None`: suppress this one.
    pub fn admit(&self, now_ms: i64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == i64::MIN || now_ms.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The trouble ended: the next failure is logged at once. Returns
    /// whether a failure had been logged since the last reset.
    pub fn reset(&self) -> bool {
        self.suppressed.store(0, Ordering::Relaxed);
        self.last_ms.swap(i64::MIN, Ordering::Relaxed) != i64::MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count() {
        let l = LogLimit::new(1000);
        assert_eq!(l.admit(0), Some(0));
        assert_eq!(l.admit(10), None);
        assert_eq!(l.admit(999), None);
        assert_eq!(l.admit(1000), Some(2));
        assert!(l.reset());
        assert!(!l.reset());
        assert_eq!(l.admit(1001), Some(0));
    }
}
