//! Where the agent reads the wall clock: the [`Clock`] trait (Unix milliseconds) and [`SystemClock`]. The agent
//! reads the time only through the clock in its configuration, so a test can run a simulated day (sample
//! timestamps, the first seq of a new queue, command expiry, renewal time) without waiting for it.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// Unix time in milliseconds from the system clock (at least 1, as the protocol requires).
pub fn now_ms() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(1);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_after_2024() {
        assert!(SystemClock.now_ms() > 1_704_067_200_000);
    }
}
