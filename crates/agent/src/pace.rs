//! Pacing of uplinks: a token bucket that keeps a device below the hub's per-connection packet rate, so a
//! device returning from an outage drains its queue as fast as allowed and no faster (before, a backlog was
//! resent as fast as acknowledgements came back and tripped the hub's rate limit, one disconnect and one
//! security event per device after every long outage). Sans-I/O: the caller passes the time.

use std::time::Duration;

use tokio::time::Instant;

/// Default sustained uplinks per second: half the hub's default limit (100/s, burst 200).
pub const DEFAULT_RATE: u32 = 50;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pacer {
    /// `rate` per second sustained, bursts of `2 × rate`; full at the start. A rate of 0 means unpaced.
    pub fn new(rate: u32, now: Instant) -> Pacer {
        let rate = f64::from(rate);
        Pacer { rate, burst: rate * 2.0, tokens: rate * 2.0, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// How many messages may leave now (at most `want`).
    pub fn available(&mut self, want: usize, now: Instant) -> usize {
        if self.rate == 0.0 {
            return want;
        }
        self.refill(now);
        (self.tokens.floor() as usize).min(want)
    }

    /// Spends `n`.
    pub fn take(&mut self, n: usize, now: Instant) {
        if self.rate == 0.0 {
            return;
        }
        self.refill(now);
        self.tokens -= n as f64;
    }

    /// When the next message may leave.
    pub fn next_at(&self, now: Instant) -> Instant {
        if self.rate == 0.0 || self.tokens >= 1.0 {
            return now;
        }
        now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_drains_at_the_rate_after_one_burst() {
        let start = Instant::now();
        let mut p = Pacer::new(50, start);
        assert_eq!(p.available(1000, start), 100, "one burst of 2 × rate");
        p.take(100, start);
        assert_eq!(p.available(1000, start), 0);
        assert!(p.next_at(start) > start);
        let later = start + Duration::from_secs(2);
        assert_eq!(p.available(1000, later), 100, "refilled at 50/s, capped at the burst");
        p.take(30, later);
        assert_eq!(p.available(1000, later), 70);
        // Over 10 s at most 100 + 10 × 50 messages leave: below the hub's 100/s with bursts of 200.
        let mut q = Pacer::new(50, start);
        let mut sent = 0;
        for ms in (0..10_000).step_by(10) {
            let now = start + Duration::from_millis(ms);
            let n = q.available(1000, now);
            q.take(n, now);
            sent += n;
        }
        assert!(sent <= 100 + 500, "{sent}");
        assert!(sent >= 580, "{sent}");
    }

    #[test]
    fn zero_rate_is_unpaced() {
        let now = Instant::now();
        let mut p = Pacer::new(0, now);
        assert_eq!(p.available(7, now), 7);
        p.take(7, now);
        assert_eq!(p.next_at(now), now);
    }
}
