//! The ground floor: the values every other layer talks about, and the pure
//! policy over them.
//!
//! Records, queued ops, documents, events, the store's error enums, id
//! rules and the conflict strategies live here because the store, the sync
//! engine and the socket server all need them, and none of those may import
//! another to get them. Nothing in this module does I/O or imports any other
//! module of the crate: it is the floor the rest stands on. Below it is
//! only the `syncd-client` crate, where the values apps see too live
//! (documents, events, views, size limits), re-exported here.

pub use syncd_client::{document, event, limits};

pub mod attachment;
pub mod clock;
pub mod conflict;
pub mod direction;
pub mod error;
pub mod ids;
pub mod op;
pub mod query;
pub mod record;
pub mod scope;
pub mod scope_state;
pub mod seal_error;

pub use document::{parse_doc_text, Doc, Document};
pub use error::{StoreError, WriteError};
pub use event::{ConflictOutcome, Event, Origin, Side};
pub use op::{ConflictView, DeadLetter, OpKind, OpState, OpView, ParkedConflict, QueuedOp};
pub use record::{Change, RecordView, ServerRecord, ServerRecordStored, StoredRecord};
