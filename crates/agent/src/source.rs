//! Where telemetry comes from: the [`TelemetrySource`] trait the agent samples on its timer, and
//! [`SystemSource`], which reports the host's load, memory and uptime from `/proc` (Linux).

use hearth_proto::uplink::{Fields, Value};

/// Something that produces one telemetry sample on demand. Field names must follow the uplink schema
/// (1..=64 characters of `a-z 0-9 _ .`); an empty sample is not sent.
pub trait TelemetrySource: Send {
    /// Measures now (`now_ms`, Unix ms).
    fn sample(&mut self, now_ms: u64) -> Fields;
}

/// The host's own vital signs: `load_1m`, `load_5m`, `load_15m`, `mem_total_kib`, `mem_available_kib`,
/// `uptime_s`. Fields that cannot be read (not Linux, restricted `/proc`) are left out.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemSource;

impl TelemetrySource for SystemSource {
    fn sample(&mut self, _now_ms: u64) -> Fields {
        let mut fields = Fields::new();
        if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
            for (name, value) in ["load_1m", "load_5m", "load_15m"].into_iter().zip(text.split_whitespace()) {
                insert_number(&mut fields, name, value);
            }
        }
        if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                let name = match parts.next() {
                    Some("MemTotal:") => "mem_total_kib",
                    Some("MemAvailable:") => "mem_available_kib",
                    _ => continue,
                };
                if let Some(value) = parts.next() {
                    insert_number(&mut fields, name, value);
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string("/proc/uptime")
            && let Some(value) = text.split_whitespace().next()
        {
            insert_number(&mut fields, "uptime_s", value);
        }
        fields
    }
}

fn insert_number(fields: &mut Fields, name: &str, text: &str) {
    if let Ok(n) = text.parse::<f64>()
        && n.is_finite()
    {
        fields.insert(name.to_owned(), Value::Number(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_source_reads_proc_on_linux() {
        let fields = SystemSource.sample(0);
        if std::path::Path::new("/proc/loadavg").exists() {
            assert!(fields.contains_key("load_1m"), "{fields:?}");
            assert!(fields.contains_key("uptime_s"), "{fields:?}");
        }
        for name in fields.keys() {
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }
}
