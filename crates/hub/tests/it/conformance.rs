//! The MQTT conformance table: every rule of MQTT 3.1.1 and 5 that the hub implements or refuses, one row each,
//! named by the specification's rule (`MQTT-x.y.z-n`, or its section where the rule has no number), with the
//! answer the hub gives, driven by raw packets through the one `check` helper of the hostile table (a fresh TLS
//! connection per row, then a well-behaved client must still be served). Each row runs on both versions unless it
//! exists in only one. `docs/PROTOCOL.md` states the same behaviours for device authors.
//!
//! Behaviours that need more than one connection (session expiry and Session Present, wills firing, takeover)
//! are in `session.rs`; hostile and truncated input is in `hostile.rs`.

use super::hostile::{Case, Env, Expect, Got, Packets, Start, cat, for_both_versions, packet, run_table, s};
use hearth_test_support::TestHub;
use hearth_test_support::mqtt::telemetry;

/// MQTT 5 reason codes the rows expect (3.1.1 return codes are written out where they differ).
const SUCCESS: u8 = 0x00;
const PROTOCOL: u8 = 0x82;
const NOT_AUTHORIZED: u8 = 0x87;
const FILTER_INVALID: u8 = 0x8f;
const TOPIC_NAME_INVALID: u8 = 0x90;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PAYLOAD_INVALID: u8 = 0x99;
const RETAIN: u8 = 0x9a;
const QOS: u8 = 0x9b;

#[tokio::test]
async fn mqtt_conformance_table() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let dev = hub.enrolled_device(dir.path()).await.expect("device");
    let env = Env { hub: &hub, dev: &dev };
    let cases = for_both_versions(&dev, rules);
    let count = cases.len();
    assert!(count >= 60, "the conformance table shrank to {count} rows");
    let started = std::time::Instant::now();
    let failures = run_table(&env, &cases).await;
    eprintln!("conformance: {count} rows in {:?}", started.elapsed());
    assert!(failures.is_empty(), "{} of {count} rows failed:\n{}", failures.len(), failures.join("\n"));
    // Rows whose messages are refused store nothing: only the accepted message and the will of a lost connection
    // (each row's connection ends without DISCONNECT) are stored.
    let stored: Vec<u64> = {
        let (_, page) = hub.get(&format!("/api/v1/devices/{}/telemetry?limit=100", dev.id)).await.expect("page");
        page["items"].as_array().expect("items").iter().filter_map(|i| i["seq"].as_u64()).collect()
    };
    let mut stored = stored;
    stored.sort_unstable();
    assert_eq!(stored, ACCEPTED_SEQS, "only accepted messages and wills are stored");
}

/// Seqs of the rows whose messages the hub stores: the accepted PUBLISH and the accepted will without delay (the
/// will with a 30 s delay is not published: the next row's connection of the same device comes first).
const ACCEPTED_SEQS: [u64; 4] = [31_001, 31_900, 51_001, 51_900];

/// The table for one version.
fn rules(p: &Packets) -> Vec<Case> {
    let v5 = p.v5();
    let after = Start::Connected { keep_alive: 60 };
    let mut cases = Vec::new();
    let mut add = |rule: &str, start: Start, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case { name: rule.to_owned(), v: p.v, start, bytes, expect });
    };
    use Expect::{Answer, Closed, ConnAck, PubAck, Refused};
    // On 3.1.1 a refused CONNECT gets a return code; those without a fitting one become 5 (not authorized).
    let connack = |code5: u8, code3: u8| ConnAck(if v5 { code5 } else { code3 });
    let base = if v5 { 51_000 } else { 31_000 };
    let own = |suffix: &str| format!("devices/{}/{suffix}", p.dev);
    let other = "devices/someone-else/telemetry";
    let event =
        |seq: u64| format!(r#"{{"v":1,"seq":{seq},"ts":1700000000000,"event":"connection_lost"}}"#).into_bytes();

    // --- CONNECT.
    add("MQTT-3.1.0-1: the first packet must be CONNECT", Start::Raw, vec![0xc0, 0x00], Closed);
    add(
        "MQTT-3.1.2-1: protocol name MQTT",
        Start::Raw,
        {
            let mut b = p.connect_body(0x02, 60, &[]);
            b[5] = b'X';
            packet(0x10, &b)
        },
        Closed,
    );
    add(
        "MQTT-3.1.2-3: the reserved CONNECT flag is 0",
        Start::Raw,
        packet(0x10, &p.connect_body(0x03, 60, &[])),
        Closed,
    );
    add("§3.1.3 / 3.2.2.3: a valid CONNECT is accepted", Start::Raw, p.connect(60, &[]), Answer(Got::ConnAck(SUCCESS)));
    add(
        "MQTT-3.1.3-8 / §3.1.3.1: empty client id without clean session",
        Start::Raw,
        packet(0x10, &cat(&[&s("MQTT"), &[if v5 { 5 } else { 4 }, 0x00, 0, 60], &p.props(&[]), &s("")])),
        connack(0x85, 2),
    );
    add(
        "§3.1.3.1 (hub): an empty client id with clean session is assigned the device id",
        Start::Raw,
        packet(0x10, &cat(&[&s("MQTT"), &[if v5 { 5 } else { 4 }, 0x02, 0, 60], &p.props(&[]), &s("")])),
        Answer(Got::ConnAck(SUCCESS)),
    );
    add(
        "§3.1.3.1 (hub): a client id other than the certificate's device id",
        Start::Raw,
        packet(0x10, &cat(&[&s("MQTT"), &[if v5 { 5 } else { 4 }, 0x02, 0, 60], &p.props(&[]), &s("someone-else")])),
        connack(0x85, 2),
    );
    add("MQTT-3.1.0-2: a second CONNECT is a protocol error", after, p.connect(60, &[]), Refused(PROTOCOL));
    if !v5 {
        // Level-3 CONNECT ("MQIsdp", MQTT 3.1): the hub speaks 3.1.1 and 5 only.
        let mqisdp = cat(&[&s("MQIsdp"), &[3, 0x02, 0, 60], &s(&p.dev)]);
        add("MQTT-3.1.2-2: MQTT 3.1 gets return code 1", Start::Raw, packet(0x10, &mqisdp), ConnAck(1));
        for level in [4u8, 5] {
            let body = cat(&[&s("MQIsdp"), &[level, 0x02, 0, 60], &s(&p.dev)]);
            add(
                &format!("MQTT-3.1.2-2: MQIsdp at level {level} gets return code 1"),
                Start::Raw,
                packet(0x10, &body),
                ConnAck(1),
            );
        }
        for level in [6u8, 7] {
            let mut b = p.connect_body(0x02, 60, &[]);
            b[6] = level;
            add(&format!("MQTT-3.1.2-2: level {level} gets return code 1"), Start::Raw, packet(0x10, &b), ConnAck(1));
        }
    }

    // --- Will messages (§3.1.2.5): checked at CONNECT exactly as the publish they stand for.
    let will_with = |connect_props: &[u8], flags: u8, topic: &str, payload: &[u8], props: &[u8]| {
        let level = if v5 { 5 } else { 4 };
        let body = cat(&[
            &s("MQTT"),
            &[level, 0x02 | 0x04 | flags, 0, 60],
            &p.props(connect_props),
            &s(&p.dev),
            &p.props(props),
            &s(topic),
            &s(payload),
        ]);
        packet(0x10, &body)
    };
    let will = |flags: u8, topic: &str, payload: &[u8], props: &[u8]| will_with(&[], flags, topic, payload, props);
    let qos1 = 0x08;
    add(
        "§3.1.2.5: a will on the device's events topic is accepted",
        Start::Raw,
        will(qos1, &own("events"), &event(base + 900), &[]),
        Answer(Got::ConnAck(SUCCESS)),
    );
    add(
        "§3.1.2.5 (hub): a will to another device's topic",
        Start::Raw,
        will(0, other, &event(base + 901), &[]),
        connack(NOT_AUTHORIZED, 5),
    );
    add(
        "§3.1.2.5 (hub): a will to the device's command answers",
        Start::Raw,
        will(0, &own("commands/ack"), br#"{"id":"x","status":"ok"}"#, &[]),
        connack(NOT_AUTHORIZED, 5),
    );
    add(
        "MQTT-4.7.1-1: a will topic with a wildcard",
        Start::Raw,
        will(0, &own("+"), &event(base + 902), &[]),
        connack(TOPIC_NAME_INVALID, 5),
    );
    add(
        "§3.1.2.5 (hub): a will whose payload is not a valid event",
        Start::Raw,
        will(0, &own("events"), b"offline", &[]),
        connack(PAYLOAD_INVALID, 5),
    );
    add(
        "§3.2.2.1.4 (hub): a QoS 2 will",
        Start::Raw,
        will(0x10, &own("events"), &event(base + 903), &[]),
        connack(QOS, 5),
    );
    add(
        "§3.2.2.1.5 (hub): a retained will",
        Start::Raw,
        will(0x20, &own("events"), &event(base + 904), &[]),
        connack(RETAIN, 5),
    );
    if v5 {
        // (Session expiry 60 s: a will's delay ends early when its session does.)
        add(
            "§3.1.3.2.2: a will with a delay interval is accepted",
            Start::Raw,
            will_with(&[0x11, 0, 0, 0, 60], qos1, &own("events"), &event(base + 905), &[0x18, 0, 0, 0, 30]),
            Answer(Got::ConnAck(SUCCESS)),
        );
    } else {
        add(
            "MQTT-3.1.2-11: will QoS without the will flag",
            Start::Raw,
            packet(0x10, &p.connect_body(0x0a, 60, &[])),
            Closed,
        );
    }

    // --- PUBLISH.
    add(
        "MQTT-3.3.4-1: QoS 1 to the device's telemetry gets PUBACK",
        after,
        p.publish(0x02, &p.telemetry_topic(), Some(9), &[], &telemetry(base + 1, 1.0)),
        Answer(Got::PubAck(SUCCESS)),
    );
    add(
        "§3.3.2.1 (hub): a topic outside the device's own",
        after,
        p.publish(0x02, other, Some(9), &[], &telemetry(base + 2, 1.0)),
        PubAck(NOT_AUTHORIZED),
    );
    add(
        "MQTT-3.3.2-2: no wildcards in a topic name",
        after,
        p.publish(0x02, &own("#"), Some(9), &[], &telemetry(base + 3, 1.0)),
        PubAck(TOPIC_NAME_INVALID),
    );
    add(
        "§3.3.2.3.2 (hub): a payload that is not valid telemetry",
        after,
        p.publish(0x02, &p.telemetry_topic(), Some(9), &[], b"{\"v\":1}"),
        PubAck(PAYLOAD_INVALID),
    );
    add(
        "MQTT-3.3.1-2: DUP on QoS 0 is malformed",
        after,
        p.publish(0x08, &p.telemetry_topic(), None, &[], &telemetry(base + 4, 1.0)),
        Refused(0x81),
    );
    add(
        "MQTT-3.3.1-4 / §3.2.2.3.4: QoS 2 is not supported",
        after,
        p.publish(0x04, &p.telemetry_topic(), Some(9), &[], &telemetry(base + 5, 1.0)),
        Refused(QOS),
    );
    add(
        "§3.2.2.3.5: retain is not supported",
        after,
        p.publish(0x03, &p.telemetry_topic(), Some(9), &[], &telemetry(base + 6, 1.0)),
        Refused(RETAIN),
    );
    add(
        "§3.3.4 (hub): PUBLISH to the device's commands topic is not the device's to send",
        after,
        p.publish(0x02, &p.commands_topic(), Some(9), &[], &telemetry(base + 7, 1.0)),
        PubAck(NOT_AUTHORIZED),
    );
    if v5 {
        add(
            "MQTT-3.3.2-8 / §3.3.2.3.4: any topic alias (Topic Alias Maximum is 0)",
            after,
            p.publish(0x02, &p.telemetry_topic(), Some(9), &[0x23, 0, 1], &telemetry(base + 8, 1.0)),
            Refused(TOPIC_ALIAS_INVALID),
        );
        add(
            "MQTT-3.3.4-6: a client PUBLISH with a subscription identifier",
            after,
            p.publish(0x02, &p.telemetry_topic(), Some(9), &[0x0b, 1], &telemetry(base + 9, 1.0)),
            Refused(PROTOCOL),
        );
    }

    // --- SUBSCRIBE and UNSUBSCRIBE.
    add(
        "MQTT-3.8.4-1: SUBSCRIBE to the device's commands gets SUBACK QoS 1",
        after,
        p.subscribe(0x82, p.commands_topic().as_bytes(), 1, &[]),
        Answer(Got::SubAck(vec![1])),
    );
    add(
        "MQTT-3.9.3-1 / §3.9.3 (hub): a filter outside the device's commands is refused in SUBACK",
        after,
        p.subscribe(0x82, b"devices/someone-else/commands", 1, &[]),
        Answer(Got::SubAck(vec![if v5 { NOT_AUTHORIZED } else { 0x80 }])),
    );
    add(
        "§3.8.3.1 (hub): wildcard filters are refused in SUBACK",
        after,
        p.subscribe(0x82, b"devices/+/commands", 1, &[]),
        Answer(Got::SubAck(vec![if v5 { NOT_AUTHORIZED } else { 0x80 }])),
    );
    add(
        "MQTT-4.7.1-2: a '#' not last in a filter",
        after,
        p.subscribe(0x82, b"devices/#/commands", 1, &[]),
        Answer(Got::SubAck(vec![if v5 { FILTER_INVALID } else { 0x80 }])),
    );
    add(
        "MQTT-3.8.4-5: granted QoS is at most 1",
        after,
        p.subscribe(0x82, p.commands_topic().as_bytes(), 2, &[]),
        Answer(Got::SubAck(vec![1])),
    );
    add(
        "MQTT-3.10.4-4: UNSUBSCRIBE gets UNSUBACK",
        after,
        p.unsubscribe(0xa2, p.commands_topic().as_bytes(), &[]),
        Answer(Got::UnsubAck),
    );
    add(
        "MQTT-3.8.1-1: SUBSCRIBE flags must be 0010",
        after,
        p.subscribe(0x80, p.commands_topic().as_bytes(), 1, &[]),
        Refused(0x81),
    );

    // --- PINGREQ, DISCONNECT, packets only a server sends.
    add("MQTT-3.12.4-1: PINGREQ gets PINGRESP", after, vec![0xc0, 0x00], Answer(Got::PingResp));
    add("MQTT-3.14.4-1: DISCONNECT closes", after, p.disconnect(), Closed);
    add(
        "§3.2 (hub): a client may not send CONNACK",
        after,
        if v5 { vec![0x20, 0x03, 0, 0, 0] } else { vec![0x20, 0x02, 0, 0] },
        Refused(PROTOCOL),
    );
    add(
        "§4.3.3 (hub): QoS 2 flow packets (PUBREL) are refused",
        after,
        vec![0x62, 0x02, 0x00, 0x01],
        Refused(PROTOCOL),
    );
    if v5 {
        add(
            "MQTT-3.14.2-2: DISCONNECT may not set a session expiry when CONNECT set 0",
            after,
            packet(0xe0, &cat(&[&[0x00], &p.props(&[0x11, 0, 0, 0, 30])])),
            Refused(PROTOCOL),
        );
        add(
            "§3.14.2.2.2: DISCONNECT may change a non-zero session expiry",
            Start::Raw,
            cat(&[
                &p.connect(60, &[0x11, 0, 0, 0, 10]),
                &packet(0xe0, &cat(&[&[0x00], &p.props(&[0x11, 0, 0, 0, 30])])),
            ]),
            // CONNACK success, then the connection closes without a DISCONNECT from the hub.
            Expect::ConnAck(SUCCESS),
        );
        add("§3.15 (hub): AUTH is not supported", after, vec![0xf0, 0x00], Refused(PROTOCOL));
    }
    cases
}
