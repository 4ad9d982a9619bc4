//! Network change events from the OS. On Linux: a NETLINK_ROUTE socket
//! subscribed to link, address and route changes; any message counts as "the
//! network may have changed". Elsewhere there is no event source and the
//! worker's offline probing alone brings sync back.

use std::sync::Arc;

use tokio::sync::Notify;

/// Starts watching; `changed` is notified on every change. Returns `false`
/// when no event source is available.
pub fn spawn(changed: Arc<Notify>) -> bool {
    #[cfg(target_os = "linux")]
    {
        linux::spawn(changed)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = changed;
        false
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use netlink_sys::{
        protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket,
    };

    const RTMGRP_LINK: u32 = 0x1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;

    pub fn spawn(changed: Arc<Notify>) -> bool {
        let mut sock = match TokioSocket::new(NETLINK_ROUTE) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "no netlink socket; relying on probes for connectivity");
                return false;
            }
        };
        let groups = RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE;
        if let Err(e) = sock.socket_mut().bind(&SocketAddr::new(0, groups)) {
            tracing::info!(error = %e, "cannot subscribe to netlink route events; relying on probes");
            return false;
        }
        tokio::spawn(async move {
            loop {
                match sock.recv_from_full().await {
                    Ok(_) => {
                        tracing::debug!("network change reported by the kernel");
                        changed.notify_one();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "netlink watch ended; relying on probes");
                        return;
                    }
                }
            }
        });
        true
    }
}
