//! How JSON values compare in queries, sorts and indexes: CouchDB's
//! collation across types, and a byte encoding whose plain byte order is
//! that same order, so that an index is a sorted table of byte strings.
//!
//! One file because the two must agree exactly: the randomized test at the
//! bottom holds [`cmp`] and [`encode`] to each other.
//!
//! The order (docs/ipc-protocol.md, "Queries"):
//! missing < `null` < `false` < `true` < numbers < strings < arrays <
//! objects. Numbers compare by value (`1` equals `1.0`); strings by
//! Unicode code point (as PouchDB does in process; CouchDB's server uses
//! ICU's locale order instead, which differs for case and accents);
//! arrays element by element, a shorter prefix first; objects key by key
//! and value by value in key order, a shorter prefix first.

use std::cmp::Ordering;

use serde_json::Value;

/// Type ranks, also the first byte of each encoding. Never 0: the byte 0
/// ends arrays, objects and strings, below every value.
const MISSING: u8 = 1;
const NULL: u8 = 2;
const FALSE: u8 = 3;
const TRUE: u8 = 4;
const NUMBER: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;
/// Ends an array, an object or a string.
const END: u8 = 0;
/// Follows a 0 byte inside a string (so the terminator stays below it).
const ESCAPED_ZERO: u8 = 0xFF;
/// Follows the 0 byte that ends a string.
const STRING_END: u8 = 1;
/// Starts each key of an object (above [`END`], which ends the object).
const OBJECT_KEY: u8 = 1;

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => NULL,
        Value::Bool(false) => FALSE,
        Value::Bool(true) => TRUE,
        Value::Number(_) => NUMBER,
        Value::String(_) => STRING,
        Value::Array(_) => ARRAY,
        Value::Object(_) => OBJECT,
    }
}

/// A JSON number as the double it compares as; `-0` is `0`.
fn number(v: &serde_json::Number) -> f64 {
    let f = v.as_f64().unwrap_or(0.0);
    if f == 0.0 {
        0.0
    } else {
        f
    }
}

/// The collation order of two values.
pub fn cmp(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number(x).total_cmp(&number(y)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| cmp(p, q))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .zip(y)
            .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| cmp(va, vb)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The collation order of two field values, a missing field first.
pub fn cmp_opt(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => cmp(a, b),
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

/// Whether two values are equal in the collation (`1` equals `1.0`).
pub fn eq(a: &Value, b: &Value) -> bool {
    cmp(a, b) == Ordering::Equal
}

/// Appends the encoding of a field value (`None`: missing) to `out`.
/// Encodings are self-delimiting, so a key made of several of them in a
/// row still sorts field by field.
pub fn encode(v: Option<&Value>, out: &mut Vec<u8>) {
    let Some(v) = v else {
        out.push(MISSING);
        return;
    };
    out.push(rank(v));
    match v {
        Value::Number(n) => out.extend_from_slice(&ordered_bits(number(n))),
        Value::String(s) => encode_str(s, out),
        Value::Array(items) => {
            for item in items {
                encode(Some(item), out);
            }
            out.push(END);
        }
        Value::Object(map) => {
            for (k, item) in map {
                out.push(OBJECT_KEY);
                encode_str(k, out);
                encode(Some(item), out);
            }
            out.push(END);
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// A double's bits, flipped so that their big-endian bytes sort as the
/// numbers do.
fn ordered_bits(f: f64) -> [u8; 8] {
    let bits = f.to_bits();
    let flipped = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    flipped.to_be_bytes()
}

/// A string's UTF-8 bytes (whose order is code point order), its zero
/// bytes escaped, then an end mark below every escaped or plain byte.
fn encode_str(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(END);
    out.push(STRING_END);
}

/// The least byte string above every string that starts with `prefix`;
/// `None` when there is none (all bytes 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(Some(v), &mut out);
        out
    }

    /// A random JSON value from a small alphabet, so that ties and shared
    /// prefixes are common.
    fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
        match rng.u8(0..if depth > 2 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => json!(rng.i64(-3..4)),
            3 => json!(rng.i64(-3..4) as f64 / 2.0),
            4 | 5 => {
                let alphabet = ["", "a", "b", "\u{0}", "é", "A", "aa"];
                let n = rng.usize(0..3);
                Value::String(
                    (0..n)
                        .map(|_| alphabet[rng.usize(..alphabet.len())])
                        .collect(),
                )
            }
            6 => Value::Array(
                (0..rng.usize(0..3))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut m = serde_json::Map::new();
                for _ in 0..rng.usize(0..3) {
                    let k = ["a", "b", ""][rng.usize(..3)];
                    m.insert(k.into(), random_value(rng, depth + 1));
                }
                Value::Object(m)
            }
        }
    }

    #[test]
    fn the_type_order_is_couchdbs() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1.5),
            json!(0),
            json!(2),
            json!(""),
            json!("A"),
            json!("a"),
            json!("aa"),
            json!("b"),
            json!([]),
            json!([1]),
            json!([1, 2]),
            json!([2]),
            json!({}),
            json!({"a": 1}),
        ];
        for w in ordered.windows(2) {
            assert_eq!(cmp(&w[0], &w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert!(enc(&w[0]) < enc(&w[1]), "encoded {} < {}", w[0], w[1]);
        }
        assert!(eq(&json!(1), &json!(1.0)));
        assert_eq!(enc(&json!(1)), enc(&json!(1.0)));
        assert_eq!(enc(&json!(0.0)), enc(&json!(-0.0)));
        let mut missing = Vec::new();
        encode(None, &mut missing);
        assert!(missing < enc(&json!(null)));
    }

    #[test]
    fn encoding_order_is_the_collation_order() {
        let mut rng = fastrand::Rng::with_seed(22);
        for _ in 0..20_000 {
            let (a, b) = (random_value(&mut rng, 0), random_value(&mut rng, 0));
            assert_eq!(enc(&a).cmp(&enc(&b)), cmp(&a, &b), "{a} vs {b}");
            // Keys of two fields sort field by field.
            let (c, d) = (random_value(&mut rng, 1), random_value(&mut rng, 1));
            let (mut k1, mut k2) = (enc(&a), enc(&b));
            encode(Some(&c), &mut k1);
            encode(Some(&d), &mut k2);
            let want = cmp(&a, &b).then_with(|| cmp(&c, &d));
            assert_eq!(k1.cmp(&k2), want, "[{a},{c}] vs [{b},{d}]");
        }
    }

    #[test]
    fn prefix_end_bounds_every_extension() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
        let p = enc(&json!("ab"));
        let end = prefix_end(&p).unwrap();
        let mut longer = p.clone();
        encode(Some(&json!(7)), &mut longer);
        assert!(p <= longer && longer < end);
    }
}
