//! Sealed attachment files: how the bytes under `data_dir/blobs` are
//! encrypted when `[store] encryption = "on"`.
//!
//! Why a format of its own and not [`super::Vault`]: attachments run to
//! gigabytes, stream in by chunks of any size and are read back in ranges,
//! so one sealed value per file would have to be read and decrypted whole
//! for every range. Files are instead cut into fixed segments, each sealed
//! separately, so a range read decrypts only the segments it covers and the
//! plaintext length follows from the file's size alone (no index to keep
//! in step). Names (the SHA-256 of the plaintext) stay in the clear: the
//! store finds files by them.
//!
//! Complete file (`blobs/<sha256>`), all integers big-endian:
//!
//! ```text
//! header, 48 bytes:
//!   magic      8   b"SYNCDBF1"
//!   key id     8   KeyId of the store key (FileSealer::id)
//!   prefix    16   random, per file (per write: a rewrite draws a new one)
//!   name tag  16   binds the file to its name, see below
//! segments: segment i holds plaintext bytes [i * 64 KiB, (i + 1) * 64 KiB)
//!   ciphertext  len   XChaCha20-Poly1305, nonce = prefix || i (u64)
//!   tag         16    associated data = header[0..32] || last (1 or 0)
//! ```
//!
//! Every segment but the last holds exactly 64 KiB; the last holds 1 to
//! 64 KiB, or nothing for an empty file (which is one empty last segment).
//! With `S = 64 KiB + 16` and `size` the file's size, the segment count is
//! `k = ceil((size - 48) / S)` and the plaintext length `size - 48 - 16 k`
//! (see [`plain_len`]). Truncation (the last-segment flag), reordering (the
//! index in the nonce) and segments swapped between files (the prefix and
//! key id in the associated data and the nonce) all fail authentication.
//!
//! Name tag: the Poly1305 tag of sealing an empty message with nonce
//! `prefix || u64::MAX` and associated data `b"name" || sha256 hex`. It is
//! written last (the writer learns the hash at the end) and checked on
//! every read, so a sealed file renamed to another hash's name is refused
//! as tampered.
//!
//! Part file (`blobs/<sha256>.part`, a download in progress, appended in
//! pieces of any size): a 16-byte header (`b"SYNCDBP1"`, key id) and then
//! records `[plaintext len n: u32 LE][nonce: 24, random][ciphertext n][tag:
//! 16]`, each sealed with associated data `b"part" || sha256 hex ||
//! plaintext offset (u64)`, so a record is bound to its place and its
//! download. Only whole records count; a torn last one is cut off by the
//! next append. A finished download is decrypted once and rewritten in
//! the complete-file format.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::xchacha::XChaCha;

use super::key::{Key, KeyId};

/// First bytes of a sealed complete file.
pub const MAGIC: [u8; 8] = *b"SYNCDBF1";
/// First bytes of a sealed part file.
pub const PART_MAGIC: [u8; 8] = *b"SYNCDBP1";
/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
/// Bytes of an authentication tag.
pub const TAG: usize = 16;
/// Bytes of a complete file's header.
pub const HEADER: usize = 48;
/// Bytes of a part file's header.
pub const PART_HEADER: usize = 16;
/// Bytes of a part record before its ciphertext (length, nonce).
pub const FRAME_HEAD: usize = 4 + NONCE;
/// Largest plaintext of one part record; longer appends are split.
pub const MAX_FRAME: usize = 4 << 20;

const NONCE: usize = 24;
/// The header bytes bound into every segment: magic, key id, prefix.
const BOUND: usize = 32;
const SEALED_SEGMENT: u64 = (SEGMENT + TAG) as u64;
/// Sealed segments gathered before one write.
const WRITE_BATCH: usize = 16;

/// The attachment-file cipher of one key.
pub struct FileSealer {
    id: KeyId,
    cipher: XChaCha,
}

impl std::fmt::Debug for FileSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSealer({})", self.id)
    }
}

/// Why a sealed file or record could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    /// Fails authentication (changed, truncated, moved or renamed).
    Tampered,
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// The header of a sealed complete file.
#[derive(Clone, Copy)]
pub struct Header([u8; HEADER]);

impl Header {
    /// A new header for a file sealed by `sealer`: a fresh random prefix,
    /// the name tag zero until [`SealState::finish`].
    pub fn new(sealer: &FileSealer) -> io::Result<Header> {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(&MAGIC);
        h[8..16].copy_from_slice(&sealer.id.0);
        getrandom::fill(&mut h[16..32])
            .map_err(|e| io::Error::other(format!("no random bytes from the OS: {e}")))?;
        Ok(Header(h))
    }

    /// The header at the start of `bytes`, if they start with the magic.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let h: [u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
        (h[..8] == MAGIC).then_some(Header(h))
    }

    pub fn key_id(&self) -> KeyId {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.0[8..16]);
        KeyId(id)
    }

    pub fn as_bytes(&self) -> &[u8; HEADER] {
        &self.0
    }

    fn nonce(&self, index: u64) -> [u8; NONCE] {
        let mut n = [0u8; NONCE];
        n[..16].copy_from_slice(&self.0[16..32]);
        n[16..].copy_from_slice(&index.to_be_bytes());
        n
    }

    fn aad(&self, last: bool) -> [u8; BOUND + 1] {
        let mut a = [0u8; BOUND + 1];
        a[..BOUND].copy_from_slice(&self.0[..BOUND]);
        a[BOUND] = u8::from(last);
        a
    }
}

/// Whether `first` (a file's first bytes) starts like a sealed complete
/// file.
pub fn has_magic(first: &[u8]) -> bool {
    first.get(..8) == Some(&MAGIC[..])
}

/// Segments of a file of `plain` bytes (an empty file has one).
fn segments(plain: u64) -> u64 {
    plain.div_ceil(SEGMENT as u64).max(1)
}

/// The size of the sealed complete file of `plain` bytes:
/// `48 + plain + 16 * max(1, ceil(plain / 64 KiB))`.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER as u64 + plain + TAG as u64 * segments(plain)
}

/// The plaintext length of a sealed complete file of `file_size` bytes, or
/// `None` if no sealed file has that size. With `S = 64 KiB + 16`:
/// `k = ceil((file_size - 48) / S)` segments, `file_size - 48 - 16 k`
/// bytes; the last segment must hold its tag and, after full ones, at
/// least one byte.
pub fn plain_len(file_size: u64) -> Option<u64> {
    let body = file_size.checked_sub(HEADER as u64)?;
    if body < TAG as u64 {
        return None;
    }
    let k = body.div_ceil(SEALED_SEGMENT);
    let last = body - (k - 1) * SEALED_SEGMENT;
    if last < TAG as u64 || (k > 1 && last == TAG as u64) {
        return None;
    }
    Some(body - k * TAG as u64)
}

impl FileSealer {
    /// The file cipher of `key` (its subkey for attachment files).
    pub fn new(key: &Key) -> FileSealer {
        let sub = key.derive(b"syncd blob files v1");
        FileSealer {
            id: key.id(),
            // Every file has its own nonce prefix: no subkey to keep.
            cipher: XChaCha::new(&sub, [0; 16]),
        }
    }

    /// The id of the key the files are sealed with.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn seal_segment(
        &self,
        h: &Header,
        index: u64,
        last: bool,
        buf: &mut [u8],
    ) -> io::Result<[u8; TAG]> {
        self.cipher
            .seal(&h.nonce(index), &h.aad(last), buf)
            .map_err(|_| io::Error::other("sealing an attachment segment failed"))
    }

    fn open_segment(
        &self,
        h: &Header,
        index: u64,
        last: bool,
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), OpenError> {
        self.cipher
            .open_detached(&h.nonce(index), &h.aad(last), buf, tag)
            .map_err(|_| OpenError::Tampered)
    }

    /// The name tag of the file with header `h` named `sha256`.
    fn name_tag(&self, h: &Header, sha256: &str) -> io::Result<[u8; TAG]> {
        self.cipher
            .seal(&h.nonce(u64::MAX), &name_aad(sha256), &mut [])
            .map_err(|_| io::Error::other("sealing an attachment name failed"))
    }

    /// Whether the file with header `h` was sealed under the name
    /// `sha256` (compared in constant time by the AEAD).
    pub fn check_name(&self, h: &Header, sha256: &str) -> Result<(), OpenError> {
        self.cipher
            .open_detached(
                &h.nonce(u64::MAX),
                &name_aad(sha256),
                &mut [],
                &h.0[BOUND..],
            )
            .map_err(|_| OpenError::Tampered)
    }

    /// Appends the records of `plain` (at plaintext `offset` of the
    /// download of `sha256`) to `out`, split into records of at most
    /// [`MAX_FRAME`] bytes.
    pub fn seal_frames(
        &self,
        sha256: &str,
        mut offset: u64,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        for chunk in plain.chunks(MAX_FRAME) {
            let mut nonce = [0u8; NONCE];
            getrandom::fill(&mut nonce)
                .map_err(|e| io::Error::other(format!("no random bytes from the OS: {e}")))?;
            let n = u32::try_from(chunk.len()).map_err(io::Error::other)?;
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&nonce);
            let start = out.len();
            out.extend_from_slice(chunk);
            let tag = self
                .cipher
                .seal(&nonce, &frame_aad(sha256, offset), &mut out[start..])
                .map_err(|_| io::Error::other("sealing a download record failed"))?;
            out.extend_from_slice(&tag);
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    /// Opens one record read whole into `record` (its length prefix,
    /// nonce, ciphertext and tag) in place: the plaintext is
    /// `record[FRAME_HEAD..record.len() - TAG]`.
    pub fn open_frame(
        &self,
        sha256: &str,
        offset: u64,
        record: &mut [u8],
    ) -> Result<(), OpenError> {
        if record.len() < FRAME_HEAD + TAG {
            return Err(OpenError::Tampered);
        }
        let (head, rest) = record.split_at_mut(FRAME_HEAD);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG);
        let mut nonce = [0u8; NONCE];
        nonce.copy_from_slice(&head[4..]);
        self.cipher
            .open_detached(&nonce, &frame_aad(sha256, offset), body, tag)
            .map_err(|_| OpenError::Tampered)
    }

    /// The header of a part file sealed by this key.
    pub fn part_header(&self) -> [u8; PART_HEADER] {
        let mut h = [0u8; PART_HEADER];
        h[..8].copy_from_slice(&PART_MAGIC);
        h[8..].copy_from_slice(&self.id.0);
        h
    }
}

fn name_aad(sha256: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + sha256.len());
    a.extend_from_slice(b"name");
    a.extend_from_slice(sha256.as_bytes());
    a
}

fn frame_aad(sha256: &str, offset: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + sha256.len() + 8);
    a.extend_from_slice(b"part");
    a.extend_from_slice(sha256.as_bytes());
    a.extend_from_slice(&offset.to_be_bytes());
    a
}

/// The keys of a sealed blob directory: new files are sealed with
/// `current`; reads accept `current` or `previous` (a rekey in progress),
/// and plain files only while `plain_ok` (an encryption in progress).
#[derive(Debug)]
pub struct BlobSeal {
    pub current: FileSealer,
    pub previous: Option<FileSealer>,
    pub plain_ok: bool,
}

impl BlobSeal {
    pub fn new(current: &Key, previous: Option<&Key>, plain_ok: bool) -> BlobSeal {
        BlobSeal {
            current: FileSealer::new(current),
            previous: previous.map(FileSealer::new),
            plain_ok,
        }
    }

    /// The sealer of key `id`, if it is one of these keys.
    pub fn sealer(&self, id: KeyId) -> Option<&FileSealer> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|s| s.id == id)
    }

    /// "key a1b2… (previous key c3d4…)", for messages.
    pub fn describe(&self) -> String {
        match &self.previous {
            Some(p) => format!("key {} (or the previous key {})", self.current.id, p.id),
            None => format!("key {}", self.current.id),
        }
    }
}

/// A complete file being sealed as it is written: plaintext is gathered
/// into segments, sealed in place and written in batches.
pub struct SealState {
    header: Header,
    /// Sealed segments not written yet, then the current segment's
    /// plaintext from `cur`.
    buf: Vec<u8>,
    cur: usize,
    index: u64,
}

impl SealState {
    /// Writes the header of a new sealed file to `file` (at its current
    /// position, which must be its start).
    pub fn start(sealer: &FileSealer, file: &mut File) -> io::Result<SealState> {
        let header = Header::new(sealer)?;
        file.write_all(header.as_bytes())?;
        Ok(SealState {
            header,
            buf: Vec::with_capacity(WRITE_BATCH * (SEGMENT + TAG)),
            cur: 0,
            index: 0,
        })
    }

    /// Adds plaintext.
    pub fn write(
        &mut self,
        sealer: &FileSealer,
        file: &mut File,
        mut bytes: &[u8],
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.buf.len() - self.cur == SEGMENT {
                // Full, and more follows: not the last segment.
                self.seal(sealer, false)?;
                if self.buf.len() >= WRITE_BATCH * (SEGMENT + TAG) {
                    file.write_all(&self.buf)?;
                    self.buf.clear();
                    self.cur = 0;
                }
            }
            let take = (SEGMENT - (self.buf.len() - self.cur)).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn seal(&mut self, sealer: &FileSealer, last: bool) -> io::Result<()> {
        let tag = sealer.seal_segment(&self.header, self.index, last, &mut self.buf[self.cur..])?;
        self.buf.extend_from_slice(&tag);
        self.cur = self.buf.len();
        self.index += 1;
        Ok(())
    }

    /// Seals the last segment and writes the name tag for `sha256` (the
    /// file is not synced).
    pub fn finish(mut self, sealer: &FileSealer, file: &mut File, sha256: &str) -> io::Result<()> {
        self.seal(sealer, true)?;
        file.write_all(&self.buf)?;
        let tag = sealer.name_tag(&self.header, sha256)?;
        file.write_all_at(&tag, BOUND as u64)
    }
}

/// Reads plaintext `[offset, offset + max)` (clamped to the content) of
/// the sealed complete file `file` of `file_size` bytes with header `h`
/// into `out`, decrypting only the segments the range covers. The name
/// tag is checked by the caller ([`FileSealer::check_name`]). An empty
/// range at the start still authenticates the first segment (so an empty
/// file is checked too). `scratch` is reused between calls.
#[allow(clippy::too_many_arguments)]
pub fn read_range(
    sealer: &FileSealer,
    h: &Header,
    file: &File,
    file_size: u64,
    offset: u64,
    max: usize,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), OpenError> {
    let plain = plain_len(file_size).ok_or(OpenError::Tampered)?;
    let end = offset.saturating_add(max as u64).min(plain);
    if offset >= end && !(offset == 0 && end == 0) {
        return Ok(());
    }
    let nseg = segments(plain);
    let seg = SEGMENT as u64;
    let first = offset / seg;
    let last = if end > offset { (end - 1) / seg } else { first };
    out.reserve((end - offset) as usize);
    let mut i = first;
    while i <= last {
        let batch = (last - i + 1).min(WRITE_BATCH as u64);
        let pos = HEADER as u64 + i * SEALED_SEGMENT;
        let stop = (pos + batch * SEALED_SEGMENT).min(file_size);
        let len = (stop - pos) as usize;
        scratch.resize(len, 0);
        file.read_exact_at(&mut scratch[..len], pos)?;
        for (j, sealed) in scratch[..len].chunks_mut(SEGMENT + TAG).enumerate() {
            let index = i + j as u64;
            let (body, tag) = sealed.split_at_mut(sealed.len() - TAG);
            sealer.open_segment(h, index, index == nseg - 1, body, tag)?;
            let base = index * seg;
            let lo = offset.max(base) - base;
            let hi = end.min(base + body.len() as u64) - base;
            out.extend_from_slice(&body[lo as usize..hi as usize]);
        }
        i += batch;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_len_inverts_sealed_len() {
        let s = SEGMENT as u64;
        for n in [0, 1, 2, s - 1, s, s + 1, 2 * s, 2 * s + 7, 10 * s] {
            assert_eq!(plain_len(sealed_len(n)), Some(n), "{n}");
        }
        for size in 0..(HEADER + TAG) as u64 {
            assert_eq!(plain_len(size), None);
        }
        // After a full segment, a last segment with its tag only is not
        // written.
        assert_eq!(plain_len(sealed_len(s) + TAG as u64), None);
        assert_eq!(plain_len(sealed_len(s) + TAG as u64 - 1), None);
    }
}
