//! `attach`, `detach` and `attachment`: files on records.
//!
//! Exists because these stream bytes, not JSON: a file (or stdin) goes to
//! the daemon in chunks, and an attachment comes back in chunks to a file
//! (or stdout), with a progress bar when stderr is a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::write::{maybe_wait, WaitArg};

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Collection of the record.
    collection: String,
    /// Id of the record (it must exist).
    id: String,
    /// The attachment's name on the record (replaces one of that name).
    name: String,
    /// The file to attach, or - for stdin.
    file: String,
    /// Its content type (default application/octet-stream).
    #[arg(long = "type", value_name = "MIME")]
    content_type: Option<String>,
    #[command(flatten)]
    wait: WaitArg,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Collection of the record.
    collection: String,
    /// Id of the record.
    id: String,
    /// The attachment to remove.
    name: String,
    #[command(flatten)]
    wait: WaitArg,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct AttachmentArgs {
    /// Collection of the record.
    collection: String,
    /// Id of the record.
    id: String,
    /// The attachment to read.
    name: String,
    /// Write it to this file instead of stdout (downloaded first if it is
    /// not on this device yet).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    daemon: DaemonOpts,
}

fn bar(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
    );
    if let Ok(s) = style {
        b.set_style(s);
    }
    Some(b)
}

/// Attaches a file; prints the record's id.
pub async fn attach(a: &AttachArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let progress;
    let (id, op_id) = if a.file == "-" {
        progress = bar(None);
        let p = progress.clone();
        c.attach(
            &a.collection,
            &a.id,
            &a.name,
            a.content_type.as_deref(),
            tokio::io::stdin(),
            |n| p.iter().for_each(|b| b.set_position(n)),
        )
        .await?
    } else {
        if std::path::Path::new(&a.file).is_dir() {
            return Err(CliError::Usage(format!(
                "{} is a directory: attach a file (or - for stdin)",
                a.file
            )));
        }
        let f = tokio::fs::File::open(&a.file)
            .await
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", a.file)))?;
        let len = f.metadata().await.ok().map(|m| m.len());
        progress = bar(len);
        let p = progress.clone();
        c.attach(
            &a.collection,
            &a.id,
            &a.name,
            a.content_type.as_deref(),
            f,
            |n| p.iter().for_each(|b| b.set_position(n)),
        )
        .await?
    };
    if let Some(b) = progress {
        b.finish_and_clear();
    }
    super::output::line(&id)?;
    maybe_wait(&mut c, &a.wait, &op_id, (&a.collection, &id)).await
}

/// Removes an attachment.
pub async fn detach(a: &DetachArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let (_, op_id) = c.detach(&a.collection, &a.id, &a.name).await?;
    maybe_wait(&mut c, &a.wait, &op_id, (&a.collection, &a.id)).await
}

/// Writes an attachment to a file or stdout. A file is written beside its
/// destination and renamed into place once complete.
pub async fn attachment(a: &AttachmentArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let progress = bar(None);
    let p = progress.clone();
    let on_chunk = move |n: u64, total: u64| {
        if let Some(b) = &p {
            b.set_length(total);
            b.set_position(n);
        }
    };
    match &a.output {
        None => {
            c.read_attachment(&a.collection, &a.id, &a.name, tokio::io::stdout(), on_chunk)
                .await?;
        }
        Some(path) => {
            if path.is_dir() {
                return Err(CliError::Usage(format!(
                    "-o {}: is a directory; name the file to write",
                    path.display()
                )));
            }
            // Beside the destination (same file system), named for this
            // process, so that two reads never share it.
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".syncd-part-{}", std::process::id()));
            let tmp = path.with_file_name(name);
            let f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", tmp.display())))?;
            let r = c
                .read_attachment(&a.collection, &a.id, &a.name, f, on_chunk)
                .await;
            if let Err(e) = r {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.into());
            }
            if let Err(e) = tokio::fs::rename(&tmp, path).await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(CliError::Failed(format!(
                    "cannot write {}: {e}",
                    path.display()
                )));
            }
        }
    }
    if let Some(b) = progress {
        b.finish_and_clear();
    }
    Ok(())
}
