//! The local API: wire types, codec, framing and the socket server.
//!
//! It exists to turn bytes on the local socket into store reads and writer
//! jobs and back, and nothing else. From the outside in: [`server`] binds
//! and accepts, [`session`] runs one connection (after [`hello`]) over a
//! [`connection::Connection`] that does the framing, [`cmd`] answers each
//! request kind, [`error`] maps every failure to an error code, and
//! [`wire`]/[`codec`] define what travels. Those three, and the client
//! side ([`crate::client`]), live in the `syncd-client` crate, so that the
//! two ends share one definition; they keep their paths here.

pub use syncd_client::{codec, connection, wire};

pub mod cmd;
pub mod context;
pub mod error;
pub mod health;
pub mod hello;
pub mod metrics_http;
pub mod peer;
pub mod server;
pub mod session;
pub mod socket_dir;
