//! Fuzzes the topic access rules: nothing outside the device's own prefix is ever authorized.
#![no_main]

use hearth_proto::DeviceId;
use hearth_proto::topic::{TopicFilterDecision, authorize_publish, authorize_subscribe};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else { return };
    let device = DeviceId::parse("fuzzdevice").expect("valid id");
    if authorize_publish(&device, topic).is_ok() {
        assert!(topic.starts_with("devices/fuzzdevice/"));
    }
    if authorize_subscribe(&device, topic) == TopicFilterDecision::Commands {
        assert_eq!(topic, "devices/fuzzdevice/commands");
    }
});
