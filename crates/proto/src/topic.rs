//! MQTT topics and the per-device access rules over them.
//!
//! Every topic a device may use starts with `devices/{device_id}/`, where the id is the one named by the device's
//! certificate (never the MQTT client id). A device may publish to
//!
//! | topic | payload |
//! |---|---|
//! | `devices/{id}/telemetry` | [`crate::uplink::Uplink`] of kind telemetry |
//! | `devices/{id}/events` | [`crate::uplink::Uplink`] of kind event |
//! | `devices/{id}/state` | [`crate::uplink::Uplink`] of kind state |
//! | `devices/{id}/commands/ack` | [`crate::command::CommandAck`] |
//!
//! and may subscribe only to `devices/{id}/commands` (exactly that filter: no wildcards). Everything else is
//! refused and counted as a security event.

use crate::limits::MAX_TOPIC_LEN;
use crate::{DeviceId, ValidationError};

/// Prefix of every device topic.
pub const PREFIX: &str = "devices/";

/// A topic a device may publish to, parsed and checked against the publishing device's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTopic {
    /// Periodic measurements.
    Telemetry,
    /// Discrete occurrences the device reports.
    Events,
    /// The device's reported state (replaces the previous one).
    State,
    /// The device's answer to a command.
    CommandAck,
}

impl DeviceTopic {
    /// The suffix after `devices/{id}/`.
    pub fn suffix(self) -> &'static str {
        match self {
            DeviceTopic::Telemetry => "telemetry",
            DeviceTopic::Events => "events",
            DeviceTopic::State => "state",
            DeviceTopic::CommandAck => "commands/ack",
        }
    }

    /// The full topic for `device`.
    pub fn for_device(self, device: &DeviceId) -> String {
        format!("{PREFIX}{device}/{}", self.suffix())
    }
}

/// Why a publish topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishDenied {
    /// The topic is malformed (too long, empty, contains wildcards or NUL).
    #[error("invalid topic name: {0}")]
    Invalid(ValidationError),
    /// The topic belongs to another device or lies outside `devices/`.
    #[error("topic is outside this device's prefix")]
    NotAuthorized,
    /// The topic is inside the device's prefix but is not one Hearth defines.
    #[error("unknown topic under the device's prefix")]
    Unknown,
}

/// Decides whether `device` may publish to `topic`, and which kind of message it carries.
pub fn authorize_publish(device: &DeviceId, topic: &str) -> Result<DeviceTopic, PublishDenied> {
    validate_topic_name(topic).map_err(PublishDenied::Invalid)?;
    let rest = own_suffix(device, topic).ok_or(PublishDenied::NotAuthorized)?;
    match rest {
        "telemetry" => Ok(DeviceTopic::Telemetry),
        "events" => Ok(DeviceTopic::Events),
        "state" => Ok(DeviceTopic::State),
        "commands/ack" => Ok(DeviceTopic::CommandAck),
        _ => Err(PublishDenied::Unknown),
    }
}

/// The topic on which `device` receives commands.
pub fn command_topic(device: &DeviceId) -> String {
    format!("{PREFIX}{device}/commands")
}

/// The outcome of checking one subscription filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicFilterDecision {
    /// The filter is the device's own command topic.
    Commands,
    /// The filter is malformed.
    Invalid(ValidationError),
    /// The filter names topics that are not the device's own command topic (another device, a wildcard).
    NotAuthorized,
}

/// Decides whether `device` may subscribe to `filter`.
pub fn authorize_subscribe(device: &DeviceId, filter: &str) -> TopicFilterDecision {
    if let Err(e) = validate_len(filter) {
        return TopicFilterDecision::Invalid(e);
    }
    if let Err(e) = validate_filter_syntax(filter) {
        return TopicFilterDecision::Invalid(e);
    }
    match own_suffix(device, filter) {
        Some("commands") => TopicFilterDecision::Commands,
        _ => TopicFilterDecision::NotAuthorized,
    }
}

/// Checks that `topic` is a valid MQTT topic name: 1..=256 bytes, no wildcard, no NUL.
pub fn validate_topic_name(topic: &str) -> Result<(), ValidationError> {
    validate_len(topic)?;
    if let Some(c) = topic.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(ValidationError::BadCharacter {
            what: "topic name",
            found: c,
            allowed: "any UTF-8 except '+', '#' and NUL",
        });
    }
    Ok(())
}

fn validate_len(topic: &str) -> Result<(), ValidationError> {
    crate::id::check_len("topic", topic, 1, MAX_TOPIC_LEN)
}

/// MQTT 3.1.1 §4.7.1: `#` only as the last level on its own, `+` only as a whole level, no NUL.
fn validate_filter_syntax(filter: &str) -> Result<(), ValidationError> {
    let bad = |found| ValidationError::BadCharacter {
        what: "topic filter",
        found,
        allowed: "'+' and '#' only as whole levels, '#' only last; no NUL",
    };
    if filter.contains('\0') {
        return Err(bad('\0'));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(bad('#'));
        }
        if level.contains('+') && *level != "+" {
            return Err(bad('+'));
        }
    }
    Ok(())
}

fn own_suffix<'a>(device: &DeviceId, topic: &'a str) -> Option<&'a str> {
    topic.strip_prefix(PREFIX)?.strip_prefix(device.as_str())?.strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("valid id")
    }

    #[test]
    fn publish_rules() {
        let a = dev("aaa");
        assert_eq!(authorize_publish(&a, "devices/aaa/telemetry"), Ok(DeviceTopic::Telemetry));
        assert_eq!(authorize_publish(&a, "devices/aaa/commands/ack"), Ok(DeviceTopic::CommandAck));
        assert_eq!(authorize_publish(&a, "devices/bbb/telemetry"), Err(PublishDenied::NotAuthorized));
        // A device whose id is a prefix of another's cannot reach the longer one's topics.
        assert_eq!(authorize_publish(&a, "devices/aaab/telemetry"), Err(PublishDenied::NotAuthorized));
        assert_eq!(authorize_publish(&a, "devices/aaa"), Err(PublishDenied::NotAuthorized));
        assert_eq!(authorize_publish(&a, "devices/aaa/commands"), Err(PublishDenied::Unknown));
        assert_eq!(authorize_publish(&a, "devices/aaa/telemetry/x"), Err(PublishDenied::Unknown));
        assert!(matches!(authorize_publish(&a, "devices/aaa/#"), Err(PublishDenied::Invalid(_))));
        assert!(matches!(authorize_publish(&a, ""), Err(PublishDenied::Invalid(_))));
        let long = format!("devices/aaa/{}", "x".repeat(300));
        assert!(matches!(authorize_publish(&a, &long), Err(PublishDenied::Invalid(_))));
        assert_eq!(DeviceTopic::State.for_device(&a), "devices/aaa/state");
    }

    #[test]
    fn subscribe_rules() {
        let a = dev("aaa");
        assert_eq!(authorize_subscribe(&a, "devices/aaa/commands"), TopicFilterDecision::Commands);
        assert_eq!(authorize_subscribe(&a, "devices/bbb/commands"), TopicFilterDecision::NotAuthorized);
        assert_eq!(authorize_subscribe(&a, "devices/+/commands"), TopicFilterDecision::NotAuthorized);
        assert_eq!(authorize_subscribe(&a, "#"), TopicFilterDecision::NotAuthorized);
        assert_eq!(authorize_subscribe(&a, "devices/aaa/#"), TopicFilterDecision::NotAuthorized);
        assert_eq!(authorize_subscribe(&a, "devices/aaa/telemetry"), TopicFilterDecision::NotAuthorized);
        assert!(matches!(authorize_subscribe(&a, "devices/a#"), TopicFilterDecision::Invalid(_)));
        assert!(matches!(authorize_subscribe(&a, "de+/x"), TopicFilterDecision::Invalid(_)));
    }

    proptest! {
        #[test]
        fn only_own_prefix_is_ever_authorized(topic in "\\PC{0,300}") {
            let a = dev("aaa");
            if authorize_publish(&a, &topic).is_ok() {
                prop_assert!(topic.starts_with("devices/aaa/"));
            }
            if authorize_subscribe(&a, &topic) == TopicFilterDecision::Commands {
                prop_assert_eq!(topic, "devices/aaa/commands");
            }
        }
    }
}
