//! One connection's bytes: framing over a single read buffer, for both
//! ends of the socket (the daemon's sessions and the client library).
//!
//! A frame is a 4-byte big-endian length, then that many bytes of body. A
//! [`Connection`] owns the stream and ONE buffer for the connection's
//! whole life, from the hello to the last request (tokio's mini-redis
//! `Connection` is the model). Whatever the kernel handed over together
//! with a frame stays in that buffer for the next read, so a request
//! written in the same write as the hello is not lost. Reading is
//! cancel-safe (bytes move from the socket into the buffer, frames are cut
//! from the buffer only when whole), which lets the session wait for a
//! request and a watch event at once without a reader task, and lets an
//! app put a timeout on [`crate::client::Client::next_event`].

use bytes::{Buf, BytesMut};
use interprocess::local_socket::tokio::Stream;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{encode, CodecError, Encoding};

/// Why a frame could not be read or sent.
#[derive(Debug)]
pub enum FrameError {
    /// The announced length exceeds the limit; on a read the stream cannot
    /// be trusted past this point, on a send nothing was written.
    TooLarge {
        len: u32,
        max: u32,
    },
    /// The peer closed the stream in the middle of a frame.
    Truncated,
    /// The value to send could not be encoded; nothing was written.
    Encode(CodecError),
    Io(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame too large: {len} bytes, the limit is {max}")
            }
            FrameError::Truncated => write!(f, "stream closed in the middle of a frame"),
            FrameError::Encode(e) => write!(f, "cannot encode the frame: {e}"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Encode(e) => Some(e),
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Bytes of the length prefix.
const HEADER: usize = 4;
/// How much to ask the socket for when no frame length is known yet.
const READ_CHUNK: usize = 8 * 1024;

/// Generic over the stream so tests can use an in-memory pipe (or a byte
/// slice, to read only); real connections are local sockets.
pub struct Connection<S = Stream> {
    stream: S,
    /// Bytes received and not yet cut into frames.
    buffer: BytesMut,
    /// The largest frame body accepted (`daemon.max_frame_bytes`).
    max_frame: u32,
}

impl<S> Connection<S> {
    pub fn new(stream: S, max_frame: u32) -> Connection<S> {
        Connection {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
        }
    }

    /// Changes the frame limit, e.g. once the hello told what the peer
    /// allows. Bytes already buffered are kept.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// The underlying stream (e.g. for its peer credentials).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> Connection<S> {
    /// The next frame's body; `Ok(None)` on a clean end of stream between
    /// frames. Cancel-safe: a frame half received stays buffered.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(body) = self.parse_frame()? {
                return Ok(Some(body));
            }
            self.reserve_for_frame();
            let n = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(FrameError::Io)?;
            if n == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// Cuts one whole frame off the front of the buffer, if there is one.
    fn parse_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.announced_len() else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let len = len as usize;
        if self.buffer.len() < HEADER + len {
            return Ok(None);
        }
        self.buffer.advance(HEADER);
        Ok(Some(self.buffer.split_to(len).to_vec()))
    }

    fn announced_len(&self) -> Option<u32> {
        let head: [u8; HEADER] = self.buffer.get(..HEADER)?.try_into().ok()?;
        Some(u32::from_be_bytes(head))
    }

    /// Room for the rest of the frame being received (its length is
    /// checked against the limit first), or for a chunk when unknown.
    fn reserve_for_frame(&mut self) {
        let want = match self.announced_len() {
            Some(len) if len <= self.max_frame => HEADER + len as usize,
            _ => HEADER + READ_CHUNK,
        };
        let missing = want.saturating_sub(self.buffer.len()).max(READ_CHUNK);
        self.buffer.reserve(missing);
    }

    /// Resolves when the peer's side of the stream ends (or fails); never
    /// resolves while it is open. Meanwhile later requests are buffered, up
    /// to one largest frame, then reading stops (the socket pushes back).
    /// Cancel-safe. Used while a request waits for something else.
    pub async fn peer_closed(&mut self) {
        let cap = HEADER + self.max_frame as usize;
        loop {
            if self.buffer.len() >= cap {
                return std::future::pending().await;
            }
            self.buffer.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Writes one frame body (length and body in one write) and flushes.
    pub async fn write_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(body.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB")
        })?;
        let mut buf = Vec::with_capacity(HEADER + body.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(body);
        self.stream.write_all(&buf).await?;
        self.stream.flush().await
    }

    /// Encodes `frame` in `enc` and writes it. A value that cannot be
    /// encoded is [`FrameError::Encode`]; a frame over the limit
    /// (`daemon.max_frame_bytes` holds both ways) is [`FrameError::TooLarge`].
    /// Neither writes anything, so the stream is still in step.
    pub async fn send<T: Serialize>(&mut self, enc: Encoding, frame: &T) -> Result<(), FrameError> {
        let bytes = encode(enc, frame).map_err(FrameError::Encode)?;
        if bytes.len() > self.max_frame as usize {
            return Err(FrameError::TooLarge {
                len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                max: self.max_frame,
            });
        }
        self.write_frame(&bytes).await.map_err(FrameError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn framed(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    #[tokio::test]
    async fn frames_sent_in_one_write_are_all_kept() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::new(server, 1024);
        client
            .write_all(&framed(&[b"hello", b"first", b"", b"third"]))
            .await
            .unwrap();
        drop(client);
        for want in [&b"hello"[..], b"first", b"", b"third"] {
            assert_eq!(conn.read_frame().await.unwrap().unwrap(), want);
        }
        assert!(conn.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_split_across_writes_is_reassembled() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::new(server, 100_000);
        let body = vec![7u8; 50_000];
        let bytes = framed(&[&body]);
        let reader = tokio::spawn(async move { conn.read_frame().await.unwrap().unwrap() });
        for part in bytes.chunks(3_001) {
            client.write_all(part).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(reader.await.unwrap(), body);
    }

    #[tokio::test]
    async fn too_large_and_truncated() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::new(server, 4);
        client.write_all(&framed(&[b"12345"])).await.unwrap();
        assert!(matches!(
            conn.read_frame().await,
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::new(server, 100);
        client.write_all(&framed(&[b"whole"])[..7]).await.unwrap();
        drop(client);
        assert!(matches!(
            conn.read_frame().await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_not_sent() {
        use crate::wire::{ApiError, ErrorCode, ServerFrame};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::new(server, 64);
        let big = ServerFrame::Error {
            id: 1,
            error: ApiError::new(ErrorCode::Internal, "x".repeat(100)),
        };
        assert!(matches!(
            conn.send(Encoding::Json, &big).await,
            Err(FrameError::TooLarge { max: 64, .. })
        ));
        let small = ServerFrame::Error {
            id: 2,
            error: ApiError::new(ErrorCode::Internal, "x"),
        };
        conn.send(Encoding::Json, &small).await.unwrap();
        drop(conn);
        let mut r = Connection::new(&mut client, 64);
        let first = r.read_frame().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains(r#""id":2"#));
        assert!(r.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn peer_closed_keeps_what_it_read() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::new(server, 100);
        client.write_all(&framed(&[b"later"])).await.unwrap();
        drop(client);
        conn.peer_closed().await;
        assert_eq!(conn.read_frame().await.unwrap().unwrap(), b"later");
        assert!(conn.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reads_from_any_reader() {
        // What the fuzz test in tests/decoders.rs relies on: a byte slice
        // is a read-only stream.
        let bytes = framed(&[b"one"]);
        let mut conn = Connection::new(&bytes[..], 100);
        assert_eq!(conn.read_frame().await.unwrap().unwrap(), b"one");
        assert!(conn.read_frame().await.unwrap().is_none());
        let mut conn = Connection::new(&bytes[..2], 100);
        assert!(matches!(
            conn.read_frame().await,
            Err(FrameError::Truncated)
        ));
    }

    /// A value whose `Serialize` fails, as a map with non-string keys does
    /// in JSON.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<Z: serde::Serializer>(&self, _: Z) -> Result<Z::Ok, Z::Error> {
            Err(serde::ser::Error::custom("no form on the wire"))
        }
    }

    #[tokio::test]
    async fn an_encode_failure_is_an_encode_error_not_io() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::new(server, 64);
        for enc in [Encoding::Json, Encoding::Bincode] {
            match conn.send(enc, &Unencodable).await {
                Err(FrameError::Encode(CodecError::Encode(m))) => {
                    assert!(m.contains("no form on the wire"), "{m}")
                }
                other => panic!("{enc:?}: {other:?}"),
            }
        }
        // Nothing was written: the peer sees a clean end of stream.
        drop(conn);
        let mut r = Connection::new(client, 64);
        assert!(r.read_frame().await.unwrap().is_none());
    }
}
