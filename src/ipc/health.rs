//! Whether the daemon is healthy, and what to tell a person when it is not.
//!
//! One place for the judgement that `syncd status` (its hints),
//! `syncd status --check` (its exit code) and the HTTP `/health` endpoint
//! all make, so the three can never disagree.
//!
//! Healthy means: online, or offline because no backend is configured
//! (local-only by configuration: every write is kept, nothing is wrong).
//! Everything else is a [`Trouble`], most pressing first.

use crate::ipc::wire::StatusView;

/// A kind of trouble, each with its own `status --check` exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// The backend is unreachable (a backend is configured).
    Offline,
    /// The backend fails (5xx, timeouts) or is not the protocol.
    Backoff,
    BackendError,
    /// The backend refuses our credentials.
    AuthError,
    /// Ops the server rejected for good are waiting for a person.
    DeadLetters,
    /// Conflicts are parked for manual resolution.
    Conflicts,
    /// Sync was paused by `syncd pause`.
    Paused,
    /// The config file's latest edit was rejected: the daemon runs on the
    /// previous config, not on what the file says.
    ConfigRejected,
    /// The storage engine found the store damaged during work: writes are
    /// refused.
    StoreDamaged,
    /// This device's store failed during a sync round (a full disk, an
    /// I/O error, permissions): sync is held until it works again.
    LocalStoreError,
}

impl Trouble {
    /// The exit code of `syncd status --check` (README "Usage").
    pub fn exit_code(self) -> u8 {
        match self {
            Trouble::Offline => 10,
            Trouble::Backoff | Trouble::BackendError => 11,
            Trouble::AuthError => 12,
            Trouble::DeadLetters => 13,
            Trouble::Conflicts => 14,
            Trouble::Paused => 15,
            Trouble::ConfigRejected => 16,
            Trouble::StoreDamaged => 17,
            Trouble::LocalStoreError => 18,
        }
    }
}

/// The most pressing trouble: a damaged store first (nothing can be
/// written), then the sync state (it stops everything),
/// then a rejected config edit (the daemon does not run on the file a
/// person last wrote), then dead letters, then parked conflicts.
pub fn trouble(s: &StatusView) -> Option<Trouble> {
    if s.store_damaged.is_some() {
        return Some(Trouble::StoreDamaged);
    }
    let state = match s.state.as_str() {
        "auth_error" => Some(Trouble::AuthError),
        "backend_error" => Some(Trouble::BackendError),
        "backoff" => Some(Trouble::Backoff),
        "local_store_error" => Some(Trouble::LocalStoreError),
        "offline" if s.backend.is_some() => Some(Trouble::Offline),
        "paused" => Some(Trouble::Paused),
        _ => None,
    };
    state.or(if s.config_reload_error.is_some() {
        Some(Trouble::ConfigRejected)
    } else if s.dead_letters > 0 {
        Some(Trouble::DeadLetters)
    } else if s.conflicts > 0 {
        Some(Trouble::Conflicts)
    } else {
        None
    })
}

/// What `hints` needs besides the status itself.
pub struct HintInputs<'a> {
    /// `[backend] token_file`, to name in an auth error.
    pub token_file: Option<&'a std::path::Path>,
    /// CouchDB basic auth (`username`, `password_file`), to name instead.
    pub basic_auth: Option<(&'a str, &'a std::path::Path)>,
    /// The config file, to name where `[backend]` lives.
    pub config_path: Option<&'a str>,
    /// Wall-clock ms now.
    pub now: i64,
}

/// One line per thing that needs attention, most pressing first: what is
/// happening and what to do about it.
pub fn hints(s: &StatusView, i: &HintInputs<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = &s.store_damaged {
        out.push(format!(
            "the store in {} was found damaged ({d}): writes are refused, queued writes are kept; run `syncd check`, then stop syncd and restore the store from a backup (or move it aside to start empty)",
            s.data_dir
        ));
    }
    if let Some(h) = state_hint(s, i) {
        out.push(h);
    }
    if let Some(e) = &s.config_reload_error {
        out.push(format!(
            "the config file's latest edit was rejected; running on the previous config until the file is fixed: {e}"
        ));
    }
    if let Some(h) = denied_scopes_hint(s) {
        out.push(h);
    }
    if s.dead_letters > 0 {
        out.push(format!(
            "{} op(s) rejected by the server for good: run `syncd dead-letters`, then `syncd retry` or `syncd discard` each",
            s.dead_letters
        ));
    }
    if s.conflicts > 0 {
        out.push(format!(
            "{} conflict(s) parked for manual resolution: run `syncd conflicts`, then `syncd resolve`",
            s.conflicts
        ));
    }
    out
}

/// "retrying in 12s", or "retrying now" while an attempt is under way.
fn retry(s: &StatusView, now: i64) -> String {
    match s.next_retry_at {
        Some(t) if t > now => format!("retrying in {}s", (t - now + 999) / 1000),
        _ => "retrying now".into(),
    }
}

fn state_hint(s: &StatusView, i: &HintInputs<'_>) -> Option<String> {
    let n = s.queue_depth;
    let safe = match n {
        0 => "nothing queued".to_owned(),
        n => format!("{n} write(s) are safe on disk"),
    };
    let err = s.last_error.as_deref().unwrap_or("no reply");
    let file = i.config_path.unwrap_or("daemon.toml");
    let url = s.backend.as_deref().map(redact_url).unwrap_or_default();
    Some(match s.state.as_str() {
        "offline" if s.backend.is_none() => format!(
            "no backend configured: {n} write(s) kept on this device only; set [backend] url in {file} to sync"
        ),
        "offline" => format!(
            "backend unreachable ({err}); {safe}; {}",
            retry(s, i.now)
        ),
        "backoff" => format!(
            "backend failing ({err}); {safe}; {}",
            retry(s, i.now)
        ),
        "backend_error" => backend_error_hint(err, &url, file),
        "auth_error" => match (i.basic_auth, i.token_file) {
            (Some((user, pw)), _) => format!(
                "CouchDB refused user {user:?} ({err}): check the password in {}, and that the user may read the database (a member in its _security); the password file is read at start, so restart syncd after fixing it",
                pw.display()
            ),
            (None, Some(t)) => format!(
                "the backend refused our credentials ({err}): fix the token in {} (re-read as soon as it changes)",
                t.display()
            ),
            (None, None) => format!(
                "the backend refused our credentials ({err}): set [backend] token_file in {file}"
            ),
        },
        "paused" => format!("sync is paused with {n} write(s) queued: run `syncd resume`"),
        "local_store_error" => format!(
            "the local store in {} failed ({err}); the backend is not at fault; {safe}: free space on that disk, check that the daemon's user may write there, and run `syncd check`; sync resumes by itself, {}",
            s.data_dir,
            retry(s, i.now)
        ),
        _ => return None,
    })
}

/// What to do about a reply outside the protocol's table. A CouchDB
/// database that does not exist yet is the common first-contact case: say
/// so, not that the URL "does not answer the protocol". Either way sync
/// retries by itself within seconds, and `syncd sync` retries at once.
fn backend_error_hint(err: &str, url: &str, file: &str) -> String {
    let again = "then run `syncd sync` (or wait: syncd retries within a few seconds)";
    if err.starts_with(crate::backend::couch::DB_MISSING) {
        // The reason names the database: the `url`, or with scopes the
        // scope's database on that server.
        format!("a CouchDB database syncd needs is missing ({err}): create it (`curl -X PUT` on that URL, as a CouchDB admin) or fix [backend] url in {file}; {again}")
    } else {
        format!("the backend URL does not answer the syncd protocol ({err}): check [backend] url ({url}) in {file}; {again}")
    }
}

/// `url` with any user name, password and query removed, for display.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = match authority.rsplit_once('@') {
        Some((_, h)) => format!("***@{h}"),
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_owned(),
    };
    format!("{scheme}{host}{path}")
}

/// Subscribed scopes the token does not grant (a typo in `[sync] scopes`
/// or `syncd subscribe`, or access not given yet): they are not synced.
fn denied_scopes_hint(s: &StatusView) -> Option<String> {
    let denied: Vec<&str> = s
        .scopes
        .iter()
        .filter(|v| v.state == "denied")
        .map(|v| v.name.as_str())
        .collect();
    if denied.is_empty() {
        return None;
    }
    let granted: Vec<&str> = s
        .scopes
        .iter()
        .filter(|v| v.access.is_some())
        .map(|v| v.name.as_str())
        .collect();
    Some(format!(
        "subscribed but not granted by the token, so not synced: {} (the token grants {}); check `[sync] scopes` and `syncd subscribe` for a typo, or ask for access",
        denied.join(", "),
        if granted.is_empty() { "none".to_owned() } else { granted.join(", ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_and_query() {
        assert_eq!(
            redact_url("https://bob:s3cret@api.example.com/sync/?token=x"),
            "https://***@api.example.com/sync/?***"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(redact_url("http://h:1"), "http://h:1");
    }
}
