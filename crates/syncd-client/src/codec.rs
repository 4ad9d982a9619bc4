//! The one place that knows how values become bytes.
//!
//! Two encodings travel on the socket: JSON (any language) and bincode (the
//! Rust client). bincode 2.x is pinned and flagged unmaintained, so every socket
//! frame goes through [`encode`]/[`decode`] here (the store has its own
//! `store::encoding`): switching to postcard touches these two files only.
//!
//! bincode cannot carry `serde_json::Value` (it needs `deserialize_any`), so
//! JSON documents travel in bincode frames as their JSON text; see
//! [`crate::document::Doc`].

use serde::{de::DeserializeOwned, Serialize};

use crate::document::take_bad_document;

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

pub use crate::limits::MAX_DECODE_BYTES;

fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Why a frame body could not be encoded or decoded. The socket server
/// picks the error code from the variant, never from the text.
#[derive(Debug)]
#[non_exhaustive]
pub enum CodecError {
    /// Not JSON at all.
    InvalidJson(serde_json::Error),
    /// Well-formed JSON of the wrong shape (a missing field, an unknown
    /// request).
    WrongShape(serde_json::Error),
    /// Not a valid bincode value of the expected type.
    InvalidBincode(String),
    /// A bincode frame whose document is not valid JSON text.
    InvalidDocument(String),
    /// Bytes left over after the value.
    TrailingBytes(usize),
    /// The value could not be encoded.
    Encode(String),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            CodecError::WrongShape(e) => write!(f, "unexpected JSON: {e}"),
            CodecError::InvalidBincode(e) => write!(f, "invalid bincode: {e}"),
            CodecError::InvalidDocument(e) => write!(f, "invalid JSON in document: {e}"),
            CodecError::TrailingBytes(n) => {
                write!(f, "invalid bincode: {n} trailing bytes after the value")
            }
            CodecError::Encode(e) => write!(f, "encode: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Serializes `value` in `enc`.
pub fn encode<T: Serialize>(enc: Encoding, value: &T) -> Result<Vec<u8>, CodecError> {
    match enc {
        Encoding::Json => serde_json::to_vec(value).map_err(|e| CodecError::Encode(e.to_string())),
        Encoding::Bincode => bincode::serde::encode_to_vec(value, bincode_config())
            .map_err(|e| CodecError::Encode(e.to_string())),
    }
}

/// Deserializes a whole buffer in `enc`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(enc: Encoding, bytes: &[u8]) -> Result<T, CodecError> {
    match enc {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| {
            if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
                CodecError::WrongShape(e)
            } else {
                CodecError::InvalidJson(e)
            }
        }),
        Encoding::Bincode => {
            take_bad_document();
            let (v, used) =
                bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(|e| {
                    match take_bad_document() {
                        Some(detail) => CodecError::InvalidDocument(detail),
                        None => CodecError::InvalidBincode(e.to_string()),
                    }
                })?;
            if used != bytes.len() {
                return Err(CodecError::TrailingBytes(bytes.len() - used));
            }
            Ok(v)
        }
    }
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
        let e = decode::<crate::wire::ClientFrame>(Encoding::Bincode, &frame).unwrap_err();
        assert!(matches!(e, CodecError::InvalidBincode(_)), "{e}");
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut b = encode(Encoding::Bincode, &7u64).unwrap();
        b.push(0);
        assert!(matches!(
            decode::<u64>(Encoding::Bincode, &b),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
