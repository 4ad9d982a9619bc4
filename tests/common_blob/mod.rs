//! A forwarding proxy in front of a reference backend that watches and
//! disturbs the blob endpoints: it counts the content bytes `PUT` to
//! `v1/blobs`, can hold blob uploads (a gate the test opens), cut a blob
//! download's connection after half of its body, or flip a byte of a
//! download. Everything else passes through. One request per connection
//! (the replies say `Connection: close`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

/// Faults and counters shared with the proxy's threads.
#[derive(Default)]
pub struct Faults {
    /// Content bytes in `PUT v1/blobs` bodies forwarded so far.
    pub put_bytes: Mutex<u64>,
    /// `GET v1/blobs` requests seen, with their `Range` headers.
    pub gets: Mutex<Vec<String>>,
    /// `HEAD v1/blobs` requests seen.
    pub heads: Mutex<u64>,
    /// Blob `PUT`s wait here while it is `true`.
    pub hold_puts: Mutex<bool>,
    held: Condvar,
    /// `PUT`s that arrived while held (waiting or released).
    pub held_count: Mutex<u64>,
    /// Blob uploads are held (as `hold_puts`) once this many content bytes
    /// went through.
    pub hold_after: Mutex<Option<u64>>,
    /// The blob `GET`s with these numbers (1 = the first) are cut after
    /// half of their body.
    pub cut_at: Mutex<Vec<usize>>,
    /// The next this-many blob `GET`s get one byte flipped.
    pub corrupt_gets: Mutex<u32>,
    /// `POST v1/ops` and `v1/ops/batch` bodies seen (for "never ahead").
    pub ops: Mutex<Vec<String>>,
    /// While `true`, blob uploads (HEAD and PUT) are answered `413`
    /// without reaching the backend.
    pub refuse: Mutex<bool>,
}

pub struct BlobProxy {
    pub addr: String,
    pub faults: Arc<Faults>,
}

impl BlobProxy {
    pub fn start(upstream: &str) -> BlobProxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = l.local_addr().expect("addr").to_string();
        let faults = Arc::new(Faults::default());
        let (up, f) = (upstream.to_owned(), faults.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (up, f) = (up.clone(), f.clone());
                std::thread::spawn(move || serve(conn, &up, &f));
            }
        });
        BlobProxy { addr, faults }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn put_bytes(&self) -> u64 {
        *self.faults.put_bytes.lock().expect("lock")
    }

    pub fn gets(&self) -> Vec<String> {
        self.faults.gets.lock().expect("lock").clone()
    }

    pub fn held(&self) -> u64 {
        *self.faults.held_count.lock().expect("lock")
    }

    /// Holds blob uploads (`true`) or lets them through (`false`).
    pub fn hold_puts(&self, on: bool) {
        *self.faults.hold_puts.lock().expect("lock") = on;
        self.faults.held.notify_all();
    }

    /// Cuts the blob `GET`s numbered `at` (1 = the first).
    /// Answers blob uploads `413` (`true`) or lets them through.
    pub fn refuse(&self, on: bool) {
        *self.faults.refuse.lock().expect("lock") = on;
    }

    pub fn cut_gets(&self, at: &[usize]) {
        *self.faults.cut_at.lock().expect("lock") = at.to_vec();
    }

    /// Holds blob uploads once `n` content bytes went through.
    pub fn hold_after(&self, n: u64) {
        *self.faults.hold_after.lock().expect("lock") = Some(n);
    }

    pub fn corrupt_gets(&self, n: u32) {
        *self.faults.corrupt_gets.lock().expect("lock") = n;
    }
}

fn take_one(counter: &Mutex<u32>) -> bool {
    let mut d = counter.lock().expect("lock");
    let hit = *d > 0;
    *d = d.saturating_sub(1);
    hit
}

fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf[..buf.len() - 4]).into_owned();
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn closing(head: &str) -> String {
    let mut out: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    out.push("Connection: close");
    out.join("\r\n") + "\r\n\r\n"
}

fn serve(mut client: TcpStream, up: &str, f: &Faults) {
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let blob = path.contains("/v1/blobs/");
    if path.contains("/v1/ops") {
        f.ops
            .lock()
            .expect("lock")
            .push(String::from_utf8_lossy(&body).into_owned());
    }
    if blob && (method == "PUT" || method == "HEAD") && *f.refuse.lock().expect("lock") {
        let body = r#"{"error":"content larger than this proxy takes"}"#;
        let reply = format!(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(reply.as_bytes());
        return;
    }
    if blob && method == "PUT" {
        let sent = *f.put_bytes.lock().expect("lock");
        if f.hold_after
            .lock()
            .expect("lock")
            .is_some_and(|n| sent >= n)
        {
            *f.hold_after.lock().expect("lock") = None;
            *f.hold_puts.lock().expect("lock") = true;
        }
        let mut held = f.hold_puts.lock().expect("lock");
        if *held {
            *f.held_count.lock().expect("lock") += 1;
        }
        while *held {
            held = f.held.wait(held).expect("wait");
        }
    }
    if blob && method == "HEAD" {
        *f.heads.lock().expect("lock") += 1;
    }
    let Ok(mut server) = TcpStream::connect(up) else {
        return;
    };
    let _ = server.write_all(closing(&head).as_bytes());
    let _ = server.write_all(&body);
    let mut reply = Vec::new();
    let _ = server.read_to_end(&mut reply);
    if blob && method == "PUT" {
        *f.put_bytes.lock().expect("lock") += body.len() as u64;
    }
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(reply.len());
    let rhead = String::from_utf8_lossy(&reply[..split]).into_owned();
    let mut rbody = reply.get(split + 4..).unwrap_or_default().to_vec();
    if blob && method == "GET" {
        let n = {
            let mut g = f.gets.lock().expect("lock");
            g.push(header(&head, "range").unwrap_or_default());
            g.len()
        };
        if !rbody.is_empty() && f.cut_at.lock().expect("lock").contains(&n) {
            let _ = client.write_all(closing(&rhead).as_bytes());
            let _ = client.write_all(&rbody[..rbody.len() / 2]);
            return; // the connection closes mid-body
        }
        if !rbody.is_empty() && take_one(&f.corrupt_gets) {
            let i = rbody.len() / 2;
            rbody[i] ^= 0xff;
        }
    }
    let _ = client.write_all(closing(&rhead).as_bytes());
    let _ = client.write_all(&rbody);
}
