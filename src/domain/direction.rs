//! Which way a collection syncs: `[collections.NAME] sync` in daemon.toml.
//!
//! Pure policy, on the ground floor beside the conflict strategies: the
//! store's writer decides with it whether a write queues an op and whether
//! a pulled change is applied; config parses it; status shows it.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[collections.NAME] sync`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Writes are pushed and the server's changes pulled (the default).
    #[default]
    Both,
    /// Writes are pushed; the server's changes to the collection are not
    /// applied on this device (logs, telemetry).
    Push,
    /// The server's changes are applied; app writes are refused
    /// (`read_only_collection`).
    Pull,
    /// The collection never leaves the device: writes queue no op and the
    /// server's changes to it are not applied.
    Local,
}

impl Direction {
    /// The values daemon.toml accepts, for messages.
    pub const ACCEPTED: &'static str = "\"both\", \"push\", \"pull\" or \"local\"";

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::Push => "push",
            Direction::Pull => "pull",
            Direction::Local => "local",
        }
    }

    /// Whether an app write queues an op for the server.
    pub fn queues_writes(self) -> bool {
        matches!(self, Direction::Both | Direction::Push)
    }

    /// Whether apps may write to the collection on this device.
    pub fn accepts_writes(self) -> bool {
        self != Direction::Pull
    }

    /// Whether a pulled change of the collection is applied on this device.
    pub fn applies_pulled(self) -> bool {
        matches!(self, Direction::Both | Direction::Pull)
    }
}

/// Every collection's direction: the ones not listed sync both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directions(BTreeMap<String, Direction>);

impl Directions {
    /// From `(collection, direction)` pairs; `Both` entries are dropped.
    pub fn new(pairs: impl IntoIterator<Item = (String, Direction)>) -> Self {
        Directions(
            pairs
                .into_iter()
                .filter(|(_, d)| *d != Direction::Both)
                .collect(),
        )
    }

    /// The direction of `collection`.
    pub fn of(&self, collection: &str) -> Direction {
        self.0.get(collection).copied().unwrap_or_default()
    }

    /// The collections that do not sync both ways, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Direction)> {
        self.0.iter().map(|(c, d)| (c.as_str(), *d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_direction_allows() {
        use Direction::*;
        let rows = [
            (Both, true, true, true),
            (Push, true, true, false),
            (Pull, false, false, true),
            (Local, false, true, false),
        ];
        for (d, queues, writes, pulls) in rows {
            assert_eq!(d.queues_writes(), queues, "{d:?}");
            assert_eq!(d.accepts_writes(), writes, "{d:?}");
            assert_eq!(d.applies_pulled(), pulls, "{d:?}");
        }
    }

    #[test]
    fn unlisted_collections_sync_both_ways() {
        let d = Directions::new([
            ("drafts".to_owned(), Direction::Local),
            ("todos".to_owned(), Direction::Both),
        ]);
        assert_eq!(d.of("drafts"), Direction::Local);
        assert_eq!(d.of("todos"), Direction::Both);
        assert_eq!(d.of("other"), Direction::Both);
        assert_eq!(d.iter().count(), 1);
    }
}
