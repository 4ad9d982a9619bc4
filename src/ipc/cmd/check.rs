//! The checks and limits several commands share, in one place so every
//! request kind applies the same rules: names (§9 of the protocol),
//! documents (an object within `daemon.max_document_bytes`) and the reply
//! budget that keeps a reply frame within `daemon.max_frame_bytes`.

use serde_json::Value;

use crate::domain::ids::{validate_collection, validate_id};
use crate::domain::Document;
use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Doc, ErrorCode, OpView, Response};
use crate::store::writer::WriteOutcome;

/// Checks a collection name and, when given, a record id.
pub fn check_names(collection: &str, id: Option<&str>) -> Result<(), ApiError> {
    validate_collection(collection).map_err(|e| ApiError::new(ErrorCode::BadCollection, e))?;
    if let Some(id) = id {
        validate_id(id).map_err(|e| ApiError::new(ErrorCode::BadId, e))?;
    }
    Ok(())
}

/// Checks a scope name (protocol revision 3) before anything is queued.
pub fn check_scope_name(scope: &str) -> Result<(), ApiError> {
    crate::domain::scope::check_scope(scope)
        .map_err(|e| ApiError::new(ErrorCode::BadScope, format!("bad scope {scope:?}: {e}")))
}

/// Checks a document for a write: an object, within the size limit.
pub fn check_doc(doc: Doc, max: u32) -> Result<Document, ApiError> {
    let kind = match &doc.0 {
        Value::Object(_) => None,
        Value::Array(_) => Some("an array"),
        Value::String(_) => Some("a string"),
        Value::Number(_) => Some("a number"),
        Value::Bool(_) => Some("a boolean"),
        Value::Null => Some("null"),
    };
    if let Some(k) = kind {
        return Err(ApiError::new(
            ErrorCode::NotAnObject,
            format!("document must be a JSON object, got {k}"),
        ));
    }
    let size = doc.0.to_string().len();
    if size > max as usize {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("document too large: {size} bytes of JSON, the limit is {max} (daemon.max_document_bytes)"),
        ));
    }
    match doc.0 {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::new(
            ErrorCode::NotAnObject,
            "document must be a JSON object",
        )),
    }
}

/// The document size limit now (it follows config reloads).
pub fn max_document_bytes(ctx: &Ctx) -> u32 {
    ctx.config.borrow().daemon.max_document_bytes
}

/// The reply to a write job that went through.
pub fn written(o: WriteOutcome) -> Response {
    match o {
        WriteOutcome::Written { id, op_id } => Response::Written { id, op_id },
        // Only the daemon's index task submits index steps.
        WriteOutcome::Done | WriteOutcome::IndexStep { .. } => Response::Ok {},
        // Only `check_store` submits a check, and it reads the answer
        // itself (with the store's path); kept total for the compiler.
        WriteOutcome::Checked(r) => {
            Response::StoreCheck(super::store_check::view(std::path::Path::new(""), &r))
        }
    }
}

/// How many bytes of documents one reply may carry: half the frame limit,
/// leaving room for the rest of the encoding.
pub fn reply_budget(ctx: &Ctx) -> usize {
    ctx.config.borrow().daemon.max_frame_bytes as usize / 2
}

/// Ops up to the reply budget (always at least one).
pub fn within_budget(budget: usize, ops: impl Iterator<Item = OpView>) -> Vec<OpView> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for o in ops {
        let size = o.data.as_ref().map(|d| d.0.to_string().len()).unwrap_or(0)
            + o.last_error.as_ref().map(String::len).unwrap_or(0)
            + crate::store::RECORD_OVERHEAD;
        if !out.is_empty() && bytes + size > budget {
            break;
        }
        bytes += size;
        out.push(o);
    }
    out
}
