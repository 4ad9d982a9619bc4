//! Tests of [`Store::reopen`]'s effect on readers: a re-open after a full
//! disk waits for open transactions and retries the open, and readers on
//! the runtime's threads must get a clear error at once meanwhile, never
//! block behind it for seconds.

use std::sync::mpsc;
use std::time::Duration;

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    (dir, store)
}

#[test]
fn a_reader_is_not_blocked_while_a_reopen_waits() {
    let (_dir, store) = store();
    // Stands for a read transaction still open: the re-open waits for it.
    let held = store.db().expect("db");
    let (ended_tx, ended) = mpsc::channel();
    let reopening = store.clone();
    let reopen = std::thread::spawn(move || {
        let r = reopening.reopen_waiting(Duration::from_secs(60));
        let _ = ended_tx.send(());
        r
    });
    loop {
        match store.queue_depth() {
            Err(StoreError::Reopening) => break,
            Ok(_) => {
                assert!(
                    ended.try_recv().is_err(),
                    "the re-open ended before any reader was answered during it"
                );
                std::thread::yield_now();
            }
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
    assert!(
        ended.try_recv().is_err(),
        "the reader was answered only after the re-open"
    );
    drop(held);
    reopen.join().expect("reopen thread").expect("reopen");
    assert_eq!(store.queue_depth().expect("read after reopen"), 0);
}

#[test]
fn a_reopen_that_times_out_leaves_the_store_readable() {
    let (_dir, store) = store();
    let held = store.db().expect("db");
    let r = store.reopen_waiting(Duration::from_millis(20));
    assert!(matches!(r, Err(StoreError::Reopening)), "{r:?}");
    drop(held);
    assert_eq!(store.queue_depth().expect("read after a failed reopen"), 0);
    store.reopen().expect("reopen once nothing holds it");
}
