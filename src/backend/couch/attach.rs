//! A record's attachments as CouchDB document attachments, so that
//! PouchDB apps and replication see them as theirs (`docs/backends.md`
//! "Attachments").
//!
//! Why its own file: the mapping has rules of its own. A record's
//! `_attachments` references (name → content type, length, SHA-256) become
//! the document's `_attachments`: content new in this write goes inline
//! (base64 `data`, filled in from the device's blob files by
//! [`fill_inline`] just before the request, so the revision that names an
//! attachment carries its bytes: never one without the other); content
//! the document already holds goes as a stub. CouchDB knows attachments by
//! MD5 digest and `revpos` (the generation that last wrote one), not by
//! SHA-256, so syncd's bookkeeping (`syncd.attachments`) remembers each
//! one's hash with the `revpos` it was written at: an attachment whose
//! `revpos` still matches is syncd's, with that hash. An attachment
//! another program added or replaced is kept on the document (as a stub)
//! when syncd writes it, but is not shown in the record: its SHA-256 is
//! not known without downloading it.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::backend::blocking::off_runtime;
use crate::domain::attachment::{self, AttachmentRef, Attachments, KEY};
use crate::store::blobs::BlobDir;

/// syncd's bookkeeping key for the attachments it wrote.
pub const BOOK: &str = "attachments";

/// The placeholder member that [`fill_inline`] replaces with `data`.
const CONTENT: &str = "syncd_sha256";

/// What the document `base` holds of an attachment syncd wrote: its hash
/// and the `revpos` CouchDB gave it, when that is still the stub's.
fn ours(base: &Map<String, Value>, name: &str) -> Option<(String, u64)> {
    let book = base.get(super::doc::RESERVED)?.get(BOOK)?.get(name)?;
    let sha = book.get("sha256")?.as_str()?.to_owned();
    let revpos = book.get("revpos")?.as_u64()?;
    let stub = base.get("_attachments")?.get(name)?;
    (stub.get("revpos")?.as_u64()? == revpos).then_some((sha, revpos))
}

/// The stub that keeps attachment `name` of `base` as it is: its own
/// stub object (PouchDB finds the attachment by its `digest`; CouchDB
/// takes `stub: true` alone).
fn stub(base: &Map<String, Value>, name: &str) -> Value {
    let mut s = base
        .get("_attachments")
        .and_then(|a| a.get(name))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Value::Object(m) = &mut s {
        m.insert("stub".into(), Value::Bool(true));
        m.remove("data");
    }
    s
}

/// The document's `_attachments` and syncd's bookkeeping for a write of
/// `refs` (the record's references) at generation `gen` on top of `base`.
pub fn for_write(
    refs: &Attachments,
    base: Option<&Map<String, Value>>,
    gen: u64,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut atts = Map::new();
    let mut book = Map::new();
    // Another program's attachments stay (as stubs) unless the record now
    // has one of the same name.
    if let Some(b) = base {
        if let Some(Value::Object(have)) = b.get("_attachments") {
            for name in have.keys() {
                if ours(b, name).is_none() && !refs.contains_key(name) {
                    atts.insert(name.clone(), stub(b, name));
                }
            }
        }
    }
    for (name, r) in refs {
        let kept = base
            .and_then(|b| ours(b, name).map(|o| (b, o)))
            .filter(|(_, (sha, _))| *sha == r.sha256);
        let revpos = match kept {
            Some((b, (_, revpos))) => {
                atts.insert(name.clone(), stub(b, name));
                revpos
            }
            None => {
                atts.insert(
                    name.clone(),
                    json!({"content_type": r.content_type, CONTENT: r.sha256}),
                );
                gen
            }
        };
        book.insert(
            name.clone(),
            json!({"sha256": r.sha256, "length": r.length, "revpos": revpos}),
        );
    }
    (atts, book)
}

/// The references a document's attachments stand for: syncd's own, as
/// the bookkeeping and the stubs agree.
pub fn of_document(body: &Map<String, Value>) -> Attachments {
    let Some(Value::Object(stubs)) = body.get("_attachments") else {
        return Attachments::new();
    };
    let mut out = Attachments::new();
    for (name, stub) in stubs {
        let Some((sha, _)) = ours(body, name) else {
            continue;
        };
        if !attachment::is_sha256(&sha) {
            continue;
        }
        out.insert(
            name.clone(),
            AttachmentRef {
                content_type: stub
                    .get("content_type")
                    .and_then(Value::as_str)
                    .unwrap_or(attachment::DEFAULT_TYPE)
                    .to_owned(),
                length: stub.get("length").and_then(Value::as_u64).unwrap_or(0),
                sha256: sha,
            },
        );
    }
    out
}

/// Whether a body has content to fill in.
pub fn needs_content(body: &Value) -> bool {
    body.get("_attachments")
        .and_then(Value::as_object)
        .is_some_and(|m| m.values().any(|a| a.get(CONTENT).is_some()))
}

/// Why content could not be put inline.
#[derive(Debug)]
pub struct Missing(pub String);

/// Replaces each placeholder in `body`'s `_attachments` with the
/// content's bytes from `blobs`, in base64.
pub fn fill_inline(body: &mut Value, blobs: Option<&BlobDir>) -> Result<(), Missing> {
    let Some(Value::Object(atts)) = body.get_mut("_attachments") else {
        return Ok(());
    };
    for a in atts.values_mut() {
        let Some(sha) = a.get(CONTENT).and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let blobs = blobs.ok_or_else(|| Missing("no attachment files on this device".into()))?;
        let bytes = off_runtime(|| blobs.read_at(&sha, 0, usize::MAX))
            .map_err(|e| Missing(e.to_string()))?;
        if let Value::Object(m) = a {
            m.remove(CONTENT);
            m.insert(
                "data".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
    }
    Ok(())
}

/// Splits the record's references out of its fields (they become the
/// document's `_attachments`).
pub fn take_refs(fields: &mut Map<String, Value>) -> Attachments {
    let refs = attachment::refs(fields).unwrap_or_default();
    fields.remove(KEY);
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(sha: char, len: u64) -> AttachmentRef {
        AttachmentRef {
            content_type: "image/png".into(),
            length: len,
            sha256: std::iter::repeat_n(sha, 64).collect(),
        }
    }

    #[test]
    fn new_content_goes_inline_and_kept_content_as_a_stub() {
        let mut refs = Attachments::new();
        refs.insert("a".into(), r('a', 3));
        let (atts, book) = for_write(&refs, None, 1);
        assert_eq!(atts["a"][CONTENT], r('a', 3).sha256);
        assert_eq!(book["a"]["revpos"], 1);
        // CouchDB stored it at revpos 1; a later write keeps it as a stub,
        // and another program's attachment stays.
        let base: Map<String, Value> = serde_json::from_value(json!({
            "_attachments": {
                "a": {"stub": true, "revpos": 1, "length": 3, "content_type": "image/png"},
                "theirs": {"stub": true, "revpos": 2, "length": 9}
            },
            "syncd": {"attachments": Value::Object(book)}
        }))
        .unwrap();
        assert_eq!(of_document(&base), refs);
        refs.insert("b".into(), r('b', 5));
        let (atts, book) = for_write(&refs, Some(&base), 3);
        assert_eq!(atts["a"]["stub"], true);
        assert_eq!(atts["a"]["revpos"], 1);
        assert_eq!(atts["theirs"]["stub"], true);
        assert_eq!(atts["theirs"]["length"], 9);
        assert_eq!(atts["b"][CONTENT], r('b', 5).sha256);
        assert_eq!(
            (book["a"]["revpos"].as_u64(), book["b"]["revpos"].as_u64()),
            (Some(1), Some(3))
        );
        // A detach drops syncd's own, never another program's.
        let (atts, _) = for_write(&Attachments::new(), Some(&base), 3);
        assert!(atts.get("a").is_none());
        assert!(atts.get("theirs").is_some());
    }

    #[test]
    fn an_attachment_replaced_by_another_program_is_not_ours() {
        let base: Map<String, Value> = serde_json::from_value(json!({
            "_attachments": {"a": {"stub": true, "revpos": 4, "length": 3}},
            "syncd": {"attachments": {"a": {"sha256": "a".repeat(64), "length": 3, "revpos": 1}}}
        }))
        .unwrap();
        assert!(of_document(&base).is_empty());
    }
}
