//! Facts about the running daemon that `status` reports and nothing else
//! keeps: which config file it runs on, whether the file's latest edit was
//! rejected, where it listens and stores, its pid and when it started.
//!
//! Exists because the reload path (in `crate::daemon`) is the only place
//! that knows a reload failed, and the status request (in `crate::ipc`)
//! must say so; this is the shared state between them, low enough in the
//! layering that both may use it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct RuntimeInfo {
    /// `None`: running on the embedded defaults.
    pub config_path: Option<PathBuf>,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub pid: u32,
    started: Instant,
    reload_error: Mutex<Option<String>>,
}

impl RuntimeInfo {
    pub fn new(config_path: Option<PathBuf>, socket: PathBuf, data_dir: PathBuf) -> Self {
        RuntimeInfo {
            config_path: config_path.map(|p| std::path::absolute(&p).unwrap_or(p)),
            socket,
            data_dir,
            pid: std::process::id(),
            started: Instant::now(),
            reload_error: Mutex::new(None),
        }
    }

    /// Seconds since the daemon started.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Records the outcome of a reload: `Some(why)` when the file was
    /// rejected (the running config is no longer the file's), `None` when
    /// the file was loaded.
    pub fn set_reload_error(&self, e: Option<String>) {
        match self.reload_error.lock() {
            Ok(mut g) => *g = e,
            Err(p) => *p.into_inner() = e,
        }
    }

    /// Why the file's current content is not in force, if it is not.
    pub fn reload_error(&self) -> Option<String> {
        match self.reload_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
