//! Hostile input on both listeners, as a table: raw MQTT 3.1.1 and 5 packets (malformed, reserved flags, bad
//! lengths, duplicate and oversized properties, packet types a client may not send, wildcards, QoS 2, retain,
//! topic aliases) and every truncation point of every packet a client may send, each on a fresh TLS connection
//! and each through the one [`check`] helper. A case passes when the hub refuses as the table says (on MQTT 5 the
//! DISCONNECT reason code), never answers a packet it has not fully received, and afterwards still serves a
//! well-behaved client; at the end nothing was stored. The `slow_loris_*` tests hold connections open
//! byte by byte and check that the hub's handshake and body timeouts cut them while others are served.

use std::time::Duration;

use hearth_test_support::mqtt::{Tls, V5, telemetry};
use hearth_test_support::{TestDevice, TestHub, tls_connect};
use rmqtt_codec::{v3, v5};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::codec::Decoder as _;

/// The hub's handshake and CONNECT timeout (`MqttLimits::connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Slack for timeouts measured from outside (a loaded 2-core machine running other tests in parallel).
const MARGIN: Duration = Duration::from_secs(3);

/// The protocol version a case speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum V {
    V3,
    V5,
}

/// What happens before the case's bytes are sent.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    /// Nothing: the bytes are the first thing on the TLS connection (CONNECT-level cases).
    Raw,
    /// A CONNECT with this keep-alive, answered by CONNACK success.
    Connected { keep_alive: u16 },
}

/// A packet the hub sent, as far as the table cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Got {
    ConnAck(u8),
    PubAck(u8),
    /// SUBACK with its per-filter codes (3.1.1: granted QoS or 0x80; MQTT 5: reason codes).
    SubAck(Vec<u8>),
    UnsubAck,
    PingResp,
    Disconnect(u8),
    Other(String),
    /// Bytes that do not decode as a packet of the connection's version.
    Garbage(Vec<u8>),
}

/// What the hub must do with a case.
#[derive(Debug, Clone)]
pub(super) enum Expect {
    /// Close the connection: on MQTT 5 after a DISCONNECT with this reason code, on 3.1.1 without a word.
    Refused(u8),
    /// Close the connection without sending anything (before CONNECT, or after a client DISCONNECT).
    Closed,
    /// Answer CONNACK with this (refusing) code, then close.
    ConnAck(u8),
    /// MQTT 5: refuse the message with a PUBACK of this reason code and keep serving the connection; 3.1.1 has no
    /// per-message refusal, so there the connection closes without a word.
    PubAck(u8),
    /// Answer with this packet and keep serving the connection (leniencies the table records, see each case).
    Answer(Got),
    /// The bytes are a strict prefix of a packet and the client then closes its write side: no answer at all,
    /// and the hub closes at once.
    Truncated,
    /// The bytes stop mid-packet and the client stays silent: the hub closes by its own timeout within
    /// `within` (plus [`MARGIN`]); MQTT 5 gets a DISCONNECT with `code` first if there is one.
    Stalls { within: Duration, code: Option<u8> },
}

/// One row of the table.
#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) name: String,
    pub(super) v: V,
    pub(super) start: Start,
    pub(super) bytes: Vec<u8>,
    pub(super) expect: Expect,
}

/// The hub and the one device all cases use.
pub(super) struct Env<'a> {
    pub(super) hub: &'a TestHub,
    pub(super) dev: &'a TestDevice,
}

#[tokio::test]
async fn hostile_packets_are_refused_and_cost_only_their_connection() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let env = Env { hub: &hub, dev: &dev };

    let cases = for_both_versions(&dev, hostile_cases);
    let count = cases.len();
    assert!(count >= 100, "the hostile table shrank to {count} cases");
    let started = Instant::now();
    let failures = run_table(&env, &cases).await;
    eprintln!("hostile: {count} cases in {:?}", started.elapsed());
    assert!(failures.is_empty(), "{} of {count} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert_nothing_stored(&env).await;
    assert!(hub.event_count("malformed_packet").await.expect("events") > 0);
    assert!(hub.event_count("protocol_error").await.expect("events") > 0);
}

#[tokio::test]
async fn hostile_truncated_packets_are_never_answered() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let env = Env { hub: &hub, dev: &dev };

    let mut truncations = Vec::new();
    let mut stalls = Vec::new();
    for v in [V::V3, V::V5] {
        let p = Packets { v, dev: dev.id.to_string() };
        truncations.extend(truncation_cases(&p));
        stalls.extend(stall_cases(&p));
    }
    let count = truncations.len();
    assert!(count >= 60, "the truncation table shrank to {count} cases");
    let started = Instant::now();
    // Sequential, stalls included: every case's device connections take over the previous one's session.
    let mut failures = run_table(&env, &truncations).await;
    failures.extend(run_table(&env, &stalls).await);
    eprintln!("hostile: {count} truncations + {} stalls in {:?}", stalls.len(), started.elapsed());
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert_nothing_stored(&env).await;
}

#[tokio::test]
async fn slow_loris_mqtt_handshakes_are_cut_at_the_handshake_timeout() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");

    // 20 connections that send the first byte of a TLS record (a handshake's content type) and nothing more.
    let started = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(hub.hub.mqtt_addr).await.expect("tcp");
        tcp.write_all(&[0x16]).await.expect("one byte");
        loris.push(tokio::spawn(async move {
            let (_, closed) = read_until_closed(&mut tcp, CONNECT_TIMEOUT + MARGIN).await;
            closed.then(|| started.elapsed())
        }));
    }

    // Meanwhile a real device connects and publishes.
    let mut c = V5::connect(&hub, &dev).await.expect("a device connects while 20 handshakes stall");
    c.publish(&format!("devices/{}/telemetry", dev.id), telemetry(1, 21.5), 1).await.expect("publish");
    match c.recv().await {
        Some(v5::Packet::PublishAck(a)) => assert_eq!(a.reason_code, v5::PublishAckReason::Success),
        other => panic!("expected PUBACK success, got {other:?}"),
    }
    let served = started.elapsed();
    assert!(served < CONNECT_TIMEOUT, "the device was served only after {served:?}, behind the stalled handshakes");

    let mut closed_after = Vec::new();
    for task in loris {
        closed_after.push(task.await.expect("task").expect("a stalled handshake must be closed by the hub"));
    }
    let (first, last) = (closed_after.iter().min().copied(), closed_after.iter().max().copied());
    eprintln!(
        "slow_loris_mqtt: device served after {served:?}; 20 stalled handshakes closed after {first:?}..{last:?}"
    );
    assert!(last.is_some_and(|l| l <= CONNECT_TIMEOUT + MARGIN), "closed after {last:?}");
    assert!(hub.has_events("handshake_timeout", 20).await, "each cut handshake is a security event");
    // The device's session survived all of it.
    c.send(v5::Packet::PingRequest).await.expect("ping");
    assert!(matches!(c.recv().await, Some(v5::Packet::PingResponse)));
}

#[tokio::test]
async fn slow_loris_https_body_is_cut_at_the_body_timeout() {
    let hub = TestHub::start().await.expect("hub");
    let tls = https_connect(&hub).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = "POST /api/v1/enrol HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\n\r\n";
    wr.write_all(head.as_bytes()).await.expect("headers");
    wr.flush().await.expect("flush");
    let started = Instant::now();

    // One body byte per second (JSON whitespace), never the whole body.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b" ").await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    // Read until the hub answers or closes; after an answer, note whether it then closes the connection too.
    let answer = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = started + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed(), Some(started.elapsed())),
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let answered = started.elapsed();
                        let (_, closed) = read_until_closed(&mut rd, Duration::from_secs(2)).await;
                        return (got, answered, closed.then(|| started.elapsed()));
                    }
                }
                Err(_) => return (got, started.elapsed(), None),
            }
        }
    };
    // Meanwhile, until the body timeout, other clients are served.
    let health = async {
        let mut statuses = Vec::new();
        for _ in 0..9 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            statuses.push(hub.get("/healthz").await.map(|(s, _)| s).unwrap_or(0));
        }
        statuses
    };
    let ((got, answered, closed), statuses) = tokio::join!(answer, health);
    trickle.abort();
    let text = String::from_utf8_lossy(&got);
    eprintln!("slow_loris_https: answered {:?} after {answered:?}, closed after {closed:?}", text.lines().next());
    assert!(
        text.starts_with("HTTP/1.1 408") || (got.is_empty() && closed.is_some()),
        "a trickled body must get 408 or a closed connection within 15 s; after {answered:?} got {text:?}"
    );
    assert!(answered <= Duration::from_secs(15), "cut only after {answered:?}");
    // Held while the bytes trickled: the cut is the body timeout, not an early refusal of the request.
    assert!(answered >= Duration::from_secs(5), "answered after only {answered:?}: {text:?}");
    assert_eq!(statuses, vec![200; 9], "GET /healthz while the body trickles");
}

/// The cases `table` makes for each version, 3.1.1 first.
pub(super) fn for_both_versions(dev: &TestDevice, table: fn(&Packets) -> Vec<Case>) -> Vec<Case> {
    [V::V3, V::V5].into_iter().flat_map(|v| table(&Packets { v, dev: dev.id.to_string() })).collect()
}

/// Runs `cases` one after another and returns the failures, each naming its case.
pub(super) async fn run_table(env: &Env<'_>, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        if let Err(e) = check(env, case.v, case.start, &case.bytes, &case.expect).await {
            failures.push(format!("{:?} {}: {e}\n    bytes: {}", case.v, case.name, hex(&case.bytes)));
        }
    }
    failures
}

/// The one helper every case goes through: a fresh TLS connection as the device, `start`, then `bytes`; the
/// hub's answer must be `expect`; then a well-behaved client of the same version must still be served, and no
/// hub task may have panicked meanwhile (a panicking session would look like a refusal that closes).
async fn check(env: &Env<'_>, v: V, start: Start, bytes: &[u8], expect: &Expect) -> Result<(), String> {
    let panics = hub_panics();
    let outcome = exercise(env, v, start, bytes, expect).await;
    let outcome = match outcome {
        Ok(()) => serves_well_behaved(env, v).await.map_err(|e| format!("afterwards, a well-behaved client: {e}")),
        Err(e) => Err(e),
    };
    match hub_panics() - panics {
        0 => outcome,
        n => Err(format!("the hub panicked {n} time(s); {outcome:?}")),
    }
}

/// Sends one case and judges what the hub answered.
async fn exercise(env: &Env<'_>, v: V, start: Start, bytes: &[u8], expect: &Expect) -> Result<(), String> {
    // Whether the hub may answer and keep the connection open: then a PINGREQ follows the bytes, and its
    // PINGRESP proves that the connection is still served.
    let answers = match expect {
        Expect::PubAck(_) => v == V::V5,
        Expect::Answer(_) => true,
        _ => false,
    };
    let mut tls = open(env, v, start).await?;
    let sent = async {
        tls.write_all(bytes).await?;
        if answers {
            tls.write_all(&[0xc0, 0x00]).await?;
        }
        tls.flush().await?;
        if matches!(expect, Expect::Truncated) {
            tls.shutdown().await?;
        }
        std::io::Result::Ok(())
    }
    .await;
    if let Err(e) = sent {
        // Only a hub that closes before reading everything could cause this; report it with what it sent.
        let (got, _) = read_until_closed(&mut tls, Duration::from_secs(1)).await;
        return Err(format!("write failed ({e}); the hub sent {:?}", decode(v, &got)));
    }
    let started = Instant::now();
    let limit = match expect {
        Expect::Stalls { within, .. } => *within + MARGIN,
        _ => Duration::from_secs(5),
    };
    let (got, closed) =
        if answers { read_packets(&mut tls, v, 2, limit).await } else { read_until_closed(&mut tls, limit).await };
    let elapsed = started.elapsed();
    let got = decode(v, &got);
    let state = |closed: bool| if closed { "closed" } else { "open" };
    if !verdict(v, expect, &got, closed) {
        return Err(format!("expected {expect:?}, got {got:?} and {} after {elapsed:?}", state(closed)));
    }
    if let Expect::Stalls { within, .. } = expect {
        // Closed by the timeout, not by the bytes: not long before it.
        if elapsed + Duration::from_millis(500) < *within {
            return Err(format!("closed after {elapsed:?}, before the {within:?} timeout"));
        }
    }
    Ok(())
}

/// Whether the packets `got` (then `closed` or not) are what `expect` asks of a connection of version `v`.
fn verdict(v: V, expect: &Expect, got: &[Got], closed: bool) -> bool {
    let refused = |code: u8| if v == V::V5 { vec![Got::Disconnect(code)] } else { Vec::new() };
    let (want, want_closed) = match expect {
        Expect::Refused(code) => (refused(*code), true),
        Expect::Closed | Expect::Truncated => (Vec::new(), true),
        Expect::ConnAck(code) => (vec![Got::ConnAck(*code)], true),
        Expect::PubAck(code) if v == V::V5 => (vec![Got::PubAck(*code), Got::PingResp], false),
        Expect::PubAck(_) => (Vec::new(), true),
        Expect::Answer(answer) => (vec![answer.clone(), Got::PingResp], false),
        Expect::Stalls { code, .. } => (code.map(refused).unwrap_or_default(), true),
    };
    // A PINGRESP may overtake a PUBACK that waits for its commit (MQTT orders only PUBACKs among themselves).
    let same = got == want.as_slice() || (matches!(expect, Expect::Answer(_)) && got.iter().rev().eq(want.iter()));
    same && closed == want_closed
}

/// Panics so far on this test's threads outside the test code itself, that is in the hub (or a library it
/// uses). Installs the counting panic hook on first use; it keeps the default report.
fn hub_panics() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `#[tokio::test]` runs the hub's tasks on the test's own thread, which libtest names after the test.
            let ours = std::thread::current().name().is_some_and(|n| n.starts_with("hostile::"));
            let in_tests = info.location().is_some_and(|l| l.file().contains("tests/it/"));
            if ours && !in_tests {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// A TLS connection as the device, after `start`.
async fn open(env: &Env<'_>, v: V, start: Start) -> Result<Tls, String> {
    // (`tls_connect` turns Nagle off: otherwise the CONNECT waits 40 ms for the server's delayed ACK.)
    let mut tls = tls_connect(&env.hub.hub, Some(env.dev)).await.map_err(|e| format!("TLS: {e}"))?;
    let Start::Connected { keep_alive } = start else {
        return Ok(tls);
    };
    let p = Packets { v, dev: env.dev.id.to_string() };
    tls.write_all(&p.connect(keep_alive, &[])).await.map_err(|e| format!("CONNECT: {e}"))?;
    let (got, _) = read_packets(&mut tls, v, 1, Duration::from_secs(5)).await;
    match decode(v, &got).as_slice() {
        [Got::ConnAck(0)] => Ok(tls),
        other => Err(format!("expected CONNACK success, got {other:?}")),
    }
}

/// A new connection of version `v` that CONNECTs and gets PINGRESP for PINGREQ.
async fn serves_well_behaved(env: &Env<'_>, v: V) -> Result<(), String> {
    let mut tls = open(env, v, Start::Connected { keep_alive: 60 }).await?;
    tls.write_all(&[0xc0, 0x00]).await.map_err(|e| format!("PINGREQ: {e}"))?;
    let started = Instant::now();
    let (got, closed) = read_packets(&mut tls, v, 1, Duration::from_secs(5)).await;
    match decode(v, &got).as_slice() {
        [Got::PingResp] => Ok(()),
        other => Err(format!("expected PINGRESP, got {other:?}, closed: {closed}, after {:?}", started.elapsed())),
    }
}

pub(super) async fn assert_nothing_stored(env: &Env<'_>) {
    let stored = stored_items(env).await;
    // Each case's payload carries its own seq, so a stored item names the case that got through.
    assert!(stored.is_empty(), "nothing may be stored: {stored:?}");
}

/// The device's stored telemetry items.
async fn stored_items(env: &Env<'_>) -> Vec<serde_json::Value> {
    // Storage commits in batches; give a wrongly accepted message time to land before looking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, page) = env.hub.get(&format!("/api/v1/devices/{}/telemetry", env.dev.id)).await.expect("telemetry");
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().cloned().expect("items")
}

/// Reads until the peer closes or `limit` passes; returns what arrived and whether it closed.
async fn read_until_closed<S: AsyncRead + Unpin>(io: &mut S, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Reads until `n` whole packets arrived, the peer closed, or `limit` passed.
async fn read_packets(tls: &mut Tls, v: V, n: usize, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let packets = decode(v, &got);
        if packets.len() >= n && !packets.iter().any(|p| matches!(p, Got::Garbage(_))) {
            return (got, false);
        }
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// The packets in `bytes`, in the connection's version.
fn decode(v: V, bytes: &[u8]) -> Vec<Got> {
    let mut buf = bytes::BytesMut::from(bytes);
    let mut out = Vec::new();
    let mut v3c = v3::Codec::new(0);
    let mut v5c = v5::Codec::new(0, 0);
    loop {
        let next = match v {
            V::V3 => v3c.decode(&mut buf).map(|p| p.map(|(p, _)| from_v3(p))).map_err(|e| e.to_string()),
            V::V5 => v5c.decode(&mut buf).map(|p| p.map(|(p, _)| from_v5(p))).map_err(|e| e.to_string()),
        };
        match next {
            Ok(Some(p)) => out.push(p),
            Ok(None) if buf.is_empty() => return out,
            Ok(None) | Err(_) => {
                out.push(Got::Garbage(buf.to_vec()));
                return out;
            }
        }
    }
}

fn from_v3(p: v3::Packet) -> Got {
    match p {
        v3::Packet::ConnectAck(a) => Got::ConnAck(a.return_code as u8),
        v3::Packet::PublishAck { .. } => Got::PubAck(0),
        v3::Packet::SubscribeAck { status, .. } => Got::SubAck(
            status
                .into_iter()
                .map(|c| match c {
                    v3::SubscribeReturnCode::Success(q) => q as u8,
                    v3::SubscribeReturnCode::Failure => 0x80,
                })
                .collect(),
        ),
        v3::Packet::UnsubscribeAck { .. } => Got::UnsubAck,
        v3::Packet::PingResponse => Got::PingResp,
        other => Got::Other(format!("{other:?}")),
    }
}

fn from_v5(p: v5::Packet) -> Got {
    match p {
        v5::Packet::ConnectAck(a) => Got::ConnAck(a.reason_code as u8),
        v5::Packet::PublishAck(a) => Got::PubAck(a.reason_code as u8),
        v5::Packet::SubscribeAck(a) => Got::SubAck(a.status.into_iter().map(|c| c as u8).collect()),
        v5::Packet::UnsubscribeAck(_) => Got::UnsubAck,
        v5::Packet::PingResponse => Got::PingResp,
        v5::Packet::Disconnect(d) => Got::Disconnect(d.reason_code as u8),
        other => Got::Other(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(48).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 48 { format!(" … ({} bytes)", bytes.len()) } else { String::new() };
    format!("{}{more}", shown.join(" "))
}

/// Builds raw packets of one version for the device; properties are written only on MQTT 5.
pub(super) struct Packets {
    pub(super) v: V,
    pub(super) dev: String,
}

/// A UTF-8 string or binary field: two-byte length, then the bytes.
pub(super) fn s(text: impl AsRef<[u8]>) -> Vec<u8> {
    let text = text.as_ref();
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

/// A variable byte integer.
pub(super) fn vbi(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A packet: first byte, remaining length, body.
pub(super) fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(vbi(body.len()));
    out.extend_from_slice(body);
    out
}

pub(super) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Packets {
    pub(super) fn v5(&self) -> bool {
        self.v == V::V5
    }

    /// An MQTT 5 property block (length, then `props`); nothing on 3.1.1.
    pub(super) fn props(&self, props: &[u8]) -> Vec<u8> {
        if self.v5() { cat(&[&vbi(props.len()), props]) } else { Vec::new() }
    }

    pub(super) fn telemetry_topic(&self) -> String {
        format!("devices/{}/telemetry", self.dev)
    }

    pub(super) fn commands_topic(&self) -> String {
        format!("devices/{}/commands", self.dev)
    }

    /// CONNECT body with `flags`: clean session/start, keep-alive, client id = device id.
    pub(super) fn connect_body(&self, flags: u8, keep_alive: u16, props: &[u8]) -> Vec<u8> {
        let level = if self.v5() { 5 } else { 4 };
        cat(&[&s("MQTT"), &[level, flags], &keep_alive.to_be_bytes(), &self.props(props), &s(&self.dev)])
    }

    pub(super) fn connect(&self, keep_alive: u16, props: &[u8]) -> Vec<u8> {
        packet(0x10, &self.connect_body(0x02, keep_alive, props))
    }

    /// PUBLISH with fixed-header `flags` (QoS in bits 1-2, retain bit 0).
    pub(super) fn publish(
        &self,
        flags: u8,
        topic: &str,
        packet_id: Option<u16>,
        props: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let id = packet_id.map(|id| id.to_be_bytes().to_vec()).unwrap_or_default();
        packet(0x30 | flags, &cat(&[&s(topic), &id, &self.props(props), payload]))
    }

    /// A valid QoS 1 telemetry PUBLISH whose payload carries `seq`.
    pub(super) fn telemetry(&self, seq: u64, props: &[u8]) -> Vec<u8> {
        self.publish(0x02, &self.telemetry_topic(), Some(1), props, &telemetry(seq, 1.0))
    }

    pub(super) fn puback(&self) -> Vec<u8> {
        // MQTT 5: reason code and an empty property block, so truncation has more points to cut.
        if self.v5() { vec![0x40, 0x04, 0x00, 0x01, 0x00, 0x00] } else { vec![0x40, 0x02, 0x00, 0x01] }
    }

    pub(super) fn subscribe(&self, first: u8, filter: &[u8], options: u8, props: &[u8]) -> Vec<u8> {
        packet(first, &cat(&[&[0x00, 0x01], &self.props(props), &s(filter), &[options]]))
    }

    pub(super) fn unsubscribe(&self, first: u8, filter: &[u8], props: &[u8]) -> Vec<u8> {
        packet(first, &cat(&[&[0x00, 0x01], &self.props(props), &s(filter)]))
    }

    pub(super) fn disconnect(&self) -> Vec<u8> {
        // MQTT 5: normal disconnection with a reason string.
        if self.v5() {
            packet(0xe0, &cat(&[&[0x00], &self.props(&cat(&[&[0x1f], &s("bye")]))]))
        } else {
            vec![0xe0, 0x00]
        }
    }
}

/// Every hostile case for one version. Payloads are valid telemetry with a seq unique to the case, so that a
/// message wrongly accepted would be found (and named) in storage.
fn hostile_cases(p: &Packets) -> Vec<Case> {
    let v5 = p.v5();
    let after = Start::Connected { keep_alive: 60 };
    let mut cases = Vec::new();
    let mut add = |name: &str, start: Start, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case { name: name.to_owned(), v: p.v, start, bytes, expect });
    };
    let tel = p.telemetry_topic();
    let own = |suffix: &str| format!("devices/{}/{suffix}", p.dev);
    let mut seq = if v5 { 5000 } else { 3000 };
    let mut payload = || {
        seq += 1;
        telemetry(seq, 1.0)
    };
    use Expect::{Answer, Closed, ConnAck, PubAck, Refused};
    const MALFORMED: u8 = 0x81;
    const PROTOCOL: u8 = 0x82;
    const TOPIC_NAME_INVALID: u8 = 0x90;
    const TOPIC_ALIAS_INVALID: u8 = 0x94;
    const TOO_LARGE: u8 = 0x95;
    const RETAIN: u8 = 0x9a;
    const QOS: u8 = 0x9b;

    // --- Before and at CONNECT: refused without CONNACK (MQTT 5 allows a CONNACK 0x81; the hub just closes).
    add("first packet PINGREQ", Start::Raw, vec![0xc0, 0x00], Closed);
    add("first packet PUBLISH", Start::Raw, p.publish(0x00, &tel, None, &[], &payload()), Closed);
    add("not MQTT at all", Start::Raw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Closed);
    add("CONNECT with reserved flag bit 0", Start::Raw, packet(0x10, &p.connect_body(0x03, 60, &[])), Closed);
    add("CONNECT with reserved fixed-header flags", Start::Raw, packet(0x11, &p.connect_body(0x02, 60, &[])), Closed);
    let mut name = p.connect_body(0x02, 60, &[]);
    name[5] = b'X';
    add("CONNECT protocol name MQTX", Start::Raw, packet(0x10, &name), Closed);
    let mut level = p.connect_body(0x02, 60, &[]);
    level[6] = 6;
    // MQTT-3.1.2-2: CONNACK return code 1, in the 3.1.1 form (read here as 3.1.1; the conformance table has it).
    if !v5 {
        add("CONNECT protocol level 6", Start::Raw, packet(0x10, &level), ConnAck(1));
    }
    add("CONNECT remaining length of five bytes", Start::Raw, vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f], Closed);
    add(
        "CONNECT declaring 70000 bytes",
        Start::Raw,
        cat(&[&[0x10], &vbi(70_000), &p.connect_body(2, 60, &[])]),
        Closed,
    );
    let mut bad_id = p.connect_body(0x02, 60, &[]);
    let at = bad_id.len() - 1;
    bad_id[at] = 0xff;
    add("CONNECT client id not UTF-8", Start::Raw, packet(0x10, &bad_id), Closed);
    add(
        "CONNECT empty client id without clean session",
        Start::Raw,
        packet(0x10, &cat(&[&s("MQTT"), &[if v5 { 5 } else { 4 }, 0x00, 0, 60], &p.props(&[]), &s("")])),
        // 3.1.1 §3.1.3.1: return code 2; MQTT 5 §3.1.3.1: 0x85 (issue 14, deviation 4: it was closed silently).
        ConnAck(if v5 { 0x85 } else { 0x02 }),
    );
    add(
        "CONNECT client id of another device",
        Start::Raw,
        packet(0x10, &cat(&[&s("MQTT"), &[if v5 { 5 } else { 4 }, 0x02, 0, 60], &p.props(&[]), &s("someone-else")])),
        ConnAck(if v5 { 0x85 } else { 0x02 }),
    );
    if v5 {
        add(
            "CONNECT duplicate session expiry",
            Start::Raw,
            p.connect(60, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
            Closed,
        );
        add("CONNECT duplicate receive maximum", Start::Raw, p.connect(60, &[0x21, 0, 5, 0x21, 0, 6]), Closed);
        add("CONNECT receive maximum 0", Start::Raw, p.connect(60, &[0x21, 0, 0]), Closed);
        add("CONNECT unknown property 0x7f", Start::Raw, p.connect(60, &[0x7f, 0]), Closed);
        add("CONNECT PUBLISH-only property (topic alias)", Start::Raw, p.connect(60, &[0x23, 0, 1]), Closed);
        let mut overrun = p.connect_body(0x02, 60, &[]);
        overrun[10] = 100; // property length: 100 bytes, more than the packet holds
        add("CONNECT property length beyond the packet", Start::Raw, packet(0x10, &overrun), Closed);
        add("CONNECT property value beyond its block", Start::Raw, p.connect(60, &[0x26, 0, 9, b'k']), Closed);
        // Lenient: MQTT-3.1.2-11 makes Will QoS without the Will flag malformed; rmqtt-codec checks it only on
        // 3.1.1, so the hub accepts this MQTT 5 CONNECT (harmless: the hub ignores wills).
        let will_qos = packet(0x10, &p.connect_body(0x0a, 60, &[]));
        add("CONNECT will QoS without will flag", Start::Raw, will_qos, Answer(Got::ConnAck(0)));
    } else {
        add("CONNECT will QoS without will flag", Start::Raw, packet(0x10, &p.connect_body(0x0a, 60, &[])), Closed);
    }

    // --- A second CONNECT.
    add("second CONNECT", after, p.connect(60, &[]), Refused(PROTOCOL));
    add("second CONNECT with reserved flags", after, packet(0x11, &p.connect_body(0x02, 60, &[])), Refused(MALFORMED));

    // --- Framing.
    add("remaining length of five bytes", after, vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], Refused(MALFORMED));
    add("declared 64 KiB + 1", after, vec![0x30, 0x81, 0x80, 0x04], Refused(TOO_LARGE));
    add("declared 256 MiB - 1", after, vec![0x32, 0xff, 0xff, 0xff, 0x7f], Refused(TOO_LARGE));
    add("SUBSCRIBE declaring 1 MiB", after, cat(&[&[0x82], &vbi(1 << 20), &[0, 1]]), Refused(TOO_LARGE));
    // Lenient: MQTT-1.5.5-1 requires the shortest encoding of a length; the codec accepts a padded one.
    add("PINGREQ with a two-byte zero length", after, vec![0xc0, 0x80, 0x00], Answer(Got::PingResp));

    // --- Reserved packet type and reserved flag bits.
    add("packet type 0", after, vec![0x00, 0x00], Refused(MALFORMED));
    add("PUBACK with flags 0001", after, vec![0x41, 0x02, 0x00, 0x01], Refused(MALFORMED));
    add("PUBREL with flags 0000", after, vec![0x60, 0x02, 0x00, 0x01], Refused(MALFORMED));
    add(
        "SUBSCRIBE with flags 0000",
        after,
        p.subscribe(0x80, p.commands_topic().as_bytes(), 1, &[]),
        Refused(MALFORMED),
    );
    add(
        "UNSUBSCRIBE with flags 0000",
        after,
        p.unsubscribe(0xa0, p.commands_topic().as_bytes(), &[]),
        Refused(MALFORMED),
    );
    add("PINGREQ with flags 0001", after, vec![0xc1, 0x00], Refused(MALFORMED));
    add("DISCONNECT with flags 0010", after, vec![0xe2, 0x00], Refused(MALFORMED));
    add("PUBLISH QoS 3", after, p.publish(0x06, &tel, Some(1), &[], &payload()), Refused(MALFORMED));

    // --- Packet types a client may not send.
    add("CONNACK", after, if v5 { vec![0x20, 0x03, 0, 0, 0] } else { vec![0x20, 0x02, 0, 0] }, Refused(PROTOCOL));
    add("SUBACK", after, if v5 { vec![0x90, 0x04, 0, 1, 0, 0] } else { vec![0x90, 0x03, 0, 1, 0] }, Refused(PROTOCOL));
    add("UNSUBACK", after, if v5 { vec![0xb0, 0x04, 0, 1, 0, 0] } else { vec![0xb0, 0x02, 0, 1] }, Refused(PROTOCOL));
    add("PINGRESP", after, vec![0xd0, 0x00], Refused(PROTOCOL));
    add("PUBREC", after, vec![0x50, 0x02, 0x00, 0x01], Refused(PROTOCOL));
    add("PUBREL", after, vec![0x62, 0x02, 0x00, 0x01], Refused(PROTOCOL));
    add("PUBCOMP", after, vec![0x70, 0x02, 0x00, 0x01], Refused(PROTOCOL));
    // AUTH exists only in MQTT 5; on 3.1.1 type 15 is reserved (malformed, closed all the same).
    add("AUTH", after, vec![0xf0, 0x00], Refused(PROTOCOL));
    if v5 {
        add(
            "AUTH continue with a method",
            after,
            packet(0xf0, &cat(&[&[0x18], &vbi(6), &[0x15], &s("SCR")])),
            Refused(PROTOCOL),
        );
    }

    // --- Malformed PUBLISH.
    add("PUBLISH topic length beyond the packet", after, vec![0x30, 0x04, 0x00, 0x10, b'a', b'b'], Refused(MALFORMED));
    add(
        "PUBLISH topic not UTF-8",
        after,
        packet(0x30, &cat(&[&[0x00, 0x02, 0xff, 0xfe], &p.props(&[]), &payload()])),
        Refused(MALFORMED),
    );
    add("PUBLISH QoS 1 with packet id 0", after, p.publish(0x02, &tel, Some(0), &[], &payload()), Refused(MALFORMED));
    add("PUBLISH QoS 1 without room for a packet id", after, packet(0x32, &s(&tel)), Refused(MALFORMED));
    if v5 {
        // The codec lets an empty topic through on MQTT 5 (it may name a topic alias); the hub refuses the
        // name. MQTT 5 calls an empty topic without an alias a protocol error (0x82).
        add(
            "PUBLISH empty topic, QoS 0",
            after,
            p.publish(0x00, "", None, &[], &payload()),
            Refused(TOPIC_NAME_INVALID),
        );
    } else {
        add("PUBLISH empty topic, QoS 0", after, p.publish(0x00, "", None, &[], &payload()), Refused(MALFORMED));
    }

    // --- Topic names with wildcards or NUL. QoS 0 closes; MQTT 5 QoS 1 is refused by PUBACK 0x90 (the hub treats
    // a wildcard as an unacceptable name, not a malformed packet) and the connection stays usable.
    add(
        "PUBLISH to own/+ QoS 0",
        after,
        p.publish(0x00, &own("+"), None, &[], &payload()),
        Refused(TOPIC_NAME_INVALID),
    );
    add(
        "PUBLISH to own/# QoS 0",
        after,
        p.publish(0x00, &own("#"), None, &[], &payload()),
        Refused(TOPIC_NAME_INVALID),
    );
    add(
        "PUBLISH to devices/+/telemetry QoS 0",
        after,
        p.publish(0x00, "devices/+/telemetry", None, &[], &payload()),
        Refused(TOPIC_NAME_INVALID),
    );
    add(
        "PUBLISH to own/+ QoS 1",
        after,
        p.publish(0x02, &own("+"), Some(7), &[], &payload()),
        PubAck(TOPIC_NAME_INVALID),
    );
    add("PUBLISH to # QoS 1", after, p.publish(0x02, "#", Some(7), &[], &payload()), PubAck(TOPIC_NAME_INVALID));
    add(
        "PUBLISH to telemetry + NUL QoS 1",
        after,
        p.publish(0x02, &format!("{tel}\0"), Some(7), &[], &payload()),
        PubAck(TOPIC_NAME_INVALID),
    );

    // --- QoS 2 and retain are not supported.
    add("PUBLISH QoS 2", after, p.publish(0x04, &tel, Some(1), &[], &payload()), Refused(QOS));
    add("PUBLISH QoS 2 DUP", after, p.publish(0x0c, &tel, Some(1), &[], &payload()), Refused(QOS));
    add("PUBLISH retained QoS 0", after, p.publish(0x01, &tel, None, &[], &payload()), Refused(RETAIN));
    add("PUBLISH retained QoS 1", after, p.publish(0x03, &tel, Some(1), &[], &payload()), Refused(RETAIN));

    // --- Malformed acknowledgements, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, PINGREQ.
    add("PUBACK of one byte", after, vec![0x40, 0x01, 0x00], Refused(MALFORMED));
    add("PUBACK packet id 0", after, vec![0x40, 0x02, 0x00, 0x00], Refused(MALFORMED));
    let commands = p.commands_topic();
    add("SUBSCRIBE without filters", after, packet(0x82, &cat(&[&[0, 1], &p.props(&[])])), Refused(MALFORMED));
    add(
        "SUBSCRIBE packet id 0",
        after,
        packet(0x82, &cat(&[&[0, 0], &p.props(&[]), &s(&commands), &[1]])),
        Refused(MALFORMED),
    );
    add("SUBSCRIBE requesting QoS 3", after, p.subscribe(0x82, commands.as_bytes(), 3, &[]), Refused(MALFORMED));
    add("SUBSCRIBE filter not UTF-8", after, p.subscribe(0x82, &[0xc3, 0x28], 1, &[]), Refused(MALFORMED));
    add(
        "SUBSCRIBE filter without options byte",
        after,
        packet(0x82, &cat(&[&[0, 1], &p.props(&[]), &s(&commands)])),
        Refused(MALFORMED),
    );
    add("UNSUBSCRIBE without filters", after, packet(0xa2, &cat(&[&[0, 1], &p.props(&[])])), Refused(MALFORMED));
    add(
        "UNSUBSCRIBE packet id 0",
        after,
        packet(0xa2, &cat(&[&[0, 0], &p.props(&[]), &s(&commands)])),
        Refused(MALFORMED),
    );
    // Lenient: a PINGREQ's remaining length must be 0; the codec ignores a body.
    add("PINGREQ with a body", after, vec![0xc0, 0x02, 0x00, 0x00], Answer(Got::PingResp));
    if v5 {
        add("PUBACK unknown reason code 0x01", after, vec![0x40, 0x03, 0x00, 0x01, 0x01], Refused(MALFORMED));
        add(
            "PUBACK bytes after its properties",
            after,
            vec![0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0xff],
            Refused(MALFORMED),
        );
        add(
            "SUBSCRIBE options with reserved bits",
            after,
            p.subscribe(0x82, commands.as_bytes(), 0xc1, &[]),
            Refused(MALFORMED),
        );
        add(
            "SUBSCRIBE retain handling 3",
            after,
            p.subscribe(0x82, commands.as_bytes(), 0x31, &[]),
            Refused(MALFORMED),
        );
        add("DISCONNECT unknown reason code 0x03", after, vec![0xe0, 0x01, 0x03], Refused(MALFORMED));
        add("DISCONNECT bytes after its properties", after, vec![0xe0, 0x03, 0x00, 0x00, 0xff], Refused(MALFORMED));
    } else {
        add("PUBACK with a byte too many", after, vec![0x40, 0x03, 0x00, 0x01, 0x00], Refused(MALFORMED));
        // Lenient: MQTT-3.8.3-4 makes reserved option bits malformed; the 3.1.1 codec masks them away.
        add(
            "SUBSCRIBE options with reserved bits",
            after,
            p.subscribe(0x82, commands.as_bytes(), 0xfd, &[]),
            Answer(Got::SubAck(vec![1])),
        );
        // Lenient: a 3.1.1 DISCONNECT has no body; the codec ignores it (the connection ends either way).
        add("DISCONNECT with a body", after, vec![0xe0, 0x01, 0x00], Closed);
    }

    // --- MQTT 5 properties: duplicates, overruns, unknown or misplaced ids, bad values.
    if v5 {
        let mut props = |name: &str, props: &[u8], expect: Expect| {
            add(name, after, p.publish(0x02, &tel, Some(1), props, &payload()), expect);
        };
        props("PUBLISH duplicate message expiry", &[0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9], Refused(MALFORMED));
        props("PUBLISH duplicate content type", &cat(&[&[0x03], &s("a"), &[0x03], &s("b")]), Refused(MALFORMED));
        props("PUBLISH duplicate payload format", &[0x01, 1, 0x01, 1], Refused(MALFORMED));
        props("PUBLISH duplicate response topic", &cat(&[&[0x08], &s("r"), &[0x08], &s("r")]), Refused(MALFORMED));
        props("PUBLISH duplicate topic alias", &[0x23, 0, 1, 0x23, 0, 1], Refused(MALFORMED));
        props("PUBLISH unknown property 0x7f", &[0x7f, 0], Refused(MALFORMED));
        props("PUBLISH CONNECT-only property (session expiry)", &[0x11, 0, 0, 0, 1], Refused(MALFORMED));
        props("PUBLISH payload format 2", &[0x01, 2], Refused(MALFORMED));
        props("PUBLISH topic alias 0", &[0x23, 0, 0], Refused(MALFORMED));
        props("PUBLISH subscription id 0", &[0x0b, 0], Refused(MALFORMED));
        props("PUBLISH property value beyond its block", &[0x03, 0, 16, b'a'], Refused(MALFORMED));
        props("PUBLISH user property missing its value", &cat(&[&[0x26], &s("k")]), Refused(MALFORMED));
        add(
            "PUBLISH property length beyond the packet",
            after,
            packet(0x32, &cat(&[&s(&tel), &[0, 1], &vbi(100), &[0x01, 0x01]])),
            Refused(MALFORMED),
        );
        add(
            "PUBLISH property length of five bytes",
            after,
            packet(0x32, &cat(&[&s(&tel), &[0, 1], &[0xff, 0xff, 0xff, 0xff, 0x7f], &payload()])),
            Refused(MALFORMED),
        );
        add(
            "PUBLISH property length declaring 256 MiB",
            after,
            packet(0x32, &cat(&[&s(&tel), &[0, 1], &[0xff, 0xff, 0xff, 0x7f], &payload()])),
            Refused(MALFORMED),
        );
        add(
            "PUBACK duplicate reason string",
            after,
            packet(0x40, &cat(&[&[0, 1, 0], &vbi(8), &[0x1f], &s("a"), &[0x1f], &s("b")])),
            Refused(MALFORMED),
        );
        add(
            "SUBSCRIBE duplicate subscription id",
            after,
            p.subscribe(0x82, commands.as_bytes(), 1, &[0x0b, 1, 0x0b, 2]),
            Refused(MALFORMED),
        );
        add(
            "SUBSCRIBE subscription id 0",
            after,
            p.subscribe(0x82, commands.as_bytes(), 1, &[0x0b, 0]),
            Refused(MALFORMED),
        );
        add(
            "UNSUBSCRIBE non-user property",
            after,
            p.unsubscribe(0xa2, commands.as_bytes(), &[0x1f, 0, 1, b'x']),
            Refused(MALFORMED),
        );
        add(
            "DISCONNECT duplicate session expiry",
            after,
            packet(0xe0, &cat(&[&[0x00], &vbi(10), &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]])),
            Refused(MALFORMED),
        );

        // Topic aliases: the hub's CONNACK allows none (Topic Alias Maximum absent = 0), so MQTT 5 §3.3.2.3.4
        // wants DISCONNECT 0x94 (topic alias invalid) for any alias, with or without a topic name.
        add(
            "PUBLISH topic alias 1 with empty topic, QoS 0",
            after,
            p.publish(0x00, "", None, &[0x23, 0, 1], &payload()),
            Refused(TOPIC_ALIAS_INVALID),
        );
        add(
            "PUBLISH topic alias 1 with empty topic, QoS 1",
            after,
            p.publish(0x02, "", Some(3), &[0x23, 0, 1], &payload()),
            Refused(TOPIC_ALIAS_INVALID),
        );
        add(
            "PUBLISH topic alias 1 with a topic name, QoS 1",
            after,
            p.publish(0x02, &p.telemetry_topic(), Some(5), &[0x23, 0, 1], &payload()),
            Refused(TOPIC_ALIAS_INVALID),
        );
        // MQTT-3.3.4-6: a client's PUBLISH must not carry a subscription identifier.
        add(
            "PUBLISH with a subscription identifier",
            after,
            p.publish(0x02, &p.telemetry_topic(), Some(4), &[0x0b, 1], &payload()),
            Refused(PROTOCOL),
        );
    }
    // MQTT-3.3.1-2: the DUP flag must be 0 on QoS 0 (a malformed packet).
    add(
        "PUBLISH QoS 0 with DUP",
        after,
        p.publish(0x08, &p.telemetry_topic(), None, &[], &payload()),
        Refused(MALFORMED),
    );
    cases
}

/// Every strict prefix of a valid packet of each type a client may send, each followed by the client closing its
/// write side: the hub must answer nothing (it never saw a whole packet) and close.
fn truncation_cases(p: &Packets) -> Vec<Case> {
    let seq = if p.v5() { 7000 } else { 6000 };
    let after = Start::Connected { keep_alive: 60 };
    let valid: Vec<(&str, Start, Vec<u8>)> = vec![
        ("CONNECT", Start::Raw, p.connect(60, &[0x21, 0x00, 0x10])),
        ("PUBLISH", after, p.telemetry(seq, &[0x01, 0x01])),
        ("PUBACK", after, p.puback()),
        ("SUBSCRIBE", after, p.subscribe(0x82, p.commands_topic().as_bytes(), 1, &[])),
        ("UNSUBSCRIBE", after, p.unsubscribe(0xa2, p.commands_topic().as_bytes(), &[])),
        ("PINGREQ", after, vec![0xc0, 0x00]),
        ("DISCONNECT", after, p.disconnect()),
    ];
    let mut cases = Vec::new();
    for (name, start, bytes) in valid {
        for cut in 1..bytes.len() {
            cases.push(Case {
                name: format!("{name} cut at {cut} of {}", bytes.len()),
                v: p.v,
                start,
                bytes: bytes[..cut].to_vec(),
                expect: Expect::Truncated,
            });
        }
    }
    cases
}

/// Truncated packets followed by silence (no EOF): the hub's own timeouts end them.
fn stall_cases(p: &Packets) -> Vec<Case> {
    let connect = p.connect(60, &[]);
    // Half a PUBLISH, then a whole PINGREQ that the hub must count as more PUBLISH bytes, not answer.
    let publish = p.telemetry(if p.v5() { 7500 } else { 6500 }, &[]);
    let stalled = cat(&[&publish[..publish.len() / 2], &[0xc0, 0x00]]);
    vec![
        Case {
            name: "CONNECT cut in half, then silence".into(),
            v: p.v,
            start: Start::Raw,
            bytes: connect[..connect.len() / 2].to_vec(),
            expect: Expect::Stalls { within: CONNECT_TIMEOUT, code: None },
        },
        Case {
            name: "half a PUBLISH and a PINGREQ, then silence (keep-alive 1 s)".into(),
            v: p.v,
            start: Start::Connected { keep_alive: 1 },
            bytes: stalled,
            // 1.5 × keep-alive, then DISCONNECT 0x8D (keep-alive timeout) on MQTT 5.
            expect: Expect::Stalls { within: Duration::from_millis(1500), code: Some(0x8d) },
        },
    ]
}

/// A TLS connection to the hub's HTTPS port, trusting its server CA, without a client certificate.
async fn https_connect(hub: &TestHub) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&hub.hub.server_ca_path).expect("server CA") {
        roots.add(c.expect("certificate")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(hub.hub.https_addr).await.expect("tcp");
    let name = ServerName::try_from("127.0.0.1").expect("name").to_owned();
    connector.connect(name, tcp).await.expect("TLS handshake")
}
