//! People: owner setup with the one-time token, sign-in sessions with CSRF, throttling without user enumeration,
//! password rules and changes, roles, and the audit log — through the HTTPS API, every answer checked against the
//! OpenAPI document.

use std::time::Duration;

use axum::http::HeaderMap;
use hearth_hub::clock::Clock;
use hearth_hub::store::Role;
use hearth_test_support::{OWNER_EMAIL, OWNER_PASSWORD, TestHub};
use serde_json::{Value, json};

/// A signed-in browser: the session cookie and its CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn post(hub: &TestHub, path: &str, body: Value, who: Option<&Browser>, csrf: bool) -> (u16, HeaderMap, Value) {
    let mut request = hub.client.post(format!("{}{path}", hub.base())).json(&body);
    if let Some(b) = who {
        request = request.header("cookie", format!("__Host-hearth_session={}", b.cookie));
        if csrf {
            request = request.header("x-csrf-token", &b.csrf);
        }
    }
    let (status, headers, body) = hub.send(request).await.expect("send");
    (status, headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get(hub: &TestHub, path: &str, who: &Browser) -> (u16, Value) {
    let request = hub
        .client
        .get(format!("{}{path}", hub.base()))
        .header("cookie", format!("__Host-hearth_session={}", who.cookie));
    let (status, _, body) = hub.send(request).await.expect("send");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn sign_in(hub: &TestHub, email: &str, password: &str) -> (u16, HeaderMap, Value) {
    post(hub, "/api/v1/sessions", json!({ "email": email, "password": password }), None, false).await
}

async fn signed_in(hub: &TestHub, email: &str, password: &str) -> Browser {
    let (status, headers, body) = sign_in(hub, email, password).await;
    assert_eq!(status, 201, "{body}");
    let set_cookie = headers.get("set-cookie").and_then(|v| v.to_str().ok()).expect("set-cookie").to_owned();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie
        .strip_prefix("__Host-hearth_session=")
        .and_then(|v| v.split(';').next())
        .expect("a __Host- session cookie")
        .to_owned();
    Browser { cookie, csrf: body["csrf_token"].as_str().expect("csrf token").to_owned() }
}

#[tokio::test]
async fn the_setup_token_makes_one_owner_with_a_strong_password_and_nothing_signs_in_before() {
    let (hub, setup) = TestHub::start_bare(Clock::system()).await.expect("hub");
    // Nothing signs in before setup: there is no account at all.
    assert_eq!(sign_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await.0, 401);
    let attempt =
        |token: &str, email: &str, pass: &str| json!({ "setup_token": token, "email": email, "password": pass });
    // Refused with the rule that was broken, and nothing made.
    for (pass, code, says) in [
        ("short", "weak_password", "at least 12"),
        ("password1234", "weak_password", "most-used"),
        ("owner-example-2026", "weak_password", "email"),
        ("hearth-kitchen-2026", "weak_password", "product"),
    ] {
        let (status, _, body) = post(&hub, "/api/v1/setup", attempt(&setup, OWNER_EMAIL, pass), None, false).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{pass}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{pass}: {body}");
    }
    let (status, _, body) =
        post(&hub, "/api/v1/setup", attempt(&setup, "not-an-email", OWNER_PASSWORD), None, false).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_email")));
    let (status, _, _) =
        post(&hub, "/api/v1/setup", attempt("hst_wrong", OWNER_EMAIL, OWNER_PASSWORD), None, false).await;
    assert_eq!(status, 401);
    assert!(!hub.hub.state.store.owner_exists().await.expect("store"), "no refusal made an account");
    // The right token, a good password: the owner exists, with an API token.
    let (status, _, body) =
        post(&hub, "/api/v1/setup", attempt(&setup, " Owner@Example.org ", OWNER_PASSWORD), None, false).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["account"]["email"].as_str(), body["account"]["role"].as_str()),
        (Some(OWNER_EMAIL), Some("owner"))
    );
    let token = body["token"].as_str().expect("token").to_owned();
    let (status, _, _) =
        hub.send(hub.client.get(format!("{}/api/v1/devices", hub.base())).bearer_auth(&token)).await.expect("send");
    assert_eq!(status, 200, "the owner's API token works");
    // The setup token works once.
    let again = attempt(&setup, "second@example.org", "another strong passphrase here");
    assert_eq!(post(&hub, "/api/v1/setup", again, None, false).await.0, 401);
    // The owner signs in with the password, and the session knows who it is.
    let owner = signed_in(&hub, "OWNER@example.org", OWNER_PASSWORD).await;
    let (status, me) = get(&hub, "/api/v1/me", &owner).await;
    assert_eq!((status, me["role"].as_str(), me["session"].as_bool()), (200, Some("owner"), Some(true)), "{me}");
    let (_, log) = get(&hub, "/api/v1/audit-log", &owner).await;
    let actions: Vec<&str> = log.as_array().expect("log").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"owner_setup") && actions.contains(&"sign_in"), "{actions:?}");
}

#[tokio::test]
async fn sign_in_is_throttled_per_account_and_the_right_password_is_refused_while_locked() {
    let clock = Clock::manual(Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    for i in 0..4 {
        assert_eq!(sign_in(&hub, OWNER_EMAIL, "wrong password guess").await.0, 401, "failure {i}");
    }
    let (status, headers, body) = sign_in(&hub, OWNER_EMAIL, "wrong password guess").await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("throttled")), "the fifth failure locks");
    let retry: u64 =
        headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).expect("retry-after");
    assert!((1..=900).contains(&retry), "{retry}");
    assert_eq!(sign_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await.0, 429, "locked: the right password too");
    clock.advance(Duration::from_secs(16 * 60));
    assert_eq!(sign_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await.0, 201, "the lock ends");
    let (_, log) = hub.get("/api/v1/audit-log?limit=50").await.expect("audit");
    let refused = log.as_array().expect("log").iter().filter(|e| e["action"] == "sign_in_refused").count();
    assert_eq!(refused, 4, "the fifth attempt was refused before any password work");
    assert!(hub.has_events("sign_in_throttled", 2).await);
}

#[tokio::test]
async fn nobody_elsewhere_can_lock_the_owner_out_and_parallel_guesses_are_counted_first() {
    let hub = TestHub::start().await.expect("hub");
    let from =
        |last: u8| hearth_test_support::client_from(&hub.hub.server_ca_path, [127, 0, 0, last].into()).expect("client");
    let attacker = from(66);
    let try_with = |client: &hearth_test_support::reqwest::Client, password: &str| {
        let request = client
            .post(format!("{}/api/v1/sessions", hub.base()))
            .json(&json!({ "email": OWNER_EMAIL, "password": password }));
        async { hub.send(request).await.expect("send").0 }
    };
    // Ten guesses at once from one source: counted before any password work, so at most four are judged.
    let guesses = (0..10).map(|_| try_with(&attacker, "wrong password guess"));
    let statuses = futures_util::future::join_all(guesses).await;
    let judged = statuses.iter().filter(|s| **s == 401).count();
    assert!(judged <= 4, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10 - judged, "{statuses:?}");
    assert_eq!(try_with(&attacker, OWNER_PASSWORD).await, 429, "locked for the attacker's source, right password too");
    // The owner, elsewhere, is not locked out.
    assert_eq!(try_with(&from(77), OWNER_PASSWORD).await, 201);
    // Guessing the current password through a password change is throttled the same way.
    let owner = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let change = json!({ "current_password": "not it at all", "new_password": "a brand new passphrase" });
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(post(&hub, "/api/v1/me/password", change.clone(), Some(&owner), true).await.0);
    }
    assert_eq!(statuses, vec![403, 403, 403, 403, 429, 429]);
}

/// A refused sign-in from `client`: how long it took, the status, the body.
async fn timed_sign_in(
    hub: &TestHub,
    client: &hearth_test_support::reqwest::Client,
    email: &str,
) -> (Duration, u16, Value) {
    let request = client
        .post(format!("{}/api/v1/sessions", hub.base()))
        .json(&json!({ "email": email, "password": "wrong password here" }));
    let started = std::time::Instant::now();
    let (status, _, body) = hub.send(request).await.expect("send");
    (started.elapsed(), status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn unknown_and_known_emails_get_the_same_answer_in_about_the_same_time() {
    let hub = TestHub::start().await.expect("hub");
    for i in 0..4 {
        hub.add_account(
            &format!("k{i}"),
            &format!("known{i}@example.org"),
            Role::Consumer,
            "a strong known passphrase",
        )
        .await
        .expect("account");
    }
    // Interleaved; 4 rounds from 4 source addresses (16 failures each, below a source's lock of 20), 4 attempts
    // per known account (below its lock of 5): 16 samples of each.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for round in 0..4u8 {
        let client =
            hearth_test_support::client_from(&hub.hub.server_ca_path, [127, 0, 0, 10 + round].into()).expect("client");
        for i in 0..4 {
            let (took, status, body) = timed_sign_in(&hub, &client, &format!("known{i}@example.org")).await;
            known.push(took);
            assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_credentials")), "{body}");
            let (took, status, other) = timed_sign_in(&hub, &client, &format!("nobody{round}{i}@example.org")).await;
            unknown.push(took);
            assert_eq!((status, &other), (401, &body), "the same answer");
        }
    }
    // The mean without the slowest eighth (a loaded 2-core machine stalls a request now and then).
    let mean = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        let kept = &v[..v.len() - v.len() / 8];
        kept.iter().sum::<Duration>() / kept.len() as u32
    };
    let (k, u) = (mean(&mut known), mean(&mut unknown));
    let gap = k.abs_diff(u);
    eprintln!("sign-in refusals: known {k:?}, unknown {u:?} on average ({} each)", known.len());
    assert!(gap < Duration::from_millis(10), "known {k:?} vs unknown {u:?}: an unknown email must cost the same work");
}

#[tokio::test]
async fn a_session_cookie_needs_its_csrf_token_on_unsafe_requests() {
    let hub = TestHub::start().await.expect("hub");
    let owner = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    assert_eq!(get(&hub, "/api/v1/devices", &owner).await.0, 200, "safe methods need no CSRF token");
    let body = json!({ "label": "from-browser" });
    let (status, _, answer) = post(&hub, "/api/v1/tokens", body.clone(), Some(&owner), false).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("csrf_refused")), "without the token");
    let wrong = Browser { cookie: owner.cookie.clone(), csrf: "00".repeat(32) };
    assert_eq!(post(&hub, "/api/v1/tokens", body.clone(), Some(&wrong), true).await.0, 403, "with a wrong token");
    let request = hub
        .client
        .post(format!("{}/api/v1/tokens", hub.base()))
        .header("cookie", format!("__Host-hearth_session={}", owner.cookie))
        .header("x-csrf-token", &owner.csrf)
        .header("sec-fetch-site", "cross-site")
        .json(&body);
    assert_eq!(hub.send(request).await.expect("send").0, 403, "from another site, even with the token");
    assert_eq!(post(&hub, "/api/v1/tokens", body, Some(&owner), true).await.0, 201, "with it");
    let (_, log) = hub.get("/api/v1/audit-log").await.expect("audit");
    let created = log.as_array().expect("log").iter().find(|e| e["action"] == "api_token_created").cloned();
    assert!(created.is_some_and(|e| e["detail"].as_str().is_some_and(|d| d.starts_with("by session"))), "audited");
    assert!(hub.has_events("csrf_refused", 3).await);
}

#[tokio::test]
async fn sessions_end_one_by_one_everywhere_and_with_a_password_change() {
    let hub = TestHub::start().await.expect("hub");
    let laptop = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let phone = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let (_, list) = get(&hub, "/api/v1/me/sessions", &laptop).await;
    let list = list.as_array().expect("sessions").clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    let phone_id =
        list.iter().find(|s| s["current"] == false).and_then(|s| s["id"].as_str()).expect("other").to_owned();
    let (status, _, _) =
        post(&hub, &format!("/api/v1/me/sessions/{phone_id}/revoke"), json!({}), Some(&laptop), true).await;
    assert_eq!(status, 204);
    assert_eq!(get(&hub, "/api/v1/me", &phone).await.0, 401, "the phone's session ended");
    assert_eq!(get(&hub, "/api/v1/me", &laptop).await.0, 200);
    // Sign out here clears the cookie.
    let (status, headers, _) = post(&hub, "/api/v1/me/sign-out", json!({}), Some(&laptop), true).await;
    assert_eq!(status, 204);
    assert!(headers.get("set-cookie").and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(get(&hub, "/api/v1/me", &laptop).await.0, 401);
    // Everywhere.
    let a = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let b = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let (status, _, ended) = post(&hub, "/api/v1/me/sign-out-everywhere", json!({}), Some(&a), true).await;
    assert_eq!((status, ended["ended"].as_u64()), (200, Some(2)));
    assert_eq!(get(&hub, "/api/v1/me", &b).await.0, 401);
    // A password change: the current one is needed, the new one must be strong; then every session ends.
    let c = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let change = |current: &str, new: &str| json!({ "current_password": current, "new_password": new });
    let (status, _, _) =
        post(&hub, "/api/v1/me/password", change("wrong one entirely", "a brand new passphrase"), Some(&c), true).await;
    assert_eq!(status, 403);
    let (status, _, body) =
        post(&hub, "/api/v1/me/password", change(OWNER_PASSWORD, "password12345"), Some(&c), true).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("weak_password")));
    let (status, _, _) =
        post(&hub, "/api/v1/me/password", change(OWNER_PASSWORD, "a brand new passphrase"), Some(&c), true).await;
    assert_eq!(status, 204);
    assert_eq!(get(&hub, "/api/v1/me", &c).await.0, 401, "a new password ends sessions");
    assert_eq!(sign_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await.0, 401, "the old password is gone");
    signed_in(&hub, OWNER_EMAIL, "a brand new passphrase").await;
}

#[tokio::test]
async fn only_the_owner_and_admins_run_the_fleet() {
    let hub = TestHub::start().await.expect("hub");
    hub.add_account("c1", "consumer@example.org", Role::Consumer, "a consumer passphrase").await.expect("account");
    hub.add_account("s1", "support@example.org", Role::Support, "a support passphrase here").await.expect("account");
    hub.add_account("ad", "admin@example.org", Role::Admin, "an admin passphrase here").await.expect("account");
    hub.manufacture("plug-1", 2).await.expect("manufacture");
    for (email, pass, fleet, listed) in [
        ("consumer@example.org", "a consumer passphrase", 403, Some(0)),
        ("support@example.org", "a support passphrase here", 403, Some(0)),
        ("admin@example.org", "an admin passphrase here", 200, Some(2)),
    ] {
        let who = signed_in(&hub, email, pass).await;
        let (status, list) = get(&hub, "/api/v1/devices", &who).await;
        let count = list["devices"].as_array().map(Vec::len);
        assert_eq!((status == 200).then_some(count).flatten(), listed, "{email}: the devices it may see");
        assert_eq!(get(&hub, "/api/v1/security-events", &who).await.0, fleet, "{email}: security events");
        assert_eq!(get(&hub, "/api/v1/audit-log", &who).await.0, fleet, "{email}: audit log");
        assert_eq!(get(&hub, "/api/v1/me", &who).await.0, 200, "{email}: who am I");
    }
}

#[tokio::test]
async fn a_consumer_claims_a_device_by_its_code_once_and_only_its_owner_sees_it() {
    let hub = TestHub::start().await.expect("hub");
    hub.add_account("alice", "alice@example.org", Role::Consumer, "alice's own passphrase").await.expect("account");
    hub.add_account("bob", "bob@example.org", Role::Consumer, "bob's very own passphrase").await.expect("account");
    let (status, made) = hub.post("/api/v1/devices", json!({ "model": "plug-1", "count": 2 })).await.expect("made");
    assert_eq!(status, 201);
    let device = made["devices"][0]["device_id"].as_str().expect("id").to_owned();
    let code = made["devices"][0]["claim_code"].as_str().expect("code").to_owned();
    let alice = signed_in(&hub, "alice@example.org", "alice's own passphrase").await;
    let bob = signed_in(&hub, "bob@example.org", "bob's very own passphrase").await;
    // Typed as people type it from a label: lower case, in groups.
    let typed: String = code
        .to_lowercase()
        .chars()
        .collect::<Vec<_>>()
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-");
    let (status, _, body) = post(&hub, "/api/v1/claims", json!({ "claim_code": typed }), Some(&alice), true).await;
    assert_eq!((status, body["device_id"].as_str()), (201, Some(device.as_str())), "{body}");
    // Once: Bob gets the same answer as for a code that never existed.
    let (status, _, used) = post(&hub, "/api/v1/claims", json!({ "claim_code": code }), Some(&bob), true).await;
    let (_, _, unknown) = post(&hub, "/api/v1/claims", json!({ "claim_code": "A".repeat(20) }), Some(&bob), true).await;
    assert_eq!((status, &used), (404, &unknown));
    // Alice sees it, with its telemetry and commands; Bob sees nothing of it (as if it did not exist).
    let (_, list) = get(&hub, "/api/v1/devices", &alice).await;
    assert_eq!(
        list["devices"].as_array().map(|d| d.iter().filter_map(|x| x["id"].as_str()).collect::<Vec<_>>()),
        Some(vec![device.as_str()])
    );
    for path in [format!("/api/v1/devices/{device}"), format!("/api/v1/devices/{device}/telemetry")] {
        assert_eq!(get(&hub, &path, &alice).await.0, 200, "{path}");
        let (status, body) = get(&hub, &path, &bob).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{path}");
    }
    let command = json!({ "name": "ping" });
    assert_eq!(
        post(&hub, &format!("/api/v1/devices/{device}/commands"), command.clone(), Some(&bob), true).await.0,
        404
    );
    assert_eq!(
        post(&hub, &format!("/api/v1/devices/{device}/commands"), command, Some(&alice), true).await.0,
        409,
        "not enrolled yet"
    );
    assert_eq!(get(&hub, "/api/v1/devices", &bob).await.1["devices"].as_array().map(Vec::len), Some(0));
    // Consumers cannot revoke, and operators do not claim.
    assert_eq!(post(&hub, &format!("/api/v1/devices/{device}/revoke"), json!({}), Some(&alice), true).await.0, 403);
    let owner = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let other = made["devices"][1]["claim_code"].as_str().expect("code");
    assert_eq!(post(&hub, "/api/v1/claims", json!({ "claim_code": other }), Some(&owner), true).await.0, 403);
    // Guessing codes is throttled: Bob has used 2 of his 10 attempts.
    let mut statuses = Vec::new();
    for i in 0..9 {
        let guess = format!("{:B>20}", i);
        statuses.push(post(&hub, "/api/v1/claims", json!({ "claim_code": guess }), Some(&bob), true).await.0);
    }
    assert_eq!(statuses, [vec![404; 7], vec![429; 2]].concat());
    let (_, log) = hub.get("/api/v1/audit-log").await.expect("audit");
    assert!(
        log.as_array().expect("log").iter().any(|e| e["action"] == "device_claimed" && e["target"] == device.as_str())
    );
}

#[tokio::test]
async fn support_sees_a_consumers_devices_only_while_the_consumer_grants_it_and_never_commands_them() {
    let clock = Clock::manual(Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    hub.add_account("carol", "carol@example.org", Role::Consumer, "carol's own passphrase").await.expect("account");
    hub.add_account("dave", "dave@example.org", Role::Consumer, "dave's very own passphrase").await.expect("account");
    hub.add_account("sam", "sam@example.org", Role::Support, "sam's support passphrase").await.expect("account");
    let (_, made) = hub.post("/api/v1/devices", json!({ "model": "plug-1", "count": 2 })).await.expect("made");
    let carol = signed_in(&hub, "carol@example.org", "carol's own passphrase").await;
    let dave = signed_in(&hub, "dave@example.org", "dave's very own passphrase").await;
    let code = |i: usize| json!({ "claim_code": made["devices"][i]["claim_code"] });
    assert_eq!(post(&hub, "/api/v1/claims", code(0), Some(&carol), true).await.0, 201);
    assert_eq!(post(&hub, "/api/v1/claims", code(1), Some(&dave), true).await.0, 201);
    let carols = made["devices"][0]["device_id"].as_str().expect("id").to_owned();
    let daves = made["devices"][1]["device_id"].as_str().expect("id").to_owned();
    let sam = signed_in(&hub, "sam@example.org", "sam's support passphrase").await;
    let seen = |list: Value| {
        list["devices"]
            .as_array()
            .map(|d| d.iter().filter_map(|x| x["id"].as_str().map(str::to_owned)).collect::<Vec<_>>())
    };
    assert_eq!(seen(get(&hub, "/api/v1/devices", &sam).await.1), Some(vec![]), "no grant, nothing");
    assert_eq!(get(&hub, &format!("/api/v1/devices/{carols}"), &sam).await.0, 404);
    // Carol grants 1 hour: Sam sees her device, read only, and still nothing of Dave's.
    let (status, _, grant) = post(&hub, "/api/v1/me/support-grant", json!({ "hours": 1 }), Some(&carol), true).await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(seen(get(&hub, "/api/v1/devices", &sam).await.1), Some(vec![carols.clone()]));
    assert_eq!(get(&hub, &format!("/api/v1/devices/{carols}/telemetry"), &sam).await.0, 200);
    assert_eq!(get(&hub, &format!("/api/v1/devices/{daves}"), &sam).await.0, 404);
    let command = json!({ "name": "ping" });
    assert_eq!(post(&hub, &format!("/api/v1/devices/{carols}/commands"), command, Some(&sam), true).await.0, 403);
    assert_eq!(
        post(&hub, "/api/v1/me/support-grant", json!({ "hours": 1 }), Some(&sam), true).await.0,
        403,
        "support grants nothing"
    );
    assert_eq!(post(&hub, "/api/v1/me/support-grant", json!({ "hours": 0 }), Some(&carol), true).await.0, 400);
    // The grant ends by itself ...
    clock.advance(Duration::from_secs(3601));
    let sam = signed_in(&hub, "sam@example.org", "sam's support passphrase").await;
    assert_eq!(get(&hub, &format!("/api/v1/devices/{carols}"), &sam).await.0, 404, "expired");
    // ... or when the consumer ends it.
    let carol = signed_in(&hub, "carol@example.org", "carol's own passphrase").await;
    assert_eq!(post(&hub, "/api/v1/me/support-grant", json!({ "hours": 2 }), Some(&carol), true).await.0, 201);
    assert_eq!(get(&hub, &format!("/api/v1/devices/{carols}"), &sam).await.0, 200);
    assert_eq!(post(&hub, "/api/v1/me/support-grant/revoke", json!({}), Some(&carol), true).await.0, 204);
    assert_eq!(get(&hub, &format!("/api/v1/devices/{carols}"), &sam).await.0, 404, "revoked");
    assert_eq!(post(&hub, "/api/v1/me/support-grant/revoke", json!({}), Some(&carol), true).await.0, 404);
}

/// Unclaim and transfer: the owner releases the device, loses access at once, the device gets a `wipe` command,
/// nobody can claim it until the device confirms; then the next consumer claims it with the same label code and
/// sees only what the device sent since.
#[tokio::test]
async fn a_released_device_is_wiped_and_claimable_again_only_after_it_confirms() {
    use hearth_test_support::mqtt::{V5, telemetry};
    use rmqtt_codec::v5;

    let hub = TestHub::start().await.expect("hub");
    hub.add_account("alice", "alice@example.org", Role::Consumer, "alice's own passphrase").await.expect("account");
    hub.add_account("bob", "bob@example.org", Role::Consumer, "bob's very own passphrase").await.expect("account");
    let (_, made) = hub.post("/api/v1/devices", json!({ "model": "plug-1", "count": 1 })).await.expect("made");
    let made = &made["devices"][0];
    let (id, code) = (made["device_id"].as_str().expect("id"), json!({ "claim_code": made["claim_code"] }));
    let dir = tempfile::tempdir().expect("dir");
    let token = made["bootstrap_token"].as_str().expect("token");
    let dev = hearth_test_support::enrol_at(&hub.client, &hub.base(), id, token, dir.path()).await.expect("enrol");
    let alice = signed_in(&hub, "alice@example.org", "alice's own passphrase").await;
    let bob = signed_in(&hub, "bob@example.org", "bob's very own passphrase").await;
    assert_eq!(post(&hub, "/api/v1/claims", code.clone(), Some(&alice), true).await.0, 201);

    // Alice's reading, while she owns it.
    let mut c = V5::connect(&hub, &dev).await.expect("connect");
    c.publish(&format!("devices/{id}/telemetry"), telemetry(1, 21.5), 1).await.expect("publish");
    assert!(matches!(c.recv().await, Some(v5::Packet::PublishAck(_))));
    let (_, seen) = get(&hub, &format!("/api/v1/devices/{id}/telemetry"), &alice).await;
    assert_eq!(seen["items"].as_array().map(Vec::len), Some(1));

    // Only its owner (or an operator) releases it; the CSRF token is needed like everywhere.
    let unclaim = format!("/api/v1/devices/{id}/unclaim");
    assert_eq!(post(&hub, &unclaim, json!({}), Some(&bob), true).await.0, 404);
    assert_eq!(post(&hub, &unclaim, json!({}), Some(&alice), false).await.0, 403);
    let (status, _, released) = post(&hub, &unclaim, json!({}), Some(&alice), true).await;
    assert_eq!(status, 202, "{released}");
    let wipe = released["wipe_command_id"].as_str().expect("a wipe was sent").to_owned();
    assert_eq!(get(&hub, &format!("/api/v1/devices/{id}"), &alice).await.0, 404, "Alice lost access at once");
    assert_eq!(post(&hub, &unclaim, json!({}), Some(&alice), true).await.0, 404, "released once");
    // Not claimable until the device confirms the wipe.
    assert_eq!(post(&hub, "/api/v1/claims", code.clone(), Some(&bob), true).await.0, 404);
    let (_, device) = hub.get(&format!("/api/v1/devices/{id}")).await.expect("device");
    assert_eq!((device["claimed"].as_bool(), device["wipe_pending"].as_bool()), (Some(false), Some(true)));
    // Nobody sends `wipe` through the commands API: the hub would not know the device was released.
    let (status, _, refused) =
        post(&hub, &format!("/api/v1/devices/{id}/commands"), json!({ "name": "wipe" }), Some(&alice), true).await;
    assert_eq!(status, 404, "{refused}");
    let (status, refused) =
        hub.post(&format!("/api/v1/devices/{id}/commands"), json!({ "name": "wipe" })).await.expect("send");
    assert_eq!((status, refused["error"]["code"].as_str()), (400, Some("invalid_command")), "{refused}");

    // The device gets the wipe; an error answer does not count, only `ok` does.
    c.subscribe(&[format!("devices/{id}/commands")], 2).await.expect("subscribe");
    let command = loop {
        match c.recv().await {
            Some(v5::Packet::Publish(p)) => break serde_json::from_slice::<Value>(&p.payload).expect("json"),
            Some(_) => continue,
            None => panic!("no wipe command arrived"),
        }
    };
    assert_eq!((command["name"].as_str(), command["id"].as_str()), (Some("wipe"), Some(wipe.as_str())));
    let ack = json!({ "v": 1, "id": wipe, "status": "ok", "detail": "erased" }).to_string();
    c.publish(&format!("devices/{id}/commands/ack"), ack, 3).await.expect("ack");
    let confirmed = hearth_test_support::eventually(Duration::from_secs(5), || async {
        let (_, d) = hub.get(&format!("/api/v1/devices/{id}")).await.ok()?;
        (d["wipe_pending"] == false).then_some(d)
    })
    .await
    .expect("the hub records the confirmation");
    assert!(confirmed["wiped_at_ms"].as_i64().is_some());

    // Bob claims it with the same label code and sees nothing of Alice's.
    assert_eq!(post(&hub, "/api/v1/claims", code, Some(&bob), true).await.0, 201);
    let (status, seen) = get(&hub, &format!("/api/v1/devices/{id}/telemetry"), &bob).await;
    assert_eq!((status, seen["items"].as_array().map(Vec::len)), (200, Some(0)), "{seen}");
    let (_, log) = hub.get("/api/v1/audit-log").await.expect("audit");
    let actions: Vec<&str> = log.as_array().expect("log").iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["device_released", "device_wiped", "device_claimed"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

/// The mails to `to` once there are `n` of them (mails go out from a task of their own).
async fn mails_to(hub: &TestHub, to: &str, n: usize) -> Vec<hearth_hub::mail::Mail> {
    let found = hearth_test_support::eventually(Duration::from_secs(5), || async {
        let mails: Vec<_> = hub.hub.state.accounts.mailer().dev_outbox().into_iter().filter(|m| m.to == to).collect();
        (mails.len() >= n).then_some(mails)
    })
    .await;
    found.unwrap_or_else(|| panic!("{n} mails to {to}"))
}

/// The token of the link in a mail.
fn link_token(mail: &hearth_hub::mail::Mail) -> String {
    let at = mail.body.find("?token=").unwrap_or_else(|| panic!("a link in {:?}", mail.body));
    mail.body[at + 7..].split_whitespace().next().expect("token").to_owned()
}

const ALICE: &str = "alice@example.org";
const ALICE_PASSWORD: &str = "a kettle of teal herons";

#[tokio::test]
async fn a_consumer_signs_up_and_confirms_by_mail_and_the_answer_never_says_whether_an_email_has_an_account() {
    let hub = TestHub::start().await.expect("hub");
    let sign_up = |email: &'static str, password: &'static str| {
        post(&hub, "/api/v1/sign-up", json!({ "email": email, "password": password }), None, false)
    };
    // Refused with the reason, nothing made, nothing mailed.
    for (password, why) in [("short", "12"), ("password1234", "most-used"), ("alice@example.org!", "email")] {
        let (status, _, body) = sign_up(ALICE, password).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("weak_password")), "{password}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(why)), "{password}: {body}");
    }
    assert_eq!(sign_up("not-an-email", ALICE_PASSWORD).await.0, 400);
    assert!(hub.hub.state.store.account_by_email(ALICE).await.expect("store").is_none());

    let (status, _, first) = sign_up(ALICE, ALICE_PASSWORD).await;
    assert_eq!(status, 202, "{first}");
    let verify = &mails_to(&hub, ALICE, 1).await[0];
    assert!(verify.body.contains(&format!("{}/verify?token=", hub.base())), "{}", verify.body);
    // Not before the email is confirmed, and with the very answer a wrong password or unknown email gets: nobody
    // learns by signing up and then in that the email was free.
    let (status, _, unconfirmed) = sign_in(&hub, ALICE, ALICE_PASSWORD).await;
    let (_, _, wrong) = sign_in(&hub, ALICE, "a wrong but long passphrase").await;
    let (_, _, unknown) = sign_in(&hub, "nobody@example.org", ALICE_PASSWORD).await;
    assert_eq!((status, &unconfirmed), (401, &wrong));
    assert_eq!(unconfirmed, unknown);
    // Signing up again with a known email: the same answer; a note by mail; the account is untouched.
    let (status, _, again) = sign_up(ALICE, "another kettle of teal herons").await;
    assert_eq!((status, &again), (202, &first));
    let mails = mails_to(&hub, ALICE, 2).await;
    assert!(mails[1].subject.contains("tried"), "{:?}", mails[1]);
    assert!(!mails[1].body.contains("token="), "the note carries no link");

    // The link confirms only with the password chosen at sign-up: the mailbox alone is not enough.
    let token = link_token(verify);
    let confirm = |token: String, password: &'static str| {
        post(&hub, "/api/v1/sign-up/verify", json!({ "token": token, "password": password }), None, false)
    };
    let (status, _, body) = confirm("hml_forged".into(), ALICE_PASSWORD).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_link")));
    let (status, _, body) = confirm(token.clone(), "another kettle of teal herons").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_credentials")), "{body}");
    let (status, headers, body) = confirm(token.clone(), ALICE_PASSWORD).await;
    assert_eq!((status, body["account"]["email"].as_str()), (201, Some(ALICE)), "confirmed and signed in: {body}");
    assert!(headers.get("set-cookie").is_some());
    assert_eq!(confirm(token, ALICE_PASSWORD).await.0, 400, "once");
    let alice = signed_in(&hub, ALICE, ALICE_PASSWORD).await;
    let (_, me) = get(&hub, "/api/v1/me", &alice).await;
    assert_eq!((me["role"].as_str(), me["account"]["email"].as_str()), (Some("consumer"), Some(ALICE)));
    assert_eq!(
        sign_in(&hub, ALICE, "another kettle of teal herons").await.0,
        401,
        "the second sign-up changed nothing"
    );

    // Sign-ups are capped per network, refused ones too: 9 in 15 minutes, and 6 were made above.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let email: &'static str = Box::leak(format!("n{i}@example.org").into_boxed_str());
        statuses.push(sign_up(email, ALICE_PASSWORD).await.0);
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
}

#[tokio::test]
async fn a_reset_link_works_once_for_thirty_minutes_and_signs_out_everywhere() {
    let clock = Clock::manual(Clock::system().now_ms());
    let hub = TestHub::start_with_clock(|_| {}, clock.clone()).await.expect("hub");
    hub.add_account("alice", ALICE, Role::Consumer, ALICE_PASSWORD).await.expect("account");
    let alice = signed_in(&hub, ALICE, ALICE_PASSWORD).await;
    let reset = |email: &'static str| post(&hub, "/api/v1/password-reset", json!({ "email": email }), None, false);
    let (status, _, unknown) = reset("nobody@example.org").await;
    let (status2, _, known) = reset(ALICE).await;
    assert_eq!((status, status2, &unknown), (202, 202, &known), "the same answer");
    let link = link_token(&mails_to(&hub, ALICE, 1).await[0]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The owner recovers with `hearth setup-token`, never by mail: the same answer, no mail.
    let (status, _, owner) = reset(OWNER_EMAIL).await;
    assert_eq!((status, &owner), (202, &unknown));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outbox = hub.hub.state.accounts.mailer().dev_outbox();
    assert!(outbox.iter().all(|m| m.to != "nobody@example.org"), "no mail for an unknown email");
    assert!(outbox.iter().all(|m| m.to != OWNER_EMAIL), "no reset mail for the owner");
    let complete = |token: String, password: &'static str| {
        post(&hub, "/api/v1/password-reset/complete", json!({ "token": token, "new_password": password }), None, false)
    };
    // A weak password is refused without using the link.
    let (status, _, body) = complete(link.clone(), "hearth hearth hearth").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("weak_password")), "{body}");
    let (status, _, body) = complete(link.clone(), "seven green lanterns at dusk").await;
    assert_eq!((status, body["account"]["email"].as_str()), (200, Some(ALICE)), "{body}");
    assert_eq!(complete(link, "eight green lanterns at dusk").await.0, 400, "once");
    assert_eq!(get(&hub, "/api/v1/me", &alice).await.0, 401, "every session ended");
    assert_eq!(sign_in(&hub, ALICE, ALICE_PASSWORD).await.0, 401);
    signed_in(&hub, ALICE, "seven green lanterns at dusk").await;

    // 30 minutes, then dead.
    assert_eq!(reset(ALICE).await.0, 202);
    let late = link_token(&mails_to(&hub, ALICE, 2).await[1]);
    clock.advance(Duration::from_secs(31 * 60));
    let (status, _, body) = complete(late, "nine green lanterns at dusk").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_link")));
    // At most three mails to one address in 15 minutes, whoever asks.
    for _ in 0..4 {
        assert_eq!(reset(ALICE).await.0, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = hub.hub.state.accounts.mailer().dev_outbox().iter().filter(|m| m.to == ALICE).count();
    assert_eq!(sent, 2 + 3);
    let (_, log) = hub.get("/api/v1/audit-log").await.expect("audit");
    let actions: Vec<&str> = log.as_array().expect("log").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"password_reset") && actions.contains(&"password_reset_requested"), "{actions:?}");
}

#[tokio::test]
async fn operators_invite_admins_and_support_who_choose_their_own_password_and_can_be_disabled() {
    let hub = TestHub::start().await.expect("hub");
    let owner = signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    async fn invite(hub: &TestHub, who: &Browser, email: &str, role: &str) -> (u16, HeaderMap, Value) {
        post(hub, "/api/v1/accounts", json!({ "email": email, "role": role }), Some(who), true).await
    }
    async fn disable(hub: &TestHub, who: &Browser, id: &str) -> (u16, HeaderMap, Value) {
        post(hub, &format!("/api/v1/accounts/{id}/disable"), json!({}), Some(who), true).await
    }
    let (status, _, admin) = invite(&hub, &owner, "ada@example.org", "admin").await;
    assert_eq!((status, admin["invite_link"].as_str()), (201, None), "mailed, not returned: {admin}");
    assert_eq!(invite(&hub, &owner, "ada@example.org", "support").await.0, 409, "email taken");
    assert_eq!(invite(&hub, &owner, "eve@example.org", "owner").await.0, 400);
    assert_eq!(invite(&hub, &owner, "eve@example.org", "consumer").await.0, 400);
    // Nothing signs in to an invited account before its password is set, whatever is tried.
    for guess in ["", "!invited", "a long enough guess here"] {
        assert_eq!(sign_in(&hub, "ada@example.org", guess).await.0, 401, "{guess:?}");
    }
    let link = link_token(&mails_to(&hub, "ada@example.org", 1).await[0]);
    let (status, _, body) = post(
        &hub,
        "/api/v1/password-reset/complete",
        json!({ "token": link, "new_password": "ada's analytical engine" }),
        None,
        false,
    )
    .await;
    assert_eq!((status, body["account"]["role"].as_str()), (200, Some("admin")), "{body}");
    let ada = signed_in(&hub, "ada@example.org", "ada's analytical engine").await;
    // Admins invite support, not admins.
    assert_eq!(invite(&hub, &ada, "bea@example.org", "admin").await.0, 403);
    let (status, _, support) = invite(&hub, &ada, "sam@example.org", "support").await;
    assert_eq!(status, 201);
    let sam_id = support["account"]["id"].as_str().expect("id").to_owned();
    let (_, list) = get(&hub, "/api/v1/accounts", &ada).await;
    let emails: Vec<&str> =
        list["accounts"].as_array().expect("list").iter().filter_map(|a| a["email"].as_str()).collect();
    assert_eq!(emails, ["ada@example.org", OWNER_EMAIL, "sam@example.org"]);
    // Disabling: admins disable support, never the owner, an admin or themselves; the owner disables admins.
    let ada_id = body["account"]["id"].as_str().expect("id").to_owned();
    let owner_id = get(&hub, "/api/v1/me", &owner).await.1["account"]["id"].as_str().expect("id").to_owned();
    assert_eq!(disable(&hub, &ada, &owner_id).await.0, 403);
    assert_eq!(disable(&hub, &ada, &ada_id).await.0, 403);
    assert_eq!(disable(&hub, &owner, &owner_id).await.0, 403);
    assert_eq!(disable(&hub, &ada, &sam_id).await.0, 204);
    assert_eq!(disable(&hub, &ada, &sam_id).await.0, 404, "once");
    let (_, _, token) = post(&hub, "/api/v1/tokens", json!({ "label": "ada's script" }), Some(&ada), true).await;
    let ada_token = token["token"].as_str().expect("token").to_owned();
    assert_eq!(disable(&hub, &owner, &ada_id).await.0, 204);
    assert_eq!(get(&hub, "/api/v1/me", &ada).await.0, 401, "sessions end");
    let with_token = hub.client.get(format!("{}/api/v1/me", hub.base())).bearer_auth(&ada_token);
    assert_eq!(hub.send(with_token).await.expect("send").0, 401, "API tokens are revoked");
    assert_eq!(sign_in(&hub, "ada@example.org", "ada's analytical engine").await.0, 401);
    // Consumers see none of this.
    hub.add_account("c", ALICE, Role::Consumer, ALICE_PASSWORD).await.expect("account");
    let alice = signed_in(&hub, ALICE, ALICE_PASSWORD).await;
    assert_eq!(get(&hub, "/api/v1/accounts", &alice).await.0, 403);
    assert_eq!(invite(&hub, &alice, "x@example.org", "support").await.0, 403);
}

#[tokio::test]
async fn without_a_mailer_the_hub_refuses_to_start_with_sign_up_on_and_an_invite_link_comes_back() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = hearth_test_support::test_config(dir.path());
    config.mail.dev_log_links_insecure = false;
    let refused = config.validate().expect_err("no mailer, sign-up on");
    assert!(refused.to_string().contains("mail.smtp_host"), "{refused}");
    config.mail.smtp_host = Some("mail.example.org".into());
    config.mail.smtp_tls = hearth_hub::config::SmtpTls::NoneLoopbackOnly;
    let refused = config.validate().expect_err("plaintext to a remote relay");
    assert!(refused.to_string().contains("none_loopback_only"), "{refused}");

    let hub = TestHub::start_with(|c| {
        c.mail.dev_log_links_insecure = false;
        c.accounts.consumer_sign_up = false;
    })
    .await
    .expect("a hub without sign-up needs no mailer");
    let (status, body) =
        hub.post("/api/v1/sign-up", json!({ "email": ALICE, "password": ALICE_PASSWORD })).await.expect("send");
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("sign_up_closed")));
    let (status, body) = hub.post("/api/v1/password-reset", json!({ "email": OWNER_EMAIL })).await.expect("send");
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("mail_not_configured")));
    let (status, invited) =
        hub.post("/api/v1/accounts", json!({ "email": "ada@example.org", "role": "admin" })).await.expect("invite");
    let link = invited["invite_link"].as_str().expect("the link comes back to hand over");
    assert!(link.starts_with(&format!("{}/reset?token=hml_", hub.base())), "{status} {link}");
}

/// Passkeys over the API, the refusals (the ceremonies themselves run in Chromium's virtual authenticator in the
/// CLI's browser test): off for a hub reached by an IP address; a ceremony works once, for its kind and account
/// only, whatever the browser sends; anonymous starts are capped per network; an operator whose passkey cannot
/// be read is refused, never let in on the password alone.
#[tokio::test]
async fn passkey_ceremonies_work_once_for_their_own_account_and_fail_closed() {
    let by_ip = TestHub::start().await.expect("hub");
    let (status, body) = by_ip.post("/api/v1/sessions/passkey/start", json!({})).await.expect("start");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("passkeys_unavailable")));

    let hub = TestHub::start_with(|c| c.public.host = Some("localhost".into())).await.expect("hub");
    let anonymous = |path: &'static str, body: Value| post(&hub, path, body, None, false);
    let (status, _, started) = anonymous("/api/v1/sessions/passkey/start", json!({})).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["options"]["publicKey"]["rpId"], "localhost");
    assert_eq!(started["options"]["publicKey"]["userVerification"], "required");
    let ceremony = started["ceremony_id"].as_str().expect("id").to_owned();
    let garbage = json!({ "ceremony_id": ceremony, "credential": { "id": "x", "rawId": "eA", "type": "public-key",
        "response": { "clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA" } } });
    let (status, _, body) = anonymous("/api/v1/sessions/passkey/finish", garbage.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unknown_passkey")), "{body}");
    let (status, _, body) = anonymous("/api/v1/sessions/passkey/finish", garbage).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_ceremony")), "taken once: {body}");
    let (status, _, body) =
        anonymous("/api/v1/sessions/passkey/finish", json!({ "ceremony_id": "nope", "credential": 7 })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_ceremony")));

    // A registration ceremony belongs to the account that started it, and to registration only.
    hub.add_account("alice", ALICE, Role::Consumer, ALICE_PASSWORD).await.expect("account");
    hub.add_account("bob", "bob@example.org", Role::Consumer, "bob's very own passphrase").await.expect("account");
    let alice = signed_in(&hub, ALICE, ALICE_PASSWORD).await;
    let bob = signed_in(&hub, "bob@example.org", "bob's very own passphrase").await;
    let (status, _, reg) = post(&hub, "/api/v1/me/passkeys/register/start", json!({}), Some(&alice), true).await;
    assert_eq!(status, 200, "{reg}");
    assert_eq!(reg["options"]["publicKey"]["user"]["name"], ALICE);
    let reg_id = reg["ceremony_id"].as_str().expect("id").to_owned();
    let as_sign_in = json!({ "ceremony_id": reg_id, "credential": {} });
    let (status, _, _) = anonymous("/api/v1/sessions/passkey/finish", as_sign_in).await;
    assert_eq!(status, 400, "a registration ceremony is no sign-in");
    let (status, _, reg) = post(&hub, "/api/v1/me/passkeys/register/start", json!({}), Some(&alice), true).await;
    let finish = json!({ "ceremony_id": reg["ceremony_id"], "name": "x", "credential": { "id": "x" } });
    let (status2, _, body) = post(&hub, "/api/v1/me/passkeys/register/finish", finish.clone(), Some(&bob), true).await;
    assert_eq!((status, status2, body["error"]["code"].as_str()), (200, 400, Some("invalid_ceremony")), "{body}");
    let (status, _, body) = post(&hub, "/api/v1/me/passkeys/register/finish", finish, Some(&alice), true).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_ceremony")), "Bob's try used it up");
    assert_eq!(get(&hub, "/api/v1/me/passkeys", &alice).await.1, json!([]));

    // An operator with a passkey the hub cannot read: refused, not signed in on the password alone.
    let owner_id =
        get(&hub, "/api/v1/me", &signed_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await).await.1["account"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
    let broken = hearth_hub::store::PasskeyRow {
        credential_id: "broken".into(),
        account_id: owner_id,
        name: "broken".into(),
        passkey_json: "{\"not\":\"a passkey\"}".into(),
        created_at: 0,
        last_used_at: None,
    };
    assert!(hub.hub.state.store.insert_passkey(&broken).await.expect("insert"));
    let (status, headers, _) = sign_in(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    assert_eq!((status, headers.get("set-cookie")), (500, None));

    // Anonymous starts store state: 20 per network in 15 minutes (one made above).
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(anonymous("/api/v1/sessions/passkey/start", json!({})).await.0);
    }
    assert_eq!(statuses, [vec![200; 19], vec![429]].concat());
}

/// Pre-hijacking: a stranger signs up with Alice's address before she does. Alice following the mailed link
/// cannot confirm the stranger's account (it takes the stranger's password); a reset by Alice takes the account
/// over and removes whatever the stranger attached (a passkey, here put in the store as the stranger's browser
/// would have).
#[tokio::test]
async fn a_stranger_who_signs_up_with_someone_elses_email_never_gets_in() {
    let hub = TestHub::start().await.expect("hub");
    let stranger_password = "the stranger's own passphrase";
    let (status, _, _) =
        post(&hub, "/api/v1/sign-up", json!({ "email": ALICE, "password": stranger_password }), None, false).await;
    assert_eq!(status, 202);
    let token = link_token(&mails_to(&hub, ALICE, 1).await[0]);
    let account = hub.hub.state.store.account_by_email(ALICE).await.expect("store").expect("pending account");
    let stranger_key = hearth_hub::store::PasskeyRow {
        credential_id: "strangers-key".into(),
        account_id: account.id.clone(),
        name: "stranger".into(),
        passkey_json: "{}".into(),
        created_at: 0,
        last_used_at: None,
    };
    assert!(hub.hub.state.store.insert_passkey(&stranger_key).await.expect("insert"));
    // Alice clicks the link, but only knows her own password: nothing is confirmed, the stranger still cannot sign in.
    let (status, _, _) =
        post(&hub, "/api/v1/sign-up/verify", json!({ "token": token, "password": ALICE_PASSWORD }), None, false).await;
    assert_eq!(status, 401);
    assert_eq!(sign_in(&hub, ALICE, stranger_password).await.0, 401, "unconfirmed");
    // Alice resets: the account is hers, with her password; the stranger's passkey and password are gone.
    assert_eq!(post(&hub, "/api/v1/password-reset", json!({ "email": ALICE }), None, false).await.0, 202);
    let reset = link_token(&mails_to(&hub, ALICE, 2).await[1]);
    let (status, _, _) = post(
        &hub,
        "/api/v1/password-reset/complete",
        json!({ "token": reset, "new_password": ALICE_PASSWORD }),
        None,
        false,
    )
    .await;
    assert_eq!(status, 200);
    assert!(hub.hub.state.store.passkey("strangers-key").await.expect("store").is_none(), "a reset removes passkeys");
    assert_eq!(sign_in(&hub, ALICE, stranger_password).await.0, 401);
    signed_in(&hub, ALICE, ALICE_PASSWORD).await;
}
