//! Mango selectors (as CouchDB, PouchDB and RxDB write them): parsed once
//! into a tree with errors that say what is wrong and where, then matched
//! against documents.
//!
//! Matching follows CouchDB's `mango_selector`: a condition on a field the
//! document lacks is false, except `$exists: false`; ranges compare across
//! types in the collation order of [`super::collate`]; `$in` on an array
//! field matches when one of its elements is in the list.

use serde_json::{Map, Value};

use super::collate;

/// Deepest nesting of `$and` / `$or` / `$not` and sub-objects accepted.
const MAX_DEPTH: usize = 32;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// Every part matches (a selector object with several keys, `$and`).
    And(Vec<Selector>),
    /// Some part matches (`$or`).
    Or(Vec<Selector>),
    /// The part does not match (`$not` at the top of a selector).
    Not(Box<Selector>),
    /// A condition on the field at a dotted path.
    Field { path: Vec<String>, cond: Cond },
}

/// A condition on one field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    /// `{"$not": {...}}` on a field.
    Not(Box<Cond>),
    /// Several operators on one field (`{"$gte": 1, "$lt": 5}`).
    All(Vec<Cond>),
}

/// What is wrong with a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorErrorKind {
    /// A selector (or a field's condition object) that is not a JSON object.
    NotAnObject,
    UnknownOperator(String),
    /// `$and`, `$or`, `$in` and `$nin` take a non-empty array.
    NeedsArray(&'static str),
    /// `$exists` takes true or false.
    NeedsBool,
    /// An empty field name, or an empty part of a dotted path.
    EmptyField,
    /// An object that mixes `$operators` with field names.
    MixedOperatorsAndFields,
    /// `$and` / `$or` on a field: they combine selectors, at the top.
    CombinatorOnField(&'static str),
    /// `$not` on a field takes an object of `$operators`.
    NotNeedsOperators,
    TooDeep,
}

/// A bad selector: what is wrong, and where (a path into the selector,
/// such as `$.due.$gt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub at: String,
    pub kind: SelectorErrorKind,
}

impl std::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use SelectorErrorKind::*;
        write!(f, "at {}: ", self.at)?;
        match &self.kind {
            NotAnObject => write!(f, "expected a JSON object"),
            UnknownOperator(op) => write!(
                f,
                "unknown operator {op:?} (known: $eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $not)"
            ),
            NeedsArray(op) => write!(f, "{op} takes a non-empty array"),
            NeedsBool => write!(f, "$exists takes true or false"),
            EmptyField => write!(f, "a field name (or a part of a dotted path) is empty"),
            MixedOperatorsAndFields => {
                write!(f, "an object mixes $operators with field names")
            }
            CombinatorOnField(op) => write!(
                f,
                "{op} combines whole selectors and goes at their top ({{\"{op}\": [{{\"a\": 1}}, {{\"b\": 2}}]}}), not on a field"
            ),
            NotNeedsOperators => write!(
                f,
                "$not on a field takes an object of $operators ({{\"$not\": {{\"$gt\": 5}}}})"
            ),
            TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
        }
    }
}

impl std::error::Error for SelectorError {}

fn err(at: &str, kind: SelectorErrorKind) -> SelectorError {
    SelectorError {
        at: at.to_owned(),
        kind,
    }
}

impl Selector {
    /// Parses a selector; `{}` matches every document.
    pub fn parse(v: &Value) -> Result<Selector, SelectorError> {
        parse_selector(v, &[], "$", 0)
    }

    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Value) -> bool {
        match self {
            Selector::And(parts) => parts.iter().all(|p| p.matches(doc)),
            Selector::Or(parts) => parts.iter().any(|p| p.matches(doc)),
            Selector::Not(part) => !part.matches(doc),
            Selector::Field { path, cond } => match lookup(doc, path) {
                Some(v) => cond.matches(v),
                None => cond.matches_missing(),
            },
        }
    }

    /// Whether the selector is only a conjunction of field conditions (no
    /// `$or`, no `$not` at the top): then [`Selector::required`] is all of it.
    pub fn is_conjunction(&self) -> bool {
        match self {
            Selector::And(parts) => parts.iter().all(Selector::is_conjunction),
            Selector::Field { .. } => true,
            Selector::Or(_) | Selector::Not(_) => false,
        }
    }

    /// The conditions every match must meet: the fields of the top-level
    /// conjunction (what an index can narrow by).
    pub fn required(&self) -> Vec<(&[String], &Cond)> {
        let mut out = Vec::new();
        self.collect_required(&mut out);
        out
    }

    fn collect_required<'a>(&'a self, out: &mut Vec<(&'a [String], &'a Cond)>) {
        match self {
            Selector::And(parts) => parts.iter().for_each(|p| p.collect_required(out)),
            Selector::Field { path, cond } => out.push((path, cond)),
            Selector::Or(_) | Selector::Not(_) => {}
        }
    }
}

/// The value at a dotted path, if the document has one.
pub fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, key| v.as_object()?.get(key))
}

fn parse_selector(
    v: &Value,
    prefix: &[String],
    at: &str,
    depth: usize,
) -> Result<Selector, SelectorError> {
    if depth > MAX_DEPTH {
        return Err(err(at, SelectorErrorKind::TooDeep));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| err(at, SelectorErrorKind::NotAnObject))?;
    let mut parts = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        let here = format!("{at}.{key}");
        parts.push(match key.as_str() {
            "$and" | "$or" => {
                let items =
                    non_empty_array(value, &here, if key == "$and" { "$and" } else { "$or" })?;
                let subs = items
                    .iter()
                    .enumerate()
                    .map(|(i, s)| parse_selector(s, prefix, &format!("{here}[{i}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    Selector::And(subs)
                } else {
                    Selector::Or(subs)
                }
            }
            "$not" => Selector::Not(Box::new(parse_selector(value, prefix, &here, depth + 1)?)),
            k if k.starts_with('$') => {
                return Err(err(&here, SelectorErrorKind::UnknownOperator(k.to_owned())))
            }
            field => parse_field(field, value, prefix, &here, depth)?,
        });
    }
    Ok(match parts.len() {
        1 => parts.remove(0),
        _ => Selector::And(parts),
    })
}

/// `field: value`: an operator object, a nested selector, or an implicit
/// `$eq`.
fn parse_field(
    field: &str,
    value: &Value,
    prefix: &[String],
    at: &str,
    depth: usize,
) -> Result<Selector, SelectorError> {
    let mut path = prefix.to_vec();
    for part in field.split('.') {
        if part.is_empty() {
            return Err(err(at, SelectorErrorKind::EmptyField));
        }
        path.push(part.to_owned());
    }
    match value.as_object() {
        Some(obj) if !obj.is_empty() && obj.keys().all(|k| k.starts_with('$')) => {
            let cond = parse_ops(obj, at, depth)?;
            Ok(Selector::Field { path, cond })
        }
        Some(obj) if obj.keys().any(|k| k.starts_with('$')) => {
            Err(err(at, SelectorErrorKind::MixedOperatorsAndFields))
        }
        // A sub-object of field names: a nested selector (`{"a": {"b": 1}}`
        // is `{"a.b": 1}`), as in CouchDB. `{}` is an `$eq` of `{}`.
        Some(obj) if !obj.is_empty() => parse_selector(value, &path, at, depth + 1),
        _ => Ok(Selector::Field {
            path,
            cond: Cond::Eq(value.clone()),
        }),
    }
}

/// An object of `$operators` on one field.
fn parse_ops(obj: &Map<String, Value>, at: &str, depth: usize) -> Result<Cond, SelectorError> {
    if depth > MAX_DEPTH {
        return Err(err(at, SelectorErrorKind::TooDeep));
    }
    let mut conds = obj
        .iter()
        .map(|(op, arg)| parse_op(op, arg, &format!("{at}.{op}"), depth))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match conds.len() {
        1 => conds.remove(0),
        _ => Cond::All(conds),
    })
}

fn parse_op(op: &str, arg: &Value, at: &str, depth: usize) -> Result<Cond, SelectorError> {
    Ok(match op {
        "$eq" => Cond::Eq(arg.clone()),
        "$ne" => Cond::Ne(arg.clone()),
        "$gt" => Cond::Gt(arg.clone()),
        "$gte" => Cond::Gte(arg.clone()),
        "$lt" => Cond::Lt(arg.clone()),
        "$lte" => Cond::Lte(arg.clone()),
        "$in" => Cond::In(non_empty_array(arg, at, "$in")?.to_vec()),
        "$nin" => Cond::Nin(non_empty_array(arg, at, "$nin")?.to_vec()),
        "$exists" => Cond::Exists(
            arg.as_bool()
                .ok_or_else(|| err(at, SelectorErrorKind::NeedsBool))?,
        ),
        "$and" => return Err(err(at, SelectorErrorKind::CombinatorOnField("$and"))),
        "$or" => return Err(err(at, SelectorErrorKind::CombinatorOnField("$or"))),
        "$not" => {
            let obj = arg
                .as_object()
                .filter(|o| !o.is_empty() && o.keys().all(|k| k.starts_with('$')))
                .ok_or_else(|| err(at, SelectorErrorKind::NotNeedsOperators))?;
            Cond::Not(Box::new(parse_ops(obj, at, depth + 1)?))
        }
        other => {
            return Err(err(
                at,
                SelectorErrorKind::UnknownOperator(other.to_owned()),
            ))
        }
    })
}

fn non_empty_array<'a>(
    v: &'a Value,
    at: &str,
    op: &'static str,
) -> Result<&'a [Value], SelectorError> {
    match v.as_array() {
        Some(a) if !a.is_empty() => Ok(a),
        _ => Err(err(at, SelectorErrorKind::NeedsArray(op))),
    }
}

impl Cond {
    /// Whether a present field value meets the condition.
    pub fn matches(&self, v: &Value) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cond::Eq(a) => collate::eq(v, a),
            Cond::Ne(a) => !collate::eq(v, a),
            Cond::Gt(a) => collate::cmp(v, a) == Greater,
            Cond::Gte(a) => collate::cmp(v, a) != Less,
            Cond::Lt(a) => collate::cmp(v, a) == Less,
            Cond::Lte(a) => collate::cmp(v, a) != Greater,
            Cond::In(list) => is_in(v, list),
            Cond::Nin(list) => !is_in(v, list),
            Cond::Exists(want) => *want,
            Cond::Not(c) => !c.matches(v),
            Cond::All(cs) => cs.iter().all(|c| c.matches(v)),
        }
    }

    /// Whether a missing field meets the condition: only `$exists: false`
    /// does (and an `All` of such), as in CouchDB.
    pub fn matches_missing(&self) -> bool {
        match self {
            Cond::Exists(want) => !want,
            Cond::All(cs) => cs.iter().all(Cond::matches_missing),
            _ => false,
        }
    }
}

/// `$in`: the value is listed; for an array, one of its elements is (as
/// CouchDB's `mango_selector` has it: the array itself is not compared).
fn is_in(v: &Value, list: &[Value]) -> bool {
    match v.as_array() {
        Some(items) => items.iter().any(|i| list.iter().any(|a| collate::eq(i, a))),
        None => list.iter().any(|a| collate::eq(v, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(sel: Value, doc: Value) -> bool {
        Selector::parse(&sel).expect("selector").matches(&doc)
    }

    #[test]
    fn operators_match_as_couchdb_does() {
        let doc = json!({"n": 5, "s": "b", "tags": ["x", "y"], "a": {"b": {"c": 1}}, "z": null});
        assert!(m(json!({}), doc.clone()));
        assert!(m(json!({"n": 5}), doc.clone()));
        assert!(m(json!({"n": 5.0}), doc.clone()));
        assert!(m(json!({"n": {"$gt": 4, "$lte": 5}}), doc.clone()));
        assert!(!m(json!({"n": {"$lt": 5}}), doc.clone()));
        // Across types: every string sorts above every number.
        assert!(m(json!({"s": {"$gt": 1000}}), doc.clone()));
        assert!(m(json!({"a.b.c": 1}), doc.clone()));
        assert!(m(json!({"a": {"b": {"c": {"$gte": 1}}}}), doc.clone()));
        assert!(m(json!({"tags": {"$in": ["y"]}}), doc.clone()));
        // The array as a whole is not an element of it.
        assert!(!m(json!({"tags": {"$in": [["x", "y"]]}}), doc.clone()));
        assert!(m(json!({"tags": {"$nin": [["x", "y"]]}}), doc.clone()));
        assert!(!m(json!({"tags": "y"}), doc.clone()));
        assert!(m(json!({"tags": ["x", "y"]}), doc.clone()));
        assert!(m(json!({"s": {"$nin": ["a", "c"]}}), doc.clone()));
        assert!(m(json!({"z": null}), doc.clone()));
        assert!(m(json!({"z": {"$exists": true}}), doc.clone()));
        assert!(m(json!({"q": {"$exists": false}}), doc.clone()));
        assert!(m(json!({"$or": [{"n": 1}, {"s": "b"}]}), doc.clone()));
        assert!(m(json!({"$and": [{"n": 5}, {"s": "b"}]}), doc.clone()));
        assert!(m(json!({"$not": {"n": 1}}), doc.clone()));
        assert!(m(json!({"n": {"$not": {"$gt": 9}}}), doc.clone()));
    }

    #[test]
    fn a_missing_field_meets_only_exists_false() {
        let doc = json!({"n": 1});
        assert!(!m(json!({"q": {"$ne": 1}}), doc.clone()));
        assert!(!m(json!({"q": {"$nin": [1]}}), doc.clone()));
        assert!(!m(json!({"q": {"$not": {"$eq": 1}}}), doc.clone()));
        assert!(!m(json!({"q": null}), doc.clone()));
        // ... but a top-level $not negates the whole part.
        assert!(m(json!({"$not": {"q": 1}}), doc.clone()));
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = |v: Value| Selector::parse(&v).unwrap_err().to_string();
        assert_eq!(
            e(json!({"due": {"$gtx": 1}})),
            "at $.due.$gtx: unknown operator \"$gtx\" (known: $eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $not)"
        );
        assert_eq!(
            e(json!({"$or": []})),
            "at $.$or: $or takes a non-empty array"
        );
        assert_eq!(
            e(json!({"$or": [{"a": 1}, 3]})),
            "at $.$or[1]: expected a JSON object"
        );
        assert_eq!(
            e(json!({"t": {"$in": "x"}})),
            "at $.t.$in: $in takes a non-empty array"
        );
        assert_eq!(
            e(json!({"t": {"$exists": 1}})),
            "at $.t.$exists: $exists takes true or false"
        );
        assert_eq!(
            e(json!({"a..b": 1})),
            "at $.a..b: a field name (or a part of a dotted path) is empty"
        );
        assert_eq!(
            e(json!({"a": {"$gt": 1, "b": 2}})),
            "at $.a: an object mixes $operators with field names"
        );
        assert_eq!(e(json!([1])), "at $: expected a JSON object");
        assert_eq!(
            e(json!({"a": {"$or": [1]}})),
            "at $.a.$or: $or combines whole selectors and goes at their top ({\"$or\": [{\"a\": 1}, {\"b\": 2}]}), not on a field"
        );
        assert_eq!(
            e(json!({"a": {"$not": {"b": 1}}})),
            "at $.a.$not: $not on a field takes an object of $operators ({\"$not\": {\"$gt\": 5}})"
        );
        let mut deep = json!({"x": 1});
        for _ in 0..40 {
            deep = json!({ "$not": deep });
        }
        assert!(e(deep).ends_with("nested deeper than 32 levels"));
    }

    #[test]
    fn required_conditions_are_the_top_level_conjunction() {
        let s = Selector::parse(
            &json!({"a": 1, "$and": [{"b": {"$gt": 2}}], "$or": [{"c": 1}, {"d": 1}]}),
        )
        .unwrap();
        let paths: Vec<String> = s.required().iter().map(|(p, _)| p.join(".")).collect();
        // Keys in map order: "$and" (b), "$or" (not required), "a".
        assert_eq!(paths, vec!["b", "a"]);
    }
}
