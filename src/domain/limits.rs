//! Size limits shared by the configuration (which validates against them)
//! and the codecs (which enforce them).

/// Largest value a binary decode may produce. bincode sizes a container
/// from the length it reads *before* reading the elements, so without a
/// limit a tiny frame claiming a petabyte string aborts the process on
/// allocation. Frames are capped below this (`daemon.max_frame_bytes` <= 64 MiB).
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;
