//! A test hook for the conversions' kill tests (`tests/encryption.rs`):
//! with `SYNCD_TEST_ABORT_AFTER_STEPS=N` in its environment, a conversion
//! (`syncd store encrypt|decrypt`, `syncd rekey`) aborts the process, as
//! kill -9 would (no destructor, no flush), right after its N-th durable
//! step: the new store file renamed in, a mark committed, one attachment
//! file converted. Run again and again with N = 1, a conversion moves one
//! step per run, so a test visits every state a kill can leave, whatever
//! the machine's speed. Unset (always, outside those tests), it costs one
//! load per step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static DONE: AtomicU64 = AtomicU64::new(0);

/// One durable step is done.
pub fn step() {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    let limit = LIMIT.get_or_init(|| {
        std::env::var("SYNCD_TEST_ABORT_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(n) = limit {
        if DONE.fetch_add(1, Ordering::SeqCst) + 1 >= *n {
            std::process::abort();
        }
    }
}
