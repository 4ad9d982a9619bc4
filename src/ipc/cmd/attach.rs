//! `attach_begin`, `attach_chunk`, `attach_end`, `attach_abort`, `detach`
//! and `read_attachment`: attachment content over the socket, in chunks.
//!
//! Why the session holds uploads: an app streams a file of any size in
//! frames of at most `max_frame_bytes`, so an attach spans several
//! requests. Each upload writes a temporary file in the data dir as its
//! chunks arrive (hashing as it goes); `attach_end` moves it under its
//! hash and, only then, sets the record's reference and queues it in one
//! write. An upload the app abandons (or a connection that closes) leaves
//! nothing behind.

use std::collections::HashMap;

use crate::domain::attachment::{self, AttachmentRef, DEFAULT_TYPE};
use crate::domain::WriteError;
use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, AttachmentView, Chunk, ErrorCode, Response};
use crate::store::blobs::{BlobError, BlobWriter};
use crate::store::writer::WriteCmd;
use crate::sync::attachments::{FetchError, Way};

use super::blocking::read;
use super::check::{check_names, written};

/// Uploads one connection may have open at once.
pub const MAX_UPLOADS: usize = 16;

/// Most bytes one `read_attachment` answers: a chunk, in base64 inside a
/// JSON frame, stays under the smallest sensible `max_frame_bytes`.
pub const MAX_READ: u32 = 1 << 20;

/// The uploads of one connection.
#[derive(Default)]
pub struct Uploads {
    next: u64,
    open: HashMap<u64, Upload>,
}

struct Upload {
    collection: String,
    id: String,
    name: String,
    content_type: String,
    /// `None` while a chunk is being written on the blocking pool.
    file: Option<BlobWriter>,
}

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn blob_error(e: BlobError) -> ApiError {
    let code = match &e {
        BlobError::TooLarge { .. } => ErrorCode::TooLarge,
        BlobError::HashMismatch { .. } | BlobError::WrongLength { .. } => ErrorCode::BadRequest,
        BlobError::Missing { .. } => ErrorCode::NotFound,
        BlobError::Io { .. }
        | BlobError::NoSpace { .. }
        | BlobError::Tampered { .. }
        | BlobError::Sealed { .. } => ErrorCode::Internal,
    };
    bad(code, e.to_string())
}

fn no_upload(upload: u64) -> ApiError {
    bad(
        ErrorCode::NotFound,
        format!("no open upload {upload} on this connection (attach_begin first; an upload ends with its attach_end, attach_abort or error)"),
    )
}

/// `attach_begin`: checks the names and opens the upload's file.
pub async fn begin(
    ctx: &Ctx,
    uploads: &mut Uploads,
    collection: String,
    id: String,
    name: String,
    content_type: Option<String>,
) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    attachment::check_name(&name).map_err(|e| bad(ErrorCode::BadRequest, e.to_string()))?;
    let content_type = content_type.unwrap_or_else(|| DEFAULT_TYPE.to_owned());
    attachment::check_type(&content_type).map_err(|e| bad(ErrorCode::BadRequest, e.to_string()))?;
    // Before any byte is streamed: the record must exist (checked again
    // when the upload ends).
    let (c, i) = (collection.clone(), id.clone());
    if read(ctx, move |s| s.get(&c, &i)).await?.is_none() {
        return Err(ApiError::from(WriteError::NotFound { collection, id }));
    }
    if uploads.open.len() >= MAX_UPLOADS {
        return Err(bad(
            ErrorCode::BadRequest,
            format!(
                "this connection has {MAX_UPLOADS} uploads open already: end or abort one first"
            ),
        ));
    }
    let limit = ctx.config.borrow().sync.max_attachment_bytes;
    let blobs = ctx.transfers.blobs().clone();
    let file = tokio::task::spawn_blocking(move || blobs.writer(limit))
        .await
        .map_err(|e| bad(ErrorCode::Internal, e.to_string()))?
        .map_err(blob_error)?;
    uploads.next += 1;
    let upload = uploads.next;
    uploads.open.insert(
        upload,
        Upload {
            collection,
            id,
            name,
            content_type,
            file: Some(file),
        },
    );
    Ok(Response::Upload { upload })
}

/// `attach_chunk`: appends bytes. A failed write ends the upload.
pub async fn chunk(uploads: &mut Uploads, upload: u64, data: Chunk) -> Result<Response, ApiError> {
    let up = uploads
        .open
        .get_mut(&upload)
        .ok_or_else(|| no_upload(upload))?;
    let Some(mut file) = up.file.take() else {
        return Err(no_upload(upload));
    };
    let joined = tokio::task::spawn_blocking(move || {
        let r = file.write(&data.0);
        (file, r)
    })
    .await;
    match joined {
        Ok((file, Ok(()))) => {
            up.file = Some(file);
            Ok(Response::Ok {})
        }
        Ok((_, Err(e))) => {
            uploads.open.remove(&upload);
            Err(blob_error(e))
        }
        Err(e) => {
            uploads.open.remove(&upload);
            Err(bad(ErrorCode::Internal, e.to_string()))
        }
    }
}

/// `attach_end`: stores the content under its hash, then sets the record's
/// reference and queues it (`written`).
pub async fn end(
    ctx: &Ctx,
    uploads: &mut Uploads,
    upload: u64,
    sha256: Option<String>,
) -> Result<Response, ApiError> {
    let mut up = uploads
        .open
        .remove(&upload)
        .ok_or_else(|| no_upload(upload))?;
    if let Some(h) = &sha256 {
        attachment::check_hash(h).map_err(|e| bad(ErrorCode::BadRequest, e.to_string()))?;
    }
    let file = up.file.take().ok_or_else(|| no_upload(upload))?;
    let (sha256, length) = tokio::task::spawn_blocking(move || file.finish(sha256.as_deref()))
        .await
        .map_err(|e| bad(ErrorCode::Internal, e.to_string()))?
        .map_err(blob_error)?;
    let cmd = WriteCmd::Attach {
        collection: up.collection,
        id: up.id,
        name: up.name,
        attachment: AttachmentRef {
            content_type: up.content_type,
            length,
            sha256: sha256.clone(),
        },
        client_ts: crate::domain::clock::now_ms(),
        max_bytes: super::check::max_document_bytes(ctx),
    };
    match ctx.writer.submit(cmd).await {
        Ok(done) => {
            ctx.metrics.wrote();
            Ok(written(done))
        }
        Err(e) => {
            drop_if_unreferenced(ctx, sha256).await;
            Err(e.into())
        }
    }
}

/// Removes content stored for an attach that was then refused, unless a
/// record or an op references it (the same file attached elsewhere).
async fn drop_if_unreferenced(ctx: &Ctx, sha256: String) {
    let (store, blobs) = (ctx.store.clone(), ctx.transfers.blobs().clone());
    let _ = tokio::task::spawn_blocking(move || {
        let used = store
            .content_refs()?
            .iter()
            .any(|r| r.attachment.sha256 == sha256)
            || store.content_of_ops()?.contains(&sha256);
        if !used {
            let _ = blobs.remove(&sha256);
        }
        Ok::<_, crate::store::StoreError>(())
    })
    .await;
}

/// `attach_abort`: drops an upload (its temporary file goes with it).
pub fn abort(uploads: &mut Uploads, upload: u64) -> Result<Response, ApiError> {
    uploads
        .open
        .remove(&upload)
        .map(|_| Response::Ok {})
        .ok_or_else(|| no_upload(upload))
}

/// `detach`: removes the reference and queues the change.
pub async fn detach(
    ctx: &Ctx,
    collection: String,
    id: String,
    name: String,
) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    attachment::check_name(&name).map_err(|e| bad(ErrorCode::BadRequest, e.to_string()))?;
    let cmd = WriteCmd::Detach {
        collection,
        id,
        name,
        client_ts: crate::domain::clock::now_ms(),
    };
    Ok(written(
        ctx.writer
            .submit(cmd)
            .await
            .inspect(|_| ctx.metrics.wrote())?,
    ))
}

/// The reference of attachment `name` of a live record, and its scope.
async fn find(
    ctx: &Ctx,
    collection: &str,
    id: &str,
    name: &str,
) -> Result<(AttachmentRef, Option<String>), ApiError> {
    let (c, i) = (collection.to_owned(), id.to_owned());
    let rec = read(ctx, move |s| s.record(&c, &i))
        .await?
        .filter(|r| !r.deleted)
        .ok_or_else(|| {
            ApiError::from(WriteError::NotFound {
                collection: collection.to_owned(),
                id: id.to_owned(),
            })
        })?;
    let r = attachment::refs_of_text(&rec.data)
        .remove(name)
        .ok_or_else(|| {
            ApiError::from(WriteError::NoAttachment {
                collection: collection.to_owned(),
                id: id.to_owned(),
                name: name.to_owned(),
            })
        })?;
    Ok((r, rec.scope))
}

/// `read_attachment`: a range of the content, downloaded first if needed.
pub async fn read_range(
    ctx: &Ctx,
    collection: String,
    id: String,
    name: String,
    offset: u64,
    length: Option<u32>,
) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    let (r, scope) = find(ctx, &collection, &id, &name).await?;
    let place = crate::backend::client::blobs::BlobPlace {
        collection: collection.clone(),
        id: id.clone(),
        name: name.clone(),
    };
    if ctx.transfers.blobs().len(&r.sha256) != Some(r.length) {
        ctx.transfers
            .fetch(scope.as_deref(), &r, &place)
            .await
            .map_err(fetch_error)?;
    }
    // Within the frame limit, in base64 (JSON) too.
    let frame = ctx.config.borrow().daemon.max_frame_bytes as usize;
    let room = (frame.saturating_sub(1024) / 4 * 3).max(1024);
    let max = (length.unwrap_or(MAX_READ).min(MAX_READ) as usize).min(room);
    let blobs = ctx.transfers.blobs().clone();
    let sha = r.sha256.clone();
    let data = tokio::task::spawn_blocking(move || blobs.read_at(&sha, offset, max))
        .await
        .map_err(|e| bad(ErrorCode::Internal, e.to_string()))?
        .map_err(blob_error)?;
    Ok(Response::AttachmentChunk {
        data: Chunk(data),
        offset,
        length: r.length,
        content_type: r.content_type,
        sha256: r.sha256,
    })
}

fn fetch_error(e: FetchError) -> ApiError {
    let code = match &e {
        FetchError::Local(_) => ErrorCode::Internal,
        _ => ErrorCode::Unavailable,
    };
    bad(code, e.to_string())
}

/// The attachments of a record's document with where their bytes are.
/// Reads the file system: call it off the runtime's threads.
pub fn views(
    transfers: &crate::sync::attachments::Transfers,
    data: &serde_json::Value,
) -> Vec<AttachmentView> {
    let serde_json::Value::Object(m) = data else {
        return Vec::new();
    };
    let blobs = transfers.blobs();
    attachment::refs(m)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, r)| {
            let here = blobs.len(&r.sha256) == Some(r.length);
            let moving = transfers.moving(&r.sha256);
            let (state, bytes_done) = match (here, moving) {
                (true, Some((Way::Up, n))) => ("uploading", Some(n)),
                (true, _) if blobs.is_remote(&r.sha256) => ("synced", None),
                (true, _) => ("local", None),
                (false, Some((Way::Down, n))) => ("downloading", Some(n)),
                (false, _) => ("remote", None),
            };
            AttachmentView {
                name,
                content_type: r.content_type,
                length: r.length,
                sha256: r.sha256,
                state: state.to_owned(),
                bytes_done,
            }
        })
        .collect()
}
