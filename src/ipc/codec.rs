//! The one place that knows how values become bytes.
//!
//! Two encodings travel on the socket: JSON (any language) and bincode (the
//! Rust client). The store uses bincode for its values too. bincode 2.x is
//! pinned and flagged unmaintained, so every caller goes through
//! [`encode`]/[`decode`] here: switching to postcard touches this file only.
//!
//! bincode cannot carry `serde_json::Value` (it needs `deserialize_any`), so
//! JSON documents travel in bincode frames as their JSON text; see
//! [`crate::ipc::wire::Doc`].

use serde::{de::DeserializeOwned, Serialize};

/// A frame's body encoding, chosen by the client in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Json,
    Bincode,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Bincode => "bincode",
        }
    }
}

/// Largest value bincode may decode. bincode sizes a container from the
/// length it reads *before* reading the elements, so without a limit a
/// tiny frame claiming a petabyte string aborts the process on allocation.
/// Frames are capped below this (`daemon.max_frame_bytes` <= 64 MiB).
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Serializes `value` in `enc`.
pub fn encode<T: Serialize>(enc: Encoding, value: &T) -> Result<Vec<u8>, String> {
    match enc {
        Encoding::Json => serde_json::to_vec(value).map_err(|e| format!("JSON encode: {e}")),
        Encoding::Bincode => bincode::serde::encode_to_vec(value, bincode_config())
            .map_err(|e| format!("bincode encode: {e}")),
    }
}

/// Deserializes a whole buffer in `enc`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(enc: Encoding, bytes: &[u8]) -> Result<T, String> {
    match enc {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}")),
        Encoding::Bincode => {
            let (v, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
                .map_err(|e| format!("invalid bincode: {e}"))?;
            if used != bytes.len() {
                return Err(format!(
                    "invalid bincode: {} trailing bytes after the value",
                    bytes.len() - used
                ));
            }
            Ok(v)
        }
    }
}

/// Store values are bincode: compact, and never seen by other languages.
pub fn to_store<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    encode(Encoding::Bincode, value)
}

/// Reads a store value written by [`to_store`].
pub fn from_store<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode(Encoding::Bincode, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_both() {
        for enc in [Encoding::Json, Encoding::Bincode] {
            let v = (1u64, "x".to_string(), Some(3i64));
            let b = encode(enc, &v).unwrap();
            let back: (u64, String, Option<i64>) = decode(enc, &b).unwrap();
            assert_eq!(v, back);
        }
    }

    #[test]
    fn huge_claimed_length_is_refused_not_allocated() {
        // A Put (variant 0) whose collection claims 2^50 bytes: varint
        // marker 0xFD then a u64.
        let mut frame = vec![0x01, 0x00, 0xFD];
        frame.extend_from_slice(&(1u64 << 50).to_le_bytes());
        let e = decode::<crate::ipc::wire::ClientFrame>(Encoding::Bincode, &frame).unwrap_err();
        assert!(e.contains("invalid bincode"), "{e}");
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut b = encode(Encoding::Bincode, &7u64).unwrap();
        b.push(0);
        assert!(decode::<u64>(Encoding::Bincode, &b)
            .unwrap_err()
            .contains("trailing"));
    }
}
