//! The hub's one clock for everything that compares times (certificates, tokens, retention, quotas, events).
//! The system clock in production; tests set or move a manual clock to check what happens a day or a year
//! later without waiting. Durations of I/O (timeouts, backoff) stay on tokio's monotonic clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A wall clock in Unix milliseconds. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still at `now_ms` until set or advanced.
    pub fn manual(now_ms: i64) -> Clock {
        Clock { manual: Some(Arc::new(AtomicI64::new(now_ms))) }
    }

    /// Now, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => system_now_ms(),
        }
    }

    /// Now, as a date-time (for certificate validity).
    pub fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.now_ms()) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// Moves a manual clock forward (a system clock is not changed). Returns the new time.
    pub fn advance(&self, by: std::time::Duration) -> i64 {
        match &self.manual {
            Some(t) => {
                let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
                t.fetch_add(by, Ordering::SeqCst).saturating_add(by)
            }
            None => system_now_ms(),
        }
    }

    /// Sets a manual clock (a system clock is not changed).
    pub fn set(&self, now_ms: i64) {
        if let Some(t) = &self.manual {
            t.store(now_ms, Ordering::SeqCst);
        }
    }
}

/// The hub's clock as rustls's time source, so certificate validity in the TLS handshake is judged by the same
/// clock as everything else (a test that moves the clock a year ahead sees the handshake refuse an expired
/// certificate, as a real year later would).
#[derive(Debug, Clone)]
pub struct TlsTime(pub Clock);

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let ms = u64::try_from(self.0.now_ms()).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_millis(ms)))
    }
}

fn system_now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = Clock::manual(1_000);
        let c2 = c.clone();
        assert_eq!(c.now_ms(), 1_000);
        assert_eq!(c2.advance(std::time::Duration::from_secs(86_400)), 1_000 + 86_400_000);
        assert_eq!(c.now_ms(), 1_000 + 86_400_000);
        assert_eq!(c.now().unix_timestamp(), 86_401);
        let sys = Clock::system();
        assert!(sys.now_ms() > 1_700_000_000_000);
    }
}
