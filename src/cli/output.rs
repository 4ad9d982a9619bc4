//! Everything the CLI prints on stdout goes through here: JSON lines,
//! aligned tables, plain lines and the `sync --wait` progress bar.
//!
//! Exists so that one place turns a write error into [`CliError`]: a closed
//! pipe (`syncd queue | head -1`) ends the command quietly with exit 0
//! instead of the panic (exit 101) that `println!` gives.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

use serde::Serialize;

use super::error::CliError;

/// One line of text.
pub fn line(text: impl Display) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// One value as compact JSON on a line of its own.
pub fn json_line(value: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string(value)
        .map_err(|e| CliError::Failed(format!("cannot print as JSON: {e}")))?;
    line(text)
}

/// Rows as columns padded to the widest cell, two spaces apart; the last
/// cell of a row is not padded (no trailing blanks).
pub fn table(rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut text = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        writeln!(out, "{}", text.trim_end())?;
    }
    Ok(())
}

/// A progress bar over `total` ops, only when stdout is a terminal (a
/// script reading our output gets no escape codes) and there is work.
pub fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if total == 0 || !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} ops  {per_sec}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// A duration in milliseconds the short way: `42s`, `3m7s`, `2h5m`.
pub fn ago(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        i64::MIN..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::ago;

    #[test]
    fn ago_picks_units() {
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59_999), "59s");
        assert_eq!(ago(187_000), "3m7s");
        assert_eq!(ago(7_500_000), "2h5m");
    }
}
