//! Runs local queries: picks the best ready index for a [`Query`] (or a
//! scan of the collection), reads the candidates, checks each against the
//! whole selector and returns one page in the query's order.
//!
//! An index only narrows: every candidate is matched against the full
//! selector, so a query answers the same with or without indexes (the
//! randomized test in tests/query.rs holds it to a plain filter over
//! `list`) — except when the index range alone decides the selector
//! (every condition is an `$eq` on the index's leading fields or a range
//! on the next one) and is read in the query's order: then a record in the
//! range is a match, and its document is never parsed. An index whose
//! order is the query's order is read in that order and stops after one
//! page; any other plan sorts in memory, keeping only a page's worth at a
//! time. Documents leave as the stored text ([`DocText`]).

use std::ops::Bound;

use redb::ReadTransaction;
use serde_json::Value;

use crate::domain::document::DocText;
use crate::domain::query::{collate, Cond, OrderKey, Query};
use crate::domain::{parse_doc_text, RecordView, StoreError, StoredRecord};

use super::crypt::Vault;
use super::index::{self, IndexDef, IndexState, KEY_CEILING};
use super::tables::{INDEXES, INDEX_ENTRIES, RECORDS};
use super::{Store, RECORD_OVERHEAD};

/// How a query was answered (`--explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The index used; `None`: a scan of the collection.
    pub index: Option<String>,
    /// The index's order is the query's order (no sort in memory).
    pub ordered: bool,
    /// What the index narrowed by, for people (`done = false, due >= ...`).
    pub bounds: String,
    /// Records read (and matched against the selector, unless the index
    /// range decided).
    pub examined: u64,
    /// The index range alone decided which records match (no document
    /// was parsed to match it).
    pub decided: bool,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page {
    pub records: Vec<RecordView<DocText>>,
    /// The cursor for the next page, if there may be more.
    pub next: Option<String>,
    pub plan: Plan,
}

/// A record that matched.
struct Hit {
    /// Its place in the order; `None` when the index range decided the
    /// match and gave the order (worked out only for a page's cursor).
    key: Option<OrderKey>,
    record: StoredRecord,
    id: String,
}

impl Hit {
    fn key(&self, q: &Query) -> OrderKey {
        match &self.key {
            Some(k) => k.clone(),
            None => q.key_of(&parse_doc_text(&self.record.data), &self.id),
        }
    }
}

/// An index entry's place: its key bytes and the record id.
type EntryKey = (Vec<u8>, String);

/// A chosen index and the key range it reads.
struct IndexPlan {
    def: IndexDef,
    lo: Vec<u8>,
    hi: Vec<u8>,
    /// Values of the leading fields fixed by `$eq`.
    fixed: Vec<Value>,
    ordered: bool,
    reverse: bool,
    /// A record in the range matches the whole selector (see the module
    /// doc).
    decides: bool,
    bounds: String,
}

impl Store {
    /// One page of `q` over `collection`: at most `limit` records and
    /// about `max_bytes` of documents (at least one record).
    pub fn query(
        &self,
        collection: &str,
        q: &Query,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        let (_db, txn) = self.read()?;
        query_in(&txn, &self.vault, collection, q, limit, max_bytes)
    }

    /// A read transaction that sees exactly the commits whose events were
    /// sent before it began (see [`Store::publish_gate`]); `before_read`
    /// runs under the gate too (a live query drops the events it already
    /// holds, which the snapshot includes).
    pub fn snapshot(
        &self,
        before_read: impl FnOnce(),
    ) -> Result<(std::sync::Arc<redb::Database>, ReadTransaction), StoreError> {
        let gate = self.publish_gate();
        let _g = gate.lock().unwrap_or_else(|p| p.into_inner());
        before_read();
        self.read()
    }
}

/// [`Store::query`] in a given read transaction.
pub fn query_in(
    txn: &ReadTransaction,
    vault: &Vault,
    collection: &str,
    q: &Query,
    limit: usize,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let ready = ready_indexes(txn, collection)?;
    let plan = choose(q, &ready);
    let ordered = plan.as_ref().is_some_and(|p| p.ordered);
    let decided = plan.as_ref().is_some_and(|p| decides(q, p));
    let mut hits = Hits {
        vault,
        q,
        limit,
        ordered,
        skip: None,
        examined: 0,
        found: Vec::new(),
    };
    match &plan {
        Some(p) => read_index(txn, collection, p, decided, &mut hits)?,
        None => read_scan(txn, collection, &mut hits)?,
    }
    let examined = hits.examined;
    let mut found = hits.found;
    if !ordered {
        found.sort_by(|a, b| cmp_hits(q, a, b));
    }
    let (records, next) = page(q, found, collection, limit, max_bytes);
    Ok(Page {
        records,
        next,
        plan: Plan {
            index: plan.as_ref().map(|p| p.def.name.clone()),
            ordered,
            bounds: plan.map(|p| p.bounds).unwrap_or_default(),
            examined,
            decided,
        },
    })
}

/// The records a read finds that match, after the cursor.
struct Hits<'q> {
    vault: &'q Vault,
    q: &'q Query,
    limit: usize,
    /// Read in the query's order: the first page (+1) is enough.
    ordered: bool,
    /// When the index decides: the cursor's own entry, which the read
    /// starts at and leaves out.
    skip: Option<EntryKey>,
    examined: u64,
    found: Vec<Hit>,
}

impl Hits<'_> {
    /// Matches one record; `false` once an ordered read has its page.
    fn offer(&mut self, id: &str, r: StoredRecord) -> bool {
        self.examined += 1;
        if !r.deleted {
            let doc = parse_doc_text(&r.data);
            if self.q.selector.matches(&doc) {
                let key = self.q.key_of(&doc, id);
                if self.q.is_after_cursor(&key) {
                    self.found.push(Hit {
                        key: Some(key),
                        record: r,
                        id: id.to_owned(),
                    });
                }
            }
        }
        self.more()
    }

    /// Takes a record the index range has decided matches, in the query's
    /// order, without reading its document; `false` once the page is full.
    fn take(&mut self, entry: (&[u8], &str), r: StoredRecord) -> bool {
        self.examined += 1;
        let at_cursor = self
            .skip
            .as_ref()
            .is_some_and(|(k, id)| k.as_slice() == entry.0 && id == entry.1);
        if at_cursor {
            // The read starts at the cursor's entry: nothing after it is.
            self.skip = None;
        } else if !r.deleted {
            self.found.push(Hit {
                key: None,
                record: r,
                id: entry.1.to_owned(),
            });
        }
        self.more()
    }

    /// Whether to read on: an ordered read stops after its page (+1).
    fn more(&mut self) -> bool {
        if self.ordered {
            return self.found.len() <= self.limit;
        }
        trim(self.q, &mut self.found, self.limit);
        true
    }
}

/// Whether the plan's range decides the query: the selector is all
/// answered by the range, the index is read in the query's order, and a
/// cursor (if any) names its own entry, which the read then leaves out.
fn decides(q: &Query, p: &IndexPlan) -> bool {
    p.decides && p.ordered && (q.after.is_none() || cursor_entry(q, p).is_some())
}

/// Reads the plan's range of its index (backwards when the order says so)
/// and offers each entry's record.
fn read_index(
    txn: &ReadTransaction,
    collection: &str,
    p: &IndexPlan,
    decides: bool,
    hits: &mut Hits<'_>,
) -> Result<(), StoreError> {
    let records = txn.open_table(RECORDS)?;
    let entries = txn.open_table(INDEX_ENTRIES)?;
    let (lo, hi) = seek_range(hits.q, p);
    if decides {
        hits.skip = cursor_entry(hits.q, p);
    }
    let range = entries.range::<(&str, &str, &[u8], &str)>((
        bound(collection, &p.def.name, &lo),
        bound(collection, &p.def.name, &hi),
    ))?;
    let iter: Box<dyn Iterator<Item = _>> = if p.reverse {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    for item in iter {
        let (k, _) = item?;
        let (_, _, key, id) = k.value();
        if let Some(v) = records.get((collection, id))? {
            let r = hits.vault.decode(RECORDS, &(collection, id), v.value())?;
            let more = if decides {
                hits.take((key, id), r)
            } else {
                hits.offer(id, r)
            };
            if !more {
                break;
            }
        }
    }
    Ok(())
}

/// Offers every record of the collection.
fn read_scan(
    txn: &ReadTransaction,
    collection: &str,
    hits: &mut Hits<'_>,
) -> Result<(), StoreError> {
    let records = txn.open_table(RECORDS)?;
    for item in records.range((collection, "")..)? {
        let (k, v) = item?;
        let (c, id) = k.value();
        if c != collection {
            break;
        }
        let r = hits.vault.decode(RECORDS, &(c, id), v.value())?;
        hits.offer(id, r);
    }
    Ok(())
}

/// Keeps memory at a page's worth while sorting in memory: once there are
/// twice as many hits as a page needs, only the first page (+1) stays.
fn trim(q: &Query, hits: &mut Vec<Hit>, limit: usize) {
    let keep = limit.saturating_add(1);
    if hits.len() >= keep.saturating_mul(2).max(64) {
        hits.sort_by(|a, b| cmp_hits(q, a, b));
        hits.truncate(keep);
    }
}

/// Hits that are sorted in memory always carry their keys (only an
/// ordered read, never sorted, leaves them out).
fn cmp_hits(q: &Query, a: &Hit, b: &Hit) -> std::cmp::Ordering {
    debug_assert!(a.key.is_some() && b.key.is_some());
    match (&a.key, &b.key) {
        (Some(x), Some(y)) => q.cmp_keys(x, y),
        _ => q.cmp_keys(&a.key(q), &b.key(q)),
    }
}

/// The first page of sorted hits, within `limit` and `max_bytes`, and the
/// cursor after it when more remain.
fn page(
    q: &Query,
    hits: Vec<Hit>,
    collection: &str,
    limit: usize,
    max_bytes: usize,
) -> (Vec<RecordView<DocText>>, Option<String>) {
    let mut taken = 0usize;
    let mut bytes = 0usize;
    for h in &hits {
        let size = h.record.data.len() + h.id.len() + RECORD_OVERHEAD;
        if taken == limit || (taken > 0 && bytes + size > max_bytes) {
            break;
        }
        bytes += size;
        taken += 1;
    }
    let next = (taken < hits.len())
        .then(|| {
            taken
                .checked_sub(1)
                .map(|i| q.cursor_after(&hits[i].key(q)))
        })
        .flatten();
    let out = hits
        .into_iter()
        .take(taken)
        .map(|h| h.record.into_text_view(collection, &h.id))
        .collect();
    (out, next)
}

fn bound<'a>(
    c: &'a str,
    name: &'a str,
    b: &'a Bound<EntryKey>,
) -> Bound<(&'a str, &'a str, &'a [u8], &'a str)> {
    match b {
        Bound::Included((k, id)) => Bound::Included((c, name, k.as_slice(), id.as_str())),
        Bound::Excluded((k, id)) => Bound::Excluded((c, name, k.as_slice(), id.as_str())),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The plan's key range, moved up to the cursor when the index is read in
/// the query's order (the cursor's row itself is then filtered out).
fn seek_range(q: &Query, p: &IndexPlan) -> (Bound<EntryKey>, Bound<EntryKey>) {
    let lo = (p.lo.clone(), String::new());
    let hi = (p.hi.clone(), String::new());
    let seek = p.ordered.then(|| cursor_entry(q, p)).flatten();
    match seek {
        Some(at) if !p.reverse && at > lo => (Bound::Included(at), Bound::Excluded(hi)),
        Some(at) if p.reverse && at < hi => (Bound::Included(lo), Bound::Included(at)),
        _ => (Bound::Included(lo), Bound::Excluded(hi)),
    }
}

/// Where the cursor's row sits in the index: its key (the fixed values,
/// then the cursor's sort values in index order) and id.
fn cursor_entry(q: &Query, p: &IndexPlan) -> Option<EntryKey> {
    let after = q.after.as_ref()?;
    let mut key = Vec::new();
    for v in &p.fixed {
        collate::encode(Some(v), &mut key);
    }
    for path in &p.def.paths[p.fixed.len()..] {
        let i = q.sort.iter().position(|s| &s.path == path)?;
        key.extend_from_slice(after.fields.get(i)?);
    }
    Some((key, after.id.clone()))
}

/// The collection's indexes that are ready.
fn ready_indexes(txn: &ReadTransaction, collection: &str) -> Result<Vec<IndexDef>, StoreError> {
    let t = txn.open_table(INDEXES)?;
    let mut out = Vec::new();
    for (c, _, meta) in index::rows(&t)? {
        if c == collection && meta.state == IndexState::Ready {
            out.extend(IndexDef::new(&meta.fields));
        }
    }
    Ok(out)
}

/// The best index for `q`, or `None` (a scan): most leading fields fixed
/// by `$eq`, then a range on the next, then an order that is the query's.
fn choose(q: &Query, ready: &[IndexDef]) -> Option<IndexPlan> {
    ready
        .iter()
        .filter_map(|d| plan_for(q, d))
        .max_by_key(|(score, _)| *score)
        .map(|(_, p)| p)
}

fn plan_for(q: &Query, def: &IndexDef) -> Option<(usize, IndexPlan)> {
    let required = q.selector.required();
    let conds_on = |path: &[String]| -> Vec<&Cond> {
        let mut out = Vec::new();
        for (p, c) in &required {
            if *p == path {
                flatten(c, &mut out);
            }
        }
        out
    };
    let mut prefix = Vec::new();
    let mut fixed = Vec::new();
    let mut bounds = Vec::new();
    for path in &def.paths {
        let Some(v) = conds_on(path).into_iter().find_map(|c| match c {
            Cond::Eq(v) => Some(v.clone()),
            _ => None,
        }) else {
            break;
        };
        collate::encode(Some(&v), &mut prefix);
        bounds.push(format!("{} = {v}", path.join(".")));
        fixed.push(v);
    }
    let mut lo = prefix.clone();
    let mut hi = collate::prefix_end(&prefix).unwrap_or_else(|| KEY_CEILING.to_vec());
    let mut ranged = false;
    if let Some(path) = def.paths.get(fixed.len()) {
        // A range never matches a record without the field (it sorts
        // first): start at `null`, the least value there is.
        let mut least = prefix.clone();
        collate::encode(Some(&Value::Null), &mut least);
        for c in conds_on(path) {
            let (v, is_lo, inclusive) = match c {
                Cond::Gt(v) => (v, true, false),
                Cond::Gte(v) => (v, true, true),
                Cond::Lt(v) => (v, false, false),
                Cond::Lte(v) => (v, false, true),
                _ => continue,
            };
            let mut at = prefix.clone();
            collate::encode(Some(v), &mut at);
            let after = || collate::prefix_end(&at).unwrap_or_else(|| KEY_CEILING.to_vec());
            let op = match (is_lo, inclusive) {
                (true, true) => ">=",
                (true, false) => ">",
                (false, false) => "<",
                (false, true) => "<=",
            };
            bounds.push(format!("{} {op} {v}", path.join(".")));
            if !ranged {
                lo = lo.max(least.clone());
            }
            ranged = true;
            if is_lo {
                lo = lo.max(if inclusive { at.clone() } else { after() });
            } else {
                hi = hi.min(if inclusive { after() } else { at.clone() });
            }
        }
    }
    let (ordered, reverse) = serves_order(q, def, fixed.len());
    let decides = q.selector.is_conjunction()
        && required.iter().all(|(path, c)| {
            let mut conds = Vec::new();
            flatten(c, &mut conds);
            conds.iter().all(|c| decided_by(c, path, def, &fixed))
        });
    let score = 4 * fixed.len() + 2 * usize::from(ranged) + usize::from(ordered);
    (score > 0).then(|| {
        (
            score,
            IndexPlan {
                def: def.clone(),
                lo,
                hi,
                fixed,
                ordered,
                reverse,
                decides,
                bounds: bounds.join(", "),
            },
        )
    })
}

/// Whether the index range alone answers condition `c` on `path`: an
/// `$eq` on a leading field, to the value the range fixes it to, or a
/// range on the field after them. The key encoding is exact (equal keys
/// are equal values in the collation, and a range never holds a record
/// without the field), so these need no look at the document.
fn decided_by(c: &Cond, path: &[String], def: &IndexDef, fixed: &[Value]) -> bool {
    if let Some(i) = def.paths[..fixed.len()].iter().position(|p| p == path) {
        return matches!(c, Cond::Eq(v) if collate::eq(v, &fixed[i]));
    }
    def.paths.get(fixed.len()).is_some_and(|p| p == path)
        && matches!(c, Cond::Gt(_) | Cond::Gte(_) | Cond::Lt(_) | Cond::Lte(_))
}

/// Conditions of an `All`, one by one.
fn flatten<'a>(c: &'a Cond, out: &mut Vec<&'a Cond>) {
    match c {
        Cond::All(cs) => cs.iter().for_each(|c| flatten(c, out)),
        c => out.push(c),
    }
}

/// Whether reading the index (forwards, or backwards: the second value)
/// yields the query's order: the sort fields not fixed by `$eq` are the
/// index's remaining fields, all in one direction, and the ids run that
/// way too.
fn serves_order(q: &Query, def: &IndexDef, fixed: usize) -> (bool, bool) {
    let rest: Vec<_> = q
        .sort
        .iter()
        .filter(|s| !def.paths[..fixed].contains(&s.path))
        .collect();
    let reverse = rest.first().map_or(q.id_desc(), |s| s.desc);
    let same = rest.iter().all(|s| s.desc == reverse) && q.id_desc() == reverse;
    let fields = rest.len() == def.paths.len() - fixed
        && rest
            .iter()
            .zip(&def.paths[fixed..])
            .all(|(s, p)| &s.path == p);
    (same && fields, reverse)
}
