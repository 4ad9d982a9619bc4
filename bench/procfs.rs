//! What the harness reads from /proc and statfs: CPU seconds, RSS, context
//! switches, the machine's description.

use std::path::Path;

pub(crate) fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub(crate) fn meminfo_kib(key: &str) -> u64 {
    status_field(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        key,
    )
}

/// `Key:   123 kB` (or a bare number) from a /proc status-like text.
pub(crate) fn status_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> u64 {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        key,
    )
}

/// utime + stime of the whole process, seconds.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// utime + stime of one thread of this process, seconds.
pub(crate) fn thread_cpu_secs(tid: i32) -> f64 {
    stat_cpu_secs(&format!("/proc/self/task/{tid}/stat"))
}

fn stat_cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised comm; utime and stime are fields 14, 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Per-thread (tid, name, voluntary, involuntary) context switches.
pub(crate) fn thread_switches(pid: u32) -> Vec<(u32, String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let base = e.path();
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let name = std::fs::read_to_string(base.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        out.push((
            tid,
            name,
            status_field(&status, "voluntary_ctxt_switches"),
            status_field(&status, "nonvoluntary_ctxt_switches"),
        ));
    }
    out.sort();
    out
}

pub(crate) fn fs_type(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: statfs fills the zeroed struct we pass; c is NUL-terminated.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return "unknown".into();
    }
    #[allow(clippy::unnecessary_cast)]
    match s.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        other => format!("0x{other:x}"),
    }
}
