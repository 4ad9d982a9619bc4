//! One client's session, from the peer check to the last reply.
//!
//! Exists so the server only accepts, and the commands only answer: this
//! is the loop in between. It waits for whichever comes first, the next
//! request or (once the app subscribed) the next watch event, and answers
//! requests one at a time in the order they arrived. It reads the next
//! request only after the previous reply is written, so a client that does
//! not read its replies is pushed back by the socket instead of filling
//! the daemon's memory.

use std::sync::Arc;

use interprocess::local_socket::tokio::Stream;
use tokio::sync::watch;

use crate::ipc::cmd::{self, live_query::LiveQuery, watch::Subscription};
use crate::ipc::codec::{decode, Encoding};
use crate::ipc::connection::Connection;
use crate::ipc::connection::FrameError;
use crate::ipc::context::Ctx;
use crate::ipc::error::{broken_stream, undecodable_request};
use crate::ipc::hello;
use crate::ipc::peer;
use crate::ipc::wire::{ApiError, ClientFrame, ErrorCode, Event, Request, Response, ServerFrame};

/// Serves one accepted connection until either side ends it or the
/// daemon shuts down.
pub async fn run(stream: Stream, ctx: Arc<Ctx>, shutdown: watch::Receiver<bool>) {
    let cfg = ctx.config.borrow().clone();
    let max = cfg.daemon.max_frame_bytes;
    let refused = peer::check(&stream, &ctx.peers).await.err();
    let mut conn = Connection::new(stream, max);
    if let Some(why) = refused {
        tracing::warn!(reason = %why, "refused connection");
        hello::refuse(&mut conn, ErrorCode::PermissionDenied, why.to_string()).await;
        return;
    }
    let Some((app, enc)) = hello::exchange(&mut conn, ctx.store.client_id(), max).await else {
        return;
    };
    tracing::debug!(app = %app, encoding = enc.as_str(), "client connected");
    let session = Session {
        conn,
        ctx: &ctx,
        enc,
        feed: None,
        uploads: cmd::attach::Uploads::default(),
    };
    session.run(shutdown).await;
}

struct Session<'a> {
    conn: Connection,
    ctx: &'a Ctx,
    /// The encoding the client chose in its hello.
    enc: Encoding,
    /// The app's event feed, once it sent `watch` or `watch_query`.
    feed: Option<Feed>,
    /// Attachment uploads in progress (dropped with the connection).
    uploads: cmd::attach::Uploads,
}

/// A connection's event feed: the change feed or a live query.
enum Feed {
    Watch(Subscription),
    Query(Box<LiveQuery>),
}

/// What woke the session up.
enum Next {
    Frame(Result<Option<Vec<u8>>, FrameError>),
    Event(Option<Event>),
}

impl Session<'_> {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            // Both reads are cancel-safe: losing the race loses nothing.
            let next = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                r = self.conn.read_frame() => Next::Frame(r),
                ev = next_event(&mut self.feed) => Next::Event(ev),
            };
            let go_on = match next {
                Next::Frame(r) => self.on_frame(r).await,
                Next::Event(ev) => self.on_event(ev).await,
            };
            if !go_on {
                return;
            }
        }
    }

    /// Answers one incoming frame; `false` when the connection is over.
    async fn on_frame(&mut self, r: Result<Option<Vec<u8>>, FrameError>) -> bool {
        let bytes = match r {
            Ok(Some(b)) => b,
            Ok(None) => return false,
            Err(e) => {
                if let Some(error) = broken_stream(&e) {
                    let _ = self.reply(0, Err(error)).await;
                }
                return false;
            }
        };
        let frame: ClientFrame = match decode(self.enc, &bytes) {
            Ok(f) => f,
            Err(e) => return self.reply(0, Err(undecodable_request(&e))).await,
        };
        match self.answer(frame.request).await {
            Some(r) => self.reply(frame.id, r).await,
            None => false,
        }
    }

    /// Runs one request; `None` when the client left while it waited.
    async fn answer(&mut self, req: Request) -> Option<Result<Response, ApiError>> {
        match req {
            Request::Watch { collections } => {
                Some(cmd::watch::subscribe(self.ctx, collections).map(|sub| {
                    self.feed = Some(Feed::Watch(sub));
                    Response::Watching {}
                }))
            }
            Request::WatchQuery {
                collection,
                selector,
                sort,
                limit,
            } => {
                let started =
                    cmd::live_query::start(self.ctx, collection, selector, sort, limit).await;
                Some(started.map(|lq| {
                    self.feed = Some(Feed::Query(Box::new(lq)));
                    Response::Watching {}
                }))
            }
            // It may wait forever: end it when the client goes away.
            req @ (Request::WaitSynced { .. } | Request::Subscribe { wait: true, .. }) => {
                tokio::select! {
                    r = cmd::apply(self.ctx, req) => Some(r),
                    _ = self.conn.peer_closed() => None,
                }
            }
            Request::AttachBegin {
                collection,
                id,
                name,
                content_type,
            } => Some(
                cmd::attach::begin(
                    self.ctx,
                    &mut self.uploads,
                    collection,
                    id,
                    name,
                    content_type,
                )
                .await,
            ),
            Request::AttachChunk { upload, data } => {
                Some(cmd::attach::chunk(&mut self.uploads, upload, data).await)
            }
            Request::AttachEnd { upload, sha256 } => {
                Some(cmd::attach::end(self.ctx, &mut self.uploads, upload, sha256).await)
            }
            Request::AttachAbort { upload } => Some(cmd::attach::abort(&mut self.uploads, upload)),
            // A lazy read may download first: end it if the client leaves.
            req @ Request::ReadAttachment { .. } => {
                tokio::select! {
                    r = cmd::apply(self.ctx, req) => Some(r),
                    _ = self.conn.peer_closed() => None,
                }
            }
            req => Some(cmd::apply(self.ctx, req).await),
        }
    }

    /// Writes a request's answer; `false` when the stream is gone.
    async fn reply(&mut self, id: u64, r: Result<Response, ApiError>) -> bool {
        let frame = match r {
            Ok(body) => ServerFrame::Reply { id, body },
            Err(error) => ServerFrame::Error { id, error },
        };
        match self.conn.send(self.enc, &frame).await {
            Ok(()) => true,
            // A record pulled from a server with a larger limit, say:
            // say so instead of sending a frame the client may refuse.
            Err(FrameError::TooLarge { len, max }) => {
                let error = ApiError::new(
                    ErrorCode::TooLarge,
                    format!("the reply would be a {len}-byte frame, over the {max}-byte limit (daemon.max_frame_bytes)"),
                );
                let frame = ServerFrame::Error { id, error };
                self.conn.send(self.enc, &frame).await.is_ok()
            }
            // Nothing was written: answer with the daemon's own failure.
            Err(FrameError::Encode(e)) => {
                tracing::error!(error = %e, "cannot encode a reply");
                let error = ApiError::new(
                    ErrorCode::Internal,
                    format!("the reply could not be encoded: {e}"),
                );
                let frame = ServerFrame::Error { id, error };
                self.conn.send(self.enc, &frame).await.is_ok()
            }
            Err(_) => false,
        }
    }

    /// Forwards one watch event; `false` when the stream is gone.
    async fn on_event(&mut self, ev: Option<Event>) -> bool {
        match ev {
            Some(ev) => match self.conn.send(self.enc, &ServerFrame::Event(ev)).await {
                Ok(()) => true,
                // Too large to send: accounted for as a missed event.
                Err(FrameError::TooLarge { .. }) => {
                    let missed = ServerFrame::Event(Event::ResyncNeeded { missed: 1 });
                    self.conn.send(self.enc, &missed).await.is_ok()
                }
                Err(_) => false,
            },
            None => {
                // The event source closed: the daemon is stopping.
                self.feed = None;
                true
            }
        }
    }
}

/// The feed's next event; never resolves without a feed.
async fn next_event(feed: &mut Option<Feed>) -> Option<Event> {
    match feed {
        Some(Feed::Watch(sub)) => sub.next().await,
        Some(Feed::Query(lq)) => lq.next().await,
        None => std::future::pending().await,
    }
}
