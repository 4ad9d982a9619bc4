//! The reference backend (`syncd backend`, the same binary as the daemon)
//! on a loopback port the harness chose before starting it, so a daemon can
//! be configured for a backend that is not up yet.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on (bound, then released).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A running `syncd backend`; killed on drop.
pub(crate) struct RefBackend {
    pub(crate) child: Child,
}

impl RefBackend {
    /// Starts `bin backend --listen 127.0.0.1:PORT --data DATA` plus `extra`
    /// and returns once it prints that it listens (retrying for a while if
    /// the port is still taken).
    pub(crate) fn start(bin: &Path, port: u16, data: &Path, extra: &[&str]) -> RefBackend {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::try_start(bin, port, data, extra) {
                Some(b) => return b,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                None => panic!("reference backend did not start on port {port}"),
            }
        }
    }

    fn try_start(bin: &Path, port: u16, data: &Path, extra: &[&str]) -> Option<RefBackend> {
        let mut child = Command::new(bin)
            .arg("backend")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn reference backend");
        let stdout = child.stdout.take().expect("backend stdout");
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        if line.starts_with("listening on ") {
            return Some(RefBackend { child });
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RefBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
