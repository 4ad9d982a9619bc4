//! syncd: an offline-first sync daemon.
//!
//! Apps on the machine talk to the daemon over a local socket ([`ipc`]). A
//! write lands in the embedded store ([`store`]) and, in the same redb
//! transaction, on the durable mutation queue. The sync worker ([`sync`])
//! drains that queue to a backend speaking the protocol in
//! `docs/backend-protocol.md` ([`backend`]) whenever the network allows.
//!
//! The library holds everything; `src/main.rs` is only the command line.

pub mod backend;
pub mod client;
pub mod config;
pub mod daemon;
pub mod ids;
pub mod ipc;
pub mod store;
pub mod sync;

/// Milliseconds since the Unix epoch by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
