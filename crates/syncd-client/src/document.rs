//! Documents: the JSON objects apps store, and the one wrapper that lets a
//! document travel in both of the socket's encodings.
//!
//! Every layer handles documents, apps included, so they live in the
//! client crate, below the daemon (whose `domain` re-exports this module).
//! The store keeps them as JSON text ([`parse_doc_text`] reads it back).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A JSON document: always an object at the top level.
pub type Document = Map<String, Value>;

/// A JSON document in a frame. In JSON frames it is the value itself; in
/// bincode frames (not self-describing) it travels as its JSON text.
/// Decoding never checks that it is an object: the request handler does, so
/// that the error can say "not an object" instead of a decode failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc(pub Value);

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(Doc(Value::deserialize(d)?))
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map(Doc).map_err(|e| {
                let detail = e.to_string();
                BAD_DOCUMENT.with(|b| *b.borrow_mut() = Some(detail.clone()));
                serde::de::Error::custom(format!("invalid JSON in document: {detail}"))
            })
        }
    }
}

/// A document as the JSON text the store keeps, parsed only when an app
/// asks: query pages carry their records this way, so that the daemon
/// sends the stored text without parsing and re-serializing it, and an app
/// that reads a page into its own types ([`DocText::parse`]) or passes the
/// text on never builds a [`Value`] at all (on a bincode connection; a
/// JSON frame holds the value itself, which is parsed on arrival). On the
/// wire it is the same value as [`Doc`]: the value itself in JSON frames,
/// its JSON text in bincode frames (the same bytes, as the store writes
/// documents the way `Doc` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocText(String);

impl DocText {
    /// Text the caller vouches is one JSON value (the daemon's store,
    /// which only ever writes valid JSON). Invalid text is not unsafe: it
    /// reads and goes out in JSON frames as `null` ([`DocText::value`]),
    /// and fails [`DocText::parse`].
    pub fn from_trusted(text: String) -> DocText {
        DocText(text)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The document as a [`Value`] (`null` if the text is not JSON).
    pub fn value(&self) -> Value {
        parse_doc_text(&self.0)
    }

    /// The document read into the app's own type.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }
}

impl From<&Value> for DocText {
    fn from(v: &Value) -> DocText {
        DocText(v.to_string())
    }
}

impl From<DocText> for Doc {
    fn from(d: DocText) -> Doc {
        Doc(d.value())
    }
}

impl std::fmt::Display for DocText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for DocText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // As `get` and `list` do: text that is not JSON (a damaged
            // store) goes out as `null`, not as a failed reply.
            parse_doc_text(&self.0).serialize(s)
        } else {
            s.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for DocText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(DocText(Value::deserialize(d)?.to_string()))
        } else {
            String::deserialize(d).map(DocText)
        }
    }
}

/// Parses stored JSON text; the store only ever writes valid JSON, so a
/// failure means corruption and reads as `null` rather than a panic.
pub fn parse_doc_text(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

std::thread_local! {
    /// Set when a document's binary form is not JSON text, so that a
    /// binary decoder on this thread can report that (serde's error type
    /// cannot carry it) instead of guessing from a message.
    static BAD_DOCUMENT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Takes (and clears) the last "document is not JSON" failure seen by a
/// binary decode on this thread.
pub fn take_bad_document() -> Option<String> {
    BAD_DOCUMENT.with(|b| b.borrow_mut().take())
}
