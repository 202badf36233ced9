//! End-to-end tests with real processes on loopback: `hearth serve`, `hearth setup`, `hearth factory`,
//! `hearth-agent`, `hearth demo`; crash safety under `kill -9`; outages; what listens on which port.

mod crash;
mod e2e;
mod outage;
mod support;
