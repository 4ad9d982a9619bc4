//! A sealed store end to end below the daemon: what is on disk, the wrong
//! key, a changed or moved value, and the conversions.

use redb::{Database, ReadableTable};

use super::convert;
use super::key::Key;
use super::vault::Vault;
use crate::domain::seal_error::SealError;
use crate::domain::{StoreError, StoredRecord};
use crate::store::tables::RECORDS;
use crate::store::Store;

const MARKER: &str = "plaintext-marker-3141";

fn record(text: &str) -> StoredRecord {
    StoredRecord::local(format!("{{\"note\":\"{text}\"}}"), 0, 0)
}

/// A store with two records, written straight into its table (the
/// writer's paths are the worker simulation's business).
fn sealed_store(dir: &std::path::Path, key: &Key) {
    let store = Store::open_with(dir, 1 << 20, Vault::sealed(key.clone()).unwrap()).unwrap();
    let db = store.db().unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(RECORDS).unwrap();
        for id in ["a", "b"] {
            let v = store
                .vault()
                .encode(RECORDS, &("todos", id), &record(&format!("{MARKER} {id}")))
                .unwrap();
            t.insert(("todos", id), v.as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
    drop(db);
    store.close(std::time::Duration::from_secs(5)).unwrap();
}

fn contains(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn open(dir: &std::path::Path, key: &Key) -> Result<Store, StoreError> {
    Store::open_with(dir, 1 << 20, Vault::sealed(key.clone())?)
}

#[test]
fn values_are_sealed_on_disk_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::random().unwrap();
    sealed_store(dir.path(), &key);
    assert!(!contains(&dir.path().join("syncd.redb"), MARKER));
    let store = open(dir.path(), &key).unwrap();
    let r = store.record("todos", "a").unwrap().unwrap();
    assert!(r.data.contains(MARKER));
    assert!(store.check_invariants().unwrap().problems.is_empty());
}

#[test]
fn another_key_or_no_key_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::random().unwrap();
    sealed_store(dir.path(), &key);
    let path = dir.path().join("syncd.redb");
    let before = std::fs::read(&path).unwrap();
    let e = open(dir.path(), &Key::random().unwrap()).err().unwrap();
    assert!(
        matches!(e, StoreError::Seal(SealError::WrongKey { .. })),
        "{e}"
    );
    assert!(e.to_string().contains(&key.id().to_string()), "{e}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the store was changed"
    );
    let e = Store::open(dir.path(), 1 << 20).err().unwrap();
    assert!(
        matches!(e, StoreError::Seal(SealError::Encrypted { .. })),
        "{e}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the store was changed"
    );
    assert!(
        crate::store::mark::path_for(&path).exists(),
        "the clean-shutdown mark was used up"
    );
    assert!(open(dir.path(), &key).is_ok());
    let plain = tempfile::tempdir().unwrap();
    Store::open(plain.path(), 1 << 20).unwrap();
    let e = open(plain.path(), &key).err().unwrap();
    assert!(
        matches!(e, StoreError::Seal(SealError::NotEncrypted { .. })),
        "{e}"
    );
}

/// Rewrites one stored value with raw redb (checksums stay valid): only
/// the seal can tell.
fn rewrite(dir: &std::path::Path, f: impl FnOnce(&mut redb::Table<'_, (&str, &str), &[u8]>)) {
    let db = Database::create(dir.join("syncd.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(RECORDS).unwrap();
        f(&mut t);
    }
    txn.commit().unwrap();
}

#[test]
fn a_changed_or_moved_value_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::random().unwrap();
    sealed_store(dir.path(), &key);
    rewrite(dir.path(), |t| {
        let mut v = t.get(("todos", "a")).unwrap().unwrap().value().to_vec();
        let at = v.len() - 20;
        v[at] ^= 0x40;
        t.insert(("todos", "a"), v.as_slice()).unwrap();
    });
    let store = open(dir.path(), &key).unwrap();
    let e = store.record("todos", "a").unwrap_err();
    assert!(
        matches!(e, StoreError::Seal(SealError::Tampered { .. })),
        "{e}"
    );
    assert!(crate::store::is_damage(&e));
    assert!(store.record("todos", "b").unwrap().is_some());
    let report = store.check_invariants().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    sealed_store(dir.path(), &key);
    rewrite(dir.path(), |t| {
        let b = t.get(("todos", "b")).unwrap().unwrap().value().to_vec();
        t.insert(("todos", "a"), b.as_slice()).unwrap();
    });
    let store = open(dir.path(), &key).unwrap();
    let e = store.record("todos", "a").unwrap_err();
    assert!(
        matches!(e, StoreError::Seal(SealError::Tampered { .. })),
        "{e}"
    );
}

#[test]
fn conversions_round_trip_and_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (Key::random().unwrap(), Key::random().unwrap());
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let db = s.db().unwrap();
        let txn = db.begin_write().unwrap();
        let v = s
            .vault()
            .encode(RECORDS, &("todos", "a"), &record(MARKER))
            .unwrap();
        txn.open_table(RECORDS)
            .unwrap()
            .insert(("todos", "a"), v.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let path = dir.path().join("syncd.redb");
    assert!(contains(&path, MARKER));
    let c = convert::encrypt(dir.path(), &k1).unwrap();
    assert!(c.store_rewritten);
    assert!(!contains(&path, MARKER), "no plain text left in the file");
    assert!(!convert::encrypt(dir.path(), &k1).unwrap().store_rewritten);
    let c = convert::rekey(dir.path(), &k1, &k2).unwrap();
    assert_eq!(c.key, Some(k2.id()));
    // A rerun with the old key configured resumes (nothing to do).
    assert!(
        !convert::rekey(dir.path(), &k1, &k2)
            .unwrap()
            .store_rewritten
    );
    assert!(open(dir.path(), &k1).is_err());
    let s = open(dir.path(), &k2).unwrap();
    assert!(s
        .record("todos", "a")
        .unwrap()
        .unwrap()
        .data
        .contains(MARKER));
    assert!(s.check_invariants().unwrap().problems.is_empty());
    drop(s);
    convert::decrypt(dir.path(), &k2).unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(s
        .record("todos", "a")
        .unwrap()
        .unwrap()
        .data
        .contains(MARKER));
}

#[test]
fn a_conversion_cut_short_leaves_no_plain_copy_behind() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::random().unwrap();
    sealed_store(dir.path(), &key);
    let leftover = convert::converting_path(&dir.path().join("syncd.redb"));
    std::fs::write(&leftover, MARKER).unwrap();
    let tmp = dir.path().join("blobs").join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("1-0"), MARKER).unwrap();
    // The next conversion removes them, whatever it does next ...
    convert::encrypt(dir.path(), &key).unwrap();
    assert!(!leftover.exists());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    // ... and so does the daemon's open.
    std::fs::write(&leftover, MARKER).unwrap();
    drop(open(dir.path(), &key).unwrap());
    assert!(!leftover.exists());
}

#[test]
fn a_store_of_an_older_schema_is_not_converted() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), 1 << 20).unwrap());
    {
        let db = Database::create(dir.path().join("syncd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let mut meta = txn.open_table(crate::store::tables::META).unwrap();
        meta.insert(
            crate::store::tables::META_SCHEMA,
            3u64.to_be_bytes().as_slice(),
        )
        .unwrap();
        drop(meta);
        txn.commit().unwrap();
    }
    let e = convert::encrypt(dir.path(), &Key::random().unwrap()).unwrap_err();
    assert!(
        matches!(e, convert::ConvertError::OldSchema { found: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("start this syncd once"), "{e}");
}

#[test]
fn a_rekey_to_the_same_key_or_an_encrypt_with_another_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (Key::random().unwrap(), Key::random().unwrap());
    sealed_store(dir.path(), &k1);
    let path = dir.path().join("syncd.redb");
    let before = std::fs::read(&path).unwrap();
    let e = convert::rekey(dir.path(), &k1, &k1).unwrap_err();
    assert!(matches!(e, convert::ConvertError::SameKey { .. }), "{e}");
    let e = convert::encrypt(dir.path(), &k2).unwrap_err();
    assert!(
        matches!(
            e,
            convert::ConvertError::Store(StoreError::Seal(SealError::WrongKey { .. }))
        ),
        "{e}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the store was changed"
    );
}
