//! The hello exchange that opens every connection, kept apart from the
//! request loop because it has rules of its own: both hellos are always
//! JSON, a failed hello is answered with a [`HelloReply`] (not an error
//! frame) and ends the connection. The hello is read through the
//! connection's one buffer, so requests sent right behind it survive.

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

/// Reads and checks the client's hello and answers it. `Some` with the
/// app's name and encoding when the session may start; `None` when the
/// connection is over (refused, or the peer left).
pub async fn exchange(
    conn: &mut Connection,
    client_id: &str,
    max_frame: u32,
) -> Option<(String, Encoding)> {
    let hello = match read_hello(conn).await {
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
        protocol: PROTOCOL_VERSION,
        client_id: client_id.to_owned(),
        max_frame_bytes: max_frame,
        error: None,
    };
    let bytes = serde_json::to_vec(&ok).ok()?;
    conn.write_frame(&bytes).await.ok()?;
    Some((hello.app, hello.encoding))
}

/// The client's hello, `Ok(None)` if it left before sending one, or the
/// code and message to refuse it with.
async fn read_hello(conn: &mut Connection) -> Result<Option<Hello>, (ErrorCode, String)> {
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
    if hello.protocol != PROTOCOL_VERSION {
        return Err((
            ErrorCode::UnsupportedProtocol,
            format!(
                "protocol {} not supported; this daemon speaks {PROTOCOL_VERSION}",
                hello.protocol
            ),
        ));
    }
    Ok(Some(hello))
}
