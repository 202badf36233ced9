//! The only modules that know wire formats: MQTT (devices) and HTTPS/JSON (people, enrolment).

pub mod https;
pub mod mqtt;
