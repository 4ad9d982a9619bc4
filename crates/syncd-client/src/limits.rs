//! Size limits shared by the configuration (which validates against them)
//! and the codecs (which enforce them).

/// Largest value a binary decode may produce. bincode sizes a container
/// from the length it reads *before* reading the elements, so without a
/// limit a tiny frame claiming a petabyte string aborts the process on
/// allocation. Frames are capped below this (`daemon.max_frame_bytes` <= 64 MiB).
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// Room a frame needs besides one document: the request or reply around
/// it (names up to 64 + 128 bytes, ids, versions, field names). A
/// document limit must leave this much of the frame limit free, so that
/// a `put` of the largest document and a `get` of it both fit in a frame.
pub const FRAME_OVERHEAD: u32 = 4096;
