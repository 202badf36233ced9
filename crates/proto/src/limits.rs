//! Size limits that every side enforces. They are part of the protocol: a device that respects them is never
//! refused for size, and the hub refuses anything larger before parsing it.

/// Largest uplink payload (telemetry, event, state, command acknowledgement), in bytes.
pub const MAX_UPLINK_PAYLOAD: usize = 16 * 1024;
/// Largest command payload the hub sends, in bytes.
pub const MAX_COMMAND_PAYLOAD: usize = 16 * 1024;
/// Largest MQTT topic name or filter, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most metrics in one telemetry message.
pub const MAX_METRICS: usize = 64;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 64;
/// Longest string metric value, in bytes.
pub const MAX_METRIC_STRING: usize = 256;
/// Largest enrolment or renewal request body, in bytes.
pub const MAX_ENROL_BODY: usize = 16 * 1024;
/// Largest device timestamp accepted (2^53 ms, the largest integer JSON keeps exactly).
pub const MAX_TIMESTAMP_MS: u64 = 1 << 53;
