//! What bounds stored data: a per-device daily byte quota on uplinks (checked before anything is queued), and
//! retention (a background job that deletes uplinks and security events past their age, in small batches so
//! it never holds the database for long).
//!
//! Quota usage is kept in memory per UTC day; a restart forgets the day's usage (at worst one extra day's quota
//! per restart), which is the price of not writing a row per message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::store::Store;

const DAY_MS: i64 = 86_400_000;

/// A device went over its daily quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("daily uplink quota of {limit} bytes used up; resets at 00:00 UTC")]
pub struct QuotaExceeded {
    /// The quota, bytes per day.
    pub limit: u64,
}

/// Per-device daily uplink byte quotas. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Quotas {
    bytes_per_day: u64,
    clock: Clock,
    used: Arc<Mutex<Used>>,
}

#[derive(Debug, Default)]
struct Used {
    /// The day of the entries (all are of one day: a new day starts an empty map).
    day: i64,
    bytes: HashMap<String, u64>,
}

impl Quotas {
    /// Quotas of `bytes_per_day` per device (0 = unlimited).
    pub fn new(bytes_per_day: u64, clock: Clock) -> Quotas {
        Quotas { bytes_per_day, clock, used: Arc::default() }
    }

    /// Charges `bytes` to `device` for today, or refuses (charging nothing) if that would exceed its quota.
    pub fn charge(&self, device: &str, bytes: u64) -> Result<(), QuotaExceeded> {
        if self.bytes_per_day == 0 {
            return Ok(());
        }
        let day = self.clock.now_ms().div_euclid(DAY_MS);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.day != day {
            // A new UTC day: everyone starts afresh, and the map holds only today's active devices. O(1) per
            // message otherwise.
            used.day = day;
            used.bytes.clear();
        }
        let spent = used.bytes.get(device).copied().unwrap_or(0);
        if spent.saturating_add(bytes) > self.bytes_per_day {
            return Err(QuotaExceeded { limit: self.bytes_per_day });
        }
        // The device's entry is allocated once a day, not once a message.
        match used.bytes.get_mut(device) {
            Some(e) => *e += bytes,
            None => {
                used.bytes.insert(device.to_owned(), bytes);
            }
        }
        Ok(())
    }
}

/// How long stored data is kept.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Uplinks older than this (by receive time) are deleted; 0 keeps them for ever.
    pub telemetry_days: u32,
    /// Security events whose last occurrence is older than this are deleted.
    pub security_events_days: u32,
    /// At most this many security-event rows are kept (the oldest go first).
    pub max_security_events: u64,
    /// Audit-log entries older than this are deleted.
    pub audit_days: u32,
    /// How often the job runs.
    pub interval: Duration,
}

/// The retention job.
#[derive(Debug, Clone)]
pub struct Retention {
    store: Store,
    clock: Clock,
    settings: RetentionSettings,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Uplink rows.
    pub uplinks: u64,
    /// Security-event rows.
    pub security_events: u64,
    /// Audit-log entries.
    pub audit: u64,
    /// Ended sign-in sessions and stale login-failure counters.
    pub sessions: u64,
    /// Mail links past their end.
    pub mail_links: u64,
    /// Consumer sign-ups never confirmed within a week.
    pub unverified_accounts: u64,
    /// Passkey ceremonies past their end.
    pub ceremonies: u64,
}

impl Retention {
    /// The job over `store`.
    pub fn new(store: Store, clock: Clock, settings: RetentionSettings) -> Retention {
        Retention { store, clock, settings }
    }

    /// Runs the job every `interval` until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.settings.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.run_once().await {
                    Ok(p) if p != Pruned::default() => {
                        tracing::info!(
                            uplinks = p.uplinks,
                            security_events = p.security_events,
                            audit = p.audit,
                            sessions = p.sessions,
                            "retention pass"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
                }
            }
        })
    }

    /// One pass: deletes what is past its retention, in batches.
    pub async fn run_once(&self) -> Result<Pruned, crate::store::StoreError> {
        let now = self.clock.now_ms();
        let mut pruned = Pruned::default();
        // PostgreSQL: the coming week's telemetry partitions (several nodes may do this at once; one wins).
        self.store.prepare_uplink_partitions(now, 7).await?;
        if self.settings.telemetry_days > 0 {
            let before = now - i64::from(self.settings.telemetry_days) * DAY_MS;
            loop {
                let n = self.store.prune_uplinks(before, 5_000).await?;
                pruned.uplinks += n;
                if n < 5_000 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let before = now - i64::from(self.settings.security_events_days) * DAY_MS;
        let max = i64::try_from(self.settings.max_security_events).unwrap_or(i64::MAX);
        pruned.security_events = self.store.prune_security_events(before, max).await?;
        pruned.audit = self.store.prune_audit_log(now - i64::from(self.settings.audit_days) * DAY_MS).await?;
        // Sessions ended (revoked, or past their end) a day ago, and failure counters a day old and not locked.
        pruned.sessions = self.store.prune_web_sessions(now - DAY_MS).await?;
        // Mail links a day past their end, and consumer sign-ups never confirmed within a week.
        (pruned.mail_links, pruned.unverified_accounts) =
            self.store.prune_mail_links(now - DAY_MS, now - 7 * DAY_MS).await?;
        // Passkey ceremonies never finished.
        pruned.ceremonies = self.store.prune_ceremonies(now).await?;
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refuses_without_charging_and_resets_next_day() {
        let clock = Clock::manual(10 * DAY_MS + 5);
        let q = Quotas::new(1_000, clock.clone());
        assert_eq!(q.charge("a", 600), Ok(()));
        assert_eq!(q.charge("a", 500), Err(QuotaExceeded { limit: 1_000 }));
        assert_eq!(q.charge("a", 400), Ok(()), "a refusal charges nothing");
        assert_eq!(q.charge("b", 1_000), Ok(()), "quotas are per device");
        assert!(q.charge("a", 1).is_err());
        clock.advance(Duration::from_millis(DAY_MS as u64));
        assert_eq!(q.charge("a", 1_000), Ok(()), "a new UTC day starts afresh");
    }

    #[test]
    fn zero_quota_is_unlimited() {
        let q = Quotas::new(0, Clock::manual(0));
        assert_eq!(q.charge("a", u64::MAX), Ok(()));
    }
}
