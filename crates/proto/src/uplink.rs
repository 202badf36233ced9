//! Uplink messages: what a device publishes on its telemetry, events and state topics (schema version 1).
//!
//! ```json
//! {"v":1,"seq":42,"ts":1764000000000,"metrics":{"temperature_c":21.5,"door_open":false}}   // telemetry
//! {"v":1,"seq":43,"ts":1764000000100,"event":"button_pressed","data":{"count":2}}          // events
//! {"v":1,"seq":44,"ts":1764000000200,"state":{"firmware":"1.0.0","queue_dropped":0}}       // state
//! ```
//!
//! `seq` is the device's sequence number, shared by all three kinds, rising with every message the device
//! queues (a new queue starts at the wall-clock milliseconds, so a lost queue never repeats a seq); the hub
//! stores each (device, seq) once, so a device may resend the same message freely, and refuses a different
//! message under a stored seq. `ts` is the device's
//! clock in Unix milliseconds. Field names are 1..=64 characters of `a-z 0-9 _ .`; values are finite numbers,
//! booleans or strings of at most 256 bytes; at most 64 fields. The whole payload is at most 16 KiB. Unknown
//! top-level keys are refused, so a typo is an error rather than lost data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::limits::{MAX_METRIC_NAME, MAX_METRIC_STRING, MAX_METRICS, MAX_TIMESTAMP_MS, MAX_UPLINK_PAYLOAD};
use crate::topic::DeviceTopic;

/// The schema version this build writes and accepts.
pub const SCHEMA_VERSION: u64 = 1;

/// One value of a telemetry metric, event datum or state field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A finite number.
    Number(f64),
    /// A short string.
    Text(String),
}

/// A validated set of named values.
pub type Fields = BTreeMap<String, Value>;

/// Which of the three uplink kinds a message is (as stored and queried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkKind {
    /// Measurements (`devices/{id}/telemetry`).
    Telemetry,
    /// A discrete event (`devices/{id}/events`).
    Event,
    /// Reported state (`devices/{id}/state`).
    State,
}

impl UplinkKind {
    /// The kind as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkKind::Telemetry => "telemetry",
            UplinkKind::Event => "event",
            UplinkKind::State => "state",
        }
    }

    /// Parses a stored kind.
    pub fn parse(s: &str) -> Option<UplinkKind> {
        match s {
            "telemetry" => Some(UplinkKind::Telemetry),
            "event" => Some(UplinkKind::Event),
            "state" => Some(UplinkKind::State),
            _ => None,
        }
    }
}

impl TryFrom<String> for UplinkKind {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        UplinkKind::parse(&s)
            .ok_or_else(|| ValidationError::Schema { what: "uplink kind", detail: format!("unknown kind {s:?}") })
    }
}

/// What an uplink carries, by topic.
#[derive(Debug, Clone, PartialEq)]
pub enum UplinkBody {
    /// Measurements.
    Telemetry {
        /// The measurements.
        metrics: Fields,
    },
    /// A discrete occurrence.
    Event {
        /// The event's name.
        event: String,
        /// Details.
        data: Fields,
    },
    /// The device's reported state.
    State {
        /// The state fields.
        state: Fields,
    },
}

impl UplinkBody {
    /// The topic this body is published on.
    pub fn topic(&self) -> DeviceTopic {
        match self {
            UplinkBody::Telemetry { .. } => DeviceTopic::Telemetry,
            UplinkBody::Event { .. } => DeviceTopic::Events,
            UplinkBody::State { .. } => DeviceTopic::State,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> UplinkKind {
        match self {
            UplinkBody::Telemetry { .. } => UplinkKind::Telemetry,
            UplinkBody::Event { .. } => UplinkKind::Event,
            UplinkBody::State { .. } => UplinkKind::State,
        }
    }
}

/// A validated uplink message.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    /// The device's sequence number (>= 1).
    pub seq: u64,
    /// The device's timestamp, Unix milliseconds.
    pub ts: u64,
    /// What it carries.
    pub body: UplinkBody,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u64,
    seq: u64,
    ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<Fields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Fields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<Fields>,
}

impl Uplink {
    /// Parses and validates a payload received on `topic` (one of telemetry, events, state).
    pub fn parse(topic: DeviceTopic, payload: &[u8]) -> Result<Uplink, ValidationError> {
        if payload.len() > MAX_UPLINK_PAYLOAD {
            return Err(ValidationError::TooLong { what: "payload", len: payload.len(), max: MAX_UPLINK_PAYLOAD });
        }
        let wire: Wire = serde_json::from_slice(payload).map_err(|e| ValidationError::schema("uplink", e))?;
        if wire.v != SCHEMA_VERSION {
            return Err(ValidationError::UnsupportedVersion { found: wire.v, supported: "1" });
        }
        if wire.seq == 0 {
            return Err(ValidationError::OutOfRange { field: "seq", detail: "must be at least 1".into() });
        }
        if wire.seq > MAX_TIMESTAMP_MS {
            return Err(ValidationError::OutOfRange { field: "seq", detail: "must be below 2^53".into() });
        }
        if wire.ts == 0 || wire.ts > MAX_TIMESTAMP_MS {
            return Err(ValidationError::OutOfRange { field: "ts", detail: "Unix milliseconds in 1..2^53".into() });
        }
        let misplaced = |field: &'static str| ValidationError::Schema {
            what: "uplink",
            detail: format!("field `{field}` does not belong on the {} topic", topic.suffix()),
        };
        let missing = |field: &'static str| ValidationError::Schema {
            what: "uplink",
            detail: format!("missing field `{field}` for the {} topic", topic.suffix()),
        };
        let body = match topic {
            DeviceTopic::Telemetry => {
                if wire.event.is_some() || wire.data.is_some() || wire.state.is_some() {
                    return Err(misplaced("event/data/state"));
                }
                let metrics = wire.metrics.ok_or_else(|| missing("metrics"))?;
                UplinkBody::Telemetry { metrics: check_fields("metrics", metrics)? }
            }
            DeviceTopic::Events => {
                if wire.metrics.is_some() || wire.state.is_some() {
                    return Err(misplaced("metrics/state"));
                }
                let event = wire.event.ok_or_else(|| missing("event"))?;
                check_name("event", &event)?;
                UplinkBody::Event { event, data: check_fields("data", wire.data.unwrap_or_default())? }
            }
            DeviceTopic::State => {
                if wire.metrics.is_some() || wire.event.is_some() || wire.data.is_some() {
                    return Err(misplaced("metrics/event/data"));
                }
                let state = wire.state.ok_or_else(|| missing("state"))?;
                UplinkBody::State { state: check_fields("state", state)? }
            }
            DeviceTopic::CommandAck => {
                return Err(ValidationError::Schema {
                    what: "uplink",
                    detail: "command acknowledgements are not uplinks".into(),
                });
            }
        };
        Ok(Uplink { seq: wire.seq, ts: wire.ts, body })
    }

    /// Encodes this message as JSON text (what the hub stores).
    pub fn to_json_string(&self) -> String {
        String::from_utf8(self.to_json()).expect("serde_json writes UTF-8")
    }

    /// Encodes this message as its JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        let mut wire =
            Wire { v: SCHEMA_VERSION, seq: self.seq, ts: self.ts, metrics: None, event: None, data: None, state: None };
        match &self.body {
            UplinkBody::Telemetry { metrics } => wire.metrics = Some(metrics.clone()),
            UplinkBody::Event { event, data } => {
                wire.event = Some(event.clone());
                wire.data = Some(data.clone());
            }
            UplinkBody::State { state } => wire.state = Some(state.clone()),
        }
        serde_json::to_vec(&wire).expect("serializing plain maps and numbers cannot fail")
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), ValidationError> {
    crate::id::check_len(what, name, 1, MAX_METRIC_NAME)?;
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.'))) {
        return Err(ValidationError::BadCharacter { what, found: c, allowed: "a-z, 0-9, '_' and '.'" });
    }
    Ok(())
}

fn check_fields(what: &'static str, fields: Fields) -> Result<Fields, ValidationError> {
    if fields.len() > MAX_METRICS {
        return Err(ValidationError::OutOfRange { field: what, detail: format!("at most {MAX_METRICS} entries") });
    }
    for (name, value) in &fields {
        check_name("field name", name)?;
        match value {
            Value::Number(n) if !n.is_finite() => {
                return Err(ValidationError::OutOfRange { field: what, detail: format!("{name} is not finite") });
            }
            Value::Text(t) if t.len() > MAX_METRIC_STRING => {
                return Err(ValidationError::TooLong { what: "string value", len: t.len(), max: MAX_METRIC_STRING });
            }
            _ => {}
        }
    }
    Ok(fields)
}

/// The OpenAPI schema of [`Fields`] as [`check_fields`] accepts them: at most `MAX_METRICS` names of `a-z 0-9 _ .`,
/// each a finite number, a boolean or a string of at most `MAX_METRIC_STRING` bytes.
#[cfg(feature = "openapi")]
pub fn fields_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
    let value = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::String).max_length(Some(MAX_METRIC_STRING)));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_METRICS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_METRIC_NAME))
                .pattern(Some("^[a-z0-9_.]+$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .description(Some("Names (a-z 0-9 _ .) to finite numbers, booleans or short strings."))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(topic: DeviceTopic, payload: &str, expected: Result<(), &str>) {
        let got = Uplink::parse(topic, payload.as_bytes());
        match (got, expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(code)) => assert_eq!(e.code(), code, "{payload}: {e}"),
            (got, expected) => panic!("{payload}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn telemetry_schema() {
        use DeviceTopic::*;
        check(Telemetry, r#"{"v":1,"seq":1,"ts":5,"metrics":{"t":1.5,"on":true,"mode":"eco"}}"#, Ok(()));
        check(Telemetry, r#"{"v":2,"seq":1,"ts":5,"metrics":{}}"#, Err("unsupported_version"));
        check(Telemetry, r#"{"v":1,"seq":0,"ts":5,"metrics":{}}"#, Err("out_of_range"));
        check(Telemetry, r#"{"v":1,"seq":1,"ts":0,"metrics":{}}"#, Err("out_of_range"));
        check(Telemetry, r#"{"v":1,"seq":1,"ts":5}"#, Err("schema"));
        check(Telemetry, r#"{"v":1,"seq":1,"ts":5,"metrics":{},"extra":1}"#, Err("schema"));
        check(Telemetry, r#"{"v":1,"seq":1,"ts":5,"metrics":{"T":1}}"#, Err("bad_character"));
        check(Telemetry, r#"{"v":1,"seq":1,"ts":5,"metrics":{"t":[1]}}"#, Err("schema"));
        check(Telemetry, r#"{"v":1,"seq":1,"ts":5,"metrics":{"t":null}}"#, Err("schema"));
        check(Telemetry, r#"{"v":1,"seq":-1,"ts":5,"metrics":{}}"#, Err("schema"));
        check(Telemetry, "not json", Err("schema"));
        check(Telemetry, r#"{"v":1,"seq":1,"ts":5,"state":{}}"#, Err("schema"));
        check(Events, r#"{"v":1,"seq":1,"ts":5,"event":"door_open"}"#, Ok(()));
        check(Events, r#"{"v":1,"seq":1,"ts":5,"event":"Door"}"#, Err("bad_character"));
        check(State, r#"{"v":1,"seq":1,"ts":5,"state":{"fw":"1.0"}}"#, Ok(()));
        let long = format!(r#"{{"v":1,"seq":1,"ts":5,"metrics":{{"s":"{}"}}}}"#, "x".repeat(300));
        check(Telemetry, &long, Err("too_long"));
        let big = format!(r#"{{"v":1,"seq":1,"ts":5,"metrics":{{"s":"{}"}}}}"#, "x".repeat(20_000));
        check(Telemetry, &big, Err("too_long"));
        let many: Vec<String> = (0..65).map(|i| format!(r#""m{i}":1"#)).collect();
        check(Telemetry, &format!(r#"{{"v":1,"seq":1,"ts":5,"metrics":{{{}}}}}"#, many.join(",")), Err("out_of_range"));
    }

    #[test]
    fn duplicate_keys_cannot_smuggle_an_unchecked_value() {
        // The last duplicate wins in parsing; re-encoding keeps only the value that was checked.
        let payload = format!(r#"{{"v":1,"seq":9,"ts":5,"metrics":{{"s":"{}","s":1}}}}"#, "x".repeat(15_000));
        let up = Uplink::parse(DeviceTopic::Telemetry, payload.as_bytes()).expect("valid after dedup");
        let stored = up.to_json_string();
        assert!(stored.len() < 100, "{stored}");
        assert!(stored.contains(r#""s":1.0"#) || stored.contains(r#""s":1"#), "{stored}");
    }

    #[test]
    fn round_trip() {
        let mut metrics = Fields::new();
        metrics.insert("temp".into(), Value::Number(20.25));
        metrics.insert("ok".into(), Value::Bool(true));
        let up = Uplink { seq: 7, ts: 1_764_000_000_000, body: UplinkBody::Telemetry { metrics } };
        assert_eq!(Uplink::parse(DeviceTopic::Telemetry, &up.to_json()), Ok(up));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Uplink::parse(DeviceTopic::Telemetry, &bytes);
            let _ = Uplink::parse(DeviceTopic::Events, &bytes);
        }

        #[test]
        fn valid_messages_round_trip(seq in 1u64..(1 << 53), ts in 1u64..(1 << 53), x in -1e9f64..1e9) {
            let mut metrics = Fields::new();
            metrics.insert("x".into(), Value::Number(x));
            let up = Uplink { seq, ts, body: UplinkBody::Telemetry { metrics } };
            prop_assert_eq!(Uplink::parse(DeviceTopic::Telemetry, &up.to_json()), Ok(up));
        }
    }
}
