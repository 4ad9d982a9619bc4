//! What is wrong with a config, as data: the file, the key (or table), the
//! line, and the kind of problem.
//!
//! Exists so that callers never parse an error's text: `syncd status`
//! shows the message, a test or a tool reads `key` and `problem`. The
//! message a person reads is the `Display` form, "FILE: key `a.b`: reason
//! (line N)", with whichever parts are known.

use std::path::PathBuf;

/// Where in the file the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A key, by its dotted path (`sync.backoff_initial_ms`).
    Key(String),
    /// A table, by its dotted name (`colections.notes`).
    Table(String),
}

/// The kind of problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// The file cannot be read: the OS's reason.
    Unreadable(String),
    /// The file holds no setting at all.
    Empty,
    /// Not TOML, or a key or table that does not exist: the parser's reason.
    Syntax(String),
    /// A value out of range or malformed, or keys that do not go together.
    Invalid(String),
}

/// A config error that names the file, the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    pub place: Option<Place>,
    /// 1-based line of the problem, when the parser knows it.
    pub line: Option<usize>,
    pub problem: ConfigProblem,
}

impl ConfigError {
    /// A bad value of `key` (a dotted path).
    pub fn invalid(key: &str, why: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            place: Some(Place::Key(key.to_owned())),
            line: None,
            problem: ConfigProblem::Invalid(why.into()),
        }
    }

    /// The same error, said of `file`.
    pub fn in_file(mut self, file: &std::path::Path) -> Self {
        self.file = Some(file.to_owned());
        self
    }

    /// The dotted key or table the error is about, if known.
    pub fn key(&self) -> Option<&str> {
        match &self.place {
            Some(Place::Key(k) | Place::Table(k)) => Some(k),
            None => None,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        match &self.place {
            Some(Place::Key(k)) => write!(f, "key `{k}`: ")?,
            Some(Place::Table(t)) => write!(f, "table `{t}`: ")?,
            None => {}
        }
        match &self.problem {
            ConfigProblem::Unreadable(e) => write!(f, "cannot read: {e}")?,
            ConfigProblem::Empty => {
                f.write_str("the file is empty (no setting, only whitespace or comments)")?
            }
            ConfigProblem::Syntax(m) | ConfigProblem::Invalid(m) => f.write_str(m)?,
        }
        if let Some(n) = self.line {
            write!(f, " (line {n})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
