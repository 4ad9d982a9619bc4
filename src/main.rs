//! The `syncd` command line: parses arguments and calls the library.
//! Exit codes: 0 ok; 1 the daemon answered with an error; 2 usage;
//! 3 the daemon is not reachable.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use syncd::client::{Client, ClientError};
use syncd::config::Config;
use syncd::ipc::wire::{Event, OpView, RecordView, Request, Response, Side, StatusView};

#[derive(Parser)]
#[command(
    name = "syncd",
    version,
    about = "Offline-first sync daemon and its command line"
)]
struct Cli {
    /// Socket of the daemon (else $SYNCD_SOCKET, else the one in --config,
    /// else the default path).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// daemon.toml to read.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum WaitFor {
    Synced,
}

#[derive(Args)]
struct WaitArg {
    /// Block until the write is on the server (exit 0) or failed for good.
    #[arg(long, value_enum)]
    wait: Option<WaitFor>,
    /// With --wait: give up after this many seconds (exit 1; the write stays
    /// durable and queued). Default: wait as long as it takes.
    #[arg(long, requires = "wait")]
    timeout: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run,
    /// Create or replace a record; prints its local id.
    Put {
        collection: String,
        #[arg(long)]
        id: Option<String>,
        json: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Merge top-level fields into a record (null removes a key).
    Patch {
        collection: String,
        id: String,
        json: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Print one record as JSON.
    Get { collection: String, id: String },
    /// Delete a record.
    Delete {
        collection: String,
        id: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Records of a collection, one JSON object a line.
    List {
        collection: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Start from this id (inclusive).
        #[arg(long)]
        start: Option<String>,
    },
    /// Pending operations, in order.
    Queue {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// The change feed as JSON lines.
    Watch { collections: Vec<String> },
    /// What the daemon is doing.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Wake the sync worker now (push, then pull).
    Sync {
        /// Block until the queue is drained.
        #[arg(long)]
        wait: bool,
    },
    /// Stop syncing (survives a restart).
    Pause,
    /// Resume syncing.
    Resume,
    /// Conflicts parked for manual resolution.
    Conflicts {
        #[arg(long)]
        json: bool,
    },
    /// Resolve a parked conflict.
    Resolve {
        collection: String,
        id: String,
        #[arg(long, value_enum, conflicts_with = "data")]
        take: Option<TakeArg>,
        /// A merged document (JSON object) to send.
        #[arg(long)]
        data: Option<String>,
    },
    /// Operations the server rejected for good.
    DeadLetters {
        #[arg(long)]
        json: bool,
    },
    /// Put a dead-lettered op back on the queue.
    Retry { op_id: String },
    /// Drop a dead-lettered op.
    Discard { op_id: String },
    /// Run the reference backend server.
    Backend(BackendArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum TakeArg {
    Local,
    Server,
}

#[derive(Args)]
struct BackendArgs {
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Directory of the backend's store.
    #[arg(long)]
    data: PathBuf,
    /// Require this bearer token.
    #[arg(long, env = "SYNCD_BACKEND_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Fraction of requests answered 503 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    fail_503: f64,
    /// Retry-After seconds on injected 503s.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Fraction of requests that hang for --hang-ms before answering.
    #[arg(long, default_value_t = 0.0)]
    hang: f64,
    #[arg(long, default_value_t = 30_000)]
    hang_ms: u64,
    /// Fraction of op requests applied and then dropped without a reply.
    #[arg(long, default_value_t = 0.0)]
    drop_after_apply: f64,
    /// Answer 404 to v1/ops/batch (a server without batch support).
    #[arg(long)]
    no_batch: bool,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Serve https: PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// A failure that maps to an exit code.
enum Fail {
    Api(String),
    Usage(String),
    Unreachable(String),
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { .. } => Fail::Unreachable(e.to_string()),
            other => Fail::Api(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("syncd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Api(m)) => {
            eprintln!("syncd: {m}");
            ExitCode::from(1)
        }
        Err(Fail::Usage(m)) => {
            eprintln!("syncd: {m}");
            ExitCode::from(2)
        }
        Err(Fail::Unreachable(m)) => {
            eprintln!("syncd: {m}");
            ExitCode::from(3)
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, Fail> {
    match path {
        Some(p) => Config::load(p).map_err(|e| Fail::Usage(format!("config error: {e}"))),
        None => Ok(Config::default()),
    }
}

/// --socket, else $SYNCD_SOCKET, else the config's, else the default.
fn socket_path(cli: &Cli) -> Result<PathBuf, Fail> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(s) = std::env::var_os("SYNCD_SOCKET").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(s));
    }
    Ok(load_config(cli.config.as_deref())?.daemon.socket)
}

fn parse_json(s: &str) -> Result<Value, Fail> {
    serde_json::from_str(s).map_err(|e| Fail::Usage(format!("invalid JSON argument: {e}")))
}

async fn connect(cli: &Cli) -> Result<Client, Fail> {
    let path = socket_path(cli)?;
    Ok(Client::connect(&path, "syncd-cli").await?)
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Fail> {
    let s = serde_json::to_string(v).map_err(|e| Fail::Api(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    Ok(())
}

fn record_json(r: &RecordView) -> Value {
    json!({
        "collection": r.collection, "id": r.id, "data": r.data.0,
        "server_id": r.server_id, "version": r.version,
        "updated_at": r.updated_at, "pending": r.pending,
    })
}

async fn dispatch(cli: Cli) -> Result<(), Fail> {
    match &cli.cmd {
        Cmd::Run => {
            let cfg = load_config(cli.config.as_deref())?;
            let mut cfg = cfg;
            if let Some(s) = &cli.socket {
                cfg.daemon.socket = s.clone();
            }
            let log = syncd::daemon::init_logging(&cfg.daemon.log_level);
            syncd::daemon::run(cfg, cli.config.clone(), log)
                .await
                .map_err(|e| Fail::Api(e.to_string()))
        }
        Cmd::Backend(a) => {
            let _log = syncd::daemon::init_logging("info");
            let tls = match (&a.tls_cert, &a.tls_key) {
                (Some(c), Some(k)) => Some(
                    syncd::backend::server::load_tls(c, k)
                        .map_err(|e| Fail::Usage(format!("backend TLS: {e}")))?,
                ),
                _ => None,
            };
            let opts = syncd::backend::server::ServerOptions {
                listen: a.listen,
                data_dir: a.data.clone(),
                token: a.token.clone(),
                faults: syncd::backend::server::Faults {
                    fail_503: a.fail_503,
                    retry_after_s: a.retry_after,
                    hang: a.hang,
                    hang_ms: a.hang_ms,
                    drop_after_apply: a.drop_after_apply,
                    no_batch: a.no_batch,
                },
                max_body_bytes: a.max_body_bytes,
                tls,
            };
            syncd::backend::server::run(opts)
                .await
                .map_err(|e| Fail::Api(format!("backend: {e}")))
        }
        Cmd::Put {
            collection,
            id,
            json,
            wait,
        } => {
            let data = parse_json(json)?;
            let mut c = connect(&cli).await?;
            let (id, op_id) = c.put(collection, id.as_deref(), data).await?;
            println!("{id}");
            maybe_wait(&mut c, wait, &op_id, (collection, &id)).await
        }
        Cmd::Patch {
            collection,
            id,
            json,
            wait,
        } => {
            let data = parse_json(json)?;
            let mut c = connect(&cli).await?;
            let (_, op_id) = c.patch(collection, id, data).await?;
            maybe_wait(&mut c, wait, &op_id, (collection, id)).await
        }
        Cmd::Delete {
            collection,
            id,
            wait,
        } => {
            let mut c = connect(&cli).await?;
            let (_, op_id) = c.delete(collection, id).await?;
            maybe_wait(&mut c, wait, &op_id, (collection, id)).await
        }
        Cmd::Get { collection, id } => {
            let mut c = connect(&cli).await?;
            let r = c.get(collection, id).await?;
            print_json(&record_json(&r))
        }
        Cmd::List {
            collection,
            limit,
            start,
        } => {
            let mut c = connect(&cli).await?;
            let mut remaining = limit.map(|l| l as usize).unwrap_or(usize::MAX);
            let mut start = start.clone();
            while remaining > 0 {
                let page = remaining.min(1000) as u32;
                let (recs, next) = c.list(collection, start.as_deref(), Some(page)).await?;
                for r in &recs {
                    print_json(&record_json(r))?;
                }
                remaining = remaining.saturating_sub(recs.len());
                match next {
                    Some(n) if remaining > 0 => start = Some(n),
                    _ => break,
                }
            }
            Ok(())
        }
        Cmd::Queue { json, limit } => {
            let mut c = connect(&cli).await?;
            let ops = c.queue(*limit).await?;
            print_ops(&ops, *json)
        }
        Cmd::DeadLetters { json } => {
            let mut c = connect(&cli).await?;
            match c.request(Request::DeadLetters {}).await? {
                Response::Ops(ops) => print_ops(&ops, *json),
                other => Err(Fail::Api(format!("unexpected reply {other:?}"))),
            }
        }
        Cmd::Watch { collections } => {
            let mut c = connect(&cli).await?;
            c.watch(collections).await?;
            loop {
                let ev: Event = c.next_event().await?;
                print_json(&ev)?;
            }
        }
        Cmd::Status { json } => {
            let mut c = connect(&cli).await?;
            let s = c.status().await?;
            if *json {
                print_json(&s)
            } else {
                print_status(&s);
                Ok(())
            }
        }
        Cmd::Sync { wait } => {
            let mut c = connect(&cli).await?;
            c.request(Request::Sync {}).await?;
            if *wait {
                wait_drained(&mut c).await
            } else {
                Ok(())
            }
        }
        Cmd::Pause => simple(&cli, Request::Pause {}).await,
        Cmd::Resume => simple(&cli, Request::Resume {}).await,
        Cmd::Retry { op_id } => {
            simple(
                &cli,
                Request::Retry {
                    op_id: op_id.clone(),
                },
            )
            .await
        }
        Cmd::Discard { op_id } => {
            simple(
                &cli,
                Request::Discard {
                    op_id: op_id.clone(),
                },
            )
            .await
        }
        Cmd::Conflicts { json } => {
            let mut c = connect(&cli).await?;
            match c.request(Request::Conflicts {}).await? {
                Response::Conflicts(cs) => {
                    if *json {
                        print_json(&cs)
                    } else {
                        if cs.is_empty() {
                            println!("no conflicts");
                        }
                        for x in cs {
                            println!(
                                "{}/{}  server v{}{}  local: {}  server: {}",
                                x.collection,
                                x.id,
                                x.server_version,
                                if x.server_deleted { " (deleted)" } else { "" },
                                x.local
                                    .map(|d| d.0.to_string())
                                    .unwrap_or("(deleted)".into()),
                                x.server
                                    .map(|d| d.0.to_string())
                                    .unwrap_or("(deleted)".into()),
                            );
                        }
                        Ok(())
                    }
                }
                other => Err(Fail::Api(format!("unexpected reply {other:?}"))),
            }
        }
        Cmd::Resolve {
            collection,
            id,
            take,
            data,
        } => {
            let data = match data {
                Some(d) => Some(syncd::ipc::wire::Doc(parse_json(d)?)),
                None => None,
            };
            if take.is_none() && data.is_none() {
                return Err(Fail::Usage(
                    "resolve needs --take local|server or --data JSON".into(),
                ));
            }
            let take = take.map(|t| match t {
                TakeArg::Local => Side::Local,
                TakeArg::Server => Side::Server,
            });
            simple(
                &cli,
                Request::Resolve {
                    collection: collection.clone(),
                    id: id.clone(),
                    take,
                    data,
                },
            )
            .await
        }
    }
}

async fn simple(cli: &Cli, req: Request) -> Result<(), Fail> {
    let mut c = connect(cli).await?;
    c.request(req).await?;
    Ok(())
}

async fn maybe_wait(
    c: &mut Client,
    wait: &WaitArg,
    op_id: &str,
    record: (&str, &str),
) -> Result<(), Fail> {
    if wait.wait.is_none() {
        return Ok(());
    }
    let limit = match wait.timeout {
        Some(secs) => Some(std::time::Duration::try_from_secs_f64(secs).map_err(|_| {
            Fail::Usage(format!(
                "--timeout {secs}: must be a number of seconds >= 0"
            ))
        })?),
        None => None,
    };
    let waited = match limit {
        Some(limit) => tokio::time::timeout(limit, c.wait_synced(op_id))
            .await
            .map_err(|_| {
                Fail::Api(format!(
                    "op {op_id} not on the server after {} s; it is durable and stays queued (see syncd status)",
                    limit.as_secs_f64()
                ))
            })?,
        None => c.wait_synced(op_id).await,
    };
    match waited? {
        Response::Synced {
            mut server_id,
            mut version,
            ..
        } => {
            if server_id.is_none() {
                // Confirmed before we asked: the record says where it is
                // (gone, for a synced delete).
                if let Ok(r) = c.get(record.0, record.1).await {
                    server_id = r.server_id;
                    version = r.version;
                }
            }
            eprintln!(
                "synced: server id {}, version {}",
                server_id.as_deref().unwrap_or("-"),
                version.map(|v| v.to_string()).unwrap_or("-".into())
            );
            Ok(())
        }
        other => Err(Fail::Api(format!("unexpected reply {other:?}"))),
    }
}

/// `syncd sync --wait`: until the queue is empty, with a progress bar on a
/// terminal. Fails with the reason when syncing cannot go on.
async fn wait_drained(c: &mut Client) -> Result<(), Fail> {
    let first = c.status().await?;
    let total = first.queue_depth;
    let bar = if std::io::stdout().is_terminal() && total > 0 {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} ops  {per_sec}  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut since_nonempty_fail = 0u32;
    loop {
        let s = c.status().await?;
        if let Some(b) = &bar {
            b.set_position(total.saturating_sub(s.queue_depth));
            b.set_message(s.state.clone());
        }
        if s.queue_depth == 0 {
            if let Some(b) = &bar {
                b.finish();
            }
            return Ok(());
        }
        match s.state.as_str() {
            "paused" => {
                return Err(Fail::Api(format!(
                    "sync is paused with {} ops queued (syncd resume)",
                    s.queue_depth
                )))
            }
            "auth_error" => {
                return Err(Fail::Api(format!(
                    "the backend refused our credentials: {}",
                    s.last_error.unwrap_or_default()
                )))
            }
            "offline" if s.backend.is_none() => {
                return Err(Fail::Api("no backend configured ([backend] url)".into()))
            }
            "offline" | "backoff" | "backend_error" => {
                since_nonempty_fail += 1;
                // Keep waiting through short outages; give up after ~60 s.
                if since_nonempty_fail > 600 {
                    return Err(Fail::Api(format!(
                        "backend unreachable, {} ops still queued: {}",
                        s.queue_depth,
                        s.last_error.unwrap_or_default()
                    )));
                }
            }
            _ => since_nonempty_fail = 0,
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn print_ops(ops: &[OpView], json: bool) -> Result<(), Fail> {
    if json {
        for o in ops {
            print_json(o)?;
        }
        return Ok(());
    }
    if ops.is_empty() {
        println!("(empty)");
    }
    for o in ops {
        println!(
            "{:>20} {} {:6} {}/{} attempts={}{}",
            o.seq,
            o.op_id,
            o.kind,
            o.collection,
            o.id,
            o.attempts,
            o.last_error
                .as_deref()
                .map(|e| format!(" error={e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn ago(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn print_status(s: &StatusView) {
    let now = syncd::now_ms();
    println!("state:          {}", s.state);
    println!(
        "backend:        {}",
        s.backend.as_deref().unwrap_or("(none configured)")
    );
    println!("queue:          {} ops", s.queue_depth);
    if let Some(a) = s.oldest_pending_age_ms {
        println!("oldest pending: {} ago", ago(a));
    }
    if let Some(t) = s.next_retry_at {
        println!("next retry in:  {}", ago((t - now).max(0)));
    }
    println!(
        "last sync:      {}",
        s.last_sync_at
            .map(|t| format!("{} ago", ago(now - t)))
            .unwrap_or("never".into())
    );
    if let Some(e) = &s.last_error {
        println!("last error:     {e}");
    }
    println!(
        "conflicts:      {} parked, {} resolved",
        s.conflicts, s.conflicts_resolved
    );
    println!("dead letters:   {}", s.dead_letters);
    println!("client id:      {}", s.client_id);
    println!("store:          {} bytes", s.store_bytes);
}
