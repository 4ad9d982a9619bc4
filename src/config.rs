//! `daemon.toml`: loading, validation and the defaults the daemon runs on
//! when no file is given.
//!
//! Every key is known: an unknown key or a bad value stops startup with the
//! file, the key and the reason. Hot reload (run by the daemon) goes
//! through the same [`Config::load`], so a bad edit is reported the same way
//! and the old config stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod error;
mod store_section;
mod watch;
pub use error::{ConfigError, ConfigProblem, Place};
pub use store_section::{Encryption, KeySource, StoreSection};
pub use watch::{stamp, watch_file, FileWatch, Stamp, SETTLE};

pub use crate::domain::conflict::{FieldRule, Strategy};
pub use crate::domain::direction::{Direction, Directions};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// Path of the local socket.
    pub socket: PathBuf,
    /// Directory of the store and the lock file.
    pub data_dir: PathBuf,
    /// trace, debug, info, warn or error (or an EnvFilter directive).
    pub log_level: String,
    /// `text` (human-readable; coloured only when stderr is a terminal) or
    /// `json` (one JSON object a line).
    pub log_format: LogFormat,
    /// Octal permission bits of the socket file, e.g. "0600" or "0660".
    pub socket_mode: String,
    /// Largest frame accepted on the socket, bytes.
    pub max_frame_bytes: u32,
    /// Largest document accepted in a write, bytes of JSON.
    pub max_document_bytes: u32,
    /// redb page cache, MiB.
    pub cache_mib: u32,
    /// Most client connections served at once; beyond it a connection is
    /// refused with `too_many_connections`.
    pub max_connections: u32,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain text; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSection {
    /// Base URL of the backend (http or https); empty: no backend, stay
    /// offline and keep queueing.
    pub url: String,
    /// File holding the bearer token (re-read on reload).
    pub token_file: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// Extra CA bundle (PEM) trusted for https, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// What `url` points at: a syncd protocol server or a CouchDB database.
    pub kind: BackendKind,
    /// CouchDB basic auth user (with `password_file`); `kind = "couchdb"` only.
    pub username: Option<String>,
    /// File holding the basic auth password (trimmed), read when the
    /// backend settings change or the daemon starts.
    pub password_file: Option<PathBuf>,
    /// How a record is laid out in a CouchDB document; `kind = "couchdb"`
    /// only. Both shapes are always read.
    pub doc_shape: Option<DocShape>,
    /// `[backend.scopes]`, CouchDB only: one database per scope, `url`
    /// names the server; each shared scope mapped to its database (private
    /// scopes are CouchDB's per-user databases).
    pub scopes: Option<std::collections::BTreeMap<String, String>>,
}

/// `[backend] doc_shape`: the layout of a record in a CouchDB document
/// (docs/backends.md "Records and documents").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocShape {
    /// The record's fields at the top level, as any CouchDB client (a
    /// PouchDB app) writes them; syncd's bookkeeping in `syncd`.
    #[default]
    Native,
    /// The record under `data`, `updated_at` beside it (the first shape).
    Wrapped,
}

/// `[backend] kind`: which transport the sync worker uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A server speaking `docs/backend-protocol.md` (the default).
    #[default]
    Syncd,
    /// A CouchDB database (`url` names the database); see `docs/backends.md`.
    Couchdb,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    pub conflict: Strategy,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub batch_size: u32,
    pub pull_interval_s: u64,
    /// Keep one waiting pull open when the backend announces `wait`, so
    /// remote changes arrive at once; `false`: poll every `pull_interval_s`.
    pub live: bool,
    /// How long the backend may hold a waiting pull, seconds (1 to 60).
    pub wait_s: u32,
    /// Per-field rules for `merge` that apply to every collection.
    pub merge_fields: BTreeMap<String, FieldRule>,
    /// The scopes to sync with a backend that has users and scopes
    /// (protocol revision 3); `None`: every scope the token can read.
    /// `syncd subscribe` / `unsubscribe` override it per scope.
    pub scopes: Option<Vec<String>>,
    /// Largest attachment `attach` takes, bytes (1 GiB by default).
    pub max_attachment_bytes: u64,
    /// Bound on the local copies of attachments that the backend holds
    /// (downloaded, or uploaded and confirmed): past it the least recently
    /// read are removed, and fetched again on demand. `None`: no bound.
    /// Content that only this device holds is never removed.
    pub attachment_cache_bytes: Option<u64>,
}

/// When a collection's attachments are downloaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentFetch {
    /// As soon as a record that references them arrives.
    #[default]
    Eager,
    /// On first read (`syncd attachment`, `read_attachment`).
    Lazy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSection {
    pub conflict: Option<Strategy>,
    #[serde(default)]
    pub merge_fields: BTreeMap<String, FieldRule>,
    /// Which way the collection syncs: both (default), push, pull or local.
    #[serde(default)]
    pub sync: Direction,
    /// Secondary indexes for local queries: each a field (`"due"`) or a
    /// list of fields (`["done", "due"]`), dotted paths for nested ones.
    #[serde(default)]
    pub indexes: Vec<IndexFields>,
    /// When the server's attachments are downloaded: `eager` (default) or
    /// `lazy`.
    #[serde(default)]
    pub attachments: AttachmentFetch,
}

/// One declared index: a field, or several in key order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum IndexFields {
    One(String),
    Many(Vec<String>),
}

impl TryFrom<toml::Value> for IndexFields {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<Self, String> {
        let not = || format!("an index is a field name or a list of field names, not {v}");
        match &v {
            toml::Value::String(s) => Ok(IndexFields::One(s.clone())),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or_else(not))
                .collect::<Result<_, _>>()
                .map(IndexFields::Many),
            _ => Err(not()),
        }
    }
}

impl IndexFields {
    pub fn fields(&self) -> Vec<String> {
        match self {
            IndexFields::One(f) => vec![f.clone()],
            IndexFields::Many(fs) => fs.clone(),
        }
    }
}

/// Most fields one index may have.
pub const MAX_INDEX_FIELDS: usize = 8;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonSection,
    pub backend: BackendSection,
    pub sync: SyncSection,
    /// `[store]`: encryption at rest.
    pub store: StoreSection,
    pub collections: BTreeMap<String, CollectionSection>,
    /// `[metrics]`: the optional HTTP `/metrics` and `/health` listener.
    pub metrics: crate::metrics::MetricsSection,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            socket: default_socket(),
            data_dir: default_data_dir(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            socket_mode: "0600".into(),
            max_frame_bytes: 16 * 1024 * 1024,
            max_document_bytes: 1024 * 1024,
            cache_mib: 16,
            max_connections: 256,
        }
    }
}

impl Default for BackendSection {
    fn default() -> Self {
        BackendSection {
            url: String::new(),
            token_file: None,
            timeout_ms: 10_000,
            ca_file: None,
            kind: BackendKind::Syncd,
            username: None,
            password_file: None,
            doc_shape: None,
            scopes: None,
        }
    }
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection {
            conflict: Strategy::LastWriteWins,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            batch_size: 500,
            pull_interval_s: 60,
            live: true,
            wait_s: 25,
            merge_fields: BTreeMap::new(),
            scopes: None,
            max_attachment_bytes: 1 << 30,
            attachment_cache_bytes: None,
        }
    }
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// `$RUNTIME_DIRECTORY/syncd.sock` (systemd's RuntimeDirectory=), else
/// `$XDG_RUNTIME_DIR/syncd/syncd.sock`, else `/tmp/syncd-UID/syncd.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(d) = first_dir_var("RUNTIME_DIRECTORY") {
        return d.join("syncd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("syncd").join("syncd.sock"),
        _ => PathBuf::from(format!("/tmp/syncd-{}", uid())).join("syncd.sock"),
    }
}

/// systemd sets `RUNTIME_DIRECTORY`/`STATE_DIRECTORY` (colon-separated
/// when several); the first entry is ours.
fn first_dir_var(name: &str) -> Option<PathBuf> {
    let v = std::env::var(name).ok()?;
    let first = v.split(':').next()?.trim();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// `$STATE_DIRECTORY` (systemd's StateDirectory=), else
/// `$XDG_DATA_HOME/syncd`, else `~/.local/share/syncd`, else
/// `/tmp/syncd-UID/data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = first_dir_var("STATE_DIRECTORY") {
        return d;
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("syncd");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".local/share/syncd");
    }
    PathBuf::from(format!("/tmp/syncd-{}", uid())).join("data")
}

/// The text of `path`.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        place: None,
        line: None,
        problem: ConfigProblem::Unreadable(e.to_string()),
    })
}

impl Config {
    /// Reads and validates `path`. Relative paths inside the file are taken
    /// relative to the file's directory.
    ///
    /// A file that holds no setting at all (empty, or only whitespace and
    /// comments) is refused, at start as on a reload: such a file is almost
    /// always one caught half-written (`cat > daemon.toml` truncates
    /// first), and taking it would swap the user's backend and conflict
    /// strategies for the embedded defaults. (No file at all, `syncd run`
    /// without `--config`, is how to run on the defaults.) The file is read
    /// once: what is checked is what is parsed.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        if is_blank(&text) {
            return Err(ConfigError {
                file: Some(path.to_owned()),
                place: None,
                line: None,
                problem: ConfigProblem::Empty,
            });
        }
        let mut cfg = Config::parse(&text).map_err(|e| e.in_file(path))?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        if let Some(dir) = abs.parent() {
            cfg.resolve_relative(dir);
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text; errors name the key and the reason.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_relative(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.daemon.socket);
        fix(&mut self.daemon.data_dir);
        if let Some(p) = self.backend.token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.backend.ca_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.backend.password_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.store.key_file.as_mut() {
            fix(p);
        }
    }

    /// Checks values serde cannot: ranges, formats, names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_daemon()?;
        self.validate_backend()?;
        self.validate_sync()?;
        let indexed = self
            .collections
            .iter()
            .find(|(_, c)| !c.indexes.is_empty())
            .map(|(n, _)| n.as_str());
        self.store.validate(indexed)
    }

    /// `[daemon]`: paths, log filter, socket mode and the size limits.
    fn validate_daemon(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::invalid(key, why));
        if self.daemon.socket.as_os_str().is_empty() {
            return bad("daemon.socket", "must not be empty".into());
        }
        if self.daemon.data_dir.as_os_str().is_empty() {
            return bad("daemon.data_dir", "must not be empty".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.daemon.log_level) {
            return bad(
                "daemon.log_level",
                format!(
                    "{:?} is not a log level or filter: {e}",
                    self.daemon.log_level
                ),
            );
        }
        if let Err(e) = self.socket_mode() {
            return bad("daemon.socket_mode", e);
        }
        if self.daemon.max_frame_bytes < 2 * crate::domain::limits::FRAME_OVERHEAD
            || self.daemon.max_frame_bytes as usize > crate::domain::limits::MAX_DECODE_BYTES
        {
            return bad(
                "daemon.max_frame_bytes",
                "must be between 8192 and 67108864 (64 MiB)".into(),
            );
        }
        let room = self.daemon.max_frame_bytes - crate::domain::limits::FRAME_OVERHEAD;
        if self.daemon.max_document_bytes == 0 || self.daemon.max_document_bytes > room {
            return bad(
                "daemon.max_document_bytes",
                format!(
                    "must be between 1 and daemon.max_frame_bytes - {} ({room}): a frame carries a document and the request or reply around it",
                    crate::domain::limits::FRAME_OVERHEAD
                ),
            );
        }
        if self.daemon.max_connections == 0 || self.daemon.max_connections > 65_536 {
            return bad(
                "daemon.max_connections",
                "must be between 1 and 65536".into(),
            );
        }
        if self.daemon.cache_mib == 0 || self.daemon.cache_mib > 4096 {
            return bad("daemon.cache_mib", "must be between 1 and 4096".into());
        }
        Ok(())
    }

    /// `[backend]`: the URL, credentials and timeout.
    fn validate_backend(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::invalid(key, why));
        let url = self.backend.url.trim();
        if !url.is_empty() {
            match url.parse::<hyper::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http") | Some("https"))
                        && u.host().is_some() => {}
                Ok(_) => {
                    return bad(
                        "backend.url",
                        format!(
                            "{:?} must be an absolute http:// or https:// URL",
                            redact_url(url)
                        ),
                    )
                }
                Err(e) => {
                    return bad(
                        "backend.url",
                        format!("{:?} is not a URL: {e}", redact_url(url)),
                    )
                }
            }
        }
        self.validate_backend_auth()?;
        self.validate_doc_shape()?;
        self.validate_couch_scopes()?;
        if self.backend.timeout_ms == 0 || self.backend.timeout_ms > 3_600_000 {
            return bad(
                "backend.timeout_ms",
                "must be between 1 and 3600000 (one hour)".into(),
            );
        }
        Ok(())
    }

    /// `[sync]`, `[metrics]` and the collection names.
    fn validate_sync(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::invalid(key, why));
        if self.sync.backoff_initial_ms == 0 {
            return bad("sync.backoff_initial_ms", "must be greater than 0".into());
        }
        if self.sync.backoff_max_ms > 86_400_000 {
            return bad(
                "sync.backoff_max_ms",
                "must be at most 86400000 (one day)".into(),
            );
        }
        if self.sync.backoff_max_ms < self.sync.backoff_initial_ms {
            return bad(
                "sync.backoff_max_ms",
                format!(
                    "{} is less than sync.backoff_initial_ms ({})",
                    self.sync.backoff_max_ms, self.sync.backoff_initial_ms
                ),
            );
        }
        if let Err(e) = self.metrics.listen_addr() {
            return bad("metrics.listen", e);
        }
        if self.sync.batch_size == 0 || self.sync.batch_size > 1000 {
            return bad("sync.batch_size", "must be between 1 and 1000".into());
        }
        if self.sync.pull_interval_s == 0 || self.sync.pull_interval_s > 604_800 {
            return bad(
                "sync.pull_interval_s",
                "must be between 1 and 604800 (one week)".into(),
            );
        }
        if !(1..=60).contains(&self.sync.wait_s) {
            return bad("sync.wait_s", "must be between 1 and 60".into());
        }
        for (name, c) in &self.collections {
            if let Err(e) = crate::domain::ids::validate_collection(name) {
                return bad(&format!("collections.{name}"), e);
            }
            if let Err(e) = validate_indexes(&c.indexes) {
                return bad(&format!("collections.{name}.indexes"), e);
            }
        }
        self.validate_scopes()
    }

    /// The indexes declared per collection, as the writer keeps them.
    pub fn declared_indexes(&self) -> crate::domain::query::DeclaredIndexes {
        self.collections
            .iter()
            .filter(|(_, c)| !c.indexes.is_empty())
            .map(|(n, c)| {
                (
                    n.clone(),
                    c.indexes.iter().map(IndexFields::fields).collect(),
                )
            })
            .collect()
    }

    /// `[sync] scopes`: scope names, only for a syncd backend (a CouchDB
    /// database is one scope).
    fn validate_scopes(&self) -> Result<(), ConfigError> {
        let Some(scopes) = &self.sync.scopes else {
            return Ok(());
        };
        if self.backend.kind == BackendKind::Couchdb && self.backend.scopes.is_none() {
            return Err(ConfigError::invalid(
                "sync.scopes",
                "a CouchDB backend without [backend.scopes] has no scopes (it syncs one database); remove sync.scopes, or map scopes to databases in [backend.scopes]".to_owned(),
            ));
        }
        for s in scopes {
            if let Err(e) = crate::domain::scope::check_scope(s) {
                return Err(ConfigError::invalid("sync.scopes", format!("{s:?}: {e}")));
            }
        }
        Ok(())
    }

    /// `[backend.scopes]`: CouchDB only; valid scope names (shared ones:
    /// private scopes are per-user databases) mapped to valid CouchDB
    /// database names.
    fn validate_couch_scopes(&self) -> Result<(), ConfigError> {
        let Some(map) = &self.backend.scopes else {
            return Ok(());
        };
        let bad = |why: String| Err(ConfigError::invalid("backend.scopes", why));
        if self.backend.kind != BackendKind::Couchdb {
            return bad("is only for kind = \"couchdb\" (a database per scope); a syncd backend knows its scopes".into());
        }
        for (scope, db) in map {
            if let Err(e) = crate::domain::scope::check_scope(scope) {
                return bad(format!("{scope:?}: {e}"));
            }
            if scope.starts_with(crate::domain::scope::PRIVATE_PREFIX) {
                return bad(format!("{scope:?}: private scopes are CouchDB's per-user databases (userdb-<hex of the name>), not mapped"));
            }
            if !couch_db_name(db) {
                return bad(format!("{scope:?} = {db:?}: not a CouchDB database name (a lowercase letter, then lowercase letters, digits and _$()+-/)"));
            }
        }
        Ok(())
    }

    /// `doc_shape` says how CouchDB documents look: only for CouchDB.
    fn validate_doc_shape(&self) -> Result<(), ConfigError> {
        if self.backend.doc_shape.is_some() && self.backend.kind != BackendKind::Couchdb {
            return Err(ConfigError::invalid(
                "backend.doc_shape",
                "is only for kind = \"couchdb\" (how records are laid out in CouchDB documents)",
            ));
        }
        Ok(())
    }

    /// `username`/`password_file` come as a pair, only for CouchDB, and
    /// not together with `token_file`.
    fn validate_backend_auth(&self) -> Result<(), ConfigError> {
        let b = &self.backend;
        let basic = b.username.is_some() || b.password_file.is_some();
        if !basic {
            return Ok(());
        }
        let bad = |key: &str, why: &str| Err(ConfigError::invalid(key, why));
        if b.kind != BackendKind::Couchdb {
            let key = if b.username.is_some() {
                "backend.username"
            } else {
                "backend.password_file"
            };
            return bad(
                key,
                "basic auth is only for kind = \"couchdb\"; a syncd backend uses token_file",
            );
        }
        let pair = "CouchDB basic auth needs username and password_file together";
        if b.username.is_none() {
            return bad(
                "backend.username",
                &format!("missing; password_file is set, and {pair}"),
            );
        }
        if b.password_file.is_none() {
            return bad(
                "backend.password_file",
                &format!("missing; username is set, and {pair}"),
            );
        }
        if b.token_file.is_some() {
            return bad(
                "backend.token_file",
                "use either token_file or username + password_file, not both",
            );
        }
        Ok(())
    }

    /// `daemon.socket_mode` as permission bits.
    pub fn socket_mode(&self) -> Result<u32, String> {
        let s = self.daemon.socket_mode.trim();
        let digits = s.strip_prefix("0o").unwrap_or(s);
        let mode = u32::from_str_radix(digits, 8)
            .map_err(|_| format!("{s:?} is not an octal mode like \"0600\""))?;
        if mode & !0o777 != 0 {
            return Err(format!("{s:?} has bits outside 0777"));
        }
        if mode & 0o600 != 0o600 {
            return Err(format!("{s:?} must give the owner read and write (0600)"));
        }
        if mode & 0o007 != 0 {
            return Err(format!(
                "{s:?} gives other users access; use \"0600\" (the daemon's user only) or \"0660\" (also its group)"
            ));
        }
        Ok(mode)
    }

    /// When `collection`'s attachments are downloaded.
    pub fn attachment_fetch(&self, collection: &str) -> AttachmentFetch {
        self.collections
            .get(collection)
            .map_or(AttachmentFetch::Eager, |c| c.attachments)
    }

    /// The strategy and merge rules in force for `collection`.
    pub fn strategy_for(&self, collection: &str) -> (Strategy, BTreeMap<String, FieldRule>) {
        let mut fields = self.sync.merge_fields.clone();
        match self.collections.get(collection) {
            Some(c) => {
                fields.extend(c.merge_fields.clone());
                (c.conflict.unwrap_or(self.sync.conflict), fields)
            }
            None => (self.sync.conflict, fields),
        }
    }

    /// Which way `collection` syncs (`[collections.NAME] sync`).
    pub fn direction_for(&self, collection: &str) -> Direction {
        self.collections
            .get(collection)
            .map(|c| c.sync)
            .unwrap_or_default()
    }

    /// Every collection's direction (the unlisted ones sync both ways).
    pub fn directions(&self) -> Directions {
        Directions::new(self.collections.iter().map(|(n, c)| (n.clone(), c.sync)))
    }

    /// The backend URL, if one is configured.
    pub fn backend_url(&self) -> Option<&str> {
        let u = self.backend.url.trim();
        (!u.is_empty()).then_some(u)
    }
}

/// Query parameters whose values are taken for credentials: any whose
/// lower-cased name contains one of these.
const SECRET_PARAMS: [&str; 7] = [
    "token",
    "key",
    "secret",
    "pass",
    "auth",
    "sig",
    "credential",
];

/// `url` fit to show (status, logs, errors): a `user:pass@` part becomes
/// `***@` and the values of credential-like query parameters (`token`,
/// `access_token`, `key`, `api_key`, `password`, `signature`, ...) become
/// `***`. Everything else is kept, so the URL still says where it points.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let (before_frag, frag) = match tail.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (tail, None),
    };
    let mut out = scheme + &authority;
    match before_frag.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(before_frag),
    }
    if let Some(f) = frag {
        out.push('#');
        out.push_str(if f.contains('=') { "***" } else { f });
    }
    out
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| n.contains(s))
}

/// Whether `text` holds no TOML at all: only whitespace and comments.
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// A change between two configs that a person should see in the journal
/// when a reload makes it: it changes what sync does with their data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotableChange {
    /// The backend URL changed; `None`: no backend (sync stops).
    Backend {
        old: Option<String>,
        new: Option<String>,
    },
    /// A collection's conflict strategy changed (`collection` "*" is
    /// `[sync] conflict`, the default for collections not listed).
    Strategy {
        collection: String,
        old: Strategy,
        new: Strategy,
    },
    /// A collection's `sync` direction changed. Ops already queued for it
    /// stay and are sent; the new direction governs later writes and pulls.
    Direction {
        collection: String,
        old: Direction,
        new: Direction,
    },
}

/// What a reload from `old` to `new` changes that [`NotableChange`] names.
pub fn notable_changes(old: &Config, new: &Config) -> Vec<NotableChange> {
    let mut out = Vec::new();
    let (ob, nb) = (old.backend_url(), new.backend_url());
    if ob != nb {
        out.push(NotableChange::Backend {
            old: ob.map(redact_url),
            new: nb.map(redact_url),
        });
    }
    if old.sync.conflict != new.sync.conflict {
        out.push(NotableChange::Strategy {
            collection: "*".into(),
            old: old.sync.conflict,
            new: new.sync.conflict,
        });
    }
    let names: std::collections::BTreeSet<&String> = old
        .collections
        .keys()
        .chain(new.collections.keys())
        .collect();
    for c in names {
        let (o, n) = (old.strategy_for(c).0, new.strategy_for(c).0);
        if o != n {
            out.push(NotableChange::Strategy {
                collection: c.clone(),
                old: o,
                new: n,
            });
        }
        let (o, n) = (old.direction_for(c), new.direction_for(c));
        if o != n {
            out.push(NotableChange::Direction {
                collection: c.clone(),
                old: o,
                new: n,
            });
        }
    }
    out
}

/// `[collections.NAME] indexes`: each a non-empty list of at most
/// [`MAX_INDEX_FIELDS`] dotted paths without commas, no index twice.
fn validate_indexes(list: &[IndexFields]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for ix in list {
        let fields = ix.fields();
        if fields.is_empty() || fields.len() > MAX_INDEX_FIELDS {
            return Err(format!(
                "{fields:?}: an index has 1 to {MAX_INDEX_FIELDS} fields"
            ));
        }
        for f in &fields {
            let path = crate::domain::query::field_path(f);
            let operator = path.iter().flatten().any(|p| p.starts_with('$'));
            if f.contains(',') || path.is_none() || operator {
                return Err(format!(
                    "{f:?} is not a field path (names joined by dots, none empty, none starting with $, no commas)"
                ));
            }
        }
        if fields
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            < fields.len()
        {
            return Err(format!("{fields:?} names a field twice"));
        }
        if !seen.insert(fields.clone()) {
            return Err(format!("{fields:?} is declared twice"));
        }
    }
    Ok(())
}

/// Turns a toml/serde error into "key `a.b`: reason (line N)": the key is
/// recovered from the error's position and the nearest `[table]` above it.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().replace('\n', " ");
    let mut err = ConfigError {
        file: None,
        place: None,
        line: None,
        problem: ConfigProblem::Syntax(msg),
    };
    let Some(span) = e.span() else {
        return err;
    };
    let start = span.start.min(text.len());
    err.line = Some(text[..start].matches('\n').count() + 1);
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let header = |l: &str| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
    // The error is on a table header (a misspelled `[colections.notes]`):
    // name that table, not the one above it.
    if line.starts_with('[') {
        err.place = Some(Place::Table(header(line)));
        return err;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(header);
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned());
    err.place = match (table, key) {
        (Some(t), Some(k)) => Some(Place::Key(format!("{t}.{k}"))),
        (None, Some(k)) => Some(Place::Key(k)),
        (Some(t), None) => Some(Place::Table(t)),
        (None, None) => None,
    };
    err
}

/// CouchDB's rule for a database name: a lowercase letter, then lowercase
/// letters, digits and `_ $ ( ) + - /`.
fn couch_db_name(db: &str) -> bool {
    let mut chars = db.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_$()+-/".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[sync]\nbatchsize = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batchsize"), "{e}");
    }

    #[test]
    fn errors_carry_the_key_as_data() {
        let e = Config::parse("[sync]\nbackoff_initial_ms = 0\n").unwrap_err();
        assert_eq!(e.key(), Some("sync.backoff_initial_ms"));
        assert!(matches!(e.problem, ConfigProblem::Invalid(_)), "{e:?}");
        let e =
            Config::parse("[daemon]\nlog_format = \"json\"\n\n[colections.notes]\n").unwrap_err();
        assert_eq!(e.place, Some(Place::Table("colections.notes".into())));
        assert_eq!(e.line, Some(4));
        assert!(matches!(e.problem, ConfigProblem::Syntax(_)), "{e:?}");
        let e = Config::parse("[sync]\nbatchsize = 3\n").unwrap_err();
        assert_eq!(e.key(), Some("sync.batchsize"));
    }

    #[test]
    fn misspelled_top_level_table_is_named() {
        let e = Config::parse(
            "[daemon]\nlog_format = \"json\"\n\n[colections.notes]\nconflict = \"merge\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("colections"), "{e}");
        assert!(!e.contains("table `daemon`"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn doc_shape_is_for_couchdb_only() {
        let c = Config::parse("[backend]\nurl = \"http://h:5984/todos\"\nkind = \"couchdb\"\ndoc_shape = \"wrapped\"\n").unwrap();
        assert_eq!(c.backend.doc_shape, Some(DocShape::Wrapped));
        let e = Config::parse("[backend]\nurl = \"http://h/\"\ndoc_shape = \"native\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backend.doc_shape") && e.contains("couchdb"),
            "{e}"
        );
        let e = Config::parse("[backend]\nkind = \"couchdb\"\ndoc_shape = \"flat\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("doc_shape") && e.contains("native"), "{e}");
    }

    #[test]
    fn password_file_alone_names_username() {
        let e = Config::parse(
            "[backend]\nurl = \"http://h:5984/todos\"\nkind = \"couchdb\"\npassword_file = \"pw\"\n",
        )
        .unwrap_err().to_string();
        assert!(
            e.contains("backend.username") && e.contains("missing"),
            "{e}"
        );
        let e = Config::parse(
            "[backend]\nurl = \"http://h:5984/todos\"\nkind = \"couchdb\"\nusername = \"u\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("backend.password_file") && e.contains("missing"),
            "{e}"
        );
        let e = Config::parse("[backend]\npassword_file = \"pw\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backend.password_file") && e.contains("couchdb"),
            "{e}"
        );
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::parse("[sync]\nbackoff_initial_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sync.backoff_initial_ms"), "{e}");
        let e = Config::parse("[daemon]\nsocket_mode = \"abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("daemon.socket_mode"), "{e}");
        let e = Config::parse("[sync]\nconflict = \"coin-flip\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("coin-flip"), "{e}");
        let e = Config::parse("[backend]\nurl = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backend.url"), "{e}");
    }

    #[test]
    fn world_socket_mode_is_refused() {
        for m in ["0666", "0606", "0601", "0662"] {
            let e = Config::parse(&format!("[daemon]\nsocket_mode = \"{m}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("daemon.socket_mode"), "{m}: {e}");
        }
        Config::parse("[daemon]\nsocket_mode = \"0660\"\n").unwrap();
    }

    #[test]
    fn log_format_values() {
        let c = Config::parse("[daemon]\nlog_format = \"json\"\n").unwrap();
        assert_eq!(c.daemon.log_format, LogFormat::Json);
        let e = Config::parse("[daemon]\nlog_format = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("daemon.log_format"), "{e}");
    }

    #[test]
    fn urls_are_redacted() {
        let cases = [
            ("https://u:pw@h.example/p/", "https://***@h.example/p/"),
            (
                "http://h:8080/s?token=abc&x=1",
                "http://h:8080/s?token=***&x=1",
            ),
            ("http://h/?access_token=abc", "http://h/?access_token=***"),
            ("http://h/?key=k&API_KEY=z", "http://h/?key=***&API_KEY=***"),
            ("https://h.example/sync/", "https://h.example/sync/"),
            (
                "http://a:b@h?password=p#frag",
                "http://***@h?password=***#frag",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
        let e = Config::parse("[backend]\nurl = \"ftp://u:sekrit@h/?token=t0k\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sekrit") && !e.contains("t0k"), "{e}");
    }

    #[test]
    fn collection_sync_direction() {
        let c = Config::parse(
            "[collections.drafts]\nsync = \"local\"\n[collections.logs]\nsync = \"push\"\n[collections.prices]\nsync = \"pull\"\n[collections.todos]\nconflict = \"merge\"\n",
        )
        .unwrap();
        assert_eq!(c.direction_for("drafts"), Direction::Local);
        assert_eq!(c.direction_for("logs"), Direction::Push);
        assert_eq!(c.direction_for("prices"), Direction::Pull);
        assert_eq!(c.direction_for("todos"), Direction::Both);
        assert_eq!(c.direction_for("unlisted"), Direction::Both);
        let listed: Vec<_> = c.directions().iter().map(|(n, _)| n.to_owned()).collect();
        assert_eq!(listed, ["drafts", "logs", "prices"]);
    }

    #[test]
    fn indexes_are_checked_and_say_what_is_wrong() {
        let ok = Config::parse(
            "[collections.todos]\nindexes = [\"due\", [\"done\", \"due\"], \"a.b\"]\n",
        )
        .unwrap();
        let d = ok.declared_indexes();
        assert_eq!(
            d["todos"],
            vec![
                vec!["due".to_owned()],
                vec!["done".into(), "due".into()],
                vec!["a.b".into()]
            ]
        );
        for (text, want) in [
            (
                "indexes = [1]",
                "an index is a field name or a list of field names, not 1",
            ),
            (
                "indexes = [[\"a\", 2]]",
                "an index is a field name or a list of field names",
            ),
            ("indexes = [\"\"]", "is not a field path"),
            ("indexes = [\"a..b\"]", "is not a field path"),
            ("indexes = [[\"a,b\"]]", "is not a field path"),
            ("indexes = [\"$a\"]", "is not a field path"),
            ("indexes = [[]]", "an index has 1 to 8 fields"),
            ("indexes = [[\"a\", \"a\"]]", "names a field twice"),
            ("indexes = [\"a\", [\"a\"]]", "is declared twice"),
        ] {
            let e = Config::parse(&format!("[collections.todos]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains("collections.todos.indexes"), "{text}: {e}");
        }
    }

    #[test]
    fn bad_sync_direction_names_file_collection_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.toml");
        std::fs::write(&path, "[collections.drafts]\nsync = \"sideways\"\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.key(), Some("collections.drafts.sync"));
        assert_eq!(e.line, Some(2));
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        for want in [
            "collections.drafts.sync",
            "sideways",
            "both",
            "push",
            "pull",
            "local",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
    }

    #[test]
    fn reload_names_a_direction_change() {
        let old = Config::parse("[collections.drafts]\nsync = \"local\"\n").unwrap();
        let new = Config::parse("[collections.drafts]\nconflict = \"merge\"\n").unwrap();
        let changes = notable_changes(&old, &new);
        assert!(
            changes.contains(&NotableChange::Direction {
                collection: "drafts".into(),
                old: Direction::Local,
                new: Direction::Both,
            }),
            "{changes:?}"
        );
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../daemon.toml.example");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.strategy_for("notes").0, Strategy::Merge);
    }

    #[test]
    fn collection_override() {
        let c = Config::parse(
            "[sync]\nconflict = \"server-wins\"\n[collections.notes]\nconflict = \"merge\"\nmerge_fields = { title = \"local\" }\n",
        )
        .unwrap();
        assert_eq!(c.strategy_for("notes").0, Strategy::Merge);
        assert_eq!(c.strategy_for("notes").1["title"], FieldRule::Local);
        assert_eq!(c.strategy_for("other").0, Strategy::ServerWins);
    }

    #[test]
    fn backend_kind_and_basic_auth() {
        let c = Config::parse("[backend]\nurl = \"http://h:5984/todos\"\nkind = \"couchdb\"\nusername = \"u\"\npassword_file = \"pw\"\n").unwrap();
        assert_eq!(c.backend.kind, BackendKind::Couchdb);
        assert_eq!(Config::default().backend.kind, BackendKind::Syncd);
        for (text, key) in [
            (
                "kind = \"couchdb\"\nusername = \"u\"\n",
                "backend.password_file",
            ),
            (
                "username = \"u\"\npassword_file = \"p\"\n",
                "backend.username",
            ),
            (
                "kind = \"couchdb\"\nusername = \"u\"\npassword_file = \"p\"\ntoken_file = \"t\"\n",
                "backend.token_file",
            ),
            ("kind = \"mongo\"\n", "kind"),
        ] {
            let e = Config::parse(&format!("[backend]\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn sync_scopes() {
        let c = Config::parse("[sync]\nscopes = [\"team-1\", \"user:alice\"]\n").unwrap();
        assert_eq!(c.sync.scopes.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(Config::default().sync.scopes, None);
        let e = Config::parse("[sync]\nscopes = [\"team 1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sync.scopes") && e.contains("team 1"), "{e}");
        let e = Config::parse(
            "[backend]\nurl = \"http://h:5984/db\"\nkind = \"couchdb\"\n[sync]\nscopes = [\"a\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sync.scopes") && e.contains("CouchDB"), "{e}");
        let c = Config::parse(
            "[backend]\nurl = \"http://h:5984\"\nkind = \"couchdb\"\n[backend.scopes]\nteam-1 = \"team1\"\n[sync]\nscopes = [\"team-1\"]\n",
        )
        .unwrap();
        assert_eq!(c.backend.scopes.map(|m| m.len()), Some(1));
        for (table, want) in [
            ("\"team 1\" = \"t\"", "team 1"),
            ("\"user:bob\" = \"t\"", "per-user"),
            ("team-1 = \"Team1\"", "database name"),
        ] {
            let e = Config::parse(&format!(
                "[backend]\nurl = \"http://h:5984\"\nkind = \"couchdb\"\n[backend.scopes]\n{table}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("backend.scopes") && e.contains(want), "{e}");
        }
        let e = Config::parse("[backend]\nurl = \"http://h\"\n[backend.scopes]\na = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backend.scopes") && e.contains("couchdb"), "{e}");
    }
}
