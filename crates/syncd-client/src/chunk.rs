//! Bytes in a frame: an attachment's content travels in chunks.
//!
//! In JSON frames a chunk is a base64 string (standard alphabet, padded),
//! the one way JSON carries bytes that every language decodes; in bincode
//! frames it is the bytes themselves.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A run of bytes in a frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk(pub Vec<u8>);

impl Serialize for Chunk {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Chunk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Chunk)
                .map_err(|e| serde::de::Error::custom(format!("chunk is not base64: {e}")))
        } else {
            Ok(Chunk(serde_bytes_vec(d)?))
        }
    }
}

fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_byte_buf(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_base64_in_json_and_bytes_in_bincode() {
        let c = Chunk(vec![0, 1, 2, 250, 255]);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"AAEC+v8=\"");
        assert_eq!(serde_json::from_str::<Chunk>(&json).unwrap(), c);
        let cfg = bincode::config::standard();
        let bin = bincode::serde::encode_to_vec(&c, cfg).unwrap();
        assert_eq!(bin.len(), 6);
        let (back, _): (Chunk, usize) = bincode::serde::decode_from_slice(&bin, cfg).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Chunk>("\"not base64!\"").is_err());
    }
}
