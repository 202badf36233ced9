//! End-to-end tests with real processes on loopback: `hearth serve`, `hearth setup`, `hearth factory`,
//! `hearth-agent`, `hearth demo`; the fault suite (`faults`: crashes, disk full, a locked database, network
//! chaos, floods, hostile clients); outages; what listens on which port.

mod browser;
mod cluster;
mod e2e;
mod faults;
mod outage;
mod support;
mod updates;
