//! Scope names (protocol revision 3): the named sets of records that users
//! may read or write.
//!
//! Both ends need the same rule: the daemon refuses a bad `--scope` before
//! it queues anything, and the reference backend refuses it in an op or a
//! token. So the rule lives here, on the floor both stand on.

use std::fmt;

/// Longest scope name, in bytes.
pub const MAX_SCOPE_BYTES: usize = 128;

/// The prefix of every user's private scope: `user:<sub>`.
pub const PRIVATE_PREFIX: &str = "user:";

/// The one scope of a backend without users (`--token` mode, or a
/// revision-2 server): every record is in it. It is never sent on the wire.
pub const SINGLE_SCOPE: &str = "default";

/// Why a string is not a scope name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadScope {
    Empty,
    TooLong,
    /// The character at this byte offset is not a letter, digit, `_`, `-`,
    /// `.` or `:`.
    BadChar(char),
}

impl fmt::Display for BadScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadScope::Empty => f.write_str("scope name must not be empty"),
            BadScope::TooLong => write!(f, "scope name is longer than {MAX_SCOPE_BYTES} bytes"),
            BadScope::BadChar(c) => write!(
                f,
                "scope name may hold only letters, digits, '_', '-', '.' and ':' (found {c:?})"
            ),
        }
    }
}

impl std::error::Error for BadScope {}

/// Checks a scope name: 1 to [`MAX_SCOPE_BYTES`] bytes of ASCII letters,
/// digits, `_`, `-`, `.` and `:`. Case matters (`Team-1` and `team-1` are
/// two scopes).
pub fn check_scope(name: &str) -> Result<(), BadScope> {
    if name.is_empty() {
        return Err(BadScope::Empty);
    }
    if name.len() > MAX_SCOPE_BYTES {
        return Err(BadScope::TooLong);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        Some(c) => Err(BadScope::BadChar(c)),
        None => Ok(()),
    }
}

/// The private scope of the user `sub`, or why `sub` cannot have one (the
/// backend then refuses the token: a `sub` must itself be a valid scope
/// name tail, e.g. `alice`, `42` or `auth0.5f1c`).
pub fn private_scope(sub: &str) -> Result<String, BadScope> {
    let name = format!("{PRIVATE_PREFIX}{sub}");
    if sub.is_empty() {
        return Err(BadScope::Empty);
    }
    check_scope(&name).map(|()| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["team-1", "user:alice", "a", "x.y_z:1-2", &"s".repeat(128)] {
            assert_eq!(check_scope(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_scope(""), Err(BadScope::Empty));
        assert_eq!(check_scope(&"s".repeat(129)), Err(BadScope::TooLong));
        assert_eq!(check_scope("team 1"), Err(BadScope::BadChar(' ')));
        assert_eq!(check_scope("é"), Err(BadScope::BadChar('é')));
        assert_eq!(check_scope("a/b"), Err(BadScope::BadChar('/')));
    }

    #[test]
    fn private_scopes() {
        assert_eq!(private_scope("alice").as_deref(), Ok("user:alice"));
        assert_eq!(private_scope(""), Err(BadScope::Empty));
        assert_eq!(private_scope("a@b"), Err(BadScope::BadChar('@')));
    }
}
