//! How the store turns values into bytes: bincode, compact and never seen by
//! other languages. Only the store reads these bytes, so the encoding is its
//! own business; the socket's encodings live in `ipc::codec`.

use serde::{de::DeserializeOwned, Serialize};

use crate::domain::limits::MAX_DECODE_BYTES;
use crate::domain::StoreError;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes a value for a table.
pub fn to_store<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| StoreError::Encode {
        what: std::any::type_name::<T>(),
        detail: e.to_string(),
    })
}

/// Reads a value written by [`to_store`]; failure means a damaged file.
pub fn from_store<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let (v, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| StoreError::Corrupt {
            what: std::any::type_name::<T>(),
            detail: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(StoreError::Corrupt {
            what: std::any::type_name::<T>(),
            detail: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(v)
}
