//! syncd-client: what a Rust app needs to talk to the syncd daemon over its
//! local socket, and nothing more.
//!
//! It exists so that an app can depend on the client without compiling the
//! daemon (its store engine, HTTP stack, TLS and PostgreSQL driver): the
//! dependency tree is tokio, serde, the two codecs (serde_json, bincode),
//! interprocess for the socket, libc for the peer check, and base64 for
//! attachment chunks in JSON frames. The test
//! `tests/client_crate.rs` at the repository root keeps it that way.
//!
//! The daemon uses this same crate for its side of the wire, so the
//! message types and the framing exist once. In the daemon's layering rule
//! (top of `src/lib.rs`) this crate sits below everything that uses it; it
//! never depends on the daemon. Within it, from the ground up:
//! [`document`], [`event`], [`view`] and [`limits`] (values), [`wire`]
//! (messages), [`codec`] (values to bytes), [`connection`] (bytes to
//! frames) and [`client`] (requests and replies).
//!
//! ```no_run
//! # async fn demo() -> Result<(), syncd_client::ClientError> {
//! let mut c = syncd_client::Client::connect("/run/user/1000/syncd/syncd.sock".as_ref(), "my-app").await?;
//! let (id, op_id) = c.put("todos", None, serde_json::json!({"title": "buy milk"})).await?;
//! c.wait_synced(&op_id).await?; // optional: until the server has it
//! let rec = c.get("todos", &id).await?;
//! # Ok(()) }
//! ```
//!
//! docs/ipc-protocol.md is the protocol's prose, for clients in other
//! languages.

pub mod chunk;
pub mod client;
pub mod codec;
pub mod connection;
pub mod document;
pub mod event;
pub mod limits;
pub mod view;
pub mod wire;

pub use client::{Client, ClientError};
pub use codec::Encoding;
