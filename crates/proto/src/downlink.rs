//! What the hub sends down to a device's live connection, as a message that can cross from one hub node to
//! another (the bus carries it to whichever node holds the device's connection).
//!
//! ```json
//! {"type":"command","id":"c7k2m9q4x8w3"}
//! {"type":"close","reason":"revoked"}
//! ```
//!
//! A command travels as its id only: the node that holds the connection reads it from the store and sends it
//! only while it is still open and unexpired. So a notice that is replayed, late, or forged by anyone who can
//! publish on the bus can never make a device run something that was not recorded, or run it twice.

use serde::{Deserialize, Serialize};

/// Why the hub closes a device's connection from outside its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The device was revoked.
    Revoked,
    /// The same device connected again (on this node or another).
    SessionTakenOver,
    /// The hub is shutting down.
    ShuttingDown,
}

/// One message for a device's live connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Downlink {
    /// Deliver a command recorded in the store.
    Command {
        /// The command's id.
        id: String,
    },
    /// Close the connection.
    Close {
        /// Why.
        reason: CloseReason,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlinks_round_trip_as_tagged_json() {
        let c = Downlink::Command { id: "c1".into() };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"type":"command","id":"c1"}"#);
        assert_eq!(serde_json::from_str::<Downlink>(&json).unwrap(), c);
        let close = Downlink::Close { reason: CloseReason::SessionTakenOver };
        let json = serde_json::to_string(&close).unwrap();
        assert_eq!(json, r#"{"type":"close","reason":"session_taken_over"}"#);
        assert!(serde_json::from_str::<Downlink>(r#"{"type":"close","reason":"bogus"}"#).is_err());
    }
}
