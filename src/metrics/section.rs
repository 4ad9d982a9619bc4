//! `[metrics]` in daemon.toml: where (if anywhere) to serve `/metrics` and
//! `/health` over HTTP.
//!
//! Its own file so that the rule "loopback only unless explicitly allowed"
//! sits next to the key it guards. Off by default: the socket's `metrics`
//! request (`syncd metrics`) needs no port.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` to serve `/metrics` and `/health` on, e.g.
    /// "127.0.0.1:9464"; absent: no HTTP listener.
    pub listen: Option<String>,
    /// Allow a `listen` address that is not loopback. The endpoints have
    /// no authentication: only for networks you trust.
    pub allow_non_loopback: bool,
}

impl MetricsSection {
    /// The address to listen on, if any; an error names the key.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let Some(l) = self.listen.as_deref() else {
            return Ok(None);
        };
        let addr: SocketAddr = l
            .parse()
            .map_err(|e| format!("{l:?} is not an address like \"127.0.0.1:9464\": {e}"))?;
        if !addr.ip().is_loopback() && !self.allow_non_loopback {
            return Err(format!(
                "{addr} is not a loopback address; the endpoints have no \
                 authentication (set metrics.allow_non_loopback = true to serve it anyway)"
            ));
        }
        Ok(Some(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_unless_allowed() {
        let mut s = MetricsSection {
            listen: Some("0.0.0.0:9464".into()),
            allow_non_loopback: false,
        };
        assert!(s.listen_addr().unwrap_err().contains("allow_non_loopback"));
        s.allow_non_loopback = true;
        assert!(s.listen_addr().unwrap().is_some());
        s.listen = Some("[::1]:9464".into());
        s.allow_non_loopback = false;
        assert!(s.listen_addr().unwrap().is_some());
        s.listen = Some("localhost".into());
        assert!(s.listen_addr().is_err());
        assert_eq!(MetricsSection::default().listen_addr(), Ok(None));
    }
}
