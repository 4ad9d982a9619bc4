//! A redb storage backend that reads the store file and keeps every write
//! in memory: the file is opened read-only and never changes.
//!
//! Exists for `syncd check`. redb's full check ([`redb::Database::check_integrity`],
//! or an open with `set_check_integrity_on_open`) verifies every page's
//! checksum, but it may also repair and commit, and its read-only open
//! refuses a file that was not closed cleanly (a running daemon's, or one
//! after a kill -9) instead of checking it. Over this backend the full
//! check runs on any file, and whatever it would repair stays in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use redb::StorageBackend;

const BLOCK: u64 = 4096;

/// The store file, read-only, with the writes of this process on top.
#[derive(Debug)]
pub struct Overlay {
    file: File,
    /// Length of the file when opened.
    file_len: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Length the database sees.
    len: u64,
    /// File bytes at or past this offset read as zeros (the database cut
    /// the storage shorter at some point).
    file_visible: u64,
    /// Written blocks, by block number.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl Overlay {
    /// Opens `file` (read-only) as the base.
    pub fn new(file: File) -> io::Result<Overlay> {
        let file_len = file.metadata()?.len();
        Ok(Overlay {
            file,
            file_len,
            state: Mutex::new(State {
                len: file_len,
                file_visible: file_len,
                blocks: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One block as the database sees it, from memory or the file.
    fn load_block(&self, st: &State, n: u64) -> io::Result<Box<[u8]>> {
        if let Some(b) = st.blocks.get(&n) {
            return Ok(b.clone());
        }
        let mut buf = vec![0u8; BLOCK as usize].into_boxed_slice();
        let start = n * BLOCK;
        let end = (start + BLOCK).min(st.file_visible).min(self.file_len);
        if end > start {
            self.file
                .read_exact_at(&mut buf[..(end - start) as usize], start)?;
        }
        Ok(buf)
    }
}

/// The blocks `[offset, offset + len)` touches, each as (block number,
/// range within the block, range within the caller's buffer).
fn spans(
    offset: u64,
    len: usize,
) -> impl Iterator<Item = (u64, std::ops::Range<usize>, std::ops::Range<usize>)> {
    let end = offset + len as u64;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let n = pos / BLOCK;
        let within = (pos % BLOCK) as usize;
        let take = ((BLOCK as usize) - within).min((end - pos) as usize);
        let out = (pos - offset) as usize;
        pos += take as u64;
        Some((n, within..within + take, out..out + take))
    })
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let st = self.state();
        if offset + out.len() as u64 > st.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the store",
            ));
        }
        for (n, inb, outb) in spans(offset, out.len()) {
            let block = self.load_block(&st, n)?;
            out[outb].copy_from_slice(&block[inb]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut st = self.state();
        if len < st.len {
            st.file_visible = st.file_visible.min(len);
            // Bytes past the new end must read as zeros if it grows again.
            let last = len / BLOCK;
            st.blocks.retain(|n, _| *n <= last);
            if let Some(b) = st.blocks.get_mut(&last) {
                b[(len % BLOCK) as usize..].fill(0);
            }
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut st = self.state();
        for (n, inb, datab) in spans(offset, data.len()) {
            let mut block = self.load_block(&st, n)?;
            block[inb].copy_from_slice(&data[datab]);
            st.blocks.insert(n, block);
        }
        st.len = st.len.max(offset + data.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stay_in_memory_and_reads_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let o = Overlay::new(File::open(&path).unwrap()).unwrap();
        o.write(4090, &[1u8; 20]).unwrap();
        let mut buf = [0u8; 30];
        o.read(4080, &mut buf).unwrap();
        assert_eq!(&buf[..10], &[7u8; 10]);
        assert_eq!(&buf[10..30], &[1u8; 20]);
        o.set_len(5000).unwrap();
        o.set_len(12_000).unwrap();
        let mut tail = [9u8; 100];
        o.read(4990, &mut tail).unwrap();
        assert_eq!(&tail[..10], &[7u8; 10]);
        assert!(tail[10..].iter().all(|b| *b == 0), "cut bytes came back");
        assert!(o.read(11_990, &mut [0u8; 20]).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 10_000]);
    }
}
