//! Medians, percentiles and rep-by-rep ratios: how repeated runs become
//! one figure.

use std::time::Duration;

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted microsecond latencies.
pub(crate) fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub(crate) per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) ops: u64,
}

impl Run {
    pub(crate) fn new(ops: u64, elapsed: Duration, mut lat_us: Vec<u32>) -> Run {
        lat_us.sort_unstable();
        Run {
            per_s: ops as f64 / elapsed.as_secs_f64(),
            p50_us: pct(&lat_us, 0.50),
            p99_us: pct(&lat_us, 0.99),
            ops,
        }
    }
}

/// Medians over repetitions.
pub(crate) struct Summary {
    pub(crate) per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) min_per_s: f64,
    pub(crate) max_per_s: f64,
    pub(crate) ops: u64,
}

pub(crate) fn summarize(runs: &[Run]) -> Summary {
    let per_s: Vec<f64> = runs.iter().map(|r| r.per_s).collect();
    Summary {
        per_s: median(&per_s),
        p50_us: median(&runs.iter().map(|r| r.p50_us).collect::<Vec<_>>()),
        p99_us: median(&runs.iter().map(|r| r.p99_us).collect::<Vec<_>>()),
        min_per_s: per_s.iter().cloned().fold(f64::INFINITY, f64::min),
        max_per_s: per_s.iter().cloned().fold(0.0, f64::max),
        ops: runs.iter().map(|r| r.ops).sum(),
    }
}

/// Median of the rep-by-rep ratios a[i]/b[i].
pub(crate) fn ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&r)
}

pub(crate) fn f0(x: f64) -> String {
    format!("{x:.0}")
}

pub(crate) fn f2(x: f64) -> String {
    format!("{x:.2}")
}
