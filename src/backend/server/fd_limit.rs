//! Raises the process's open-file limit for a backend node at start.
//!
//! Why a file of its own: every held pull (`wait`) is an open socket, so a
//! node serves at most about as many waiting devices as its soft
//! `RLIMIT_NOFILE` allows, and the usual default soft limit (1,024) is far
//! below what one node holds (10,000 waiters measured in
//! `bench/fleet_wait.rs`, about 21 KiB each). Servers commonly raise the
//! soft limit to the hard one, which needs no privilege; the hard limit
//! itself is the administrator's (`LimitNOFILE=` in a systemd unit,
//! `ulimit -Hn`). Past it, new connections are refused by the kernel and
//! the accept loop logs and retries.

/// The soft limit is raised to the hard limit (Unix); returns the limit
/// now in force, or `None` where there is none to read.
pub fn raise() -> Option<u64> {
    #[cfg(unix)]
    {
        raise_unix()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
fn raise_unix() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let target = ceiling(lim.rlim_max);
    if lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = target;
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot raise the open-file limit"
            );
        }
    }
    // `rlim_t` is u64 on Linux and macOS, but not on every Unix.
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

/// The highest soft limit the kernel takes: the hard limit, except on
/// Apple systems, whose hard limit is often "unlimited" while `setrlimit`
/// refuses more than `OPEN_MAX` (10,240) files (see their setrlimit(2)).
#[cfg(unix)]
fn ceiling(hard: libc::rlim_t) -> libc::rlim_t {
    #[cfg(target_vendor = "apple")]
    {
        const OPEN_MAX: libc::rlim_t = 10_240;
        hard.min(OPEN_MAX)
    }
    #[cfg(not(target_vendor = "apple"))]
    {
        hard
    }
}

#[cfg(all(test, unix))]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let now = super::raise().expect("a limit on Unix");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads into the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        #[allow(clippy::unnecessary_cast)]
        let cur = lim.rlim_cur as u64;
        assert_eq!(now, cur);
        // macOS reports an unlimited hard limit that setrlimit refuses for
        // files; there the soft limit only has to stay within it.
        #[cfg(target_os = "linux")]
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert!(lim.rlim_cur <= lim.rlim_max);
    }
}
