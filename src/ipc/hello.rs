//! The hello exchange that opens every connection, kept apart from the
//! request loop because it has rules of its own: both hellos are always
//! JSON, a failed hello is answered with a [`HelloReply`] (not an error
//! frame) and ends the connection. The hello is read through the
//! connection's one buffer, so requests sent right behind it survive.
//!
//! Versions ([`negotiate`]): the daemon speaks [`PROTOCOL_VERSION`] (4) in
//! both encodings, and still takes protocols 1 to 3 over JSON, whose
//! readers ignore what later versions added (object keys, and variants
//! they never ask for). Older protocols over bincode are refused with
//! `unsupported_protocol`: bincode frames carry no field names, so an
//! older bincode client cannot decode a newer frame (fields were added to
//! `put`, record, op and status views, and variants to requests, replies,
//! events and error codes).

use crate::ipc::codec::Encoding;
use crate::ipc::connection::Connection;
use crate::ipc::connection::FrameError;
use crate::ipc::wire::{ApiError, ErrorCode, Hello, HelloReply, PROTOCOL_VERSION};

fn server_name() -> String {
    format!("syncd {}", env!("CARGO_PKG_VERSION"))
}

/// Answers a refused hello (best effort: the connection ends anyway).
pub async fn refuse(conn: &mut Connection, code: ErrorCode, msg: String) {
    let reply = HelloReply {
        ok: false,
        server: server_name(),
        protocol: PROTOCOL_VERSION,
        client_id: String::new(),
        max_frame_bytes: 0,
        error: Some(ApiError::new(code, msg)),
    };
    if let Ok(b) = serde_json::to_vec(&reply) {
        let _ = conn.write_frame(&b).await;
    }
}

/// The oldest protocol the daemon takes over JSON.
pub const OLDEST_JSON_PROTOCOL: u32 = 1;

/// The protocol this connection speaks, or why the hello is refused.
pub fn negotiate(protocol: u32, encoding: Encoding) -> Result<u32, String> {
    match (protocol, encoding) {
        (PROTOCOL_VERSION, _) => Ok(protocol),
        (OLDEST_JSON_PROTOCOL..PROTOCOL_VERSION, Encoding::Json) => Ok(protocol),
        (OLDEST_JSON_PROTOCOL..PROTOCOL_VERSION, Encoding::Bincode) => Err(format!(
            "protocol {protocol} not supported with bincode: this daemon's bincode frames are protocol {PROTOCOL_VERSION} (fields and variants were added, which an older bincode client cannot decode); update the client, or use JSON, which this daemon still takes at protocol {OLDEST_JSON_PROTOCOL} to {PROTOCOL_VERSION}"
        )),
        _ => Err(format!(
            "protocol {protocol} not supported; this daemon speaks {PROTOCOL_VERSION} (and {OLDEST_JSON_PROTOCOL} to {PROTOCOL_VERSION} over JSON)"
        )),
    }
}

/// Reads and checks the client's hello and answers it. `Some` with the
/// app's name and encoding when the session may start; `None` when the
/// connection is over (refused, or the peer left).
pub async fn exchange(
    conn: &mut Connection,
    client_id: &str,
    max_frame: u32,
) -> Option<(String, Encoding)> {
    let (hello, protocol) = match read_hello(conn).await {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err((code, msg)) => {
            refuse(conn, code, msg).await;
            return None;
        }
    };
    let ok = HelloReply {
        ok: true,
        server: server_name(),
        protocol,
        client_id: client_id.to_owned(),
        max_frame_bytes: max_frame,
        error: None,
    };
    let bytes = serde_json::to_vec(&ok).ok()?;
    conn.write_frame(&bytes).await.ok()?;
    Some((hello.app, hello.encoding))
}

/// The client's hello with the protocol the connection speaks, `Ok(None)`
/// if it left before sending one, or the code and message to refuse it with.
async fn read_hello(conn: &mut Connection) -> Result<Option<(Hello, u32)>, (ErrorCode, String)> {
    let bytes = match conn.read_frame().await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => {
            let code = match e {
                FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::BadFrame,
            };
            return Err((code, format!("hello: {e}")));
        }
    };
    let hello: Hello = serde_json::from_slice(&bytes).map_err(|e| {
        (
            ErrorCode::BadFrame,
            format!(
                "the first frame must be a JSON hello {{\"app\",\"protocol\",\"encoding\"}}: {e}"
            ),
        )
    })?;
    let protocol = negotiate(hello.protocol, hello.encoding)
        .map_err(|msg| (ErrorCode::UnsupportedProtocol, msg))?;
    Ok(Some((hello, protocol)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_4_in_both_encodings_older_ones_over_json_only() {
        assert_eq!(negotiate(4, Encoding::Bincode), Ok(4));
        assert_eq!(negotiate(4, Encoding::Json), Ok(4));
        for v in [1, 2, 3] {
            assert_eq!(negotiate(v, Encoding::Json), Ok(v));
            let old = negotiate(v, Encoding::Bincode).unwrap_err();
            assert!(
                old.contains(&format!("protocol {v} not supported with bincode")),
                "{old}"
            );
            assert!(old.contains("protocol 4"), "{old}");
        }
        for p in [0, 5] {
            for e in [Encoding::Json, Encoding::Bincode] {
                let m = negotiate(p, e).unwrap_err();
                assert!(
                    m.starts_with(&format!("protocol {p} not supported;")),
                    "{m}"
                );
            }
        }
    }
}
