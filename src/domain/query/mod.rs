//! Local queries: a Mango selector, a sort, a limit and a cursor, checked
//! once into a [`Query`] that the store plans and runs (and a live query
//! re-applies to every change).
//!
//! The order of results is a total order, so that a cursor can say where a
//! page ended: the sort fields in the collation order of [`collate`] (a
//! missing field first), each ascending or descending, then the record id,
//! in the direction of the last sort field (ascending without a sort).

pub mod collate;
pub mod selector;

use std::cmp::Ordering;

use base64::Engine as _;
use serde_json::Value;

pub use selector::{lookup, Cond, Selector, SelectorError};

/// Secondary indexes as the config declares them: per collection, each
/// index's dotted field paths in key order.
pub type DeclaredIndexes = std::collections::BTreeMap<String, Vec<Vec<String>>>;

/// Most sort fields a query may name.
pub const MAX_SORT_FIELDS: usize = 16;

/// One sort field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortField {
    pub path: Vec<String>,
    pub desc: bool,
}

/// A checked query.
#[derive(Debug, Clone)]
pub struct Query {
    pub selector: Selector,
    /// A fingerprint of the selector's JSON, carried in cursors so that a
    /// cursor is refused by a query with another selector.
    selector_hash: u64,
    pub sort: Vec<SortField>,
    /// Where the previous page ended: results start after it.
    pub after: Option<OrderKey>,
}

/// Why a query was refused (`bad_query`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    Selector(SelectorError),
    /// A sort field that is empty or has an empty part.
    SortField(String),
    TooManySortFields(usize),
    /// A cursor this query did not hand out (or one of another sort).
    BadCursor,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Selector(e) => write!(f, "selector {e}"),
            QueryError::SortField(s) => write!(f, "sort field {s:?} is empty or has an empty part"),
            QueryError::TooManySortFields(n) => {
                write!(f, "{n} sort fields, at most {MAX_SORT_FIELDS}")
            }
            QueryError::BadCursor => write!(
                f,
                "the cursor is not one this query handed out (pass the `next` of the previous page, with the same selector and sort)"
            ),
        }
    }
}

impl std::error::Error for QueryError {}

/// A result's place in the order: each sort field's value encoded (see
/// [`collate::encode`]), then the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub fields: Vec<Vec<u8>>,
    pub id: String,
}

/// Splits a dotted field path; `None` if a part is empty.
pub fn field_path(field: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = field.split('.').map(str::to_owned).collect();
    (!parts.iter().any(String::is_empty)).then_some(parts)
}

impl Query {
    /// Checks a query's parts: `sort` as `(field, descending)`.
    pub fn new(
        selector: &Value,
        sort: &[(String, bool)],
        cursor: Option<&str>,
    ) -> Result<Query, QueryError> {
        let selector_json = selector;
        let selector = Selector::parse(selector).map_err(QueryError::Selector)?;
        if sort.len() > MAX_SORT_FIELDS {
            return Err(QueryError::TooManySortFields(sort.len()));
        }
        let sort = sort
            .iter()
            .map(|(f, desc)| {
                field_path(f)
                    .map(|path| SortField { path, desc: *desc })
                    .ok_or_else(|| QueryError::SortField(f.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut q = Query {
            selector,
            selector_hash: fnv1a(selector_json.to_string().as_bytes()),
            sort,
            after: None,
        };
        if let Some(c) = cursor {
            q.after = Some(decode_cursor(c, &q.sort_spec()).ok_or(QueryError::BadCursor)?);
        }
        Ok(q)
    }

    /// What a cursor carries to be refused by another query: the
    /// selector's fingerprint, then the sort (`due:asc`).
    fn sort_spec(&self) -> Vec<String> {
        let selector = format!("selector:{:016x}", self.selector_hash);
        std::iter::once(selector)
            .chain(self.sort.iter().map(|s| {
                format!(
                    "{}:{}",
                    s.path.join("."),
                    if s.desc { "desc" } else { "asc" }
                )
            }))
            .collect()
    }

    /// The cursor that continues after `key`: opaque to apps.
    pub fn cursor_after(&self, key: &OrderKey) -> String {
        let fields: Vec<Value> = key.fields.iter().map(|f| Value::String(hex(f))).collect();
        let json = serde_json::json!([fields, key.id, self.sort_spec()]).to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Whether the results' order runs descending on the id (the last
    /// sort field does).
    pub fn id_desc(&self) -> bool {
        self.sort.last().is_some_and(|s| s.desc)
    }

    /// The place of document `doc` with id `id` in the order.
    pub fn key_of(&self, doc: &Value, id: &str) -> OrderKey {
        let fields = self
            .sort
            .iter()
            .map(|s| {
                let mut out = Vec::new();
                collate::encode(lookup(doc, &s.path), &mut out);
                out
            })
            .collect();
        OrderKey {
            fields,
            id: id.to_owned(),
        }
    }

    /// The result order.
    pub fn cmp_keys(&self, a: &OrderKey, b: &OrderKey) -> Ordering {
        for ((s, x), y) in self.sort.iter().zip(&a.fields).zip(&b.fields) {
            let o = x.cmp(y);
            let o = if s.desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        let o = a.id.cmp(&b.id);
        if self.id_desc() {
            o.reverse()
        } else {
            o
        }
    }

    /// Whether a result at `key` comes after the cursor (or there is none).
    pub fn is_after_cursor(&self, key: &OrderKey) -> bool {
        self.after
            .as_ref()
            .is_none_or(|c| self.cmp_keys(key, c) == Ordering::Greater)
    }
}

fn decode_cursor(s: &str, sort: &[String]) -> Option<OrderKey> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let [f, id, spec] = v.as_array()?.as_slice() else {
        return None;
    };
    let f = f.as_array()?;
    let spec: Vec<&str> = spec
        .as_array()?
        .iter()
        .map(Value::as_str)
        .collect::<Option<_>>()?;
    if f.len() + 1 != sort.len() || spec != sort {
        return None;
    }
    Some(OrderKey {
        fields: f
            .iter()
            .map(|x| unhex(x.as_str()?))
            .collect::<Option<Vec<_>>>()?,
        id: id.as_str()?.to_owned(),
    })
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is
/// not promised to be), and a cursor fingerprint needs no more.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursors_round_trip_and_refuse_strangers() {
        let q = Query::new(&json!({}), &[("due".into(), false)], None).unwrap();
        let k = q.key_of(&json!({"due": "2026-12-08"}), "t1");
        let c = q.cursor_after(&k);
        let q2 = Query::new(&json!({}), &[("due".into(), false)], Some(&c)).unwrap();
        assert_eq!(q2.after, Some(k));
        let other_selector =
            Query::new(&json!({"done": false}), &[("due".into(), false)], Some(&c));
        assert_eq!(other_selector.unwrap_err(), QueryError::BadCursor);
        for other in [
            vec![],
            vec![("due".into(), true)],
            vec![("title".into(), false)],
        ] {
            assert_eq!(
                Query::new(&json!({}), &other, Some(&c)).unwrap_err(),
                QueryError::BadCursor,
                "{other:?}"
            );
        }
        assert_eq!(
            Query::new(&json!({}), &[], Some("not a cursor")).unwrap_err(),
            QueryError::BadCursor
        );
        assert_eq!(
            Query::new(&json!({}), &[("a..b".into(), false)], None).unwrap_err(),
            QueryError::SortField("a..b".into())
        );
    }

    #[test]
    fn order_is_sort_fields_then_id() {
        let q = Query::new(&json!({}), &[("n".into(), true)], None).unwrap();
        let a = q.key_of(&json!({"n": 2}), "a");
        let b = q.key_of(&json!({"n": 1}), "b");
        let c = q.key_of(&json!({"n": 1}), "c");
        assert_eq!(q.cmp_keys(&a, &b), Ordering::Less);
        // Ties: the id, descending like the last sort field.
        assert_eq!(q.cmp_keys(&c, &b), Ordering::Less);
        let missing = q.key_of(&json!({}), "z");
        assert_eq!(q.cmp_keys(&b, &missing), Ordering::Less);
    }
}
