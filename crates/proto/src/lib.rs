//! Hearth's shared vocabulary: device and model identifiers, MQTT topics and the access rules over them,
//! the versioned message schemas devices and the hub exchange, and the enrolment API bodies.
//!
//! This crate does no I/O (no sockets, files, clocks or databases): every function takes bytes or values and
//! returns validated types or a [`ValidationError`] that says exactly what is wrong. The hub, the agent and the
//! simulator all speak through these types, so a message the agent builds is one the hub accepts.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod command;
pub mod downlink;
pub mod enrol;
pub mod error;
pub mod id;
pub mod limits;
pub mod release;
pub mod time;
pub mod topic;
pub mod update;
pub mod uplink;

pub use error::ValidationError;
pub use id::{DeviceId, ModelId};
pub use time::UnixMs;
pub use topic::{DeviceTopic, TopicFilterDecision};
