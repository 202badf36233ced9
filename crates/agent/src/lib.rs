//! The Hearth device agent as a library: everything a device needs to speak the protocol in
//! `docs/PROTOCOL.md`, and the [`Agent`] that puts it together. The `hearth-agent` binary is a thin shell
//! over [`Agent`]; the simulator runs many of them in one process and the load generator reuses
//! [`mqtt::MqttConnection`] on its own.
//!
//! | module | owns |
//! |---|---|
//! | [`keystore`] | the device's private key, CSRs, the TLS signing key |
//! | [`enrol`] | bootstrap file, enrolment, `hub.json`/`device.crt`, renewal |
//! | [`tls`] | the one TLS policy (TLS 1.3, hub CA only) |
//! | [`mqtt`] | a lean MQTT 5 client on `rmqtt-codec` |
//! | [`queue`] | the persistent, bounded store-and-forward queue |
//! | [`commands`] | answers to hub commands |
//! | [`source`] | telemetry sources |
//! | [`backoff`] | full-jitter backoff and its random generator |
//! | [`clock`] | the wall clock, injectable for tests |
//! | [`tuf`], [`floor`], [`update`] | verified updates: the TUF client, the security floor, the installer and the update steps |
//! | [`agent`] | the loop tying them together |

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is the failure report (CONVENTIONS.md: unwrap_used allowed in tests).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod backoff;
pub mod clock;
pub mod commands;
pub mod enrol;
pub mod floor;
mod fsutil;
pub mod keystore;
pub mod mqtt;
pub mod pace;
pub mod queue;
pub mod source;
pub mod tls;
pub mod tuf;
pub mod update;

pub use agent::{Agent, AgentConfig, AgentStats, StatsSnapshot, Stopped, USER_DATA_DIR};
pub use clock::{Clock, SystemClock};
pub use source::{SystemSource, TelemetrySource};
