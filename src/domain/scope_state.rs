//! What this device knows and wants of each scope (protocol revision 3):
//! the per-scope pull state it stores, the grants of the last session, and
//! the pure rule that turns grants, `[sync] scopes` and the app's
//! subscribe/unsubscribe choices into the set of scopes to pull.
//!
//! The rule is here, on the ground floor, because the sync worker pulls by
//! it, the writer purges by it and `syncd scopes` shows it: all three must
//! agree, and none of them may import the others.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::scope::PRIVATE_PREFIX;

/// One subscribed scope's pull state, stored per scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeState {
    /// The cursor after the last page applied; `None`: from the start.
    pub cursor: Option<String>,
    /// A page came back with `more = false` once: the back-fill is done.
    pub first_sync_done: bool,
    /// Changes after `cursor` as the last page said (progress), if known.
    pub remaining: Option<u64>,
}

/// One scope a session grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub name: String,
    /// Write access (read is implied).
    pub write: bool,
}

/// The scopes the last `GET v1/session` granted, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub sub: String,
    pub scopes: Vec<Grant>,
}

impl Grants {
    pub fn readable(&self, scope: &str) -> bool {
        self.scopes.iter().any(|g| g.name == scope)
    }

    pub fn writable(&self, scope: &str) -> bool {
        self.scopes.iter().any(|g| g.name == scope && g.write)
    }

    /// `read`, `write`, or `None` (no access).
    pub fn access(&self, scope: &str) -> Option<&'static str> {
        let g = self.scopes.iter().find(|g| g.name == scope)?;
        Some(if g.write { "write" } else { "read" })
    }
}

/// How a scope stands for `syncd scopes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Subscribed and readable, back-fill not finished.
    Initial,
    /// Subscribed, readable, back-filled: changes arrive as they happen.
    Live,
    /// Subscribed, but the session does not let this device read it.
    Denied,
    /// Not subscribed (readable or not).
    Unsubscribed,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Initial => "initial",
            Standing::Live => "live",
            Standing::Denied => "denied",
            Standing::Unsubscribed => "unsubscribed",
        }
    }
}

/// Whether `scope` is subscribed: an explicit choice wins; otherwise it is
/// when `[sync] scopes` lists it, or (no list) when the session grants it.
/// The user's private scope is subscribed even when a list leaves it out:
/// a create without a scope goes there, and would leave the device once
/// acknowledged (`syncd unsubscribe` can still drop it).
pub fn subscribed(
    scope: &str,
    grants: Option<&Grants>,
    wanted: Option<&[String]>,
    choices: &BTreeMap<String, bool>,
) -> bool {
    if let Some(choice) = choices.get(scope) {
        return *choice;
    }
    let private =
        grants.is_some_and(|g| scope.strip_prefix(PRIVATE_PREFIX) == Some(g.sub.as_str()));
    match wanted {
        Some(list) => private || list.iter().any(|w| w == scope),
        None => grants.is_some_and(|g| g.readable(scope)),
    }
}

/// The scopes to pull: subscribed and readable.
pub fn pulled(
    grants: &Grants,
    wanted: Option<&[String]>,
    choices: &BTreeMap<String, bool>,
) -> BTreeSet<String> {
    grants
        .scopes
        .iter()
        .map(|g| g.name.clone())
        .filter(|s| subscribed(s, Some(grants), wanted, choices))
        .collect()
}

/// Every scope worth naming: granted, listed in `[sync] scopes`, chosen,
/// or `held` (with stored state or records).
pub fn known(
    grants: Option<&Grants>,
    wanted: Option<&[String]>,
    choices: &BTreeMap<String, bool>,
    held: impl IntoIterator<Item = String>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = held.into_iter().collect();
    out.extend(
        grants
            .iter()
            .flat_map(|g| g.scopes.iter().map(|s| s.name.clone())),
    );
    out.extend(wanted.unwrap_or_default().iter().cloned());
    out.extend(choices.keys().cloned());
    out
}

/// How `scope` stands, given its stored state.
pub fn standing(
    scope: &str,
    grants: Option<&Grants>,
    wanted: Option<&[String]>,
    choices: &BTreeMap<String, bool>,
    state: Option<&ScopeState>,
) -> Standing {
    if !subscribed(scope, grants, wanted, choices) {
        return Standing::Unsubscribed;
    }
    // No session yet: nothing is known to be denied.
    if grants.is_some_and(|g| !g.readable(scope)) {
        return Standing::Denied;
    }
    match state {
        Some(s) if s.first_sync_done => Standing::Live,
        _ => Standing::Initial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants {
            sub: "alice".into(),
            scopes: vec![
                Grant {
                    name: "news".into(),
                    write: false,
                },
                Grant {
                    name: "team-1".into(),
                    write: true,
                },
                Grant {
                    name: "user:alice".into(),
                    write: true,
                },
            ],
        }
    }

    #[test]
    fn everything_readable_by_default() {
        let g = grants();
        let none = BTreeMap::new();
        let all: Vec<_> = pulled(&g, None, &none).into_iter().collect();
        assert_eq!(all, ["news", "team-1", "user:alice"]);
    }

    #[test]
    fn config_narrows_and_choices_override() {
        let g = grants();
        let wanted = vec!["team-1".to_owned(), "secret".to_owned()];
        let mut choices = BTreeMap::new();
        choices.insert("news".to_owned(), true);
        choices.insert("team-1".to_owned(), false);
        let set: Vec<_> = pulled(&g, Some(&wanted), &choices).into_iter().collect();
        assert_eq!(set, ["news", "user:alice"], "the private scope stays");
        choices.insert("user:alice".to_owned(), false);
        let set: Vec<_> = pulled(&g, Some(&wanted), &choices).into_iter().collect();
        assert_eq!(set, ["news"], "unless the app unsubscribes it");
        // Listed but not readable: subscribed, shown denied, not pulled.
        assert_eq!(
            standing("secret", Some(&g), Some(&wanted), &choices, None),
            Standing::Denied
        );
        assert_eq!(
            standing("team-1", Some(&g), Some(&wanted), &choices, None),
            Standing::Unsubscribed
        );
        let done = ScopeState {
            first_sync_done: true,
            ..ScopeState::default()
        };
        assert_eq!(
            standing("news", Some(&g), Some(&wanted), &choices, Some(&done)),
            Standing::Live
        );
        assert_eq!(
            standing("news", Some(&g), Some(&wanted), &choices, None),
            Standing::Initial
        );
        assert_eq!(
            standing("secret", None, Some(&wanted), &choices, None),
            Standing::Initial,
            "no session yet: not known to be denied"
        );
    }

    #[test]
    fn access() {
        let g = grants();
        assert_eq!(g.access("news"), Some("read"));
        assert_eq!(g.access("team-1"), Some("write"));
        assert_eq!(g.access("other"), None);
        assert!(g.readable("news") && !g.writable("news"));
    }
}
