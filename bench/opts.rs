//! The harness's command line: scenarios, sizes and repetitions, with three
//! sets of defaults (full, `--quick`, and the smoke run of `cargo test`).

use std::path::PathBuf;
use std::time::Duration;

use crate::common;

pub(crate) const USAGE: &str = "\
syncd benchmark harness

usage: cargo bench --bench harness -- [SCENARIO...] [OPTIONS]

scenarios (default: all): writes reads memory idle drain restart live coalesce
                          conflict scopes queries couch attachments encryption

options:
  --quick             smaller sizes and fewer reps everywhere (whole run < 2 min);
                      options given after it still apply
  --reps N            repetitions of each measured run (default 5)
  --secs S            seconds per measured run of writes/reads (default 1.5)
  --warmup S          seconds of unmeasured warm-up per client count (default 0.5)
  --clients LIST      write client counts, bincode (default 1,4,16,64)
  --json-clients LIST write client counts over JSON (default 1,64)
  --outbox-clients LIST  client threads of the SQLite and in-process redb
                      outbox baselines (default 1,64)
  --read-clients LIST read client counts (default 1,16)
  --ops M             ops to queue in `memory` (default 200000)
  --million           same as --ops 1000000
  --writers N         concurrent writers filling a queue (default 128)
  --idle-secs S       length of one idle sampling window (default 5)
  --idle-windows N    idle sampling windows (default 3)
  --record-bytes N    size of the fsync baseline's record (default 128)
  --drain-ops N       ops queued before each drain (default 100000)
  --drain-one-op-ops N  ops queued before each one-op-per-request drain, which
                      is ~50x slower (default 5000)
  --drain-reps N      repetitions of each drain configuration (default 3)
  --restart-ops N     ops queued for the large store of `restart` (default 1000000)
  --restart-small-ops N  ops queued for its small store (default 10000)
  --restart-reps N    restarts measured on each store (default 5)
  --conflict-records K  records in conflict at once in `conflict` (default 100)
  --conflict-ops Q    ops queued behind the conflicts (default 1000000)
  --conflict-base-ops N  ops queued behind them in the baseline (default 1000;
                      at least batch_size, so every push round sends a full batch)
  --conflict-reps N   repetitions of each conflict configuration (default 3)
  --scope-records N   records in the scope `scopes` back-fills (default 100000)
  --scope-reps N      repetitions of `scopes` (default 3)
  --query-records N   records in the collection `queries` reads (default 1000000)
  --couch-docs N      documents each `couch` drain and pull moves (default 5000)
  --couch-reps N      repetitions of `couch` (default 3)
  --attach-mb N       size of the file `attachments` attaches, MB (default 200)
  --attach-reps N     repetitions of `attachments` (default 3)
  --bin PATH          the syncd binary (default: the one cargo built)

Temp dirs go to $TMPDIR (default /tmp): set it to measure another disk.";

/// Which set of defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    Full,
    Quick,
    Smoke,
}

#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) scenarios: Vec<String>,
    pub(crate) reps: usize,
    pub(crate) secs: f64,
    pub(crate) warmup: f64,
    pub(crate) clients: Vec<usize>,
    pub(crate) json_clients: Vec<usize>,
    pub(crate) outbox_clients: Vec<usize>,
    pub(crate) read_clients: Vec<usize>,
    pub(crate) ops: u64,
    pub(crate) writers: usize,
    pub(crate) idle_secs: f64,
    pub(crate) idle_windows: usize,
    pub(crate) record_bytes: usize,
    pub(crate) drain_ops: u64,
    pub(crate) drain_one_op_ops: u64,
    pub(crate) drain_reps: usize,
    pub(crate) restart_ops: u64,
    pub(crate) restart_small_ops: u64,
    pub(crate) restart_reps: usize,
    pub(crate) conflict_records: usize,
    pub(crate) conflict_ops: u64,
    pub(crate) conflict_base_ops: u64,
    pub(crate) conflict_reps: usize,
    pub(crate) scope_records: u64,
    pub(crate) scope_reps: usize,
    pub(crate) query_records: u64,
    pub(crate) couch_docs: u64,
    pub(crate) couch_reps: usize,
    pub(crate) attach_mb: f64,
    pub(crate) attach_reps: usize,
    pub(crate) bin: PathBuf,
    pub(crate) smoke: bool,
}

impl Opts {
    pub(crate) fn defaults(mode: Mode) -> Opts {
        let full = Opts {
            scenarios: all_scenarios(),
            reps: 5,
            secs: 1.5,
            warmup: 0.5,
            clients: vec![1, 4, 16, 64],
            json_clients: vec![1, 64],
            outbox_clients: vec![1, 64],
            read_clients: vec![1, 16],
            ops: 200_000,
            writers: 128,
            idle_secs: 5.0,
            idle_windows: 3,
            record_bytes: 128,
            drain_ops: 100_000,
            drain_one_op_ops: 5_000,
            drain_reps: 3,
            restart_ops: 1_000_000,
            restart_small_ops: 10_000,
            restart_reps: 5,
            conflict_records: 100,
            conflict_ops: 1_000_000,
            conflict_base_ops: 1_000,
            conflict_reps: 3,
            scope_records: 100_000,
            scope_reps: 3,
            query_records: 1_000_000,
            couch_docs: 5_000,
            couch_reps: 3,
            attach_mb: 200.0,
            attach_reps: 3,
            bin: common::bin(),
            smoke: false,
        };
        match mode {
            Mode::Full => full,
            Mode::Quick => Opts {
                reps: 3,
                secs: 1.0,
                warmup: 0.3,
                ops: 50_000,
                idle_secs: 2.0,
                idle_windows: 2,
                drain_ops: 20_000,
                drain_one_op_ops: 1_000,
                drain_reps: 2,
                restart_ops: 100_000,
                restart_small_ops: 10_000,
                restart_reps: 3,
                conflict_records: 20,
                conflict_ops: 100_000,
                conflict_reps: 2,
                scope_records: 20_000,
                scope_reps: 2,
                query_records: 100_000,
                couch_docs: 1_000,
                couch_reps: 2,
                attach_mb: 50.0,
                attach_reps: 2,
                ..full
            },
            Mode::Smoke => Opts {
                reps: 1,
                secs: 0.1,
                warmup: 0.0,
                clients: vec![1, 4],
                json_clients: vec![4],
                outbox_clients: vec![4],
                read_clients: vec![1, 4],
                ops: 500,
                writers: 8,
                idle_secs: 0.3,
                idle_windows: 1,
                drain_ops: 300,
                drain_one_op_ops: 100,
                drain_reps: 1,
                restart_ops: 300,
                restart_small_ops: 100,
                restart_reps: 1,
                conflict_records: 3,
                conflict_ops: 300,
                conflict_base_ops: 30,
                conflict_reps: 1,
                scope_records: 300,
                scope_reps: 1,
                query_records: 400,
                couch_docs: 50,
                couch_reps: 1,
                attach_mb: 2.0,
                attach_reps: 1,
                smoke: true,
                ..full
            },
        }
    }

    pub(crate) fn parse(args: &[String]) -> Result<Opts, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Opts::defaults(if quick { Mode::Quick } else { Mode::Full });
        let mut scenarios = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| -> Result<String, String> {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--bench" | "--quick" => {}
                "-h" | "--help" => return Err(String::new()),
                "--reps" => o.reps = num(&val(a)?, a)?,
                "--secs" => o.secs = num(&val(a)?, a)?,
                "--warmup" => o.warmup = num(&val(a)?, a)?,
                "--clients" => o.clients = list(&val(a)?, a)?,
                "--json-clients" => o.json_clients = list(&val(a)?, a)?,
                "--outbox-clients" => o.outbox_clients = list(&val(a)?, a)?,
                "--read-clients" => o.read_clients = list(&val(a)?, a)?,
                "--ops" => o.ops = num(&val(a)?, a)?,
                "--million" => o.ops = 1_000_000,
                "--writers" => o.writers = num(&val(a)?, a)?,
                "--idle-secs" => o.idle_secs = num(&val(a)?, a)?,
                "--idle-windows" => o.idle_windows = num(&val(a)?, a)?,
                "--record-bytes" => o.record_bytes = num(&val(a)?, a)?,
                "--drain-ops" => o.drain_ops = num(&val(a)?, a)?,
                "--drain-one-op-ops" => o.drain_one_op_ops = num(&val(a)?, a)?,
                "--drain-reps" => o.drain_reps = num(&val(a)?, a)?,
                "--restart-ops" => o.restart_ops = num(&val(a)?, a)?,
                "--restart-small-ops" => o.restart_small_ops = num(&val(a)?, a)?,
                "--restart-reps" => o.restart_reps = num(&val(a)?, a)?,
                "--conflict-records" => o.conflict_records = num(&val(a)?, a)?,
                "--conflict-ops" => o.conflict_ops = num(&val(a)?, a)?,
                "--conflict-base-ops" => o.conflict_base_ops = num(&val(a)?, a)?,
                "--conflict-reps" => o.conflict_reps = num(&val(a)?, a)?,
                "--scope-records" => o.scope_records = num(&val(a)?, a)?,
                "--scope-reps" => o.scope_reps = num(&val(a)?, a)?,
                "--query-records" => o.query_records = num(&val(a)?, a)?,
                "--couch-docs" => o.couch_docs = num(&val(a)?, a)?,
                "--couch-reps" => o.couch_reps = num(&val(a)?, a)?,
                "--attach-mb" => o.attach_mb = num(&val(a)?, a)?,
                "--attach-reps" => o.attach_reps = num(&val(a)?, a)?,
                "--bin" => o.bin = PathBuf::from(val(a)?),
                s if all_scenarios().iter().any(|x| x == s) => scenarios.push(s.to_owned()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        o.check()?;
        if !scenarios.is_empty() {
            o.scenarios = scenarios;
        }
        Ok(o)
    }

    fn check(&self) -> Result<(), String> {
        let counts = [
            self.reps,
            self.idle_windows,
            self.writers,
            self.drain_reps,
            self.restart_reps,
            self.conflict_records,
            self.conflict_reps,
            self.scope_reps,
            self.couch_reps,
            self.attach_reps,
        ];
        let sizes = [
            self.ops,
            self.drain_ops,
            self.drain_one_op_ops,
            self.restart_ops,
            self.restart_small_ops,
            self.conflict_ops,
            self.conflict_base_ops,
            self.scope_records,
            self.query_records,
            self.couch_docs,
        ];
        if counts.contains(&0) || sizes.contains(&0) || self.secs <= 0.0 || self.idle_secs <= 0.0 {
            return Err("repetitions, sizes, windows and durations must be positive".into());
        }
        let lists = [
            &self.clients,
            &self.json_clients,
            &self.outbox_clients,
            &self.read_clients,
        ];
        if lists.iter().any(|l| l.contains(&0)) {
            return Err("client counts must be positive".into());
        }
        Ok(())
    }

    pub(crate) fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }

    pub(crate) fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }
}

pub(crate) fn all_scenarios() -> Vec<String> {
    [
        "writes",
        "reads",
        "memory",
        "idle",
        "drain",
        "restart",
        "live",
        "coalesce",
        "conflict",
        "scopes",
        "queries",
        "couch",
        "attachments",
        "encryption",
    ]
    .map(String::from)
    .to_vec()
}

fn num<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name}: not a number: {s:?}"))
}

fn list(s: &str, name: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(|x| num(x.trim(), name)).collect()
}
