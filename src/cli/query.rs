//! `query`: a local query from the shell. Records print one a line (`id`
//! and document, or the whole record as JSON with `--json`), a page at a
//! time; `--explain` says how the daemon answered; `--watch` keeps a live
//! query open and prints its events as JSON lines.

use clap::Args;
use syncd::ipc::wire::{QueryPlanView, SortField};

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output;

/// Records asked of the daemon per request.
const PAGE: u32 = 1000;

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Collection to query.
    collection: String,
    /// A Mango selector, e.g. '{"done": false, "due": {"$lt": "2026-12-14"}}';
    /// `-` reads it from stdin, @FILE from a file. Default: every record.
    #[arg(default_value = "{}")]
    selector: String,
    /// Sort by FIELD (a dotted path), ascending, or FIELD:desc; repeat for
    /// ties. Default: id order.
    #[arg(long, value_name = "FIELD[:desc]")]
    sort: Vec<String>,
    /// Print at most this many records (with --watch: the first page the
    /// live query keeps).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Continue after this cursor (printed on stderr when --limit stops a
    /// query that has more).
    #[arg(long, conflicts_with = "watch")]
    cursor: Option<String>,
    /// Print each record as the JSON `get` prints (--watch always prints
    /// JSON lines).
    #[arg(long)]
    json: bool,
    /// Print how the daemon answered (the index, or a scan) instead of
    /// the records.
    #[arg(long, conflicts_with = "watch")]
    explain: bool,
    /// Keep the query open: the first result, then added / changed /
    /// removed events as JSON lines, until interrupted.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// `FIELD` or `FIELD:desc` (or `FIELD:asc`).
fn sort_field(s: &str) -> Result<SortField, CliError> {
    let (field, desc) = match s.split_once(':') {
        Some((f, "desc")) => (f, true),
        Some((f, "asc")) => (f, false),
        Some((_, other)) => {
            return Err(CliError::Usage(format!(
                "--sort {s}: the direction is `asc` or `desc`, not {other:?}"
            )))
        }
        None => (s, false),
    };
    Ok(SortField {
        field: field.to_owned(),
        desc,
    })
}

pub async fn run(a: &QueryArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let selector = super::doc_arg::read(&a.selector)?;
    let sort = a
        .sort
        .iter()
        .map(|s| sort_field(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut c = a.daemon.or(outer).connect().await?;
    if a.watch {
        c.watch_query(&a.collection, selector, &sort, a.limit)
            .await?;
        loop {
            let ev = c.next_event().await?;
            output::json_line(&ev)?;
        }
    }
    let mut remaining = a.limit.unwrap_or(u32::MAX);
    let mut cursor = a.cursor.clone();
    loop {
        let page = remaining.min(PAGE);
        let p = c
            .query(
                &a.collection,
                selector.clone(),
                &sort,
                Some(page),
                cursor.as_deref(),
            )
            .await?;
        if a.explain {
            return explain(&p.plan, a.json);
        }
        for r in &p.records {
            if a.json {
                output::json_line(r)?;
            } else {
                output::line(format_args!("{}\t{}", r.id, r.data))?;
            }
        }
        remaining = remaining.saturating_sub(p.records.len() as u32);
        match p.next {
            Some(n) if remaining > 0 => cursor = Some(n),
            Some(n) => {
                eprintln!("syncd: more records follow; continue with --cursor {n}");
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

fn explain(p: &QueryPlanView, json: bool) -> Result<(), CliError> {
    if json {
        return output::json_line(p);
    }
    let how = match &p.index {
        Some(ix) => {
            let order = if p.ordered {
                "read in the query's order"
            } else {
                "sorted in memory"
            };
            let by = if p.bounds.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.bounds)
            };
            format!("index [{ix}]{by}, {order}")
        }
        None => "scan of the collection (no ready index fits), sorted in memory".to_owned(),
    };
    output::line(format_args!("{how}; {} record(s) examined", p.examined))?;
    Ok(())
}
