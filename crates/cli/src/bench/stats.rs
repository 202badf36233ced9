//! Measurements: latency histograms (HdrHistogram, microseconds) and the target process's CPU time and resident
//! memory read from /proc.

use hdrhistogram::Histogram;
use serde_json::json;

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// p50/p99/max summary of a histogram, in milliseconds.
pub fn summary(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// Microseconds to milliseconds, 3 decimals.
pub fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// CPU time (user + system) of a process, microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Linux reports clock ticks of 1/100 s on every architecture we run on (USER_HZ).
    ticks * 10_000
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The soft limit on open files of this process.
pub fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// Median of a list (the machine is noisy: repeated runs are summarised by their median).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_histogram_summary() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut h = histogram();
        for v in 1..=1000 {
            h.record(v * 1000).expect("in range");
        }
        let s = summary(&h);
        assert_eq!(s["count"], 1000);
        assert!((s["p50_ms"].as_f64().expect("p50") - 500.0).abs() < 1.0);
        assert!((s["p99_ms"].as_f64().expect("p99") - 990.0).abs() < 2.0);
    }

    #[test]
    fn reads_own_process_figures() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        assert!(nofile_limit() > 0);
        let _ = cpu_us(me);
    }
}
