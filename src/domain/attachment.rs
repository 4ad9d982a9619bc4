//! Attachments: named files on a record, referenced from the record's
//! document by content hash.
//!
//! Why here: the reference is part of the record (it travels in the
//! document's reserved `_attachments` member, as in CouchDB), so the
//! store, the sync worker, the backends and the socket all read it, and
//! each must read it the same way. An attachment is
//! `(collection, id, name)` with a content type, a length and a SHA-256;
//! its bytes live elsewhere (the data dir's content-addressed files, the
//! backend's blob endpoints), stored once per hash.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The document member that holds a record's attachments.
pub const KEY: &str = "_attachments";

/// Longest attachment name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Longest content type, in bytes.
pub const MAX_TYPE_BYTES: usize = 255;

/// The content type of an attachment attached without one.
pub const DEFAULT_TYPE: &str = "application/octet-stream";

/// One attachment as the document references it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub content_type: String,
    /// Size of the content in bytes.
    pub length: u64,
    /// SHA-256 of the content, 64 lowercase hex digits.
    pub sha256: String,
}

/// A record's attachments by name.
pub type Attachments = BTreeMap<String, AttachmentRef>;

/// Why an attachment name, hash or reference is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentError {
    /// Empty, too long, or with a control character.
    BadName { name: String, why: &'static str },
    /// Too long, or with a control character.
    BadType { why: &'static str },
    /// Not 64 lowercase hex digits.
    BadHash(String),
    /// `_attachments` is not an object of references (the member named
    /// is the first that is not one).
    BadReference { name: Option<String>, why: String },
}

impl fmt::Display for AttachmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachmentError::BadName { name, why } => {
                write!(f, "attachment name {name:?} is not valid: {why}")
            }
            AttachmentError::BadType { why } => write!(f, "content type is not valid: {why}"),
            AttachmentError::BadHash(h) => {
                write!(f, "{h:?} is not a SHA-256 (64 lowercase hex digits)")
            }
            AttachmentError::BadReference { name: Some(n), why } => {
                write!(f, "{KEY}.{n} is not an attachment reference: {why}")
            }
            AttachmentError::BadReference { name: None, why } => {
                write!(f, "{KEY} is not an object of attachment references: {why}")
            }
        }
    }
}

impl std::error::Error for AttachmentError {}

/// Checks an attachment name: 1 to [`MAX_NAME_BYTES`] bytes, no control
/// characters (names become file names in CLI output and CouchDB paths).
pub fn check_name(name: &str) -> Result<(), AttachmentError> {
    let bad = |why| {
        Err(AttachmentError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("it is longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it holds a control character");
    }
    Ok(())
}

/// Checks a content type: at most [`MAX_TYPE_BYTES`], no control characters.
pub fn check_type(content_type: &str) -> Result<(), AttachmentError> {
    if content_type.len() > MAX_TYPE_BYTES {
        return Err(AttachmentError::BadType {
            why: "it is longer than 255 bytes",
        });
    }
    if content_type.chars().any(char::is_control) {
        return Err(AttachmentError::BadType {
            why: "it holds a control character",
        });
    }
    Ok(())
}

/// `true` for 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a hash named by a request or a URL.
pub fn check_hash(s: &str) -> Result<(), AttachmentError> {
    if is_sha256(s) {
        Ok(())
    } else {
        Err(AttachmentError::BadHash(s.to_owned()))
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The attachments `doc` references; none when it has no `_attachments`.
pub fn refs(doc: &Map<String, Value>) -> Result<Attachments, AttachmentError> {
    let Some(v) = doc.get(KEY) else {
        return Ok(Attachments::new());
    };
    let Value::Object(m) = v else {
        return Err(AttachmentError::BadReference {
            name: None,
            why: "it is not an object".into(),
        });
    };
    let mut out = Attachments::new();
    for (name, r) in m {
        check_name(name)?;
        let r: AttachmentRef =
            serde_json::from_value(r.clone()).map_err(|e| AttachmentError::BadReference {
                name: Some(name.clone()),
                why: e.to_string(),
            })?;
        check_hash(&r.sha256)?;
        out.insert(name.clone(), r);
    }
    Ok(out)
}

/// The attachments of a document stored as JSON text; none when it is
/// not an object or its references are not valid (a stored document's
/// were checked when written, so that is a server's foreign member).
pub fn refs_of_text(text: &str) -> Attachments {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => refs(&m).unwrap_or_default(),
        _ => Attachments::new(),
    }
}

/// Writes `refs` into `doc`: the member is removed when there are none.
pub fn set_refs(doc: &mut Map<String, Value>, refs: &Attachments) {
    if refs.is_empty() {
        doc.remove(KEY);
        return;
    }
    let m: Map<String, Value> = refs
        .iter()
        .map(|(n, r)| {
            let v = serde_json::json!({
                "content_type": r.content_type,
                "length": r.length,
                "sha256": r.sha256,
            });
            (n.clone(), v)
        })
        .collect();
    doc.insert(KEY.to_owned(), Value::Object(m));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn references_round_trip_through_the_document() {
        let mut doc = Map::new();
        doc.insert("title".into(), Value::from("x"));
        let mut a = Attachments::new();
        a.insert(
            "photo.jpg".into(),
            AttachmentRef {
                content_type: "image/jpeg".into(),
                length: 3,
                sha256: sha('a'),
            },
        );
        set_refs(&mut doc, &a);
        assert_eq!(refs(&doc).unwrap(), a);
        set_refs(&mut doc, &Attachments::new());
        assert!(!doc.contains_key(KEY));
        assert!(refs(&doc).unwrap().is_empty());
    }

    #[test]
    fn bad_references_name_the_member() {
        let doc: Map<String, Value> =
            serde_json::from_str(r#"{"_attachments":{"a":{"length":1}}}"#).unwrap();
        let e = refs(&doc).unwrap_err().to_string();
        assert!(e.contains("_attachments.a"), "{e}");
        let doc: Map<String, Value> = serde_json::from_str(r#"{"_attachments":[]}"#).unwrap();
        assert!(refs(&doc).is_err());
        let doc: Map<String, Value> = serde_json::from_str(
            r#"{"_attachments":{"a":{"content_type":"t","length":1,"sha256":"AB"}}}"#,
        )
        .unwrap();
        assert!(matches!(refs(&doc), Err(AttachmentError::BadHash(_))));
    }

    #[test]
    fn names_and_hashes() {
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name("photo 1.jpg").is_ok());
        assert!(is_sha256(&sha('0')));
        assert!(!is_sha256(&sha('A')));
        assert!(!is_sha256("abc"));
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
