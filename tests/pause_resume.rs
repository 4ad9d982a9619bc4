//! `pause` and `resume`: what status shows and what survives a restart.
//! Without a backend a pause still shows `paused`; pauses and resumes that
//! race from many connections leave the stored flag and the running
//! worker agreeing. Real daemon, real socket.

mod common;

use std::time::Duration;

use common::Daemon;
use serde_json::json;
use syncd::client::Client;
use syncd::ipc::wire::{Request, Response};

fn state(d: &Daemon) -> String {
    d.status()["state"].as_str().expect("state").to_owned()
}

/// The state status shows for a while (the worker has had every chance to
/// act on the change); fails if it changes meanwhile.
fn settled_state(d: &Daemon) -> String {
    let first = state(d);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(state(d), first, "status state changed without a request");
    }
    first
}

#[test]
fn pause_without_a_backend_shows_paused_and_survives_a_restart() {
    let mut d = Daemon::start("");
    assert_eq!(settled_state(&d), "offline");
    d.ok(&["pause"]);
    // Wake the worker: it must not turn the state back to offline.
    d.ok(&["sync"]);
    assert_eq!(settled_state(&d), "paused");
    d.restart();
    assert_eq!(settled_state(&d), "paused");
    d.ok(&["resume"]);
    assert_eq!(settled_state(&d), "offline");
    d.restart();
    assert_eq!(settled_state(&d), "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pauses_and_resumes_leave_stored_and_running_state_agreeing() {
    let mut d = Daemon::start("");
    for round in 0..4 {
        let mut tasks = Vec::new();
        for t in 0..12u64 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&socket, "toggler").await.expect("connect");
                for i in 0..8u64 {
                    let req = if (t + i + round) % 2 == 0 {
                        Request::Pause {}
                    } else {
                        Request::Resume {}
                    };
                    assert_eq!(c.request(req).await.expect("toggle"), Response::Ok {});
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let running = tokio::task::block_in_place(|| settled_state(&d));
        tokio::task::block_in_place(|| d.restart());
        let stored = tokio::task::block_in_place(|| settled_state(&d));
        assert_eq!(
            (round, json!(stored)),
            (round, json!(running)),
            "the stored pause flag disagrees with the one the daemon ran with"
        );
    }
}
