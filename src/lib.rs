//! syncd: an offline-first sync daemon.
//!
//! **Layering rule: a module imports only modules on its own floor or a
//! lower one — the `syncd-client` crate < `domain` < `config` (with `metrics`) < `store`
//! < `backend` < `sync` < `ipc` (with `client`) < `daemon` < the CLI in `main.rs` —
//! never one above it.**
//!
//! The `syncd-client` crate (crates/syncd-client: documents, events, the
//! views apps see, the wire types, the codec, `Connection` and the Rust
//! client) is the basement, below everything in the daemon that uses it:
//! apps depend on it without compiling the daemon, and it never imports
//! the daemon. Its modules keep their old paths here by re-export
//! (`domain::{document, event, limits}`, `ipc::{wire, codec, connection}`,
//! `client`).
//!
//! Apps on the machine talk to the daemon over a local socket ([`ipc`]). A
//! write lands in the embedded store ([`store`]) and, in the same redb
//! transaction, on the durable mutation queue. The sync worker ([`sync`])
//! drains that queue to a backend speaking the protocol in
//! `docs/backend-protocol.md` ([`backend`]) whenever the network allows.
//! The values all of them share, and the pure policy over them (conflict
//! strategies, id rules), are the ground floor: [`domain`].
//!
//! The library holds everything but the client crate; `src/main.rs` is
//! only the command line.

pub mod backend;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod ipc;
pub mod metrics;
pub mod store;
pub mod sync;

/// The Rust client library, from the `syncd-client` crate.
pub use syncd_client::client;

pub use domain::clock::now_ms;
pub use domain::ids;
