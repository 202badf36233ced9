//! Reconnect and retry pacing: full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff
//! and Jitter"), and the tiny random generator behind it. Full jitter spreads a fleet that lost the hub at the
//! same moment over the whole window, so the hub does not see them all come back in the same second.

use std::time::Duration;

/// A small xorshift64* generator seeded from the operating system's random source (via aws-lc-rs).
///
/// Good enough for jitter and simulated sensor noise; never use it for anything secret.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    /// A generator seeded from aws-lc-rs's system random source.
    pub fn from_entropy() -> Jitter {
        let mut seed = [0u8; 8];
        // If the system random source fails, a fixed seed only makes jitter predictable, not unsafe.
        let _ = aws_lc_rs::rand::fill(&mut seed);
        Jitter::with_seed(u64::from_le_bytes(seed))
    }

    /// A generator with a fixed seed (tests, reproducible simulations).
    pub fn with_seed(seed: u64) -> Jitter {
        // xorshift must not start at zero.
        Jitter { state: seed | 1 }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniformly distributed float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A value in `[0, bound]`.
    pub fn up_to(&mut self, bound: u64) -> u64 {
        if bound == u64::MAX { self.next_u64() } else { self.next_u64() % (bound + 1) }
    }
}

/// Full-jitter exponential backoff: the n-th delay is uniform in `[0, min(max, min · 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    jitter: Jitter,
}

impl Backoff {
    /// A backoff starting at `min` and capped at `max` (the agent uses 1 s and 60 s).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), attempt: 0, jitter: Jitter::from_entropy() }
    }

    /// The upper bound of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay; each call doubles the ceiling until it reaches the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.jitter.up_to(ms))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..9)
            .map(|_| {
                let c = b.ceiling().as_secs();
                b.next_delay();
                c
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn delays_stay_in_bounds_and_are_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            assert!(d <= Duration::from_secs(2));
            seen.insert(d.as_millis());
        }
        // Full jitter: the delays are spread out, not a fixed ladder.
        assert!(seen.len() > 50, "only {} distinct delays", seen.len());
    }

    #[test]
    fn jitter_floats_are_in_unit_interval() {
        let mut j = Jitter::with_seed(7);
        for _ in 0..1000 {
            let x = j.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
