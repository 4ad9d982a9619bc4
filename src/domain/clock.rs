//! Wall-clock time in the unit the protocol uses. The one place that reads
//! the system clock for timestamps, so that tests and simulations know what
//! to replace.

/// Milliseconds since the Unix epoch by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
