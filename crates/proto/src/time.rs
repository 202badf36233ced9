//! [`UnixMs`]: a point in time as the hub, the agent and the store exchange it (milliseconds since the Unix
//! epoch, UTC). This crate reads no clock; the hub's `Clock` produces these.

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMs(pub i64);

impl UnixMs {
    /// The value in milliseconds.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> UnixMs {
        UnixMs(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// How long from `earlier` to this time (zero if `earlier` is later).
    pub fn since(self, earlier: UnixMs) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// The UTC day this time falls in, as days since the epoch.
    pub fn day(self) -> i64 {
        self.0.div_euclid(86_400_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_days_floor() {
        let t = UnixMs(86_400_000 * 3 + 5);
        assert_eq!(t.day(), 3);
        assert_eq!(UnixMs(-1).day(), -1);
        assert_eq!(t.plus(std::time::Duration::from_millis(10)).0, t.0 + 10);
        assert_eq!(UnixMs(i64::MAX).plus(std::time::Duration::from_secs(1)).0, i64::MAX);
        assert_eq!(UnixMs(10).since(UnixMs(4)).as_millis(), 6);
        assert_eq!(UnixMs(4).since(UnixMs(10)).as_millis(), 0);
    }
}
