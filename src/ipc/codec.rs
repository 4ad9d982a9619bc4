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

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
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
    fn trailing_bytes_rejected() {
        let mut b = encode(Encoding::Bincode, &7u64).unwrap();
        b.push(0);
        assert!(decode::<u64>(Encoding::Bincode, &b)
            .unwrap_err()
            .contains("trailing"));
    }
}
