//! The Rust client library: what an app (and the `syncd` CLI) uses to talk
//! to the daemon. It speaks bincode; see docs/ipc-protocol.md for the wire.
//!
//! ```no_run
//! # async fn demo() -> Result<(), syncd_client::ClientError> {
//! let mut c = syncd_client::Client::connect("/run/user/1000/syncd/syncd.sock".as_ref(), "my-app").await?;
//! let w = c.put("todos", None, serde_json::json!({"title": "buy milk"})).await?;
//! let rec = c.get("todos", &w.0).await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use serde_json::Value;

use crate::codec::{decode, encode, CodecError, Encoding};
use crate::connection::Connection;
use crate::wire::*;

/// The frame limit until the daemon's hello says its own.
const HELLO_MAX_FRAME: u32 = 1 << 20;

#[derive(Debug)]
pub enum ClientError {
    /// The daemon is not reachable at `path`.
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The connection broke or the daemon sent something unexpected.
    Protocol(String),
    /// The request could not be encoded; nothing was sent and the
    /// connection is still usable.
    Encode(CodecError),
    /// The daemon answered with an error.
    Api(ApiError),
    /// Reading a file to attach, or writing an attachment out, failed
    /// (on the app's side; the daemon was not at fault).
    Io(std::io::Error),
    /// The attachment was replaced (or detached) while it was being read:
    /// what was written so far is of the old content. Read it again.
    Changed { name: String },
    /// The process listening at `path` is not the daemon we trust: it runs
    /// as `uid`, not as ours, root or the one we were told to expect.
    UntrustedDaemon {
        path: PathBuf,
        uid: Option<u32>,
        expected: Vec<u32>,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable { path, source }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                write!(
                    f,
                    "cannot reach syncd at {}: {source}\nthe daemon's socket does not let this user in: run as the daemon's user, or join the group daemon.socket_mode grants (see systemd/README.md)",
                    path.display()
                )
            }
            ClientError::Unreachable { path, source } => write!(
                f,
                "cannot reach syncd at {}: {source}\nstart it with `syncd run` (or `systemctl --user start syncd`), or point to it with --socket/SYNCD_SOCKET",
                path.display()
            ),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Encode(e) => write!(f, "cannot encode the request: {e}; nothing was sent"),
            ClientError::Api(e) => write!(f, "{e}"),
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Changed { name } => write!(
                f,
                "attachment {name:?} changed while it was read: what was written is incomplete; read it again"
            ),
            ClientError::UntrustedDaemon {
                path,
                uid,
                expected,
            } => {
                let who = uid.map_or("an unknown uid".to_owned(), |u| format!("uid {u}"));
                write!(
                    f,
                    "refusing to talk to {}: the process listening there runs as {who}, not as one of the uids we trust ({expected:?}); nothing was sent. If the daemon runs as another user on purpose, name it with --daemon-user/SYNCD_DAEMON_USER",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Unreachable { source, .. } => Some(source),
            ClientError::Encode(e) => Some(e),
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> Self {
        ClientError::Api(e)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// One connection to the daemon. Requests are answered in order; watch
/// events that arrive while waiting for a reply are kept for
/// [`Client::next_event`].
pub struct Client {
    /// The same framing (one buffer, cancel-safe reads) as the daemon's
    /// side of the socket.
    conn: Connection<Stream>,
    enc: Encoding,
    next_id: u64,
    /// The daemon's frame limit as its hello announced it (0: not said).
    request_limit: u32,
    client_id: String,
    events: VecDeque<Event>,
}

impl Client {
    /// Connects with bincode.
    pub async fn connect(path: &Path, app: &str) -> Result<Client> {
        Self::connect_with(path, app, Encoding::Bincode).await
    }

    /// Connects with `enc`, trusting a daemon that runs as our uid or root.
    pub async fn connect_with(path: &Path, app: &str, enc: Encoding) -> Result<Client> {
        Self::connect_trusting(path, app, enc, None).await
    }

    /// Connects with `enc`. Before anything is sent, the peer's uid
    /// (`SO_PEERCRED`) must be ours, root's, or `daemon_uid` (a daemon run
    /// as a service account, e.g. `syncd`); else [`ClientError::UntrustedDaemon`].
    pub async fn connect_trusting(
        path: &Path,
        app: &str,
        enc: Encoding,
        daemon_uid: Option<u32>,
    ) -> Result<Client> {
        let unreachable = |source| ClientError::Unreachable {
            path: path.to_owned(),
            source,
        };
        let name = path.to_fs_name::<GenericFilePath>().map_err(unreachable)?;
        let conn = Stream::connect(name).await.map_err(unreachable)?;
        check_daemon(&conn, path, daemon_uid)?;
        let hello = serde_json::to_vec(&Hello {
            app: app.to_owned(),
            protocol: PROTOCOL_VERSION,
            encoding: enc,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut conn = Connection::new(conn, HELLO_MAX_FRAME);
        // A daemon that refuses us answers at once and closes: our hello
        // may then fail to send, but its answer is still there to read.
        let sent = conn.write_frame(&hello).await;
        let reply = match (conn.read_frame().await, sent) {
            (Ok(Some(reply)), _) => reply,
            (_, Err(e)) => return Err(ClientError::Protocol(format!("sending hello: {e}"))),
            (Ok(None), Ok(())) => {
                return Err(ClientError::Protocol(
                    "daemon closed the connection during hello".into(),
                ))
            }
            (Err(e), Ok(())) => return Err(ClientError::Protocol(format!("reading hello: {e}"))),
        };
        let reply: HelloReply = serde_json::from_slice(&reply)
            .map_err(|e| ClientError::Protocol(format!("bad hello reply: {e}")))?;
        if !reply.ok {
            return Err(match reply.error {
                Some(e) => ClientError::Api(e),
                None => ClientError::Protocol("hello refused".into()),
            });
        }
        // Replies can be larger than requests (a big list): allow 4x.
        conn.set_max_frame(reply.max_frame_bytes.max(HELLO_MAX_FRAME).saturating_mul(4));
        Ok(Client {
            conn,
            enc,
            next_id: 1,
            request_limit: reply.max_frame_bytes,
            client_id: reply.client_id,
            events: VecDeque::new(),
        })
    }

    /// The daemon's install id (`X-Syncd-Client`).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The daemon's next frame. Cancel-safe: a frame half received stays
    /// in the connection's buffer for the next call.
    async fn read_server_frame(&mut self) -> Result<ServerFrame> {
        let bytes = self
            .conn
            .read_frame()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .ok_or_else(|| ClientError::Protocol("daemon closed the connection".into()))?;
        decode(self.enc, &bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A request the daemon would refuse for its size is refused here,
    /// before it is sent: the daemon would close the connection on it, and
    /// the app would see only a broken pipe.
    fn check_size(&self, len: usize) -> Result<()> {
        let limit = self.request_limit as usize;
        if limit == 0 || len <= limit {
            return Ok(());
        }
        Err(ClientError::Api(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "request is {len} bytes; the daemon accepts frames of up to {limit} bytes (daemon.max_frame_bytes), and a document in a write must also fit daemon.max_document_bytes (1 MiB by default); nothing was sent"
            ),
        )))
    }

    /// Sends one request and waits for its reply.
    pub async fn request(&mut self, request: Request) -> Result<Response> {
        let id = self.send(request).await?;
        self.reply_to(id).await
    }

    /// Sends a request without waiting: its reply is [`Self::reply_to`]'s.
    /// Replies come in request order (the daemon answers a connection's
    /// requests one after the other).
    async fn send(&mut self, request: Request) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = encode(self.enc, &ClientFrame { id, request }).map_err(ClientError::Encode)?;
        self.check_size(bytes.len())?;
        self.conn
            .write_frame(&bytes)
            .await
            .map_err(|e| ClientError::Protocol(format!("sending request: {e}")))?;
        Ok(id)
    }

    /// The reply to request `id` (events that come first are kept).
    async fn reply_to(&mut self, id: u64) -> Result<Response> {
        loop {
            match self.read_server_frame().await? {
                ServerFrame::Reply { id: rid, body } if rid == id => return Ok(body),
                ServerFrame::Error { id: rid, error } if rid == id || rid == 0 => {
                    return Err(ClientError::Api(error))
                }
                ServerFrame::Event(e) => self.events.push_back(e),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected frame while waiting for reply {id}: {other:?}"
                    )))
                }
            }
        }
    }

    /// Creates or replaces a record; returns (local id, op_id).
    pub async fn put(
        &mut self,
        collection: &str,
        id: Option<&str>,
        data: Value,
    ) -> Result<(String, String)> {
        self.put_in_scope(collection, id, data, None).await
    }

    /// [`Client::put`] with a scope (revision-3 backends): the scope to
    /// create the record in, or to move it to; returns (local id, op_id).
    pub async fn put_in_scope(
        &mut self,
        collection: &str,
        id: Option<&str>,
        data: Value,
        scope: Option<&str>,
    ) -> Result<(String, String)> {
        written(
            self.request(Request::Put {
                collection: collection.into(),
                id: id.map(str::to_owned),
                data: Doc(data),
                scope: scope.map(str::to_owned),
            })
            .await?,
        )
    }

    /// Merges top-level fields (null removes a key); returns (id, op_id).
    pub async fn patch(
        &mut self,
        collection: &str,
        id: &str,
        data: Value,
    ) -> Result<(String, String)> {
        written(
            self.request(Request::Patch {
                collection: collection.into(),
                id: id.into(),
                data: Doc(data),
            })
            .await?,
        )
    }

    pub async fn delete(&mut self, collection: &str, id: &str) -> Result<(String, String)> {
        written(
            self.request(Request::Delete {
                collection: collection.into(),
                id: id.into(),
            })
            .await?,
        )
    }

    pub async fn get(&mut self, collection: &str, id: &str) -> Result<RecordView> {
        match self
            .request(Request::Get {
                collection: collection.into(),
                id: id.into(),
            })
            .await?
        {
            Response::Record(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// One page of records; returns the page and the next start key.
    pub async fn list(
        &mut self,
        collection: &str,
        start: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<RecordView>, Option<String>)> {
        match self
            .request(Request::List {
                collection: collection.into(),
                start: start.map(str::to_owned),
                limit,
            })
            .await?
        {
            Response::Records { records, next } => Ok((records, next)),
            other => Err(unexpected(other)),
        }
    }

    /// One page of a local query (see [`Request::Query`]): the records,
    /// the cursor for the next page, and how the daemon answered.
    pub async fn query(
        &mut self,
        collection: &str,
        selector: Value,
        sort: &[SortField],
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<QueryPage> {
        let request = Request::Query {
            collection: collection.into(),
            selector: Doc(selector),
            sort: sort.to_vec(),
            limit,
            cursor: cursor.map(str::to_owned),
        };
        match self.request(request).await? {
            Response::QueryResult {
                records,
                next,
                plan,
            } => Ok(QueryPage {
                records,
                next,
                plan,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Starts a live query: its events (`Event::Query`) then come from
    /// [`Client::next_event`], the first result first.
    pub async fn watch_query(
        &mut self,
        collection: &str,
        selector: Value,
        sort: &[SortField],
        limit: Option<u32>,
    ) -> Result<()> {
        let request = Request::WatchQuery {
            collection: collection.into(),
            selector: Doc(selector),
            sort: sort.to_vec(),
            limit,
        };
        match self.request(request).await? {
            Response::Watching {} => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn status(&mut self) -> Result<StatusView> {
        match self.request(Request::Status {}).await? {
            Response::Status(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn queue(&mut self, limit: Option<u32>) -> Result<Vec<OpView>> {
        match self.request(Request::Queue { limit }).await? {
            Response::Ops(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes to change events of `collections` (empty: all).
    pub async fn watch(&mut self, collections: &[String]) -> Result<()> {
        match self
            .request(Request::Watch {
                collections: collections.to_vec(),
            })
            .await?
        {
            Response::Watching {} => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The next watch event (after [`Client::watch`]). Cancel-safe: it
    /// can be raced against a timeout or another future without losing or
    /// splitting an event.
    pub async fn next_event(&mut self) -> Result<Event> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            match self.read_server_frame().await? {
                ServerFrame::Event(e) => return Ok(e),
                ServerFrame::Error { error, .. } => return Err(ClientError::Api(error)),
                ServerFrame::Reply { .. } => continue,
            }
        }
    }

    /// Blocks until the op is on the server; fails if it was dead-lettered.
    pub async fn wait_synced(&mut self, op_id: &str) -> Result<Response> {
        self.request(Request::WaitSynced {
            op_id: op_id.into(),
        })
        .await
    }

    /// Syncs `scope` (revision-3 backends); with `wait`, returns once its
    /// first sync is done.
    pub async fn subscribe(&mut self, scope: &str, wait: bool) -> Result<()> {
        let req = Request::Subscribe {
            scope: scope.into(),
            wait,
        };
        match self.request(req).await? {
            Response::Ok {} => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Stops syncing `scope`; its records without pending ops leave this
    /// device.
    pub async fn unsubscribe(&mut self, scope: &str) -> Result<()> {
        let req = Request::Unsubscribe {
            scope: scope.into(),
        };
        match self.request(req).await? {
            Response::Ok {} => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Every scope the daemon knows of, and how it stands.
    pub async fn scopes(&mut self) -> Result<Vec<ScopeView>> {
        match self.request(Request::Scopes {}).await? {
            Response::Scopes(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Attaches the bytes `content` reads to a record as `name`, sending
    /// them in chunks of [`ATTACH_CHUNK`]; returns `(id, op_id)` of the
    /// queued write. `on_chunk` is told the bytes sent so far.
    pub async fn attach<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        collection: &str,
        id: &str,
        name: &str,
        content_type: Option<&str>,
        mut content: R,
        mut on_chunk: impl FnMut(u64),
    ) -> Result<(String, String)> {
        use tokio::io::AsyncReadExt;
        let upload = match self
            .request(Request::AttachBegin {
                collection: collection.into(),
                id: id.into(),
                name: name.into(),
                content_type: content_type.map(str::to_owned),
            })
            .await?
        {
            Response::Upload { upload } => upload,
            other => return Err(unexpected(other)),
        };
        let mut sent = 0u64;
        let mut buf = vec![0u8; self.chunk_bytes()];
        // Up to ATTACH_WINDOW chunks in flight: the daemon stores one while
        // the next is read and sent.
        let mut in_flight = std::collections::VecDeque::new();
        let mut failed = None;
        loop {
            let n = match content.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    failed = Some(ClientError::Io(e));
                    break;
                }
            };
            if n == 0 {
                break;
            }
            let data = Chunk(buf[..n].to_vec());
            in_flight.push_back((self.send(Request::AttachChunk { upload, data }).await?, n));
            if in_flight.len() >= ATTACH_WINDOW {
                if let Some((id, n)) = in_flight.pop_front() {
                    if let Err(e) = self.reply_to(id).await {
                        failed = Some(e);
                        break;
                    }
                    sent += n as u64;
                    on_chunk(sent);
                }
            }
        }
        // Every reply is read, so the connection stays in step.
        while let Some((id, n)) = in_flight.pop_front() {
            match self.reply_to(id).await {
                Ok(_) => {
                    sent += n as u64;
                    on_chunk(sent);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            // A failed chunk already ended the upload; an app-side failure
            // drops it here.
            let _ = self.request(Request::AttachAbort { upload }).await;
            return Err(e);
        }
        written(
            self.request(Request::AttachEnd {
                upload,
                sha256: None,
            })
            .await?,
        )
    }

    /// Bytes of content per frame: [`ATTACH_CHUNK`], or less when the
    /// daemon's frame limit is smaller (base64 in JSON takes 4 bytes per
    /// 3, and the frame's other fields take some room).
    fn chunk_bytes(&self) -> usize {
        let limit = match self.request_limit {
            0 => ATTACH_CHUNK,
            l => l as usize,
        };
        let room = limit.saturating_sub(1024);
        let room = match self.enc {
            Encoding::Json => room / 4 * 3,
            Encoding::Bincode => room,
        };
        room.clamp(1024, ATTACH_CHUNK)
    }

    /// Removes attachment `name` from a record.
    pub async fn detach(
        &mut self,
        collection: &str,
        id: &str,
        name: &str,
    ) -> Result<(String, String)> {
        written(
            self.request(Request::Detach {
                collection: collection.into(),
                id: id.into(),
                name: name.into(),
            })
            .await?,
        )
    }

    /// Writes attachment `name` of a record to `out` (downloading it first
    /// when it is not on this device); returns its content type and length.
    /// `on_chunk` is told the bytes written so far and the total.
    pub async fn read_attachment<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        collection: &str,
        id: &str,
        name: &str,
        mut out: W,
        mut on_chunk: impl FnMut(u64, u64),
    ) -> Result<(String, u64)> {
        use tokio::io::AsyncWriteExt;
        let mut offset = 0u64;
        let mut pinned: Option<(String, u64)> = None;
        loop {
            let reply = self
                .request(Request::ReadAttachment {
                    collection: collection.into(),
                    id: id.into(),
                    name: name.into(),
                    offset,
                    length: Some(self.chunk_bytes() as u32),
                })
                .await?;
            let Response::AttachmentChunk {
                data,
                length,
                content_type,
                sha256,
                ..
            } = reply
            else {
                return Err(unexpected(reply));
            };
            // Every chunk must be of the same content: an attachment
            // replaced while it is read would otherwise mix two files.
            match &pinned {
                None => pinned = Some((sha256, length)),
                Some(p) if *p != (sha256, length) => {
                    return Err(ClientError::Changed {
                        name: name.to_owned(),
                    })
                }
                Some(_) => {}
            }
            out.write_all(&data.0).await.map_err(ClientError::Io)?;
            offset += data.0.len() as u64;
            on_chunk(offset, length);
            if offset >= length || data.0.is_empty() {
                out.flush().await.map_err(ClientError::Io)?;
                return Ok((content_type, length));
            }
        }
    }
}

/// Most bytes per `attach_chunk` (and per `read_attachment`) the client
/// asks for: 256 KiB, less under a small `max_frame_bytes`.
pub const ATTACH_CHUNK: usize = 256 * 1024;

/// `attach_chunk` requests the client keeps in flight.
pub const ATTACH_WINDOW: usize = 8;

/// One page of a query's answer ([`Client::query`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// Documents as JSON text: [`DocText::parse`] reads one into the app's
    /// own type, [`DocText::value`] into a `serde_json::Value`.
    pub records: Vec<RecordView<DocText>>,
    /// Pass it as the next call's `cursor` for the next page.
    pub next: Option<String>,
    pub plan: QueryPlanView,
}

/// This process's uid: a daemon running as it is trusted, and the daemon
/// names its default socket directory after it.
pub fn own_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The uids a daemon may run as for us: ours, root, and `extra`.
fn trusted_uids(extra: Option<u32>) -> Vec<u32> {
    let mut v = vec![own_uid(), 0];
    v.extend(extra);
    v.dedup();
    v
}

/// Checks the uid of the process at the other end of `conn`.
#[cfg(target_os = "linux")]
fn check_daemon(conn: &Stream, path: &Path, extra: Option<u32>) -> Result<()> {
    let expected = trusted_uids(extra);
    let uid = conn.peer_creds().ok().and_then(|c| c.euid());
    match uid {
        Some(u) if expected.contains(&u) => Ok(()),
        uid => Err(ClientError::UntrustedDaemon {
            path: path.to_owned(),
            uid,
            expected,
        }),
    }
}

#[cfg(not(target_os = "linux"))]
fn check_daemon(_conn: &Stream, _path: &Path, _extra: Option<u32>) -> Result<()> {
    Ok(())
}

fn written(r: Response) -> Result<(String, String)> {
    match r {
        Response::Written { id, op_id } => Ok((id, op_id)),
        other => Err(unexpected(other)),
    }
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected reply: {r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use interprocess::local_socket::ListenerOptions;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A stand-in daemon: answers the hello and a `watch`, then sends one
    /// event in two halves with `gap` between them.
    async fn half_event_daemon(path: PathBuf, gap: Duration) {
        let name = path.to_fs_name::<GenericFilePath>().expect("name");
        let listener = ListenerOptions::new()
            .name(name)
            .create_tokio()
            .expect("listen");
        let stream = listener.accept().await.expect("accept");
        let mut conn = Connection::new(stream, 1 << 20);
        conn.read_frame().await.expect("hello").expect("hello");
        let ok = HelloReply {
            ok: true,
            server: "fake".into(),
            protocol: PROTOCOL_VERSION,
            client_id: "c".into(),
            max_frame_bytes: 1 << 20,
            error: None,
        };
        let ok = serde_json::to_vec(&ok).expect("reply");
        conn.write_frame(&ok).await.expect("reply");
        let req = conn.read_frame().await.expect("watch").expect("watch");
        let req: ClientFrame = decode(Encoding::Json, &req).expect("watch");
        let watching = ServerFrame::Reply {
            id: req.id,
            body: Response::Watching {},
        };
        conn.send(Encoding::Json, &watching)
            .await
            .expect("watching");
        let event = ServerFrame::Event(Event::ResyncNeeded { missed: 7 });
        let body = encode(Encoding::Json, &event).expect("event");
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let (first, rest) = frame.split_at(6);
        let mut w = conn.get_ref();
        w.write_all(first).await.expect("first half");
        tokio::time::sleep(gap).await;
        w.write_all(rest).await.expect("second half");
        // Stay open until the client is done.
        let _ = conn.read_frame().await;
    }

    #[tokio::test]
    async fn next_event_survives_a_timeout_in_the_middle_of_a_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fake.sock");
        let daemon = tokio::spawn(half_event_daemon(path.clone(), Duration::from_millis(300)));
        let mut c = loop {
            match Client::connect_with(&path, "test", Encoding::Json).await {
                Ok(c) => break c,
                Err(ClientError::Unreachable { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        c.watch(&[]).await.expect("watch");
        // Gives up while the event is half received...
        let early = tokio::time::timeout(Duration::from_millis(100), c.next_event()).await;
        assert!(early.is_err(), "{early:?}");
        // ... and the next call still gets the whole event.
        let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
            .await
            .expect("the event arrives")
            .expect("a whole event");
        assert_eq!(ev, Event::ResyncNeeded { missed: 7 });
        drop(c);
        daemon.await.expect("fake daemon");
    }
}
