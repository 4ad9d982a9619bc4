//! Every decoder takes arbitrary bytes without panicking: random inputs and
//! mutations of valid ones (a cheap, deterministic stand-in until the
//! coverage-guided fuzz targets exist). Errors must carry a message.

use syncd::backend::client::{
    classify_batch, classify_changes, classify_health, classify_op, BatchOutcome, OpResult,
    RawReply,
};
use syncd::backend::protocol::{BatchReply, ChangesPage, OpKind, OpOk, WireOp};
use syncd::config::Config;
use syncd::ipc::codec::{decode, encode, Encoding};
use syncd::ipc::connection::Connection;
use syncd::ipc::wire::{ClientFrame, Doc, Hello, Request, ServerFrame};

fn samples() -> Vec<(Encoding, Vec<u8>)> {
    let reqs = vec![
        Request::Put {
            collection: "todos".into(),
            id: Some("a1".into()),
            data: Doc(serde_json::json!({"t": "x", "n": [1, 2, {"z": null}]})),
            scope: None,
        },
        Request::Patch {
            collection: "c".into(),
            id: "b".into(),
            data: Doc(serde_json::json!({"k": 1})),
        },
        Request::List {
            collection: "c".into(),
            start: Some("m".into()),
            limit: Some(5),
        },
        Request::Watch {
            collections: vec!["a".into(), "b".into()],
        },
        Request::Resolve {
            collection: "c".into(),
            id: "x".into(),
            take: None,
            data: Some(Doc(serde_json::json!({}))),
        },
        Request::Status {},
    ];
    let mut out = Vec::new();
    for (i, request) in reqs.into_iter().enumerate() {
        let f = ClientFrame {
            id: i as u64 + 1,
            request,
        };
        for enc in [Encoding::Json, Encoding::Bincode] {
            out.push((enc, encode(enc, &f).unwrap()));
        }
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    for _ in 0..rng.usize(1..4) {
        match rng.u8(0..4) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] = rng.u8(..);
            }
            1 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v.truncate(i);
            }
            2 => {
                let i = rng.usize(..=v.len());
                v.insert(i, rng.u8(..));
            }
            _ if v.len() > 1 => {
                let i = rng.usize(..v.len() - 1);
                v.swap(i, i + 1);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn request_frames_never_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    let samples = samples();
    for round in 0..20_000 {
        let (enc, base) = &samples[round % samples.len()];
        let input = if round % 5 == 0 {
            (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect()
        } else {
            mutate(&mut rng, base)
        };
        if let Err(e) = decode::<ClientFrame>(*enc, &input) {
            assert!(!e.to_string().is_empty());
        }
        let _ = serde_json::from_slice::<Hello>(&input);
        let _ = decode::<ServerFrame>(*enc, &input);
    }
}

#[test]
fn backend_replies_never_panic() {
    let mut rng = fastrand::Rng::with_seed(11);
    let bases: Vec<Vec<u8>> = vec![
        br#"{"record":{"id":"r1","version":3,"updated_at":17,"deleted":false,"data":{"a":1}}}"#.to_vec(),
        br#"{"results":[{"status":200,"record":{"id":"r","version":1,"updated_at":1,"data":{}}},{"status":422,"error":"no"}]}"#.to_vec(),
        br#"{"changes":[{"collection":"c","record":{"id":"r","version":2,"updated_at":5,"deleted":true,"data":null}}],"cursor":"9","more":true}"#.to_vec(),
        br#"{"op_id":"o","client_id":"c","collection":"t","kind":"update","id":"r","local_id":"l","base_version":1,"data":{},"client_ts":1}"#.to_vec(),
    ];
    for round in 0..20_000 {
        let input = mutate(&mut rng, &bases[round % bases.len()]);
        let _ = serde_json::from_slice::<OpOk>(&input);
        let _ = serde_json::from_slice::<BatchReply>(&input);
        let _ = serde_json::from_slice::<ChangesPage>(&input);
        let _ = serde_json::from_slice::<WireOp>(&input);
        classify_all(&input, STATUSES[round % STATUSES.len()]);
    }
}

/// Statuses the classification is fed with the mutated bodies.
const STATUSES: [u16; 12] = [200, 201, 302, 400, 404, 405, 409, 413, 418, 422, 503, 0];

/// Runs the daemon's own reply classification over `body` with `status`:
/// it must not panic, and only a JSON `{"error": "..."}` object with a
/// listed status may ever dead-letter an op.
fn classify_all(body: &[u8], status: u16) {
    let headers = hyper::HeaderMap::new();
    let reply = RawReply {
        status,
        headers: &headers,
        body,
    };
    for kind in [OpKind::Create, OpKind::Update, OpKind::Delete] {
        if let Ok(OpResult::Rejected { .. }) = classify_op(kind, false, &reply) {
            assert!(matches!(status, 400 | 404 | 413 | 422), "{status}");
            assert!(kind != OpKind::Create || status != 404);
            let v: serde_json::Value = serde_json::from_slice(body).expect("JSON rejection");
            assert!(v["error"].is_string(), "{v}");
        }
    }
    if let Ok(BatchOutcome::Results(results)) = classify_batch(3, false, &reply) {
        assert_eq!(status, 200);
        assert!(!results.is_empty() && results.len() <= 3, "{results:?}");
    }
    let _ = classify_health(&reply);
    let _ = classify_changes(&reply);
}

#[test]
fn config_never_panics_and_names_something() {
    let mut rng = fastrand::Rng::with_seed(3);
    let base = include_bytes!("../daemon.toml.example");
    for _ in 0..3_000 {
        let input = mutate(&mut rng, base);
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        if let Err(e) = Config::parse(text) {
            assert!(!e.to_string().is_empty());
        }
    }
}

#[tokio::test]
async fn frame_reader_never_panics_or_overallocates() {
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..5_000 {
        let bytes: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
        let mut r = Connection::new(&bytes[..], 1024);
        // A random length prefix is almost always over the limit: it must be
        // refused before anything is allocated for it.
        while let Ok(Some(f)) = r.read_frame().await {
            assert!(f.len() <= 1024);
        }
    }
}
