//! Names and identifiers: what is a valid collection name or record id, and
//! how the daemon mints new ones.
//!
//! Rules (also in docs/ipc-protocol.md):
//! - collection: 1 to 64 bytes of ASCII letters, digits, `_`, `-`, `.`,
//!   starting with a letter or digit.
//! - record id: 1 to 128 bytes of ASCII letters, digits, `_`, `-`, `.`, `:`,
//!   `@`, `+`, `=`.
//!
//! Both are kept to a conservative ASCII set because they become redb keys,
//! URL-free protocol strings and file-free log fields; nothing in them needs
//! escaping anywhere.

use std::sync::Mutex;

pub const MAX_COLLECTION_LEN: usize = 64;
pub const MAX_ID_LEN: usize = 128;

/// Checks a collection name; the error names the problem.
pub fn validate_collection(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("bad collection name: empty".into());
    }
    if name.len() > MAX_COLLECTION_LEN {
        return Err(format!(
            "bad collection name: {} bytes, at most {MAX_COLLECTION_LEN} allowed",
            name.len()
        ));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "bad collection name {name:?}: must start with a letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "bad collection name {name:?}: character {c:?} not allowed (letters, digits, _ - . only)"
        ));
    }
    Ok(())
}

/// Checks a record id; the error names the problem.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("bad id: empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "bad id: {} bytes, at most {MAX_ID_LEN} allowed",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '+' | '='))
    }) {
        return Err(format!(
            "bad id {id:?}: character {c:?} not allowed (letters, digits, _ - . : @ + = only)"
        ));
    }
    Ok(())
}

/// Mints time-ordered ids (ULIDs), strictly increasing within the process
/// even when several are made in the same millisecond.
pub struct IdGen {
    inner: Mutex<ulid::Generator>,
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

impl IdGen {
    pub fn new() -> Self {
        IdGen {
            inner: Mutex::new(ulid::Generator::new()),
        }
    }

    pub fn next(&self) -> String {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.generate() {
            Ok(u) => u.to_string(),
            // The random part overflowed within one millisecond (2^80 ids):
            // a fresh ULID is still unique, only not strictly ordered.
            Err(_) => ulid::Ulid::generate().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_rules() {
        assert!(validate_collection("todos").is_ok());
        assert!(validate_collection("a.b-c_d9").is_ok());
        assert!(validate_collection("").is_err());
        assert!(validate_collection("-x").is_err());
        assert!(validate_collection("a/b").unwrap_err().contains("'/'"));
        assert!(validate_collection(&"a".repeat(65)).is_err());
    }

    #[test]
    fn id_rules() {
        assert!(validate_id("01J9Z3").is_ok());
        assert!(validate_id("user:42@x").is_ok());
        assert!(validate_id("a b").is_err());
        assert!(validate_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn ids_increase() {
        let g = IdGen::new();
        let a = g.next();
        let b = g.next();
        assert!(a < b);
    }
}
