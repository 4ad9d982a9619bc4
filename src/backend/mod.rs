//! The backend side of sync: the protocol types, the HTTP client the sync
//! worker uses, and the reference backend server (`syncd backend`).

pub mod blocking;
pub mod client;
pub mod couch;
pub mod protocol;
pub mod retry_after;
pub mod server;
