//! Hiding the password of a PostgreSQL connection string.
//!
//! Why a file of its own: every message that names the database (startup
//! errors, health failures, logs) must name it *without* its password, and
//! the two accepted forms (`postgres://user:pw@host/db?password=...` and
//! `host=... password=...`) both need care. Pure string work, unit-tested.

/// What replaces a password.
const HIDDEN: &str = "***";

/// `url` with any password replaced by `***`: the `user:password@` part of a
/// URL and every `password=` parameter (URL query or key/value form, quoted
/// values included).
pub fn redact(url: &str) -> String {
    hide_password_params(&hide_userinfo_password(url))
}

/// `scheme://user:pw@host` → `scheme://user:***@host`.
fn hide_userinfo_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}{HIDDEN}{}",
        &url[..rest_start],
        &userinfo[..=colon],
        &rest[at..]
    )
}

/// Every `password=value` → `password=***`; a value ends at whitespace or `&`,
/// or at its closing quote when it starts with `'`.
fn hide_password_params(s: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = find_key(rest, KEY) {
        let value_start = pos + KEY.len();
        out.push_str(&rest[..value_start]);
        out.push_str(HIDDEN);
        let value = &rest[value_start..];
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            quoted_end(quoted).map_or(value.len(), |e| e + 1)
        } else {
            value
                .find(|c: char| c.is_whitespace() || c == '&')
                .unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Position of `key` (case-insensitive) at the start or after a separator.
fn find_key(s: &str, key: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(key) {
        let at = from + i;
        let before = lower[..at].chars().last();
        if matches!(before, None | Some('?' | '&' | ' ' | '\t' | '\n')) {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// Index just past the closing quote of a `'...'` value (backslash escapes).
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn url_forms() {
        assert_eq!(
            redact("postgres://syncd:s3cret@db:5432/sync"),
            "postgres://syncd:***@db:5432/sync"
        );
        assert_eq!(
            redact("postgresql://u:p%40ss@h/db?sslmode=disable&password=x2&a=b"),
            "postgresql://u:***@h/db?sslmode=disable&password=***&a=b"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db?x=1"), "postgres://h/db?x=1");
    }

    #[test]
    fn key_value_forms() {
        assert_eq!(
            redact("host=/tmp port=5 password=abc user=u"),
            "host=/tmp port=5 password=*** user=u"
        );
        assert_eq!(
            redact("host=h password='a b\\' c' user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(redact("PASSWORD=x"), "PASSWORD=***");
        assert_eq!(redact("host=h mypassword=x"), "host=h mypassword=x");
    }
}
