//! Starting the daemon under measurement (through the tests' shared
//! helper) and opening client connections to it.

use std::path::Path;

use syncd::client::Client;
use syncd::ipc::codec::Encoding;

use crate::common::{Daemon, Launch};

/// The daemon comes from the tests' shared harness; the bench sets it up
/// with its own binary (`--bin`, else the one cargo built for this profile),
/// a `warn` log and a config directory of its own, so that nothing else the
/// harness writes into the temp dir wakes the daemon's config watcher.
pub(crate) fn launch(bin: &Path) -> Launch {
    Launch {
        bin: bin.to_owned(),
        log_level: "warn",
        prefix: "syncd-bench.",
        config_subdir: true,
    }
}

pub(crate) fn start_daemon(bin: &Path) -> Daemon {
    Daemon::start_with(&launch(bin), "")
}

/// Connections through the client library, which the tests do not need.
pub(crate) trait Clients {
    async fn client(&self) -> Client;
    async fn clients(&self, n: usize) -> Vec<Client>;
    async fn clients_with(&self, n: usize, enc: Encoding) -> Vec<Client>;
}

impl Clients for Daemon {
    async fn client(&self) -> Client {
        Client::connect(&self.socket, "bench")
            .await
            .unwrap_or_else(|e| {
                panic!("connect: {e}; log:\n{}", self.log_text());
            })
    }

    async fn clients(&self, n: usize) -> Vec<Client> {
        self.clients_with(n, Encoding::Bincode).await
    }

    async fn clients_with(&self, n: usize, enc: Encoding) -> Vec<Client> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let c = Client::connect_with(&self.socket, "bench", enc)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", self.log_text()));
            v.push(c);
        }
        v
    }
}
