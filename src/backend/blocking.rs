//! Blocking file I/O from async code, in one place: the sync worker reads
//! token and CA files, the CouchDB adapter reads attachment content to
//! send inline. Lives in `backend`, the lowest layer that needs it.

/// Runs `f` (blocking file I/O) from an async caller: with
/// `block_in_place` on a multi-threaded runtime (the daemon's), so the
/// runtime moves its other tasks off this thread; directly otherwise (a
/// single-threaded test runtime, where `block_in_place` is not allowed).
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
