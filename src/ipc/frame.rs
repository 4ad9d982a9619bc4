//! Length-prefixed frames: a 4-byte big-endian length, then the body.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug)]
pub enum FrameError {
    /// The announced length exceeds the limit; the stream cannot be trusted
    /// past this point.
    TooLarge {
        len: u32,
        max: u32,
    },
    /// The peer closed the stream in the middle of a frame.
    Truncated,
    Io(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame too large: {len} bytes, the limit is {max}")
            }
            FrameError::Truncated => write!(f, "stream closed in the middle of a frame"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await.map_err(FrameError::Io)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len as usize];
    match r.read_exact(&mut buf).await {
        Ok(_) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes one frame (length and body in one write) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_errors() {
        let mut v = Vec::new();
        write_frame(&mut v, b"hello").await.unwrap();
        let mut r = &v[..];
        assert_eq!(read_frame(&mut r, 100).await.unwrap().unwrap(), b"hello");
        assert!(read_frame(&mut r, 100).await.unwrap().is_none());
        let mut r = &v[..];
        assert!(matches!(
            read_frame(&mut r, 3).await,
            Err(FrameError::TooLarge { len: 5, max: 3 })
        ));
        let mut r = &v[..6];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(FrameError::Truncated)
        ));
        let mut r = &v[..2];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(FrameError::Truncated)
        ));
    }
}
