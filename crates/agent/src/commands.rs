//! What the agent does with a command from the hub, as a pure function: payload in, acknowledgement and the
//! action for the agent loop out. Commands the agent knows: `ping`, `set_interval` (`seconds`, 1..=86400) and
//! `report_state`, `update_check` (check in for an update now) and `wipe` (erase user data and settings: the device was released by its owner, and the agent
//! acknowledges only once it is done); anything else is `unsupported`, and a command past its `expires_at` is
//! `expired` unexecuted.

use std::time::Duration;

use hearth_proto::command::{AckStatus, Command, CommandAck};
use hearth_proto::uplink::Value;

/// Allowed range of `set_interval`'s `seconds`.
pub const INTERVAL_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;

/// What the agent loop must do after acknowledging a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the acknowledgement.
    None,
    /// Change the sampling interval.
    SetInterval(Duration),
    /// Queue a state uplink.
    ReportState,
    /// Check in with the hub for an update now (its rollout reached this device).
    UpdateCheck,
    /// Erase user data and settings, then acknowledge (the acknowledgement given is a placeholder the agent loop
    /// replaces with the outcome).
    Wipe,
}

/// Decides the answer to a command payload received at `now_ms`. `None` when the payload is not a valid
/// command: without an id there is nothing to acknowledge.
pub fn handle(payload: &[u8], now_ms: u64) -> Option<(CommandAck, Action)> {
    let cmd = match Command::parse(payload) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::warn!(error = %e, "ignored an invalid command");
            return None;
        }
    };
    let ack = |status, detail: String| CommandAck { v: 1, id: cmd.id.clone(), status, detail: Some(detail) };
    if cmd.expires_at < now_ms {
        return Some((ack(AckStatus::Expired, format!("expired {} ms ago", now_ms - cmd.expires_at)), Action::None));
    }
    let answer = match cmd.name.as_str() {
        "ping" => (ack(AckStatus::Ok, "pong".into()), Action::None),
        "report_state" => (ack(AckStatus::Ok, "state queued".into()), Action::ReportState),
        "wipe" => (ack(AckStatus::Ok, "wiped".into()), Action::Wipe),
        "update_check" => (ack(AckStatus::Ok, "checking for an update".into()), Action::UpdateCheck),
        "set_interval" => match cmd.args.get("seconds") {
            Some(Value::Number(s)) if s.fract() == 0.0 && INTERVAL_RANGE.contains(&(*s as u64)) && *s >= 1.0 => {
                let secs = *s as u64;
                (
                    ack(AckStatus::Ok, format!("interval is now {secs} s")),
                    Action::SetInterval(Duration::from_secs(secs)),
                )
            }
            _ => (ack(AckStatus::Error, "seconds must be a whole number from 1 to 86400".into()), Action::None),
        },
        other => (ack(AckStatus::Unsupported, format!("unknown command {other:?}")), Action::None),
    };
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(payload: &str, now_ms: u64, status: AckStatus, action: Action) {
        let (ack, got) = handle(payload.as_bytes(), now_ms).expect(payload);
        assert_eq!((ack.id.as_str(), ack.status, got), ("c1", status, action), "{payload}: {:?}", ack.detail);
    }

    #[test]
    fn each_command_gets_its_status() {
        use AckStatus::*;
        let cmd =
            |name: &str, args: &str| format!(r#"{{"v":1,"id":"c1","name":"{name}","args":{args},"expires_at":100}}"#);
        check(&cmd("ping", "{}"), 50, Ok, Action::None);
        check(&cmd("report_state", "{}"), 50, Ok, Action::ReportState);
        check(&cmd("wipe", "{}"), 50, Ok, Action::Wipe);
        check(&cmd("wipe", "{}"), 101, Expired, Action::None);
        check(&cmd("update_check", "{}"), 50, Ok, Action::UpdateCheck);
        check(&cmd("set_interval", r#"{"seconds":5}"#), 50, Ok, Action::SetInterval(Duration::from_secs(5)));
        check(&cmd("set_interval", r#"{"seconds":86400}"#), 50, Ok, Action::SetInterval(Duration::from_secs(86_400)));
        check(&cmd("set_interval", r#"{"seconds":0}"#), 50, Error, Action::None);
        check(&cmd("set_interval", r#"{"seconds":86401}"#), 50, Error, Action::None);
        check(&cmd("set_interval", r#"{"seconds":1.5}"#), 50, Error, Action::None);
        check(&cmd("set_interval", r#"{"seconds":-3}"#), 50, Error, Action::None);
        check(&cmd("set_interval", r#"{"seconds":"5"}"#), 50, Error, Action::None);
        check(&cmd("set_interval", "{}"), 50, Error, Action::None);
        check(&cmd("reboot", "{}"), 50, Unsupported, Action::None);
        check(&cmd("set_interval", r#"{"seconds":5}"#), 101, Expired, Action::None);
        check(&cmd("ping", "{}"), 100, Ok, Action::None);
        assert!(handle(b"not json", 0).is_none());
    }
}
