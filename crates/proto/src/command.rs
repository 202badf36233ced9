//! Commands (hub → device, on `devices/{id}/commands`) and their acknowledgements (device → hub, on
//! `devices/{id}/commands/ack`), schema version 1.
//!
//! ```json
//! {"v":1,"id":"c7k2m9q4x8w3","name":"set_interval","args":{"seconds":5},"expires_at":1764000060000}
//! {"v":1,"id":"c7k2m9q4x8w3","status":"ok","detail":"interval is now 5 s"}
//! ```
//!
//! A device answers every command it receives exactly once; `status` is `ok`, `error` (it tried and failed),
//! `unsupported` (it does not know the command) or `expired` (it arrived after `expires_at`).

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::limits::{MAX_COMMAND_PAYLOAD, MAX_UPLINK_PAYLOAD};
use crate::uplink::{Fields, SCHEMA_VERSION};

/// Longest command id, name or detail text, in bytes.
pub const MAX_COMMAND_TEXT: usize = 256;

/// A command the hub sends to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Schema version (1).
    pub v: u64,
    /// The command's id, chosen by the hub, echoed in the acknowledgement.
    pub id: String,
    /// What to do, for example `ping`, `set_interval`, `reboot`.
    pub name: String,
    /// Arguments.
    #[serde(default)]
    pub args: Fields,
    /// After this time (Unix ms) the device must not act on the command.
    pub expires_at: u64,
}

/// How a device answered a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Done.
    Ok,
    /// Tried and failed; `detail` says why.
    Error,
    /// The device does not know this command.
    Unsupported,
    /// The command arrived after it expired.
    Expired,
}

impl AckStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Ok => "ok",
            AckStatus::Error => "error",
            AckStatus::Unsupported => "unsupported",
            AckStatus::Expired => "expired",
        }
    }
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandAck {
    /// Schema version (1).
    pub v: u64,
    /// The id of the command answered.
    pub id: String,
    /// The outcome.
    pub status: AckStatus,
    /// A human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Command {
    /// Parses and validates a command payload (the agent's side).
    pub fn parse(payload: &[u8]) -> Result<Command, ValidationError> {
        if payload.len() > MAX_COMMAND_PAYLOAD {
            return Err(ValidationError::TooLong { what: "command", len: payload.len(), max: MAX_COMMAND_PAYLOAD });
        }
        let cmd: Command = serde_json::from_slice(payload).map_err(|e| ValidationError::schema("command", e))?;
        if cmd.v != SCHEMA_VERSION {
            return Err(ValidationError::UnsupportedVersion { found: cmd.v, supported: "1" });
        }
        check_text("command id", &cmd.id)?;
        check_text("command name", &cmd.name)?;
        Ok(cmd)
    }

    /// Encodes the command as its JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializing plain maps and numbers cannot fail")
    }
}

impl CommandAck {
    /// Parses and validates an acknowledgement payload (the hub's side).
    pub fn parse(payload: &[u8]) -> Result<CommandAck, ValidationError> {
        if payload.len() > MAX_UPLINK_PAYLOAD {
            return Err(ValidationError::TooLong { what: "payload", len: payload.len(), max: MAX_UPLINK_PAYLOAD });
        }
        let ack: CommandAck =
            serde_json::from_slice(payload).map_err(|e| ValidationError::schema("command acknowledgement", e))?;
        if ack.v != SCHEMA_VERSION {
            return Err(ValidationError::UnsupportedVersion { found: ack.v, supported: "1" });
        }
        check_text("command id", &ack.id)?;
        if let Some(detail) = &ack.detail {
            crate::id::check_len("detail", detail, 0, MAX_COMMAND_TEXT)?;
        }
        Ok(ack)
    }

    /// Encodes the acknowledgement as its JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializing strings cannot fail")
    }
}

/// Checks a command name as the API accepts it: 1..=64 characters of `a-z 0-9 _`.
pub fn validate_command_name(name: &str) -> Result<(), ValidationError> {
    crate::id::check_len("command name", name, 1, 64)?;
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return Err(ValidationError::BadCharacter { what: "command name", found: c, allowed: "a-z, 0-9 and '_'" });
    }
    Ok(())
}

fn check_text(what: &'static str, s: &str) -> Result<(), ValidationError> {
    crate::id::check_len(what, s, 1, MAX_COMMAND_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip_and_refusals() {
        let cmd = Command { v: 1, id: "c1".into(), name: "ping".into(), args: Fields::new(), expires_at: 10 };
        assert_eq!(Command::parse(&cmd.to_json()), Ok(cmd));
        assert!(Command::parse(br#"{"v":1,"id":"","name":"x","expires_at":1}"#).is_err());
        assert!(Command::parse(br#"{"v":1,"id":"a","name":"x","expires_at":1,"zzz":2}"#).is_err());
        let ack = CommandAck { v: 1, id: "c1".into(), status: AckStatus::Unsupported, detail: None };
        assert_eq!(CommandAck::parse(&ack.to_json()), Ok(ack));
        assert!(CommandAck::parse(br#"{"v":1,"id":"c1","status":"maybe"}"#).is_err());
        assert!(validate_command_name("set_interval").is_ok());
        assert!(validate_command_name("Set").is_err());
    }
}
