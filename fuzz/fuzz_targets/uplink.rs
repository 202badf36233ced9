//! Fuzzes the uplink and command parsers: any bytes give a value or an error, never a panic.
#![no_main]

use hearth_proto::command::{Command, CommandAck};
use hearth_proto::topic::DeviceTopic;
use hearth_proto::uplink::Uplink;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for topic in [DeviceTopic::Telemetry, DeviceTopic::Events, DeviceTopic::State] {
        if let Ok(u) = Uplink::parse(topic, data) {
            // What parses must re-encode to something that parses to the same value.
            assert_eq!(Uplink::parse(topic, &u.to_json()), Ok(u));
        }
    }
    let _ = Command::parse(data);
    let _ = CommandAck::parse(data);
});
