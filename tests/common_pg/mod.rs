//! A throwaway PostgreSQL server for tests and the load generator, and
//! `syncd backend --postgres` nodes on it.
//!
//! Why: the PostgreSQL store's guarantees (row locks, the feed-head lock,
//! LISTEN/NOTIFY across connections) only mean something against the real
//! server, so nothing here is mocked. [`Pg::start`] runs `initdb` and
//! `pg_ctl` on a temp dir and a free loopback port (binaries from `PATH`, else
//! the newest `/usr/lib/postgresql/*/bin`). PostgreSQL refuses to run as
//! root: as root, the dir is handed to `nobody` and the tools run through
//! `runuser -u nobody --`. Stopped (`-m immediate`) on drop.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first line a spawned `syncd backend` prints on stdout (its
/// `listening on ADDR`); empty if it printed none.
pub fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    line
}

/// The address a spawned `syncd backend` listens on; panics with what it
/// printed instead.
pub fn listening_addr(child: &mut Child) -> String {
    let line = first_line(child);
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("backend did not start: {line:?}"))
        .to_owned()
}

/// A PostgreSQL server under test.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_nobody: bool,
    pub port: u16,
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !p.is_empty() {
            let real = std::fs::canonicalize(&p).unwrap_or_else(|_| PathBuf::from(&p));
            if let Some(dir) = real.parent() {
                return dir.to_path_buf();
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists());
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("PostgreSQL not found: no initdb on PATH nor in /usr/lib/postgresql/*/bin")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Pg {
    /// `initdb` + `pg_ctl start`; `durable`: fsync on (the load generator),
    /// else off (tests: faster, and no test relies on surviving an OS crash).
    pub fn start_with(durable: bool) -> Pg {
        let dir = tempfile::Builder::new()
            .prefix("syncd-pg")
            .tempdir()
            .expect("tempdir");
        let as_nobody = unsafe { libc::geteuid() } == 0;
        if as_nobody {
            let st = Command::new("chown")
                .arg("nobody")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown nobody failed");
            let st = Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .expect("chmod");
            assert!(st.success(), "chmod failed");
        }
        let mut pg = Pg {
            dir,
            bin: pg_bin_dir(),
            as_nobody,
            port: 0,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.port = free_port();
        pg.start_server(durable);
        pg
    }

    /// [`Pg::start_with`] without fsync.
    pub fn start() -> Pg {
        Pg::start_with(false)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}\nlog: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn start_server(&self, durable: bool) {
        let fsync = if durable { "on" } else { "off" };
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// Stops the server (clients see it unreachable).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.start_server(false);
    }

    /// A URL of database `db` (see [`Pg::create_db`]); `postgres` exists.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name`.
    pub fn create_db(&self, name: &str) {
        let port = self.port.to_string();
        let host = self.dir.path().display().to_string();
        self.run(
            "createdb",
            &["-h", &host, "-p", &port, "-U", "postgres", name],
        );
    }

    /// Runs `sql` with psql and returns the bigint it prints first (for checks from the database side).
    pub fn scalar(&self, db: &str, sql: &str) -> i64 {
        let exe = self.bin.join("psql");
        let out = Command::new(exe)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-tAc", sql])
            .output()
            .expect("psql");
        // The first line: an UPDATE ... RETURNING also prints its tag.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = stdout.lines().next().unwrap_or_default().trim().to_owned();
        text.parse().unwrap_or_else(|_| {
            panic!(
                "psql {sql}: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `syncd backend --postgres URL` on loopback. SIGKILLed on drop.
pub struct PgNode {
    pub bin: PathBuf,
    pub url: String,
    pub addr: String,
    pub child: Option<Child>,
    /// Further flags (`--token T`, `--no-batch`, ...).
    pub args: Vec<String>,
    /// Where the node's stderr (its log) is appended; `None`: discarded.
    pub log: Option<PathBuf>,
}

impl PgNode {
    /// Starts a node with `bin` (a `syncd` binary) on a free port.
    pub fn start(bin: &Path, url: &str) -> PgNode {
        PgNode::start_with(bin, url, &[], None)
    }

    /// [`PgNode::start`] with further flags, its log appended to `log`.
    pub fn start_with(bin: &Path, url: &str, extra: &[&str], log: Option<&Path>) -> PgNode {
        let mut n = PgNode {
            bin: bin.to_path_buf(),
            url: url.to_owned(),
            addr: String::new(),
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            log: log.map(Path::to_path_buf),
        };
        n.spawn_on("127.0.0.1:0");
        n
    }

    /// (Re)starts on `listen`; retries while the port lingers.
    pub fn spawn_on(&mut self, listen: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stderr = match &self.log {
                Some(p) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .expect("node log file"),
                ),
                None => Stdio::null(),
            };
            let mut child = Command::new(&self.bin)
                .args(["backend", "--listen", listen, "--postgres", &self.url])
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .expect("spawn backend");
            let line = first_line(&mut child);
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                self.addr = addr.to_owned();
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "backend node did not start: {line:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again on the same address.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        self.spawn_on(&addr);
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The runtime the `PgStore` tests connect their stores on (the store's
/// blocking bridge needs a multi-threaded one).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A users-mode caller `sub` who may write `scopes` (and its private scope).
pub fn writer(sub: &str, scopes: &[&str]) -> syncd::backend::server::access::Caller {
    use syncd::backend::server::auth::{Claims, Principal};
    syncd::backend::server::access::Caller::User(
        Principal::from_claims(Claims {
            sub: sub.into(),
            exp: u64::MAX,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Claims::default()
        })
        .expect("claims"),
    )
}

/// Every entry of `scope`'s feed on `s`, checking that its sequences are
/// 1..=n and that the last one is the head.
pub fn whole_feed(
    s: &syncd::backend::server::pg_store::PgStore,
    scope: &str,
) -> Vec<syncd::backend::protocol::ScopedChange> {
    use syncd::backend::server::store::BackendStore;
    let (mut cursor, mut out) = (0u64, Vec::new());
    loop {
        let page = s
            .pull(&[(scope.to_owned(), cursor)], 97)
            .expect("pull")
            .remove(0);
        for (seq, entry) in page.entries {
            assert_eq!(seq, cursor + 1, "a gap in {scope}'s feed");
            cursor = seq;
            out.push(entry);
        }
        if !page.more {
            assert_eq!(cursor, page.head, "{scope}: read to its head");
            return out;
        }
    }
}
