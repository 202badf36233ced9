//! Admission control for both listeners: how many connections may wait in each stage, in all and per source.
//!
//! A connection first holds a *pending* slot (TCP accepted, TLS handshake, for MQTT also CONNECT) with a short
//! deadline; only an authenticated connection moves on to a *session* slot. Pending slots are few and capped
//! per source address (IPv6 per /64), so one client, or a flood of connections that never finish a handshake,
//! can hold at most its own share of them and never the slots of devices that are already connected. (Before,
//! 4,096 global HTTPS slots were taken before the handshake, without a per-source cap: ~34 new connections a
//! second kept enrolment, renewal and the API down.)
//!
//! Each slot is an RAII guard: dropping it (the connection ended, by any path) gives it back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Limits of one admission stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageLimits {
    /// Most connections in this stage in all.
    pub total: usize,
    /// Most connections in this stage from one source (0 = no per-source cap).
    pub per_source: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The stage is full.
    #[error("all {0} slots are taken")]
    Full(usize),
    /// This source holds its share already.
    #[error("this source already holds {0} slots")]
    SourceFull(usize),
}

/// One admission stage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stage {
    limits: StageLimits,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    total: usize,
    by_source: HashMap<SourceKey, usize>,
}

/// A source address as admission counts it: IPv4 as is, IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(u128::from(u32::from(v4))),
                None => SourceKey((u128::from(v6) >> 64) << 64 | 1 << 63),
            },
        }
    }
}

impl SourceKey {
    /// A key for a name instead of an address (a device id holding connections).
    pub fn of_name(name: &str) -> SourceKey {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        // The top bits mark a name, so it never equals an address key.
        SourceKey(u128::from(h.finish()) | 3 << 126)
    }
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    stage: Stage,
    source: SourceKey,
}

impl Stage {
    /// A stage with `limits`.
    pub fn new(limits: StageLimits) -> Stage {
        Stage { limits, inner: Arc::default() }
    }

    /// Takes a slot for a connection from `ip`, if the stage and the source have room.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refused> {
        self.admit_key(SourceKey::of(ip))
    }

    /// Takes a slot for `source`, if the stage and the source have room.
    pub fn admit_key(&self, source: SourceKey) -> Result<Slot, Refused> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.total >= self.limits.total {
            return Err(Refused::Full(self.limits.total));
        }
        let held = inner.by_source.get(&source).copied().unwrap_or(0);
        if self.limits.per_source > 0 && held >= self.limits.per_source {
            return Err(Refused::SourceFull(self.limits.per_source));
        }
        inner.total += 1;
        inner.by_source.insert(source, held + 1);
        Ok(Slot { stage: self.clone(), source })
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.stage.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.total = inner.total.saturating_sub(1);
        if let Some(n) = inner.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                inner.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_holds_at_most_its_share_and_slots_come_back_on_drop() {
        let stage = Stage::new(StageLimits { total: 5, per_source: 2 });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = stage.admit(a).unwrap();
        let _a2 = stage.admit(a).unwrap();
        assert_eq!(stage.admit(a).unwrap_err(), Refused::SourceFull(2));
        let _b1 = stage.admit(b).unwrap();
        drop(a1);
        let _a3 = stage.admit(a).unwrap();
        assert_eq!(stage.held(), 3);
        let _c = stage.admit("192.0.2.3".parse().unwrap()).unwrap();
        let _d = stage.admit("192.0.2.4".parse().unwrap()).unwrap();
        assert_eq!(stage.admit("192.0.2.5".parse().unwrap()).unwrap_err(), Refused::Full(5));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let stage = Stage::new(StageLimits { total: 10, per_source: 1 });
        let _x = stage.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(stage.admit("2001:db8::2".parse().unwrap()).is_err(), "same /64");
        let _y = stage.admit("2001:db8:0:1::1".parse().unwrap()).unwrap();
        let _z = stage.admit("10.1.1.1".parse().unwrap()).unwrap();
        assert!(stage.admit("::ffff:10.1.1.1".parse().unwrap()).is_err(), "mapped v4 is the same source");
        assert_ne!(SourceKey::of("0.0.0.1".parse().unwrap()), SourceKey::of("::1".parse().unwrap()));
    }
}
