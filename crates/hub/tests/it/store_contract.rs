//! The storage contract: one story per capability, run on SQLite always and on PostgreSQL when
//! `HEARTH_TEST_POSTGRES_URL` is set (CI sets it and `HEARTH_REQUIRE_ALL=1`, so PostgreSQL is never skipped
//! there). Each story drives the store's typed API only, so both backends must give the same answers.

// A failed store call is a failed story; `unwrap` keeps the many assertions readable.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hearth_hub::store::{
    AuditRow, BackendKind, CeremonyKind, CertRecord, CommandStatus, DeviceStatus, EnrolOutcome, LinkPurpose,
    NewAccount, NewApiToken, NewCommand, NewDevice, NewSecurityEvent, NewWebSession, OpenedSession, PasskeyRow,
    PoolSettings, Release, Role, SessionOpen, Store, StoreUrl, TokenState, UplinkQuery, UplinkRecord, Written,
};
use hearth_proto::uplink::UplinkKind;
use hearth_test_support::services::{PgDatabase, pg_database};

const DAY: i64 = 86_400_000;
/// 2026-11-25T12:00:00Z.
const NOW: i64 = 1_795_608_000_000;

/// A store on one backend, and what keeps it alive.
struct Backend {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("hearth.db")).await.expect("open sqlite");
    Backend { store, _dir: Some(dir), _pg: None }
}

async fn postgres(test: &str) -> Option<Backend> {
    let db = pg_database(test).await?;
    let store = Store::open(&StoreUrl::parse(&db.url).expect("url"), PoolSettings::default()).await.expect("open pg");
    store.prepare_uplink_partitions(NOW, 7).await.expect("partitions");
    Some(Backend { store, _dir: None, _pg: Some(db) })
}

/// Defines each story twice: `sqlite::story` and `postgres::story`.
macro_rules! contract {
    ($($story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $story() {
                    let b = super::sqlite().await;
                    super::$story(&b.store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $story() {
                    let Some(b) = super::postgres(concat!("store_contract::postgres::", stringify!($story))).await
                    else {
                        return;
                    };
                    assert_eq!(b.store.kind(), super::BackendKind::Postgres);
                    super::$story(&b.store).await;
                }
            )*
        }
    };
}

contract!(
    manufacture_and_page,
    enrol_renew_and_first_use,
    revoke,
    ingest_with_duplicates_and_conflicts,
    ingest_state_and_last_seen,
    uplink_paging_and_retention,
    commands,
    tokens_and_setup,
    security_events,
    sessions,
    people,
    keys,
    updates,
    reports,
    concurrent_writers_store_each_message_once,
);

fn device(id: &str) -> NewDevice {
    NewDevice {
        id: id.into(),
        model: "plug-1".into(),
        bootstrap_mac: format!("boot-{id}").into_bytes(),
        bootstrap_expires_at: NOW + DAY,
        claim_mac: format!("claim-{id}").into_bytes(),
    }
}

fn cert<'a>(serial: &'a str, spki: &'a str) -> CertRecord<'a> {
    CertRecord { serial, not_after: NOW + 30 * DAY, spki, chain: "-----CHAIN-----" }
}

async fn enrolled(store: &Store, id: &str) {
    store.insert_devices(&[device(id)], NOW).await.expect("insert");
    let outcome = store.enrol(id, format!("boot-{id}").as_bytes(), NOW, &cert("s1", "k1")).await.expect("enrol");
    assert_eq!(outcome, EnrolOutcome::Enrolled);
}

fn up(device: &str, seq: i64, body: &str) -> UplinkRecord {
    UplinkRecord {
        device_id: device.into(),
        seq,
        kind: UplinkKind::Telemetry,
        device_ts: NOW + seq,
        received_at: NOW,
        body_json: body.into(),
    }
}

async fn manufacture_and_page(store: &Store) {
    let ids: Vec<String> = (0..25).map(|i| format!("dev-{i:03}")).collect();
    let batch: Vec<NewDevice> = ids.iter().map(|i| device(i)).collect();
    store.insert_devices(&batch, NOW).await.expect("insert");
    // A batch with one bad row (a repeated id) is refused whole.
    let err = store.insert_devices(&[device("new-1"), device("dev-000")], NOW).await;
    assert!(err.is_err(), "a repeated id must fail the batch");
    assert!(store.device("new-1").await.unwrap().is_none(), "nothing of a failed batch is kept");

    let d = store.device("dev-007").await.unwrap().expect("stored");
    assert_eq!(d.id.as_str(), "dev-007");
    assert_eq!(d.status, DeviceStatus::Manufactured);
    assert_eq!(d.created_at, NOW);
    assert!(!d.session_open);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.devices(after.as_deref(), 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|d| d.id.to_string());
        seen.extend(page.into_iter().map(|d| d.id.to_string()));
    }
    assert_eq!(seen, ids, "keyset paging returns every device once, in id order");
    assert_eq!(store.device_counts().await.unwrap(), vec![(DeviceStatus::Manufactured, 25)]);
}

async fn enrol_renew_and_first_use(store: &Store) {
    store.insert_devices(&[device("dev-a"), device("dev-b")], NOW).await.unwrap();
    assert_eq!(store.bootstrap_token_state("dev-a", b"boot-dev-a", NOW).await.unwrap(), TokenState::Usable);
    assert_eq!(store.bootstrap_token_state("dev-a", b"wrong", NOW).await.unwrap(), TokenState::Invalid);
    assert_eq!(store.bootstrap_token_state("dev-a", b"boot-dev-a", NOW + DAY).await.unwrap(), TokenState::Expired);
    assert_eq!(
        store.enrol("dev-a", b"boot-dev-a", NOW + 2 * DAY, &cert("x", "k")).await.unwrap(),
        EnrolOutcome::Expired
    );
    assert_eq!(store.enrol("dev-a", b"wrong", NOW, &cert("x", "k")).await.unwrap(), EnrolOutcome::Invalid);
    assert_eq!(store.enrol("dev-a", b"boot-dev-a", NOW, &cert("s1", "k1")).await.unwrap(), EnrolOutcome::Enrolled);
    assert_eq!(store.enrol("dev-a", b"boot-dev-a", NOW, &cert("s2", "k2")).await.unwrap(), EnrolOutcome::Used);
    assert_eq!(store.bootstrap_token_state("dev-a", b"boot-dev-a", NOW).await.unwrap(), TokenState::Used);

    let c = store.current_cert("dev-a").await.unwrap().expect("cert");
    assert_eq!((c.serial.as_deref(), c.spki.as_deref(), c.used), (Some("s1"), Some("k1"), false));
    assert_eq!(c.status, DeviceStatus::Enrolled);
    assert_eq!(c.chain_pem.as_deref(), Some("-----CHAIN-----"));

    // Renewal: only with the current serial; the previous one stays accepted until the new one is used.
    assert!(!store.renew_current("dev-a", "not-current", &cert("s9", "k9")).await.unwrap());
    assert!(store.renew_current("dev-a", "s1", &cert("s2", "k2")).await.unwrap());
    let s = store.cert_serials_of("dev-a").await.unwrap().expect("serials");
    assert_eq!((s.current.as_str(), s.prev.as_deref(), s.used), ("s2", Some("s1"), false));
    store.mark_cert_used("dev-a", "s1", NOW).await.unwrap();
    assert_eq!(store.cert_serials_of("dev-a").await.unwrap().unwrap().prev.as_deref(), Some("s1"), "old serial: no-op");
    store.mark_cert_used("dev-a", "s2", NOW).await.unwrap();
    let s = store.cert_serials_of("dev-a").await.unwrap().unwrap();
    assert_eq!((s.prev, s.used), (None, true), "first use ends the previous certificate");
    let all = store.cert_serials().await.unwrap();
    assert_eq!(all.len(), 1, "only enrolled devices have serials");

    // A re-issued token enrols again and replaces the certificate.
    assert!(store.reissue_bootstrap("dev-a", b"boot2", NOW + DAY).await.unwrap());
    assert_eq!(store.enrol("dev-a", b"boot2", NOW, &cert("s3", "k3")).await.unwrap(), EnrolOutcome::Enrolled);
    let s = store.cert_serials_of("dev-a").await.unwrap().unwrap();
    assert_eq!((s.current.as_str(), s.prev, s.used), ("s3", None, false));
    assert!(!store.reissue_bootstrap("nobody", b"boot3", NOW).await.unwrap());
}

async fn revoke(store: &Store) {
    enrolled(store, "dev-r").await;
    store.insert_devices(&[device("dev-m")], NOW).await.unwrap();
    assert!(store.revoke("dev-r", NOW + 5).await.unwrap());
    assert!(store.revoke("dev-r", NOW + 9).await.unwrap(), "revoking twice is fine");
    assert!(!store.revoke("nobody", NOW).await.unwrap());
    let d = store.device("dev-r").await.unwrap().unwrap();
    assert_eq!((d.status, d.revoked_at), (DeviceStatus::Revoked, Some(NOW + 5)), "the first revocation time stays");
    let ids: Vec<String> = store.revoked_device_ids().await.unwrap().iter().map(|d| d.to_string()).collect();
    assert_eq!(ids, vec!["dev-r"]);
    assert_eq!(store.revoked_since(NOW + 6).await.unwrap().len(), 0);
    assert_eq!(store.revoked_since(NOW + 5).await.unwrap().len(), 1);
    assert!(store.cert_serials_of("dev-r").await.unwrap().is_none(), "a revoked device has no accepted serial");
    assert!(!store.reissue_bootstrap("dev-r", b"again", NOW + DAY).await.unwrap());
    assert_eq!(store.bootstrap_token_state("dev-r", b"boot-dev-r", NOW).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.enrol("dev-r", b"boot-dev-r", NOW, &cert("z", "z")).await.unwrap(), EnrolOutcome::Revoked);
    let counts = store.device_counts().await.unwrap();
    assert_eq!(counts, vec![(DeviceStatus::Manufactured, 1), (DeviceStatus::Revoked, 1)]);
}

async fn ingest_with_duplicates_and_conflicts(store: &Store) {
    enrolled(store, "dev-i").await;
    enrolled(store, "dev-j").await;
    let first: Vec<UplinkRecord> = (1..=5).map(|s| up("dev-i", s, &format!(r#"{{"n":{s}}}"#))).collect();
    assert_eq!(store.commit_uplinks(&first, &[]).await.unwrap(), vec![Written::Stored; 5]);
    // Resends (same content) are duplicates, a different body under a stored seq is a conflict naming the
    // highest stored seq, new seqs are stored, and a repeat inside one batch is written once.
    let batch = vec![
        up("dev-i", 2, r#"{"n":2}"#),
        up("dev-i", 3, r#"{"n":"changed"}"#),
        up("dev-i", 6, r#"{"n":6}"#),
        up("dev-i", 6, r#"{"n":6}"#),
        up("dev-i", 7, r#"{"n":7}"#),
        up("dev-i", 7, r#"{"n":"other"}"#),
        up("dev-j", 1, r#"{"j":1}"#),
    ];
    let out = store.commit_uplinks(&batch, &[]).await.unwrap();
    assert_eq!(
        out,
        vec![
            Written::Duplicate,
            Written::Conflict { highest_seq: 7 },
            Written::Stored,
            Written::Duplicate,
            Written::Stored,
            Written::Conflict { highest_seq: 7 },
            Written::Stored,
        ]
    );
    assert_eq!(store.uplink_count("dev-i").await.unwrap(), 7);
    assert_eq!(store.uplink_count("dev-j").await.unwrap(), 1);
    assert_eq!(store.uplink_total().await.unwrap(), 8);
    // A gap filled late (seq below the highest, never stored) is stored.
    let late = store.commit_uplinks(&[up("dev-j", 0, r#"{"j":0}"#)], &[]).await.unwrap();
    assert_eq!(late, vec![Written::Stored]);
    let rows = store
        .uplinks(&UplinkQuery {
            device_id: "dev-i".into(),
            received_from: 0,
            from_ts: 0,
            to_ts: i64::MAX,
            after_seq: 0,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(rows[2].body_json, r#"{"n":3}"#, "a conflict never overwrites");
    assert_eq!(rows[0].kind, UplinkKind::Telemetry);
}

async fn ingest_state_and_last_seen(store: &Store) {
    enrolled(store, "dev-s").await;
    let mut s1 = up("dev-s", 10, r#"{"state":{"on":true}}"#);
    s1.kind = UplinkKind::State;
    let mut s2 = up("dev-s", 12, r#"{"state":{"on":false}}"#);
    s2.kind = UplinkKind::State;
    let mut s0 = up("dev-s", 11, r#"{"state":{"on":"stale"}}"#);
    s0.kind = UplinkKind::State;
    store.commit_uplinks(&[s1, s2], &[("dev-s".into(), NOW + 50)]).await.unwrap();
    let d = store.device("dev-s").await.unwrap().unwrap();
    assert_eq!(d.state_json.as_deref(), Some(r#"{"state":{"on":false}}"#), "the newest state wins");
    assert_eq!(d.last_seen_at, Some(NOW + 50));
    // An older state arriving later changes nothing; last-seen never moves back.
    store.commit_uplinks(&[s0], &[("dev-s".into(), NOW + 10)]).await.unwrap();
    let d = store.device("dev-s").await.unwrap().unwrap();
    assert_eq!(d.state_json.as_deref(), Some(r#"{"state":{"on":false}}"#));
    assert_eq!(d.last_seen_at, Some(NOW + 50));
    // Last-seen alone (no uplinks) is recorded too.
    store.commit_uplinks(&[], &[("dev-s".into(), NOW + 99)]).await.unwrap();
    assert_eq!(store.device("dev-s").await.unwrap().unwrap().last_seen_at, Some(NOW + 99));
}

async fn uplink_paging_and_retention(store: &Store) {
    enrolled(store, "dev-p").await;
    // Old data (40 days back: PostgreSQL must make that day's partition on demand) and recent data.
    let old: Vec<UplinkRecord> =
        (1..=30).map(|s| UplinkRecord { received_at: NOW - 40 * DAY, ..up("dev-p", s, r#"{"old":1}"#) }).collect();
    assert_eq!(store.commit_uplinks(&old, &[]).await.unwrap(), vec![Written::Stored; 30]);
    let new: Vec<UplinkRecord> = (31..=60).map(|s| up("dev-p", s, r#"{"new":1}"#)).collect();
    store.commit_uplinks(&new, &[]).await.unwrap();
    // Keyset paging over a device-time window.
    let q = |after_seq| UplinkQuery {
        device_id: "dev-p".into(),
        received_from: 0,
        from_ts: NOW + 11,
        to_ts: NOW + 51,
        after_seq,
        limit: 15,
    };
    let p1 = store.uplinks(&q(0)).await.unwrap();
    let p2 = store.uplinks(&q(p1.last().unwrap().seq)).await.unwrap();
    let p3 = store.uplinks(&q(p2.last().unwrap().seq)).await.unwrap();
    let seqs: Vec<i64> = p1.iter().chain(&p2).chain(&p3).map(|r| r.seq).collect();
    assert_eq!(seqs, (11..=50).collect::<Vec<_>>());
    // Retention of 30 days removes the old rows only.
    let mut pruned = 0;
    loop {
        let n = store.prune_uplinks(NOW - 30 * DAY, 7).await.unwrap();
        pruned += n;
        if n < 7 {
            break;
        }
    }
    assert_eq!(pruned, 30);
    assert_eq!(store.uplink_count("dev-p").await.unwrap(), 30);
    assert_eq!(store.prune_uplinks(NOW - 30 * DAY, 7).await.unwrap(), 0, "a second pass finds nothing");
    // A resend of a pruned message is stored again (it is no longer known).
    let again = store.commit_uplinks(&[UplinkRecord { ..up("dev-p", 5, r#"{"old":1}"#) }], &[]).await.unwrap();
    assert_eq!(again, vec![Written::Stored]);
}

async fn commands(store: &Store) {
    enrolled(store, "dev-c").await;
    for (id, created, expires) in [("c1", NOW, NOW + 1000), ("c2", NOW + 1, NOW + 1000), ("c3", NOW + 2, NOW + 10)] {
        let c = NewCommand {
            id: id.into(),
            device_id: "dev-c".into(),
            name: "ping".into(),
            args_json: "{}".into(),
            created_at: created,
            expires_at: expires,
        };
        store.insert_command(&c).await.unwrap();
    }
    let open = store.open_commands("dev-c", NOW + 5).await.unwrap();
    assert_eq!(open.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["c1", "c2", "c3"]);
    assert_eq!(open[0].status, CommandStatus::Pending);
    assert_eq!(open[0].device_id.as_str(), "dev-c");
    store.mark_command_sent("c1", NOW + 6).await.unwrap();
    let c1 = store.command("dev-c", "c1").await.unwrap().unwrap();
    assert_eq!((c1.status, c1.sent_at, c1.deliveries), (CommandStatus::Sent, Some(NOW + 6), 1));
    // Sent again (a new SUBSCRIBE before the answer): the first send time stays, the deliveries count.
    store.mark_command_sent("c1", NOW + 9).await.unwrap();
    let c1 = store.command("dev-c", "c1").await.unwrap().unwrap();
    assert_eq!((c1.sent_at, c1.deliveries), (Some(NOW + 6), 2), "issue 14, deviation 5");
    assert!(store.answer_command("dev-c", "c1", CommandStatus::Ok, Some("done"), NOW + 7).await.unwrap());
    assert!(!store.answer_command("dev-c", "c1", CommandStatus::Error, None, NOW + 8).await.unwrap(), "answered once");
    assert!(!store.answer_command("other", "c2", CommandStatus::Ok, None, NOW + 8).await.unwrap(), "not its command");
    assert!(store.command("other", "c2").await.unwrap().is_none());
    assert_eq!(store.expire_commands(NOW + 20).await.unwrap(), 1, "c3 timed out");
    let c3 = store.command("dev-c", "c3").await.unwrap().unwrap();
    assert_eq!(c3.status, CommandStatus::Timeout);
    let open = store.open_commands("dev-c", NOW + 20).await.unwrap();
    assert_eq!(open.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["c2"]);
    let c1 = store.command("dev-c", "c1").await.unwrap().unwrap();
    assert_eq!((c1.status, c1.detail.as_deref(), c1.answered_at), (CommandStatus::Ok, Some("done"), Some(NOW + 7)));
}

async fn tokens_and_setup(store: &Store) {
    assert_eq!(store.api_tokens_ever().await.unwrap(), 0);
    store.replace_setup_token(b"setup-1", NOW + 100).await.unwrap();
    store.replace_setup_token(b"setup-2", NOW + 100).await.unwrap();
    let account = NewAccount {
        id: "a1",
        email: "o@example.org",
        role: Role::Owner,
        password_hash: "$h",
        created_at: NOW,
        verified_at: Some(NOW),
    };
    let owner = NewApiToken {
        id: "t1",
        mac: b"mac-1",
        label: "owner",
        created_at: NOW,
        expires_at: NOW + DAY,
        account_id: Some("a1"),
    };
    assert!(!store.setup_token_usable(b"setup-1", NOW).await.unwrap(), "a replaced setup token is dead");
    assert!(!store.create_owner(b"setup-1", &account, &owner).await.unwrap());
    assert!(store.setup_token_usable(b"setup-2", NOW).await.unwrap());
    assert!(!store.setup_token_usable(b"setup-2", NOW + 100).await.unwrap(), "expired");
    let stray = NewApiToken { account_id: Some("someone-else"), ..owner };
    assert!(!store.create_owner(b"setup-2", &account, &stray).await.unwrap(), "the token is the owner's own");
    assert!(store.create_owner(b"setup-2", &account, &owner).await.unwrap());
    assert!(!store.setup_token_usable(b"setup-2", NOW).await.unwrap(), "a setup token works once");
    assert_eq!(store.api_tokens_ever().await.unwrap(), 1);
    assert_eq!(
        store.api_token(b"mac-1").await.unwrap(),
        Some(("t1".to_owned(), Some(NOW + DAY), Some("a1".to_owned())))
    );
    // Recovery: a new setup token is used up once.
    store.replace_setup_token(b"setup-3", NOW + 100).await.unwrap();
    assert!(store.use_setup_token(b"setup-3", NOW).await.unwrap());
    assert!(!store.use_setup_token(b"setup-3", NOW).await.unwrap());
    store
        .insert_api_token(&NewApiToken {
            id: "t2",
            mac: b"mac-2",
            label: "ci",
            created_at: NOW + 1,
            expires_at: NOW + 2,
            account_id: Some("a1"),
        })
        .await
        .unwrap();
    assert_eq!(store.api_token(b"mac-2").await.unwrap(), Some(("t2".to_owned(), Some(NOW + 2), Some("a1".to_owned()))));
    assert!(store.revoke_api_token("t2", NOW + 5).await.unwrap());
    assert!(!store.revoke_api_token("t2", NOW + 6).await.unwrap());
    assert_eq!(store.api_token(b"mac-2").await.unwrap(), None, "a revoked token authenticates nothing");
    let list = store.api_tokens().await.unwrap();
    assert_eq!(list.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["t2", "t1"], "newest first");
    assert_eq!(list[0].revoked_at_ms, Some(NOW + 5));
    let dup = store.insert_api_token(&NewApiToken { id: "t3", ..owner }).await;
    assert!(dup.is_err(), "a token MAC is unique");
}

async fn security_events(store: &Store) {
    let ev = |at: i64, device: Option<&str>, kind: &str, count: i64| NewSecurityEvent {
        at,
        last_at: at + 10,
        count,
        device_id: device.map(str::to_owned),
        source: Some("192.0.2.1".into()),
        kind: kind.into(),
        detail: "d".into(),
    };
    store
        .insert_security_events(&[
            ev(NOW - 100 * DAY, Some("dev-e"), "acl_publish", 3),
            ev(NOW, Some("dev-e"), "acl_publish", 2),
            ev(NOW + 1, None, "bad_certificate", 40),
            ev(NOW + 2, Some("dev-f"), "revoked", 1),
        ])
        .await
        .unwrap();
    assert_eq!(store.security_event_totals().await.unwrap(), (4, 46));
    let by_dev = store.security_events(Some("dev-e"), None, 10).await.unwrap();
    assert_eq!(by_dev.len(), 2);
    assert!(by_dev[0].id > by_dev[1].id, "newest first");
    assert_eq!((by_dev[0].count, by_dev[0].last_at), (2, NOW + 10));
    let by_kind = store.security_events(None, Some("bad_certificate"), 10).await.unwrap();
    assert_eq!((by_kind.len(), by_kind[0].device_id.as_deref()), (1, None));
    assert_eq!(store.security_events(None, None, 2).await.unwrap().len(), 2);
    assert_eq!(store.prune_security_events(NOW - 90 * DAY, 1_000).await.unwrap(), 1, "aged out");
    assert_eq!(store.prune_security_events(NOW - 90 * DAY, 2).await.unwrap(), 1, "over the row cap: oldest go");
    let left = store.security_events(None, None, 10).await.unwrap();
    assert_eq!(left.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["revoked", "bad_certificate"]);
}

async fn sessions(store: &Store) {
    let open = |clean: bool, expiry_ms: i64, node: &'static str, now: i64| SessionOpen { clean, expiry_ms, node, now };
    enrolled(store, "dev-x").await;
    let first = store.open_session("dev-x", &open(false, 60_000, "n1", NOW)).await.unwrap();
    assert_eq!((first.present, first.subscribed), (false, false), "no earlier session");
    assert!(store.device("dev-x").await.unwrap().unwrap().session_open);
    store.set_session_subscribed("dev-x", true, first.epoch).await.unwrap();
    // A second connection (another node) while the first is open takes the session over, subscription and all.
    let second = store.open_session("dev-x", &open(false, 60_000, "n1", NOW)).await.unwrap();
    assert!(second.epoch > first.epoch);
    assert_eq!((second.present, second.subscribed), (true, true), "the open session resumes");
    // The first connection ends late: it neither clears the subscription nor marks the device offline.
    store.set_session_subscribed("dev-x", false, first.epoch).await.unwrap();
    store.close_session("dev-x", first.epoch, NOW).await.unwrap();
    let d = store.device("dev-x").await.unwrap().unwrap();
    assert!(d.session_open);
    assert_eq!(store.session_epoch("dev-x").await.unwrap(), second.epoch);
    // A node that restarts clears the connections it held before (it holds none now); their sessions then
    // last their expiry (60 s) from that moment.
    assert_eq!(store.clear_sessions_of("n9", NOW).await.unwrap(), 0);
    assert_eq!(store.clear_sessions_of("n1", NOW).await.unwrap(), 1);
    assert!(!store.device("dev-x").await.unwrap().unwrap().session_open);
    let within = store.open_session("dev-x", &open(false, 5_000, "n2", NOW + 59_000)).await.unwrap();
    assert_eq!((within.present, within.subscribed), (true, true), "resumed within the expiry");
    // This connection asked for 5 s: closed at +60 s, its session is gone at +65 s.
    store.close_session("dev-x", within.epoch, NOW + 65_000).await.unwrap();
    let late = store.open_session("dev-x", &open(false, 5_000, "n2", NOW + 65_000)).await.unwrap();
    assert_eq!((late.present, late.subscribed), (false, false), "an expired session does not resume");
    store.set_session_subscribed("dev-x", true, late.epoch).await.unwrap();
    store.close_session("dev-x", late.epoch, NOW + 70_000).await.unwrap();
    // A session without a subscription still exists (and resumes) inside its expiry.
    let bare = store.open_session("dev-x", &open(false, 5_000, "n2", NOW + 69_000)).await.unwrap();
    assert_eq!((bare.present, bare.subscribed), (true, true));
    store.set_session_subscribed("dev-x", false, bare.epoch).await.unwrap();
    store.close_session("dev-x", bare.epoch, NOW + 80_000).await.unwrap();
    let empty = store.open_session("dev-x", &open(false, 0, "n2", NOW + 79_000)).await.unwrap();
    assert_eq!((empty.present, empty.subscribed), (true, false), "present with no subscription");
    // A session with expiry 0 ends with its connection.
    store.set_session_subscribed("dev-x", true, empty.epoch).await.unwrap();
    store.close_session("dev-x", empty.epoch, NOW + 79_500).await.unwrap();
    let after_zero = store.open_session("dev-x", &open(false, 0, "n2", NOW + 79_500)).await.unwrap();
    assert_eq!((after_zero.present, after_zero.subscribed), (false, false));
    store.set_session_subscribed("dev-x", true, after_zero.epoch).await.unwrap();
    store.close_session("dev-x", after_zero.epoch, NOW + 4_294_967_295_000).await.unwrap();
    // A clean start drops any session, even one that never expires.
    let clean = store.open_session("dev-x", &open(true, 0, "n2", NOW + 90_000)).await.unwrap();
    assert_eq!((clean.present, clean.subscribed), (false, false));
    store.close_session("dev-x", clean.epoch, NOW + 90_000).await.unwrap();
    assert!(!store.device("dev-x").await.unwrap().unwrap().session_open);
    // A session that ended with its connection (expiry 0) does not come back when the clock steps back.
    let zero = store.open_session("dev-x", &open(false, 0, "n2", NOW + 100_000)).await.unwrap();
    store.close_session("dev-x", zero.epoch, NOW + 100_000).await.unwrap();
    let stepped_back = store.open_session("dev-x", &open(false, 0, "n2", NOW + 40_000)).await.unwrap();
    assert!(!stepped_back.present, "expiry 0 never resumes, whatever the clock says");
    store.close_session("dev-x", stepped_back.epoch, NOW + 40_000).await.unwrap();
    let nobody = store.open_session("nobody", &open(false, 0, "n1", NOW)).await.unwrap();
    assert_eq!(nobody, OpenedSession { epoch: 0, present: false, subscribed: false });
    // A revoked device opens no session, on whichever node it reaches (the store decides, not a node's cache).
    assert!(store.revoke("dev-x", NOW + 110_000).await.unwrap());
    let revoked = store.open_session("dev-x", &open(false, 0, "n2", NOW + 110_001)).await.unwrap();
    assert_eq!(revoked.epoch, 0, "revoked: no session");
    // Node liveness: a node counts as alive while its heartbeats are recent.
    store.node_heartbeat("n1", NOW).await.unwrap();
    store.node_heartbeat("n2", NOW - 60_000).await.unwrap();
    store.node_heartbeat("n1", NOW + 5_000).await.unwrap();
    assert_eq!(store.live_nodes(NOW - 15_000).await.unwrap(), vec!["n1".to_owned()]);
    let d = store.device("dev-x").await.unwrap().unwrap();
    assert_eq!(d.session_node.as_deref(), Some("n2"));
    store.node_heartbeat("n3", NOW + 8 * DAY).await.unwrap();
    assert_eq!(store.live_nodes(0).await.unwrap(), vec!["n3".to_owned()], "nodes silent for a week are forgotten");
}

async fn people(store: &Store) {
    const MIN: i64 = 60_000;
    // The owner comes only with a live setup token, once.
    let owner = NewAccount {
        id: "a-owner",
        email: "owner@example.org",
        role: Role::Owner,
        password_hash: "$h1",
        created_at: NOW,
        verified_at: Some(NOW),
    };
    let token = NewApiToken {
        id: "tk",
        mac: b"mac-tk",
        label: "owner",
        created_at: NOW,
        expires_at: NOW + DAY,
        account_id: Some("a-owner"),
    };
    assert!(!store.owner_exists().await.unwrap());
    assert!(
        !store.create_owner(b"no-such-token", &owner, &token).await.unwrap(),
        "an unknown setup token creates nothing"
    );
    store.replace_setup_token(b"setup", NOW + 100).await.unwrap();
    let late = NewAccount { created_at: NOW + 100, ..owner };
    assert!(!store.create_owner(b"setup", &late, &token).await.unwrap(), "an expired setup token creates nothing");
    let consumer_role = NewAccount { role: Role::Consumer, ..owner };
    assert!(!store.create_owner(b"setup", &consumer_role, &token).await.unwrap(), "setup makes an owner or nothing");
    assert!(!store.owner_exists().await.unwrap());
    assert!(store.create_owner(b"setup", &owner, &token).await.unwrap());
    assert!(store.owner_exists().await.unwrap());
    let second = NewAccount { id: "a-2", email: "two@example.org", ..owner };
    let token2 = NewApiToken { id: "tk2", mac: b"mac-tk2", account_id: Some("a-2"), ..token };
    assert!(!store.create_owner(b"setup", &second, &token2).await.unwrap(), "the setup token works once");
    store.replace_setup_token(b"setup-2", NOW + 100).await.unwrap();
    assert!(!store.create_owner(b"setup-2", &second, &token2).await.unwrap(), "never a second owner");
    // Accounts: unique email, found by email and id.
    let consumer = NewAccount {
        id: "a-c",
        email: "c@example.org",
        role: Role::Consumer,
        password_hash: "$h2",
        created_at: NOW,
        verified_at: Some(NOW),
    };
    assert!(store.insert_account(&consumer).await.unwrap());
    assert!(!store.insert_account(&NewAccount { id: "a-c2", ..consumer }).await.unwrap(), "an email is taken once");
    let row = store.account_by_email("c@example.org").await.unwrap().expect("by email");
    assert_eq!((row.id.as_str(), row.role, row.password_hash.as_str()), ("a-c", Role::Consumer, "$h2"));
    assert_eq!(store.account("a-owner").await.unwrap().map(|a| a.role), Some(Role::Owner));
    assert!(store.account("nobody").await.unwrap().is_none());
    // Sessions: idle and absolute expiry, one and all revoked, a password change ends them.
    let session = |id: &'static str, mac: &'static [u8], at: i64| NewWebSession {
        id,
        mac,
        account_id: "a-c",
        created_at: at,
        expires_at: at + 12 * 60 * MIN,
        source: Some("192.0.2.0"),
        user_agent: Some("test"),
    };
    store.insert_web_session(&session("s1", b"mac-s1", NOW)).await.unwrap();
    store.insert_web_session(&session("s2", b"mac-s2", NOW + 1)).await.unwrap();
    let idle = 30 * MIN;
    let (s, a) = store.web_session(b"mac-s1", NOW + 20 * MIN, idle).await.unwrap().expect("live");
    assert_eq!((s.id.as_str(), a.id.as_str(), s.last_seen_at), ("s1", "a-c", NOW + 20 * MIN), "use moves last seen");
    assert!(store.web_session(b"mac-s1", NOW + 45 * MIN, idle).await.unwrap().is_some(), "used 25 min ago");
    assert!(store.web_session(b"mac-s2", NOW + 45 * MIN, idle).await.unwrap().is_none(), "idle for 45 min");
    assert!(store.web_session(b"mac-s1", NOW + 12 * 60 * MIN, 24 * 60 * MIN).await.unwrap().is_none(), "absolute end");
    assert!(store.web_session(b"unknown", NOW, idle).await.unwrap().is_none());
    let live = store.web_sessions_of("a-c", NOW + 50 * MIN, idle).await.unwrap();
    assert_eq!(live.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["s1"]);
    assert!(store.revoke_web_session("a-c", "s1", NOW + 50 * MIN).await.unwrap());
    assert!(!store.revoke_web_session("a-c", "s1", NOW + 50 * MIN).await.unwrap(), "ended once");
    assert!(!store.revoke_web_session("a-owner", "s2", NOW).await.unwrap(), "not another account's session");
    assert!(store.web_session(b"mac-s1", NOW + 51 * MIN, idle).await.unwrap().is_none(), "a revoked session is dead");
    store.insert_web_session(&session("s3", b"mac-s3", NOW + 60 * MIN)).await.unwrap();
    store.insert_web_session(&session("s4", b"mac-s4", NOW + 60 * MIN)).await.unwrap();
    assert_eq!(store.revoke_web_sessions_of("a-c", NOW + 61 * MIN).await.unwrap(), 3, "everywhere (s2, s3, s4)");
    store.insert_web_session(&session("s5", b"mac-s5", NOW + 62 * MIN)).await.unwrap();
    assert!(store.set_password("a-c", "$h3", NOW + 63 * MIN).await.unwrap());
    assert!(
        store.web_session(b"mac-s5", NOW + 63 * MIN, idle).await.unwrap().is_none(),
        "a new password ends sessions"
    );
    assert_eq!(
        store.account("a-c").await.unwrap().map(|a| (a.password_hash, a.password_changed_at)),
        Some(("$h3".into(), NOW + 63 * MIN))
    );
    // Throttling: 5 failures within 15 min lock the key for 15 min; the window restarts after it passes.
    let (window, lock) = (15 * MIN, 15 * MIN);
    for i in 0..4 {
        assert_eq!(store.record_login_failure("acct:a-c", NOW + i, window, 5, lock).await.unwrap(), None);
    }
    assert_eq!(store.record_login_failure("acct:a-c", NOW + 4, window, 5, lock).await.unwrap(), Some(NOW + 4 + lock));
    assert_eq!(store.login_lock("acct:a-c", NOW + 10 * MIN).await.unwrap(), Some(NOW + 4 + lock));
    assert_eq!(store.login_lock("acct:a-c", NOW + 20 * MIN).await.unwrap(), None, "the lock ends");
    assert_eq!(
        store.record_login_failure("acct:a-c", NOW + 40 * MIN, window, 5, lock).await.unwrap(),
        None,
        "a new window"
    );
    assert_eq!(store.login_lock("src:192.0.2.0", NOW).await.unwrap(), None);
    store.clear_login_failures("acct:a-c").await.unwrap();
    assert_eq!(store.login_lock("acct:a-c", NOW + 40 * MIN).await.unwrap(), None);
    // Claiming: once, not a revoked device, and each account sees its own.
    store.insert_devices(&[device("dev-c1"), device("dev-c2")], NOW).await.unwrap();
    assert_eq!(store.claim_device(b"claim-dev-c1", "a-c", NOW).await.unwrap().as_deref(), Some("dev-c1"));
    assert_eq!(store.claim_device(b"claim-dev-c1", "a-owner", NOW).await.unwrap(), None, "a code works once");
    assert_eq!(store.claim_device(b"claim-nothing", "a-c", NOW).await.unwrap(), None);
    store.revoke("dev-c2", NOW).await.unwrap();
    assert_eq!(store.claim_device(b"claim-dev-c2", "a-c", NOW).await.unwrap(), None, "not a revoked device");
    let mine = store.devices_of_account("a-c", None, 10).await.unwrap();
    assert_eq!(
        mine.iter().map(|d| (d.id.as_str(), d.owner_account_id.as_deref())).collect::<Vec<_>>(),
        vec![("dev-c1", Some("a-c"))]
    );
    assert!(store.devices_of_account("a-owner", None, 10).await.unwrap().is_empty());
    // Support grants: while they hold, support sees the consumer's devices.
    assert!(store.devices_granted(NOW, None, 10).await.unwrap().is_empty());
    store.grant_support("a-c", NOW, NOW + 3_600_000).await.unwrap();
    assert_eq!(store.support_grant("a-c", NOW).await.unwrap(), Some(NOW + 3_600_000));
    let granted = store.devices_granted(NOW, None, 10).await.unwrap();
    assert_eq!(granted.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec!["dev-c1"]);
    assert!(store.devices_granted(NOW + 3_600_000, None, 10).await.unwrap().is_empty(), "expired");
    store.grant_support("a-c", NOW, NOW + 7_200_000).await.unwrap();
    assert_eq!(
        store.support_grant("a-c", NOW + 3_600_000).await.unwrap(),
        Some(NOW + 7_200_000),
        "a new grant replaces"
    );
    assert!(store.revoke_support_grant("a-c").await.unwrap());
    assert!(!store.revoke_support_grant("a-c").await.unwrap());
    assert_eq!(store.support_grant("a-c", NOW).await.unwrap(), None);
    // Release: only by its owner (or an operator), with the wipe command in the same transaction; no claim until
    // the device confirms that very wipe.
    let wipe = |id: &str| NewCommand {
        id: id.into(),
        device_id: "dev-c1".into(),
        name: "wipe".into(),
        args_json: "{}".into(),
        created_at: NOW,
        expires_at: NOW + 60_000,
    };
    assert!(!store.release_device("dev-c1", Release::Owner("a-owner"), Some(&wipe("w0"))).await.unwrap());
    assert!(store.command("dev-c1", "w0").await.unwrap().is_none(), "a refused release records no command");
    assert!(store.release_device("dev-c1", Release::Owner("a-c"), Some(&wipe("w1"))).await.unwrap());
    assert!(!store.release_device("dev-c1", Release::Owner("a-c"), Some(&wipe("w2"))).await.unwrap(), "once");
    let released = store.device("dev-c1").await.unwrap().unwrap();
    assert_eq!(
        (released.owner_account_id, released.claimed_at, released.wipe_command_id.as_deref()),
        (None, None, Some("w1"))
    );
    assert_eq!(store.command("dev-c1", "w1").await.unwrap().map(|c| c.name), Some("wipe".into()));
    assert_eq!(store.claim_device(b"claim-dev-c1", "a-c", NOW).await.unwrap(), None, "wipe unconfirmed");
    // An operator may send a new wipe; the old one's answer then confirms nothing.
    assert!(store.release_device("dev-c1", Release::Operator, Some(&wipe("w3"))).await.unwrap());
    assert!(!store.confirm_wipe("dev-c1", "w1", NOW + 1).await.unwrap());
    assert!(store.confirm_wipe("dev-c1", "w3", NOW + 2).await.unwrap());
    assert_eq!(store.device("dev-c1").await.unwrap().unwrap().wiped_at, Some(NOW + 2));
    assert!(!store.release_device("dev-c1", Release::Operator, None).await.unwrap(), "neither claimed nor pending");
    assert_eq!(store.claim_device(b"claim-dev-c1", "a-c", NOW + 3).await.unwrap().as_deref(), Some("dev-c1"));
    assert_eq!(store.device("dev-c1").await.unwrap().unwrap().claimed_at, Some(NOW + 3));
    // Mail links: peeked without being used; used once, for their purpose only, while live.
    let fresh = NewAccount {
        id: "a-new",
        email: "new@example.org",
        role: Role::Consumer,
        password_hash: "$hn",
        created_at: NOW,
        verified_at: None,
    };
    assert!(store.insert_account(&fresh).await.unwrap());
    store.insert_mail_link(b"l-verify", LinkPurpose::Verify, "a-new", NOW, NOW + MIN).await.unwrap();
    assert_eq!(store.mail_link(b"l-verify", NOW).await.unwrap(), Some(("a-new".into(), LinkPurpose::Verify)));
    assert_eq!(store.mail_link(b"l-verify", NOW + MIN).await.unwrap(), None, "expired");
    assert_eq!(store.use_mail_link(b"l-verify", LinkPurpose::Reset, Some("$x"), NOW).await.unwrap(), None);
    assert_eq!(
        store.use_mail_link(b"l-verify", LinkPurpose::Verify, None, NOW).await.unwrap().as_deref(),
        Some("a-new")
    );
    assert_eq!(store.use_mail_link(b"l-verify", LinkPurpose::Verify, None, NOW).await.unwrap(), None, "once");
    assert_eq!(store.account("a-new").await.unwrap().unwrap().verified_at, Some(NOW));
    // A reset sets the password, ends every session and uses up the account's other reset links.
    store.insert_mail_link(b"l-r1", LinkPurpose::Reset, "a-c", NOW, NOW + 30 * MIN).await.unwrap();
    store.insert_mail_link(b"l-r2", LinkPurpose::Reset, "a-c", NOW, NOW + 30 * MIN).await.unwrap();
    store.insert_web_session(&session("s9", b"mac-s9", NOW)).await.unwrap();
    assert_eq!(
        store.use_mail_link(b"l-r1", LinkPurpose::Reset, Some("$reset"), NOW + 1).await.unwrap().as_deref(),
        Some("a-c")
    );
    assert_eq!(store.account("a-c").await.unwrap().unwrap().password_hash, "$reset");
    assert!(store.web_session(b"mac-s9", NOW + 2, 60 * MIN).await.unwrap().is_none(), "sessions end");
    assert_eq!(store.mail_link(b"l-r2", NOW + 2).await.unwrap(), None, "the other reset link is used up");
    // Accounts in email order; disabling revokes and is refused for the owner; a disabled account's link is dead.
    let emails: Vec<String> = store.accounts(None, 10).await.unwrap().into_iter().map(|a| a.email).collect();
    let mut sorted = emails.clone();
    sorted.sort();
    assert_eq!(emails, sorted);
    assert_eq!(store.accounts(Some("c@example.org"), 10).await.unwrap()[0].email, "new@example.org");
    assert!(!store.disable_account("a-owner", NOW).await.unwrap(), "never the owner");
    store.insert_mail_link(b"l-r3", LinkPurpose::Reset, "a-new", NOW, NOW + 30 * MIN).await.unwrap();
    assert!(store.disable_account("a-new", NOW + 3).await.unwrap());
    assert!(!store.disable_account("a-new", NOW + 3).await.unwrap(), "once");
    assert_eq!(store.use_mail_link(b"l-r3", LinkPurpose::Reset, Some("$x"), NOW + 4).await.unwrap(), None);
    // Pruning: dead links, and consumer sign-ups never confirmed (with nothing else of theirs).
    let stale = NewAccount { id: "a-stale", email: "stale@example.org", verified_at: None, ..fresh };
    assert!(store.insert_account(&stale).await.unwrap());
    store.insert_mail_link(b"l-stale", LinkPurpose::Verify, "a-stale", NOW, NOW + MIN).await.unwrap();
    assert_eq!(store.prune_mail_links(NOW + 31 * MIN, NOW + 1).await.unwrap(), (5, 1));
    assert!(store.account("a-stale").await.unwrap().is_none());
    assert!(store.account("a-new").await.unwrap().is_some(), "a confirmed account stays");
    // Passkeys: a credential id once across accounts; a passkey account in one transaction; ceremonies taken
    // once, by kind, while live.
    let key = |id: &str, account: &str| PasskeyRow {
        credential_id: id.into(),
        account_id: account.into(),
        name: "laptop".into(),
        passkey_json: "{}".into(),
        created_at: NOW,
        last_used_at: None,
    };
    assert!(store.insert_passkey(&key("cred-1", "a-c")).await.unwrap());
    assert!(!store.insert_passkey(&key("cred-1", "a-owner")).await.unwrap(), "a credential belongs to one account");
    store.passkey_used("cred-1", "{\"n\":1}", NOW + 5).await.unwrap();
    let used = store.passkey("cred-1").await.unwrap().unwrap();
    assert_eq!((used.passkey_json.as_str(), used.last_used_at), ("{\"n\":1}", Some(NOW + 5)));
    let pk_account = NewAccount {
        id: "a-pk",
        email: "pk@example.org",
        role: Role::Consumer,
        password_hash: "!passkey",
        created_at: NOW,
        verified_at: None,
    };
    assert!(!store.create_passkey_account(&pk_account, &key("cred-1", "a-pk")).await.unwrap(), "credential taken");
    assert!(store.account("a-pk").await.unwrap().is_none(), "nothing made");
    let taken_email = NewAccount { email: "c@example.org", ..pk_account };
    assert!(!store.create_passkey_account(&taken_email, &key("cred-2", "a-pk")).await.unwrap(), "email taken");
    assert!(store.create_passkey_account(&pk_account, &key("cred-2", "a-pk")).await.unwrap());
    assert_eq!(store.passkeys_of("a-pk").await.unwrap().len(), 1);
    assert!(!store.delete_passkey("a-c", "cred-2").await.unwrap(), "not another account's");
    assert!(store.delete_passkey("a-c", "cred-1").await.unwrap());
    store.insert_ceremony("cer-1", CeremonyKind::SignIn, None, "{}", NOW, NOW + MIN).await.unwrap();
    store.insert_ceremony("cer-2", CeremonyKind::Register, Some("a-c"), "{\"s\":2}", NOW, NOW + MIN).await.unwrap();
    assert_eq!(store.take_ceremony("cer-1", CeremonyKind::SecondFactor, NOW).await.unwrap(), None, "by kind");
    assert_eq!(store.take_ceremony("cer-1", CeremonyKind::SignIn, NOW + MIN).await.unwrap(), None, "expired");
    assert_eq!(
        store.take_ceremony("cer-2", CeremonyKind::Register, NOW).await.unwrap(),
        Some((Some("a-c".into()), "{\"s\":2}".into()))
    );
    assert_eq!(store.take_ceremony("cer-2", CeremonyKind::Register, NOW).await.unwrap(), None, "once");
    assert_eq!(store.prune_ceremonies(NOW + MIN).await.unwrap(), 1);
    // A passkey sign-up never confirmed goes with its passkey.
    assert_eq!(store.prune_mail_links(NOW, NOW + 1).await.unwrap().1, 1);
    assert!(store.account("a-pk").await.unwrap().is_none() && store.passkey("cred-2").await.unwrap().is_none());
    // Audit: newest first, pruned by age.
    let entry = |at: i64, action: &str| AuditRow {
        at,
        account_id: Some("a-c".into()),
        action: action.into(),
        target: None,
        source: Some("192.0.2.0".into()),
        detail: String::new(),
    };
    store.audit(&entry(NOW, "sign_in")).await.unwrap();
    store.audit(&entry(NOW + 1, "sign_out")).await.unwrap();
    let log = store.audit_log(10).await.unwrap();
    // The confirmed wipe above was audited in its own transaction.
    assert!(log.iter().any(|e| e.action == "device_wiped" && e.target.as_deref() == Some("dev-c1")), "{log:?}");
    let mine: Vec<AuditRow> = log.into_iter().filter(|e| e.account_id.as_deref() == Some("a-c")).collect();
    assert_eq!(mine, vec![entry(NOW + 1, "sign_out"), entry(NOW, "sign_in")]);
    assert_eq!(store.prune_audit_log(NOW + 1).await.unwrap(), 1, "the sign-in; the wipe (NOW + 2) stays");
    // Ended sessions (s1..s5 and s9, all revoked by now) and a day-old unlocked failure counter go; live rows stay.
    store.insert_web_session(&session("s6", b"mac-s6", NOW + 70 * MIN)).await.unwrap();
    store.record_login_failure("src:198.51.100.0", NOW, window, 5, lock).await.unwrap();
    assert_eq!(store.prune_web_sessions(NOW + 70 * MIN).await.unwrap(), 6 + 1, "six ended sessions, one counter");
    assert!(store.web_session(b"mac-s6", NOW + 71 * MIN, idle).await.unwrap().is_some(), "a live session stays");
    assert_eq!(store.audit_log(10).await.unwrap().len(), 2, "the sign-out and the wipe");
}

/// Signed updates: metadata versions publish all or nothing, files round-trip in chunks, releases, support,
/// rollouts with one active per model, waves opened once, goals, steps that stay final, postponing within a limit.
async fn updates(store: &Store) {
    use hearth_hub::store::{ModelSupportRow, ReleaseRow, RolloutRow, TufMetadataRow};
    use hearth_proto::DeviceId;
    let meta = |role: &str, version: i64| TufMetadataRow {
        role: role.into(),
        version,
        body: format!("{role}-{version}").into_bytes(),
        expires_at: NOW + DAY,
    };
    let release = ReleaseRow {
        target_name: "plug-1-2.0.img".into(),
        model: "plug-1".into(),
        version: "2.0".into(),
        security_version: 3,
        kind: "security".into(),
        info_json: "{}".into(),
        sha256: "ab".repeat(32),
        length: 5,
        targets_version: 1,
        published_at: NOW,
    };
    assert!(
        store
            .tuf_publish(&[meta("root", 1), meta("targets", 1)], std::slice::from_ref(&release), None, NOW)
            .await
            .unwrap()
    );
    // A version that exists makes the whole publication fail: nothing of it is kept.
    assert!(!store.tuf_publish(&[meta("snapshot", 1), meta("targets", 1)], &[], None, NOW).await.unwrap());
    assert!(store.tuf_latest("snapshot").await.unwrap().is_none(), "all or nothing");
    assert!(store.tuf_publish(&[meta("targets", 2)], &[], None, NOW).await.unwrap());
    // A renewal that read targets 1 before targets 2 was published may not sign a snapshot over it; nor may a
    // version skip ahead (a lost race on the versions read).
    assert!(!store.tuf_publish(&[meta("snapshot", 1), meta("timestamp", 1)], &[], Some(1), NOW).await.unwrap());
    assert!(!store.tuf_publish(&[meta("snapshot", 2)], &[], Some(2), NOW).await.unwrap(), "version 1 comes first");
    assert!(store.tuf_publish(&[meta("snapshot", 1), meta("timestamp", 1)], &[], Some(2), NOW).await.unwrap());
    assert_eq!(store.tuf_latest("targets").await.unwrap().unwrap().body, b"targets-2");
    assert_eq!(store.tuf_version("targets", 1).await.unwrap().unwrap().body, b"targets-1");
    assert_eq!(store.release("plug-1-2.0.img").await.unwrap().unwrap(), release);
    assert_eq!(store.release_by_image("plug-1", &"ab".repeat(32)).await.unwrap().unwrap().version, "2.0");
    assert!(store.release_by_image("cam-1", &"ab".repeat(32)).await.unwrap().is_none(), "per model");
    assert_eq!(store.releases(Some("plug-1")).await.unwrap().len(), 1);
    assert_eq!(store.releases(Some("cam-1")).await.unwrap().len(), 0);

    // A file in chunks of 4 bytes comes back as it went in; a second insert changes nothing.
    let content = b"0123456789".to_vec();
    let sha = "cd".repeat(32);
    assert!(store.insert_update_file(&sha, 10, &mut content.as_slice(), 4, NOW).await.unwrap());
    assert!(!store.insert_update_file(&sha, 10, &mut b"xxxxxxxxxx".as_slice(), 4, NOW).await.unwrap());
    assert_eq!(store.update_file(&sha).await.unwrap(), Some((10, 3)));
    let mut back = Vec::new();
    for idx in 0..3 {
        back.extend(store.update_file_chunk(&sha, idx).await.unwrap().unwrap());
    }
    assert_eq!(back, content);

    let support = ModelSupportRow {
        model: "plug-1".into(),
        support_until: NOW + 900 * DAY,
        policy: "3 years".into(),
        updated_at: NOW,
    };
    store.set_model_support(&support).await.unwrap();
    store.set_model_support(&ModelSupportRow { support_until: NOW + 1000 * DAY, ..support.clone() }).await.unwrap();
    assert_eq!(store.model_support(Some("plug-1")).await.unwrap()[0].support_until, NOW + 1000 * DAY);

    for id in ["dev-a", "dev-b", "dev-c"] {
        enrolled(store, id).await;
    }
    assert_eq!(store.rollout_candidates("plug-1").await.unwrap().len(), 3);
    let ids: Vec<DeviceId> = ["dev-a", "dev-b", "dev-c"].iter().map(|d| DeviceId::parse(d).unwrap()).collect();
    let rollout = RolloutRow {
        id: "r1".into(),
        release: release.target_name.clone(),
        model: "plug-1".into(),
        state: "running".into(),
        waves: 2,
        wave: -1,
        success_percent: 100,
        pause_failure_percent: 50,
        accepted_failures: 0,
        starts_at: NOW,
        window_start: Some(60),
        window_end: None,
        reason: String::new(),
        created_by: "acct".into(),
        created_at: NOW,
        updated_at: NOW,
    };
    let waves = [(ids[0].clone(), 0), (ids[1].clone(), 1), (ids[2].clone(), 1)];
    assert!(store.create_rollout(&rollout, &waves).await.unwrap());
    assert!(
        !store.create_rollout(&RolloutRow { id: "r2".into(), ..rollout.clone() }, &waves).await.unwrap(),
        "one active rollout per model"
    );
    assert!(store.rollout("r2").await.unwrap().is_none());
    assert_eq!(store.rollout("r1").await.unwrap().unwrap(), rollout);
    assert!(store.device_goal(&ids[0], NOW).await.unwrap().is_none(), "no wave open yet");
    assert_eq!(store.open_wave("r1", -1, NOW).await.unwrap(), vec![ids[0].clone()]);
    assert!(store.open_wave("r1", -1, NOW).await.unwrap().is_empty(), "a wave opens once (another node came first)");
    assert_eq!(store.device_goal(&ids[0], NOW).await.unwrap().unwrap().release, release.target_name);
    assert!(store.device_goal(&ids[1], NOW).await.unwrap().is_none(), "wave 1 is not open");
    assert!(!store.record_update_step("r1", &ids[1], "failed", "early", NOW).await.unwrap(), "no step before its wave");
    assert!(store.record_update_step("r1", &ids[0], "downloading", "1 of 5", NOW).await.unwrap());
    assert!(
        !store.record_update_step("r1", &ids[0], "downloading", "1 of 5", NOW).await.unwrap(),
        "the same step twice"
    );
    assert!(store.record_update_step("r1", &ids[0], "rolled_back", "health", NOW).await.unwrap());
    assert!(!store.record_update_step("r1", &ids[0], "succeeded", "late", NOW).await.unwrap(), "final stays final");
    assert!(store.device_goal(&ids[0], NOW).await.unwrap().is_none(), "finished");
    let counts = store.rollout_counts("r1").await.unwrap();
    assert!(counts.iter().any(|c| c.wave == 0 && c.state == "rolled_back" && c.count == 1), "{counts:?}");
    assert!(counts.iter().any(|c| c.wave == 1 && c.state == "waiting" && c.count == 2), "{counts:?}");
    assert!(store.set_rollout_state("r1", &["running"], "paused", "health gate", NOW).await.unwrap());
    assert!(!store.set_rollout_state("r1", &["running"], "paused", "again", NOW).await.unwrap());
    assert!(store.open_wave("r1", 0, NOW).await.unwrap().is_empty(), "a paused rollout opens nothing");
    assert!(store.resume_rollout("r1", NOW).await.unwrap());
    assert_eq!(store.rollout("r1").await.unwrap().unwrap().accepted_failures, 1, "resuming accepts the failure");
    assert_eq!(store.open_wave("r1", 0, NOW).await.unwrap().len(), 2);
    // Postponing: while waiting for the device to start, up to the limit.
    assert!(store.postpone_update("r1", &ids[1], NOW + DAY, 1, NOW).await.unwrap());
    assert!(!store.postpone_update("r1", &ids[1], NOW + 2 * DAY, 1, NOW).await.unwrap(), "limit");
    assert!(store.device_goal(&ids[1], NOW).await.unwrap().is_none(), "postponed");
    let pending = store.pending_update(&ids[1]).await.unwrap().expect("a postponed update is still pending");
    assert_eq!((pending.rollout_id.as_str(), pending.postpones, pending.postponed_until), ("r1", 1, Some(NOW + DAY)));
    assert!(store.pending_update(&ids[0]).await.unwrap().is_none(), "finished: nothing pending");
    assert!(store.device_goal(&ids[1], NOW + DAY).await.unwrap().is_some(), "until then");
    assert!(store.record_update_step("r1", &ids[2], "installing", "", NOW).await.unwrap());
    assert!(!store.postpone_update("r1", &ids[2], NOW + DAY, 3, NOW).await.unwrap(), "installing already");
    assert_eq!(store.rollout_devices("r1").await.unwrap().len(), 3);
    assert!(store.set_rollout_state("r1", &["running", "paused"], "aborted", "by hand", NOW).await.unwrap());
    assert!(store.device_goal(&ids[1], NOW + DAY).await.unwrap().is_none(), "aborted");
    assert!(
        store.create_rollout(&RolloutRow { id: "r2".into(), ..rollout.clone() }, &waves).await.unwrap(),
        "after the abort"
    );
    assert_eq!(store.rollouts(Some(&["running"])).await.unwrap().len(), 1);

    assert!(store.pending_update(&ids[1]).await.unwrap().is_none(), "aborted: nothing pending");

    let before = store.device_software(&ids[0]).await.unwrap().expect("the device exists");
    assert_eq!((before.image_sha256, before.checked_in_at), (None, None), "no check-in yet");
    store.record_check_in(&ids[0], Some(&"ab".repeat(32)), Some("2.0"), "rev-a", 3, NOW).await.unwrap();
    let after = store.device_software(&ids[0]).await.unwrap().unwrap();
    assert_eq!(after.image_version.as_deref(), Some("2.0"));
    assert_eq!(
        (after.hardware.as_deref(), after.security_floor, after.checked_in_at),
        (Some("rev-a"), Some(3), Some(NOW))
    );
    assert!(store.device_software(&DeviceId::parse("dev-none").unwrap()).await.unwrap().is_none());
}

/// Vulnerability reports: a challenge is good for one report, counts by source and time, states move only from
/// where they may (compare and set), the first move out of `new` acknowledges, messages and what they touch.
async fn reports(store: &Store) {
    use hearth_hub::store::{ReportMessageRow, ReportRow};
    let report = |id: &str, challenge: &str, source: &str, at: i64| ReportRow {
        id: id.into(),
        state: "new".into(),
        summary: "a crash".into(),
        details: "<script>alert(1)</script>\nsteps".into(),
        affected: "plug-1 1.0".into(),
        reporter_name: String::new(),
        reporter_email: "r@example.org".into(),
        encrypted: false,
        token_hash: "ab".repeat(32),
        challenge: challenge.into(),
        source: Some(source.into()),
        created_at: at,
        acknowledged_at: None,
        status_at: at,
        exploited_at: None,
        fixed_at: None,
        early_warning_filed_at: None,
        notification_filed_at: None,
        final_report_filed_at: None,
        updated_at: at,
    };
    use hearth_hub::store::{MessageInsert, ReportInsert};
    let first = report("VR-1", "c1", "192.0.2.1", NOW);
    let within = |r: ReportRow, per_source: i64, in_all: i64| async move {
        store.insert_report_within(&r, NOW - DAY, per_source, in_all).await.unwrap()
    };
    assert_eq!(within(first.clone(), 2, 10).await, ReportInsert::Stored);
    assert_eq!(within(report("VR-2", "c1", "192.0.2.9", NOW), 2, 10).await, ReportInsert::ChallengeUsed, "once");
    assert!(store.report("VR-2").await.unwrap().is_none());
    assert_eq!(within(report("VR-3", "c3", "192.0.2.1", NOW + 10), 2, 10).await, ReportInsert::Stored);
    assert_eq!(within(report("VR-4", "c4", "192.0.2.1", NOW + 20), 2, 10).await, ReportInsert::SourceLimit);
    assert_eq!(within(report("VR-5", "c5", "192.0.2.5", NOW + 20), 2, 2).await, ReportInsert::HubLimit);
    assert!(store.report("VR-4").await.unwrap().is_none() && store.report("VR-5").await.unwrap().is_none());
    assert_eq!(store.report("VR-1").await.unwrap().unwrap(), first, "stored as sent");
    let listed: Vec<String> = store.reports(None, 10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, ["VR-3", "VR-1"], "newest first");
    assert!(!store.set_report_state("VR-1", &["triaging"], "fixing", NOW + 1).await.unwrap(), "not from new");
    assert!(store.set_report_state("VR-1", &["new"], "acknowledged", NOW + 2).await.unwrap());
    let acked = store.report("VR-1").await.unwrap().unwrap();
    assert_eq!(
        (acked.state.as_str(), acked.acknowledged_at, acked.status_at),
        ("acknowledged", Some(NOW + 2), NOW + 2)
    );
    assert!(store.set_report_state("VR-1", &["acknowledged"], "fixing", NOW + 3).await.unwrap());
    assert_eq!(store.report("VR-1").await.unwrap().unwrap().acknowledged_at, Some(NOW + 2), "acknowledged once");
    assert_eq!(store.reports(Some("fixing"), 10).await.unwrap().len(), 1);
    assert!(!store.file_cra_stage("VR-1", "early_warning", NOW + 4).await.unwrap(), "not exploited: no CRA stage");
    assert!(store.mark_report_exploited("VR-1", NOW + 4).await.unwrap());
    assert!(store.file_cra_stage("VR-1", "early_warning", NOW + 5).await.unwrap());
    assert!(!store.file_cra_stage("VR-1", "early_warning", NOW + 6).await.unwrap(), "the first record counts");
    assert!(!store.file_cra_stage("VR-1", "final_report", NOW + 6).await.unwrap(), "no final report before a fix");
    assert!(!store.file_cra_stage("VR-1", "bogus", NOW + 6).await.unwrap());
    assert!(!store.mark_report_exploited("VR-1", NOW + 5).await.unwrap(), "the first mark counts");
    assert_eq!(store.report("VR-1").await.unwrap().unwrap().exploited_at, Some(NOW + 4));
    let message = |id: &str, author: &str, at: i64| ReportMessageRow {
        id: id.into(),
        report_id: "VR-1".into(),
        at,
        author: author.into(),
        account_id: if author == "operator" { "acct".into() } else { String::new() },
        body: format!("{author} says hello"),
    };
    assert_eq!(store.add_report_message(&message("m1", "reporter", NOW + 6), 1).await.unwrap(), MessageInsert::Stored);
    assert_eq!(
        store.add_report_message(&message("m1b", "reporter", NOW + 6), 1).await.unwrap(),
        MessageInsert::Cap,
        "the reporter's cap"
    );
    assert_eq!(store.report("VR-1").await.unwrap().unwrap().status_at, NOW + 3, "a reporter's message is no status");
    assert_eq!(store.add_report_message(&message("m2", "operator", NOW + 7), 1).await.unwrap(), MessageInsert::Stored);
    assert_eq!(store.report("VR-1").await.unwrap().unwrap().status_at, NOW + 7, "an operator's is");
    let orphan = ReportMessageRow { report_id: "VR-none".into(), ..message("m3", "operator", NOW) };
    assert_eq!(store.add_report_message(&orphan, 1).await.unwrap(), MessageInsert::NoReport);
    assert!(store.set_report_state("VR-1", &["fixing"], "fixed", NOW + 8).await.unwrap());
    assert!(store.set_report_state("VR-1", &["fixed"], "fixing", NOW + 8).await.unwrap());
    assert!(store.set_report_state("VR-1", &["fixing"], "fixed", NOW + 8 + DAY).await.unwrap());
    let fixed = store.report("VR-1").await.unwrap().unwrap();
    assert_eq!((fixed.fixed_at, fixed.early_warning_filed_at), (Some(NOW + 8), Some(NOW + 5)), "the first fix counts");
    assert!(store.file_cra_stage("VR-1", "final_report", NOW + 9).await.unwrap(), "after the fix");
    assert!(store.set_report_state("VR-1", &["fixed"], "rejected", NOW + 8).await.unwrap());
    let late = ReportMessageRow { report_id: "VR-3".into(), ..message("m4", "reporter", NOW + 9) };
    assert_eq!(store.add_report_message(&late, 5).await.unwrap(), MessageInsert::Stored, "VR-3 is open");
    assert_eq!(
        store.add_report_message(&message("m5", "reporter", NOW + 9), 5).await.unwrap(),
        MessageInsert::Closed,
        "a closed report takes no more from the reporter"
    );
    let messages = store.report_messages("VR-1").await.unwrap();
    assert_eq!(messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
}

async fn keys(store: &Store) {
    store.insert_key("ca", "pem-1", b"sealed-1", NOW).await.unwrap();
    store.insert_key("ca", "pem-2", b"sealed-2", NOW).await.unwrap();
    assert_eq!(store.key("ca").await.unwrap(), Some(("pem-1".into(), b"sealed-1".to_vec())), "the first wins");
    store.replace_key("ca", "pem-3", b"sealed-3", NOW).await.unwrap();
    assert_eq!(store.key("ca").await.unwrap(), Some(("pem-3".into(), b"sealed-3".to_vec())));
    assert_eq!(store.key("none").await.unwrap(), None);
}

/// Two writers (on PostgreSQL, two hub nodes) commit overlapping batches at once: every message is stored
/// exactly once, and each writer's answer is Stored or Duplicate, never a false conflict.
async fn concurrent_writers_store_each_message_once(store: &Store) {
    for d in ["dev-k1", "dev-k2", "dev-k3"] {
        enrolled(store, d).await;
    }
    let batch = |offset: i64| -> Vec<UplinkRecord> {
        let mut v = Vec::new();
        for s in 1..=200 {
            for d in ["dev-k3", "dev-k1", "dev-k2"] {
                v.push(up(d, (s + offset) % 200 + 1, &format!(r#"{{"s":{}}}"#, (s + offset) % 200 + 1)));
            }
        }
        v
    };
    let (a, b) = (store.clone(), store.clone());
    let (ba, bb) = (batch(0), batch(77));
    let (ra, rb) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), a.commit_uplinks(&ba, &[])),
        tokio::time::timeout(Duration::from_secs(30), b.commit_uplinks(&bb, &[])),
    );
    let (ra, rb) = (ra.expect("no deadlock").expect("a"), rb.expect("no deadlock").expect("b"));
    let stored = ra.iter().chain(&rb).filter(|w| **w == Written::Stored).count();
    assert_eq!(stored, 600, "each (device, seq) stored by exactly one writer");
    assert!(ra.iter().chain(&rb).all(|w| matches!(w, Written::Stored | Written::Duplicate)));
    for d in ["dev-k1", "dev-k2", "dev-k3"] {
        assert_eq!(store.uplink_count(d).await.unwrap(), 200);
    }
}

/// `hearth store migrate` keeps sessions the SQLite hub left open when it stopped (a crash): they count as closed
/// at the migration and last their expiry from then, as a restarted node would treat them.
#[tokio::test]
async fn migration_keeps_sessions_left_open_by_a_crash() {
    let Some(pg) = postgres("migration_keeps_sessions").await else { return };
    let source = sqlite().await;
    enrolled(&source.store, "dev-m").await;
    let open = SessionOpen { clean: false, expiry_ms: 4_294_967_295_000, node: "old", now: NOW };
    let first = source.store.open_session("dev-m", &open).await.unwrap();
    source.store.set_session_subscribed("dev-m", true, first.epoch).await.unwrap();
    // The SQLite hub stops here without closing the connection.
    source.store.copy_into(&pg.store, NOW + 1_000, |_, _| {}).await.unwrap();
    let later = SessionOpen { clean: false, expiry_ms: 0, node: "new", now: NOW + 86_400_000 };
    let resumed = pg.store.open_session("dev-m", &later).await.unwrap();
    assert_eq!((resumed.present, resumed.subscribed), (true, true), "the 3.1.1 session survives the migration");
}
