//! The JSON document argument of `put`, `patch` and `resolve --data`:
//! inline JSON, `-` for standard input, or `@FILE`.
//!
//! Exists because a document of a megabyte does not fit on a command line
//! (ARG_MAX, and a shell quoting it), but fits in a pipe or a file.

use std::io::Read;

use serde_json::Value;

use super::error::CliError;

/// Help text shared by every argument that takes a document.
pub const HELP: &str =
    "The document: a JSON object, `-` to read it from stdin, or @FILE to read it from a file";

/// Parses the argument into a JSON value; unreadable input or invalid JSON
/// is a usage error (exit 2). Whether it is an object is for the daemon to
/// say, so that the message is the same as from any other client.
pub fn read(arg: &str) -> Result<Value, CliError> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Usage(format!("cannot read the document from stdin: {e}")))?;
        parse(&text, "on stdin")
    } else if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read the document from {path}: {e}")))?;
        parse(&text, &format!("in {path}"))
    } else {
        parse(arg, "argument")
    }
}

fn parse(text: &str, place: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Usage(format!("invalid JSON {place}: {e}")))
}
