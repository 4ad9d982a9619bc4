//! The local API: wire types, codec, framing and the socket server.
//! The client side lives in [`crate::client`].

pub mod codec;
pub mod error;
pub mod frame;
pub mod server;
pub mod wire;
