//! The load: one task per simulated device. Each connects at its scheduled time (open loop), from a source
//! address spread over 127.0.0.2–127.0.0.251 so the ephemeral-port range is no limit, then follows the phases
//! the scenario announces: stay idle (keep-alive only), publish QoS 1 at a fixed arrival rate, answer commands,
//! stop. Latencies are measured from the *scheduled* send time, so a slow server cannot hide its slowness
//! (no coordinated omission).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hearth_agent::mqtt::{ConnectOptions, Event, MqttConnection, QoS};
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::stats::histogram;
use super::target::DeviceCred;

/// What devices do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Keep the connection, answer commands.
    Idle,
    /// Publish QoS 1 at `per_device_rate` messages/s until `until`, then report.
    Publish {
        /// Step number (reports carry it).
        step: u32,
        /// Messages per second per device.
        per_device_rate: f64,
        /// When to stop sending.
        until: Instant,
    },
    /// Disconnect and end.
    Stop,
}

/// What a device task reports.
pub enum Report {
    /// Connected (TCP + TLS + CONNACK took this long) or failed.
    Connected(Result<Duration, String>),
    /// End of a publish step.
    Published {
        /// Step number.
        step: u32,
        /// PUBACK latency from the scheduled send time, µs.
        latency: Histogram<u64>,
        /// Messages scheduled.
        scheduled: u64,
        /// Acknowledged with success.
        acked: u64,
        /// Acknowledged with a failure code.
        refused: u64,
        /// Acknowledgements for packet ids not in flight (would mean duplicates).
        unexpected: u64,
    },
    /// The connection ended before `Stop`.
    Lost(String),
}

/// Command round trips: the controller notes when it issued a command for a device; the device task records
/// the round trip when the hub has acknowledged the device's answer.
#[derive(Default)]
pub struct CommandClock {
    /// Device id → when the controller started sending its command.
    pub issued: Mutex<HashMap<String, Instant>>,
    /// Round trips, µs.
    pub rtt: Mutex<Option<Histogram<u64>>>,
}

/// What every device task of one run shares.
#[derive(Clone)]
pub struct Wiring {
    /// The system under test.
    pub target: SocketAddr,
    /// The scenario's phase announcements.
    pub phase: watch::Receiver<Phase>,
    /// Where reports go.
    pub reports: mpsc::UnboundedSender<Report>,
    /// Command round-trip bookkeeping.
    pub clock: Arc<CommandClock>,
    /// Subscribe to the device's command topic after connecting.
    pub subscribe: bool,
}

/// Spawns one device task; it starts connecting at `start`.
pub fn spawn_device(index: usize, cred: DeviceCred, start: Instant, wiring: Wiring) {
    let Wiring { target, mut phase, reports, clock, subscribe } = wiring;
    tokio::spawn(async move {
        tokio::time::sleep_until(start).await;
        let begun = Instant::now();
        let mut conn = match connect(index, &cred, target).await {
            Ok(c) => {
                let _ = reports.send(Report::Connected(Ok(begun.elapsed())));
                c
            }
            Err(e) => {
                let _ = reports.send(Report::Connected(Err(e)));
                return;
            }
        };
        if subscribe {
            let _ = conn.subscribe(&format!("devices/{}/commands", cred.id), QoS::AtLeastOnce);
        }
        let topic = format!("devices/{}/telemetry", cred.id);
        let ack_topic = format!("devices/{}/commands/ack", cred.id);
        let mut seq: u64 = 0;
        // Packet id → Some(scheduled time) for telemetry, None for a command answer.
        let mut in_flight: HashMap<u16, Option<Instant>> = HashMap::new();
        loop {
            let current = phase.borrow_and_update().clone();
            match current {
                Phase::Stop => {
                    conn.disconnect().await;
                    return;
                }
                Phase::Idle => {
                    tokio::select! {
                        changed = phase.changed() => if changed.is_err() { return },
                        ev = conn.next_event() => match ev {
                            Ok(ev) => on_event(ev, &mut conn, &ack_topic, &mut in_flight, &clock, &cred.id, None),
                            Err(e) => { let _ = reports.send(Report::Lost(e.to_string())); return; }
                        },
                    }
                }
                Phase::Publish { step, per_device_rate, until } => {
                    let interval = Duration::from_secs_f64(1.0 / per_device_rate.max(0.001));
                    // Spread devices' first sends over one interval.
                    let mut next = Instant::now() + interval.mul_f64((index % 1000) as f64 / 1000.0);
                    let mut due: VecDeque<Instant> = VecDeque::new();
                    let mut stats =
                        StepStats { latency: histogram(), scheduled: 0, acked: 0, refused: 0, unexpected: 0 };
                    let tick = interval.max(Duration::from_millis(10));
                    let drain_deadline = until + Duration::from_secs(5);
                    loop {
                        let now = Instant::now();
                        while next <= now && next < until {
                            due.push_back(next);
                            stats.scheduled += 1;
                            next += interval;
                        }
                        while conn.can_publish() {
                            let Some(scheduled) = due.pop_front() else {
                                break;
                            };
                            seq += 1;
                            let payload = format!(
                                r#"{{"v":1,"seq":{seq},"ts":{},"metrics":{{"sent_us":{}}}}}"#,
                                hearth_agent::agent::now_ms(),
                                scheduled.elapsed().as_micros()
                            );
                            match conn.publish(topic.as_str(), Bytes::from(payload), QoS::AtLeastOnce) {
                                Ok(Some(pid)) => {
                                    in_flight.insert(pid, Some(scheduled));
                                }
                                _ => {
                                    due.push_front(scheduled);
                                    break;
                                }
                            }
                        }
                        let done_sending = next >= until && due.is_empty();
                        let telemetry_in_flight = in_flight.values().any(Option::is_some);
                        if done_sending && !telemetry_in_flight || now >= drain_deadline {
                            break;
                        }
                        let wake = if done_sending { drain_deadline } else { (now + tick).min(next.max(now)) };
                        tokio::select! {
                            _ = tokio::time::sleep_until(wake) => {}
                            ev = conn.next_event() => match ev {
                                Ok(ev) => on_event(ev, &mut conn, &ack_topic, &mut in_flight, &clock, &cred.id, Some(&mut stats)),
                                Err(e) => { let _ = reports.send(Report::Lost(e.to_string())); return; }
                            },
                        }
                    }
                    let _ = reports.send(Report::Published {
                        step,
                        latency: stats.latency,
                        scheduled: stats.scheduled,
                        acked: stats.acked,
                        refused: stats.refused,
                        unexpected: stats.unexpected,
                    });
                    // Wait for the next phase.
                    while *phase.borrow() == (Phase::Publish { step, per_device_rate, until }) {
                        tokio::select! {
                            changed = phase.changed() => if changed.is_err() { return },
                            ev = conn.next_event() => match ev {
                                Ok(ev) => on_event(ev, &mut conn, &ack_topic, &mut in_flight, &clock, &cred.id, None),
                                Err(e) => { let _ = reports.send(Report::Lost(e.to_string())); return; }
                            },
                        }
                    }
                }
            }
        }
    });
}

struct StepStats {
    latency: Histogram<u64>,
    scheduled: u64,
    acked: u64,
    refused: u64,
    unexpected: u64,
}

fn on_event<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ev: Event,
    conn: &mut MqttConnection<S>,
    ack_topic: &str,
    in_flight: &mut HashMap<u16, Option<Instant>>,
    clock: &CommandClock,
    device: &str,
    stats: Option<&mut StepStats>,
) {
    match ev {
        Event::PubAck { packet_id, reason_code } => match in_flight.remove(&packet_id) {
            Some(Some(scheduled)) => {
                if let Some(s) = stats {
                    if hearth_agent::mqtt::is_success(reason_code) {
                        s.acked += 1;
                        let _ = s.latency.record(scheduled.elapsed().as_micros().max(1) as u64);
                    } else {
                        s.refused += 1;
                    }
                }
            }
            Some(None) => {
                // The hub holds the device's answer: the command's round trip is complete.
                let issued = clock.issued.lock().unwrap_or_else(|p| p.into_inner()).remove(device);
                if let Some(t0) = issued {
                    let mut rtt = clock.rtt.lock().unwrap_or_else(|p| p.into_inner());
                    let h = rtt.get_or_insert_with(histogram);
                    let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                }
            }
            None => {
                if let Some(s) = stats {
                    s.unexpected += 1;
                }
            }
        },
        Event::Message { payload, .. } => {
            // A command: answer at once.
            let id = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let answer = format!(r#"{{"v":1,"id":"{id}","status":"ok"}}"#);
            if let Ok(Some(pid)) = conn.publish(ack_topic, Bytes::from(answer), QoS::AtLeastOnce) {
                in_flight.insert(pid, None);
            }
        }
        _ => {}
    }
}

/// TCP from a spread source address, TLS 1.3 with the device certificate, MQTT 5 CONNECT.
async fn connect(
    index: usize,
    cred: &DeviceCred,
    target: SocketAddr,
) -> Result<MqttConnection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, String> {
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index % 250) as u8)), 0);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind(source).map_err(|e| format!("bind {source}: {e}"))?;
    let fut = async {
        let tcp = socket.connect(target).await.map_err(|e| format!("tcp: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(cred.tls.clone())
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let mut opts = ConnectOptions::new(target.to_string(), name, cred.tls.clone(), cred.id.clone());
        opts.keep_alive = Duration::from_secs(120);
        MqttConnection::handshake(tls, &opts).await.map_err(|e| format!("mqtt: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(30), fut).await.map_err(|_| "timed out after 30 s".to_owned())?
}
