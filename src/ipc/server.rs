//! The socket server: accepts connections, checks who is calling, speaks
//! the framed protocol and turns requests into store reads and writer jobs.
//!
//! Each connection runs two tasks: a reader that only reads frames (so a
//! half-read frame is never cancelled) and a session that answers requests
//! in order and, once the app subscribed, interleaves watch events. A slow
//! watcher never slows writers: events come from a bounded broadcast
//! channel, and a subscriber that falls behind gets `resync_needed`.

use std::path::Path;
use std::sync::Arc;

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use serde_json::Value;
use tokio::io::BufReader;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::Config;
use crate::domain::ids::{validate_collection, validate_id};
use crate::domain::Document;
use crate::ipc::codec::{decode, encode, CodecError, Encoding};
use crate::ipc::frame::{read_frame, write_frame, FrameError};
use crate::ipc::wire::*;
use crate::store::writer::{WriteCmd, WriteOutcome, WriterHandle};
use crate::store::{OpState, Store};
use crate::sync::SyncControl;

/// Everything a request handler needs.
pub struct Ctx {
    pub store: Store,
    pub writer: WriterHandle,
    pub events: broadcast::Sender<Arc<Event>>,
    pub config: watch::Receiver<Arc<Config>>,
    pub sync: Arc<SyncControl>,
}

/// Most records one `list` returns.
pub const MAX_LIST: u32 = 10_000;

#[cfg(unix)]
fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(not(unix))]
fn is_socket(_path: &Path) -> bool {
    true
}

/// Binds the socket at `path` with `mode`. A socket file nobody answers on
/// (left by a crash) is replaced; one a live daemon answers on is not.
pub async fn bind(path: &Path, mode: u32) -> std::io::Result<Listener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    if path.exists() {
        let name = path.to_fs_name::<GenericFilePath>()?;
        match Stream::connect(name).await {
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                    "{} is in use by a running daemon (stop it first, or choose another socket)",
                    path.display()
                ),
                ))
            }
            // Only a socket nobody listens on is stale. Anything else at
            // the path (a busy daemon, a regular file) is not ours to delete.
            Err(e)
                if is_socket(path)
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) =>
            {
                tracing::info!(socket = %path.display(), "replacing stale socket file");
                std::fs::remove_file(path)?;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} exists and is not a stale socket ({e}); not replacing it",
                        path.display()
                    ),
                ))
            }
        }
    }
    let name = path.to_fs_name::<GenericFilePath>()?;
    let opts = ListenerOptions::new().name(name).reclaim_name(true);
    #[cfg(unix)]
    let opts = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        opts.mode(mode as libc::mode_t)
    };
    #[cfg(not(unix))]
    let _ = mode;
    let listener = opts.create_tokio()?;
    // bind() applies the process umask to the mode set above; set the bits
    // the config asked for explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

/// Whether the peer may talk to us: same uid, or root. When `socket_mode`
/// grants group access, the kernel's permission check on the socket file
/// already admitted the peer (group members, supplementary groups
/// included), so any uid that got this far is accepted.
#[cfg(target_os = "linux")]
fn peer_allowed(conn: &Stream, group_access: bool) -> Result<(), String> {
    if group_access {
        return Ok(());
    }
    let creds = conn
        .peer_creds()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    match creds.euid() {
        Some(u) if u == uid || u == 0 => Ok(()),
        Some(u) => Err(format!(
            "uid {u} may not use this daemon (it runs as uid {uid}; set daemon.socket_mode to share it with a group)"
        )),
        None => Err("peer uid unknown".into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn peer_allowed(_conn: &Stream, _group_access: bool) -> Result<(), String> {
    // Elsewhere the socket's file mode is the access control.
    Ok(())
}

/// Accepts until `shutdown` turns true; connection tasks go to `tasks`.
pub async fn serve(
    listener: Listener,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(conn) => {
                    let ctx = ctx.clone();
                    let sd = shutdown.clone();
                    tasks.spawn(async move { connection(conn, ctx, sd).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

async fn send(conn: &Stream, enc: Encoding, frame: &ServerFrame) -> std::io::Result<()> {
    let bytes = encode(enc, frame).map_err(std::io::Error::other)?;
    let mut w = conn;
    write_frame(&mut w, &bytes).await
}

async fn send_hello_err(conn: &Stream, code: ErrorCode, msg: String) {
    let reply = HelloReply {
        ok: false,
        server: server_name(),
        protocol: PROTOCOL_VERSION,
        client_id: String::new(),
        max_frame_bytes: 0,
        error: Some(ApiError::new(code, msg)),
    };
    if let Ok(b) = serde_json::to_vec(&reply) {
        let mut w = conn;
        let _ = write_frame(&mut w, &b).await;
    }
}

fn server_name() -> String {
    format!("syncd {}", env!("CARGO_PKG_VERSION"))
}

/// What the reader task hands the session.
enum Incoming {
    Frame(Vec<u8>),
    Bad(FrameError),
}

async fn connection(conn: Stream, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let cfg = ctx.config.borrow().clone();
    let max = cfg.daemon.max_frame_bytes;
    let group_access = cfg.socket_mode().map(|m| m & 0o060 != 0).unwrap_or(false);
    if let Err(why) = peer_allowed(&conn, group_access) {
        tracing::warn!(reason = %why, "refused connection");
        send_hello_err(&conn, ErrorCode::PermissionDenied, why).await;
        return;
    }
    let conn = Arc::new(conn);

    // Hello: always JSON.
    let hello = {
        let mut r = BufReader::new(&*conn);
        match read_frame(&mut r, max).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                let code = match e {
                    FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::BadFrame,
                };
                send_hello_err(&conn, code, format!("hello: {e}")).await;
                return;
            }
        }
    };
    let hello: Hello = match serde_json::from_slice(&hello) {
        Ok(h) => h,
        Err(e) => {
            send_hello_err(
                &conn,
                ErrorCode::BadFrame,
                format!("the first frame must be a JSON hello {{\"app\",\"protocol\",\"encoding\"}}: {e}"),
            )
            .await;
            return;
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        send_hello_err(
            &conn,
            ErrorCode::UnsupportedProtocol,
            format!(
                "protocol {} not supported; this daemon speaks {PROTOCOL_VERSION}",
                hello.protocol
            ),
        )
        .await;
        return;
    }
    let enc = hello.encoding;
    let ok = HelloReply {
        ok: true,
        server: server_name(),
        protocol: PROTOCOL_VERSION,
        client_id: ctx.store.client_id().to_owned(),
        max_frame_bytes: max,
        error: None,
    };
    match serde_json::to_vec(&ok) {
        Ok(b) => {
            let mut w = &*conn;
            if write_frame(&mut w, &b).await.is_err() {
                return;
            }
        }
        Err(_) => return,
    }
    tracing::debug!(app = %hello.app, encoding = enc.as_str(), "client connected");

    // Reader task: frames only, never cancelled mid-frame.
    let (tx, mut rx) = mpsc::channel::<Incoming>(8);
    let rconn = conn.clone();
    // Set when the peer's side of the stream ends, so a long wait_synced
    // does not outlive its client.
    let (closed_tx, closed_rx) = watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut r = BufReader::new(&*rconn);
        loop {
            match read_frame(&mut r, max).await {
                Ok(Some(b)) => {
                    if tx.send(Incoming::Frame(b)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Incoming::Bad(e)).await;
                    break;
                }
            }
        }
        let _ = closed_tx.send(true);
    });

    let mut watch: Option<(broadcast::Receiver<Arc<Event>>, Vec<String>)> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            inc = rx.recv() => {
                let Some(inc) = inc else { break };
                let bytes = match inc {
                    Incoming::Frame(b) => b,
                    Incoming::Bad(FrameError::Io(_)) => break,
                    Incoming::Bad(e @ FrameError::Truncated) => {
                        // The peer may have only half-closed: tell it why.
                        let f = ServerFrame::Error { id: 0, error: ApiError::new(ErrorCode::BadFrame, format!("{e}; closing the connection")) };
                        let _ = send(&conn, enc, &f).await;
                        break;
                    }
                    Incoming::Bad(e @ FrameError::TooLarge { .. }) => {
                        // The rest of the stream is unframed garbage now:
                        // say why, then close.
                        let f = ServerFrame::Error { id: 0, error: ApiError::new(ErrorCode::TooLarge, format!("{e}; closing the connection")) };
                        let _ = send(&conn, enc, &f).await;
                        break;
                    }
                };
                let frame: ClientFrame = match decode(enc, &bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        let code = match e {
                            // Well-formed JSON of the wrong shape is a bad
                            // request, not bad JSON.
                            CodecError::WrongShape(_) => ErrorCode::BadRequest,
                            CodecError::InvalidJson(_) | CodecError::InvalidDocument(_) => ErrorCode::InvalidJson,
                            _ => ErrorCode::BadFrame,
                        };
                        let f = ServerFrame::Error { id: 0, error: ApiError::new(code, format!("undecodable request: {e}")) };
                        if send(&conn, enc, &f).await.is_err() { break; }
                        continue;
                    }
                };
                let id = frame.id;
                let reply = match frame.request {
                    Request::Watch { collections } => {
                        let bad = collections.iter().find_map(|c| validate_collection(c).err());
                        match bad {
                            Some(e) => Err(ApiError::new(ErrorCode::BadCollection, e)),
                            None => {
                                watch = Some((ctx.events.subscribe(), collections));
                                Ok(Response::Watching {})
                            }
                        }
                    }
                    req @ Request::WaitSynced { .. } => {
                        let mut closed = closed_rx.clone();
                        tokio::select! {
                            r = handle(&ctx, req) => r,
                            _ = closed.wait_for(|c| *c) => break,
                        }
                    }
                    req => handle(&ctx, req).await,
                };
                let f = match reply {
                    Ok(body) => ServerFrame::Reply { id, body },
                    Err(error) => ServerFrame::Error { id, error },
                };
                if send(&conn, enc, &f).await.is_err() { break; }
            }
            ev = async { match watch.as_mut() { Some((rx, _)) => rx.recv().await, None => std::future::pending().await } } => {
                let ev = match ev {
                    Ok(ev) => {
                        let wanted = match (&watch, ev.collection()) {
                            (Some((_, cols)), Some(c)) => cols.is_empty() || cols.iter().any(|x| x == c),
                            _ => true,
                        };
                        if !wanted { continue; }
                        (*ev).clone()
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => Event::ResyncNeeded { missed: n },
                    Err(broadcast::error::RecvError::Closed) => { watch = None; continue; }
                };
                if send(&conn, enc, &ServerFrame::Event(ev)).await.is_err() { break; }
            }
        }
    }
    reader.abort();
}

fn bad_request(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

/// Checks a document for a write: an object, within the size limit.
fn check_doc(doc: Doc, max: u32) -> Result<Document, ApiError> {
    let kind = match &doc.0 {
        Value::Object(_) => None,
        Value::Array(_) => Some("an array"),
        Value::String(_) => Some("a string"),
        Value::Number(_) => Some("a number"),
        Value::Bool(_) => Some("a boolean"),
        Value::Null => Some("null"),
    };
    if let Some(k) = kind {
        return Err(bad_request(
            ErrorCode::NotAnObject,
            format!("document must be a JSON object, got {k}"),
        ));
    }
    let size = doc.0.to_string().len();
    if size > max as usize {
        return Err(bad_request(
            ErrorCode::TooLarge,
            format!("document too large: {size} bytes of JSON, the limit is {max} (daemon.max_document_bytes)"),
        ));
    }
    match doc.0 {
        Value::Object(m) => Ok(m),
        _ => Err(bad_request(
            ErrorCode::NotAnObject,
            "document must be a JSON object",
        )),
    }
}

fn check_names(collection: &str, id: Option<&str>) -> Result<(), ApiError> {
    validate_collection(collection).map_err(|e| bad_request(ErrorCode::BadCollection, e))?;
    if let Some(id) = id {
        validate_id(id).map_err(|e| bad_request(ErrorCode::BadId, e))?;
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

fn written(o: WriteOutcome) -> Response {
    match o {
        WriteOutcome::Written { id, op_id } => Response::Written { id, op_id },
        WriteOutcome::Done => Response::Ok {},
    }
}

/// How many bytes of documents one reply may carry: half the frame limit,
/// leaving room for the rest of the encoding.
fn reply_budget(ctx: &Ctx) -> usize {
    ctx.config.borrow().daemon.max_frame_bytes as usize / 2
}

/// Ops up to the reply budget (always at least one).
fn within_budget(budget: usize, ops: impl Iterator<Item = OpView>) -> Vec<OpView> {
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

/// Answers one request (everything but `watch`).
pub async fn handle(ctx: &Ctx, req: Request) -> Result<Response, ApiError> {
    let max_doc = ctx.config.borrow().daemon.max_document_bytes;
    let now = crate::domain::clock::now_ms();
    match req {
        Request::Put {
            collection,
            id,
            data,
        } => {
            check_names(&collection, id.as_deref())?;
            let data = check_doc(data, max_doc)?;
            ctx.writer
                .submit(WriteCmd::Put {
                    collection,
                    id,
                    data,
                    client_ts: now,
                })
                .await
                .map(written)
                .map_err(ApiError::from)
        }
        Request::Patch {
            collection,
            id,
            data,
        } => {
            check_names(&collection, Some(&id))?;
            let data = check_doc(data, max_doc)?;
            ctx.writer
                .submit(WriteCmd::Patch {
                    collection,
                    id,
                    data,
                    client_ts: now,
                    max_bytes: max_doc,
                })
                .await
                .map(written)
                .map_err(ApiError::from)
        }
        Request::Delete { collection, id } => {
            check_names(&collection, Some(&id))?;
            ctx.writer
                .submit(WriteCmd::Delete {
                    collection,
                    id,
                    client_ts: now,
                })
                .await
                .map(written)
                .map_err(ApiError::from)
        }
        Request::Get { collection, id } => {
            check_names(&collection, Some(&id))?;
            match ctx.store.get(&collection, &id).map_err(internal)? {
                Some(r) => Ok(Response::Record(r)),
                None => Err(bad_request(
                    ErrorCode::NotFound,
                    format!("no record {id:?} in collection {collection:?}"),
                )),
            }
        }
        Request::List {
            collection,
            start,
            limit,
        } => {
            check_names(&collection, None)?;
            let limit = limit.unwrap_or(100).clamp(1, MAX_LIST) as usize;
            let (records, next) = ctx
                .store
                .list(&collection, start.as_deref(), limit, reply_budget(ctx))
                .map_err(internal)?;
            Ok(Response::Records { records, next })
        }
        Request::Status {} => status(ctx).map(Response::Status),
        Request::Queue { limit } => {
            let limit = limit.unwrap_or(1000).clamp(1, MAX_LIST) as usize;
            let ops = ctx.store.queue_head(limit).map_err(internal)?;
            Ok(Response::Ops(within_budget(
                reply_budget(ctx),
                ops.into_iter().map(|(s, o)| o.view(s)),
            )))
        }
        Request::Watch { .. } => Err(bad_request(
            ErrorCode::BadRequest,
            "watch is handled by the session",
        )),
        Request::Sync {} => {
            ctx.sync.wake();
            Ok(Response::Ok {})
        }
        Request::Pause {} => {
            ctx.writer
                .submit(WriteCmd::SetMeta {
                    key: crate::store::tables::META_PAUSED,
                    value: b"1".to_vec(),
                })
                .await?;
            ctx.sync.set_paused(true);
            Ok(Response::Ok {})
        }
        Request::Resume {} => {
            ctx.writer
                .submit(WriteCmd::SetMeta {
                    key: crate::store::tables::META_PAUSED,
                    value: b"0".to_vec(),
                })
                .await?;
            ctx.sync.set_paused(false);
            Ok(Response::Ok {})
        }
        Request::Conflicts {} => Ok(Response::Conflicts(
            ctx.store.conflicts().map_err(internal)?,
        )),
        Request::Resolve {
            collection,
            id,
            take,
            data,
        } => {
            check_names(&collection, Some(&id))?;
            let data = match data {
                Some(d) => Some(check_doc(d, max_doc)?),
                None => None,
            };
            if take.is_none() && data.is_none() {
                return Err(bad_request(
                    ErrorCode::BadRequest,
                    "resolve needs take (local or server) or data",
                ));
            }
            ctx.writer
                .submit(WriteCmd::ResolveParked {
                    collection,
                    id,
                    take,
                    data,
                })
                .await
                .map(written)
                .map_err(ApiError::from)
        }
        Request::DeadLetters {} => {
            let d = ctx.store.dead_letters().map_err(internal)?;
            Ok(Response::Ops(within_budget(
                reply_budget(ctx),
                d.into_iter().map(|(seq, dl)| {
                    let mut v = dl.op.view(seq);
                    v.last_error = Some(dl.error);
                    v
                }),
            )))
        }
        Request::Retry { op_id } => ctx
            .writer
            .submit(WriteCmd::RetryDead { op_id })
            .await
            .map(written)
            .map_err(ApiError::from),
        Request::Discard { op_id } => ctx
            .writer
            .submit(WriteCmd::DiscardDead { op_id })
            .await
            .map(written)
            .map_err(ApiError::from),
        Request::WaitSynced { op_id } => wait_synced(ctx, op_id).await,
    }
}

/// Waits until `op_id` is on the server, dead-lettered, or gone through a
/// conflict resolution whose re-sent op (if any) has landed.
async fn wait_synced(ctx: &Ctx, op_id: String) -> Result<Response, ApiError> {
    // Subscribe first, then look: no event can slip between the two.
    let mut rx = ctx.events.subscribe();
    let mut record: Option<(String, String)> = None;
    let mut resolved_by_conflict = false;
    loop {
        match ctx.store.op_state(&op_id).map_err(internal)? {
            OpState::DeadLettered(e) => {
                return Err(ApiError::new(
                    ErrorCode::DeadLettered,
                    format!("op {op_id} was rejected by the server: {e}"),
                ))
            }
            OpState::Queued | OpState::Parked => {}
            OpState::Done => {
                let Some((c, id)) = record.clone() else {
                    // Already gone before we looked: confirmed earlier.
                    return Ok(Response::Synced {
                        op_id,
                        server_id: None,
                        version: None,
                    });
                };
                let rec = ctx.store.record(&c, &id).map_err(internal)?;
                let still_pending = rec.as_ref().is_some_and(|r| r.pending > 0);
                if !(resolved_by_conflict && still_pending) {
                    return Ok(Response::Synced {
                        op_id,
                        server_id: rec.as_ref().and_then(|r| r.server_id.clone()),
                        version: rec.as_ref().and_then(|r| r.version),
                    });
                }
            }
        }
        if record.is_none() {
            record = ctx.store.op_target(&op_id).map_err(internal)?;
        }
        match rx.recv().await {
            Ok(ev) => match &*ev {
                Event::Synced {
                    op_id: o,
                    server_id,
                    version,
                    ..
                } if *o == op_id && !resolved_by_conflict => {
                    return Ok(Response::Synced {
                        op_id,
                        server_id: Some(server_id.clone()),
                        version: Some(*version),
                    });
                }
                Event::DeadLettered {
                    collection,
                    id,
                    error,
                    ..
                } if resolved_by_conflict
                    && record.as_ref() == Some(&(collection.clone(), id.clone())) =>
                {
                    return Err(ApiError::new(
                        ErrorCode::DeadLettered,
                        format!("op {op_id}'s re-sent change was rejected: {error}"),
                    ));
                }
                Event::Conflict {
                    collection,
                    id,
                    strategy,
                    result,
                    ..
                } if record.as_ref() == Some(&(collection.clone(), id.clone())) => {
                    if result.local_lost() {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!(
                                "op {op_id} lost a conflict ({strategy}): the server's version was kept and the local change discarded"
                            ),
                        ));
                    }
                    resolved_by_conflict = true;
                }
                _ => {}
            },
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                return Err(ApiError::new(
                    ErrorCode::ShuttingDown,
                    "the daemon is shutting down",
                ))
            }
        }
    }
}

/// Builds the status view from the store and the worker.
pub fn status(ctx: &Ctx) -> Result<StatusView, ApiError> {
    use crate::store::tables::{i64_be, u64_be, META_LAST_SYNC, META_RESOLVED};
    let s = ctx.sync.status();
    let cfg = ctx.config.borrow().clone();
    let now = crate::domain::clock::now_ms();
    Ok(StatusView {
        state: s.state.as_str().to_owned(),
        queue_depth: ctx.store.queue_depth().map_err(internal)?,
        oldest_pending_age_ms: ctx
            .store
            .oldest_pending()
            .map_err(internal)?
            .map(|t| (now - t).max(0)),
        dead_letters: ctx.store.dead_letter_count().map_err(internal)?,
        conflicts: ctx.store.conflict_count().map_err(internal)?,
        conflicts_resolved: u64_be(ctx.store.meta(META_RESOLVED).map_err(internal)?.as_deref())
            .unwrap_or(0),
        last_sync_at: i64_be(ctx.store.meta(META_LAST_SYNC).map_err(internal)?.as_deref()),
        next_retry_at: s.next_retry_at,
        last_error: s.last_error,
        backend: cfg.backend_url().map(str::to_owned),
        client_id: ctx.store.client_id().to_owned(),
        store_bytes: ctx.store.store_bytes(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}
