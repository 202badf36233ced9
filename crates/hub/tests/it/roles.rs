//! Every API route and every page, as the owner, the consumer who owns the device, another consumer, support
//! without and with that consumer's grant, and anonymous, from one table of expectations: nobody reaches another
//! person's devices or data, and each refusal is the one the table says. A route the OpenAPI document lists that
//! the table does not fails the test, so a new route cannot ship without its row.

use std::collections::BTreeSet;

use hearth_hub::clock::Clock;
use hearth_hub::store::Role;
use hearth_test_support::mqtt::{V5, telemetry};
use hearth_test_support::{OWNER_EMAIL, OWNER_PASSWORD, TestHub};
use serde_json::{Value, json};

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Owner,
    /// The consumer who claimed the device.
    Alice,
    /// Another consumer.
    Bob,
    /// Support before Alice grants access.
    SupportNo,
    /// Support while Alice's grant holds.
    SupportGrant,
    Anonymous,
}

const EVERYONE: [Who; 6] = [Who::Owner, Who::Alice, Who::Bob, Who::SupportNo, Who::SupportGrant, Who::Anonymous];

/// A redirect to the sign-in page (pages for people who are not signed in).
const SIGN_IN: u16 = 1;

/// One row: method, path (`{dev}` is Alice's device, `{cmd}` a command of it; `{sess}`, `{key}`, `{tok}` and
/// `{acct}` name a session, passkey, token and account that do not exist; `{rel}`, `{sha}`, `{roll}`, `{rep}` a
/// release, file, rollout and vulnerability report that do not exist, `{model}` a model), body (JSON for the API, a form
/// for pages), and the status each caller gets, in [`EVERYONE`]'s order.
struct Row {
    method: &'static str,
    path: &'static str,
    body: Body,
    expect: [u16; 6],
    /// Ask in the reverse order (anonymous first, the owner last): for rows that change the device.
    reverse: bool,
}

enum Body {
    None,
    Json(Value),
    /// Form fields; the caller's CSRF token is added as `csrf`.
    Form(&'static [(&'static str, &'static str)]),
}

fn rows() -> Vec<Row> {
    use Body::{Form, Json};
    let none = || Body::None;
    //                                                  owner alice  bob  supNo supGr anon
    let r = |method, path, body, expect| Row { method, path, body, expect, reverse: false };
    let last = |method, path, body, expect| Row { method, path, body, expect, reverse: true };
    vec![
        // Public: anyone.
        r("GET", "/healthz", none(), [200, 200, 200, 200, 200, 200]),
        r("GET", "/api/v1/openapi.json", none(), [200, 200, 200, 200, 200, 200]),
        r(
            "POST",
            "/api/v1/setup",
            Json(json!({"setup_token": "hst_x", "email": "x@example.org", "password": "p"})),
            [401; 6],
        ),
        r(
            "POST",
            "/api/v1/enrol",
            Json(json!({"device_id": "nodev", "bootstrap_token": "t", "csr_pem": "c"})),
            [401; 6],
        ),
        r("POST", "/api/v1/renew", Json(json!({"csr_pem": "c"})), [401; 6]),
        r("POST", "/api/v1/sessions", Json(json!({"email": "nobody@example.org", "password": "wrong one"})), [401; 6]),
        r("POST", "/api/v1/sign-up", Json(json!({"email": "x@example.org", "password": "short"})), [400; 6]),
        r("POST", "/api/v1/sign-up/verify", Json(json!({"token": "hml_forged", "password": "x"})), [400; 6]),
        r("POST", "/api/v1/password-reset", Json(json!({"email": "nobody@example.org"})), [202; 6]),
        r(
            "POST",
            "/api/v1/password-reset/complete",
            Json(json!({"token": "hml_forged", "new_password": "a long enough one"})),
            [400; 6],
        ),
        r("POST", "/api/v1/sessions/passkey/start", Json(json!({})), [404; 6]),
        r("POST", "/api/v1/sessions/passkey/finish", Json(json!({"ceremony_id": "c", "credential": {}})), [404; 6]),
        r("POST", "/api/v1/sessions/second-factor", Json(json!({"ceremony_id": "c", "credential": {}})), [404; 6]),
        r("POST", "/api/v1/sign-up/passkey/start", Json(json!({"email": "x@example.org"})), [404; 6]),
        r("POST", "/api/v1/sign-up/passkey/finish", Json(json!({"ceremony_id": "c", "credential": {}})), [404; 6]),
        // Any account.
        r("GET", "/api/v1/me", none(), [200, 200, 200, 200, 200, 401]),
        r("GET", "/api/v1/me/sessions", none(), [200, 200, 200, 200, 200, 401]),
        r("POST", "/api/v1/me/sessions/{sess}/revoke", Json(json!({})), [404, 404, 404, 404, 404, 401]),
        r(
            "POST",
            "/api/v1/me/password",
            Json(json!({"current_password": "wrong", "new_password": "whatever long enough"})),
            [403, 403, 403, 403, 403, 401],
        ),
        r("GET", "/api/v1/me/passkeys", none(), [200, 200, 200, 200, 200, 401]),
        r("POST", "/api/v1/me/passkeys/register/start", Json(json!({})), [404, 404, 404, 404, 404, 401]),
        r(
            "POST",
            "/api/v1/me/passkeys/register/finish",
            Json(json!({"ceremony_id": "c", "credential": {}})),
            [404, 404, 404, 404, 404, 401],
        ),
        r("POST", "/api/v1/me/passkeys/{key}/remove", Json(json!({})), [404, 404, 404, 404, 404, 401]),
        // Consumers only.
        r(
            "POST",
            "/api/v1/claims",
            Json(json!({"claim_code": "AAAAAAAAAAAAAAAAAAAA"})),
            [403, 404, 404, 403, 403, 401],
        ),
        // (Alice's grant is live here: support's columns just before set it.)
        r("POST", "/api/v1/me/support-grant/revoke", Json(json!({})), [403, 204, 404, 403, 403, 401]),
        // Devices: the fleet for operators, its own for a consumer, granted ones for support; others see nothing.
        r("GET", "/api/v1/devices", none(), [200, 200, 200, 200, 200, 401]),
        r("GET", "/api/v1/devices/{dev}", none(), [200, 200, 404, 404, 200, 401]),
        r("GET", "/api/v1/devices/{dev}/telemetry", none(), [200, 200, 404, 404, 200, 401]),
        r("GET", "/api/v1/devices/{dev}/commands/{cmd}", none(), [200, 200, 404, 404, 200, 401]),
        r("POST", "/api/v1/devices/{dev}/commands", Json(json!({"name": "ping"})), [202, 202, 404, 404, 403, 401]),
        // Signed updates: devices only (mutual TLS) for the repository and check-ins; releases and support
        // periods for every account; the repository, uploads and rollouts for operators; postponing for the
        // device's consumer and operators.
        r("POST", "/api/v1/device/update", Json(json!({"hardware": "rev-a", "security_floor": 0})), [401; 6]),
        r("GET", "/tuf/timestamp.json", none(), [401; 6]),
        r("GET", "/tuf/targets/0000.x.img", none(), [401; 6]),
        r("GET", "/api/v1/releases", none(), [200, 200, 200, 200, 200, 401]),
        r("GET", "/api/v1/releases/{rel}/sbom", none(), [404, 404, 404, 404, 404, 401]),
        r("GET", "/api/v1/models/support", none(), [200, 200, 200, 200, 200, 401]),
        r("GET", "/api/v1/updates", none(), [200, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/updates/keys", none(), [200, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/updates/publish", Json(json!({})), [422, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/updates/files/{sha}", none(), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/updates/files/{sha}", Json(json!({})), [415, 403, 403, 403, 403, 401]),
        r(
            "POST",
            "/api/v1/models/{model}/support",
            Json(json!({"support_until": 1, "policy": "x"})),
            [400, 403, 403, 403, 403, 401],
        ),
        r("GET", "/api/v1/rollouts", none(), [200, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/rollouts", Json(json!({"release": "nope.img"})), [404, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/rollouts/{roll}", none(), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/rollouts/{roll}/pause", Json(json!({})), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/rollouts/{roll}/resume", Json(json!({})), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/rollouts/{roll}/abort", Json(json!({})), [404, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/devices/{dev}/update", none(), [200, 200, 404, 404, 200, 401]),
        r("POST", "/api/v1/devices/{dev}/update/postpone", Json(json!({"days": 1})), [409, 409, 404, 404, 403, 401]),
        // Disclosure: security.txt, the challenge, the intake and the status link for anyone; the inbox for
        // operators.
        r("GET", "/.well-known/security.txt", none(), [200; 6]),
        r("GET", "/api/v1/reports/challenge", none(), [200; 6]),
        r(
            "POST",
            "/api/v1/reports",
            Json(json!({"summary": "s", "details": "d", "challenge": "x", "nonce": "1"})),
            [422; 6],
        ),
        r("GET", "/api/v1/reports/{rep}/status?token=hvr_x", none(), [404; 6]),
        r("POST", "/api/v1/reports/{rep}/status/messages?token=hvr_x", Json(json!({"body": "hi"})), [404; 6]),
        r("GET", "/api/v1/models/{model}/security-statement", none(), [404; 6]),
        r("GET", "/api/v1/models/{model}/psti-statement", none(), [404, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/reports", none(), [200, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/reports/{rep}", none(), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/reports/{rep}/state", Json(json!({"state": "fixing"})), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/reports/{rep}/messages", Json(json!({"body": "hi"})), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/reports/{rep}/exploited", Json(json!({})), [404, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/reports/{rep}/cra/{stage}", Json(json!({})), [404, 403, 403, 403, 403, 401]),
        // Operators only.
        r("POST", "/api/v1/devices", Json(json!({"model": "plug-1", "count": 0})), [400, 403, 403, 403, 403, 401]),
        r("POST", "/api/v1/devices/{dev}/bootstrap", Json(json!({})), [201, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/tokens", none(), [200, 403, 403, 403, 403, 401]),
        r(
            "POST",
            "/api/v1/tokens",
            Json(json!({"label": "table", "validity_days": 0})),
            [422, 403, 403, 403, 403, 401],
        ),
        r("POST", "/api/v1/tokens/{tok}/revoke", Json(json!({})), [404, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/security-events", none(), [200, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/audit-log", none(), [200, 403, 403, 403, 403, 401]),
        r("GET", "/api/v1/accounts", none(), [200, 403, 403, 403, 403, 401]),
        r(
            "POST",
            "/api/v1/accounts",
            Json(json!({"email": "alice@example.org", "role": "support"})),
            [409, 403, 403, 403, 403, 401],
        ),
        r("POST", "/api/v1/accounts/{acct}/disable", Json(json!({})), [404, 403, 403, 403, 403, 401]),
        // Pages anyone sees.
        r("GET", "/sign-in", none(), [200; 6]),
        r("GET", "/sign-up", none(), [200; 6]),
        r("GET", "/forgot", none(), [200; 6]),
        r("GET", "/setup", none(), [200; 6]),
        r("GET", "/verify?token=x", none(), [200; 6]),
        r("GET", "/check-email", none(), [200; 6]),
        r("GET", "/reset?token=hml_forged", none(), [400; 6]),
        r("GET", "/static/app.css", none(), [200; 6]),
        r("GET", "/static/passkeys.js", none(), [200; 6]),
        r("GET", "/static/icon.svg", none(), [200; 6]),
        r("GET", "/static/report.js", none(), [200; 6]),
        r("GET", "/security/policy", none(), [200; 6]),
        r("GET", "/security/products/{model}", none(), [404; 6]),
        r("GET", "/security/products/{model}/snippet.html", none(), [404; 6]),
        r("GET", "/security/report", none(), [200; 6]),
        r("POST", "/security/report", Form(&[("summary", "s"), ("details", "d")]), [422; 6]),
        r("GET", "/security/reports/{rep}?token=hvr_x", none(), [404; 6]),
        r("GET", "/favicon.ico", none(), [200; 6]),
        r("POST", "/sign-in", Form(&[("email", "nobody@example.org"), ("password", "wrong")]), [401; 6]),
        r("POST", "/sign-up", Form(&[("email", "x@example.org"), ("password", "short")]), [400; 6]),
        r("POST", "/verify", Form(&[("token", "hml_forged"), ("password", "x")]), [400; 6]),
        r("POST", "/forgot", Form(&[("email", "nobody@example.org")]), [200; 6]),
        r("POST", "/reset", Form(&[("token", "hml_forged"), ("new_password", "a long enough one")]), [400; 6]),
        r("POST", "/setup", Form(&[("setup_token", "hst_x"), ("email", "x@example.org"), ("password", "p")]), [401; 6]),
        // Pages for people signed in.
        r("GET", "/", none(), [303, 303, 303, 303, 303, SIGN_IN]),
        r("GET", "/devices", none(), [200, 200, 200, 200, 200, SIGN_IN]),
        r("GET", "/devices/{dev}", none(), [200, 200, 404, 404, 200, SIGN_IN]),
        r("POST", "/devices/{dev}/command", Form(&[("name", "ping")]), [303, 303, 404, 404, 403, SIGN_IN]),
        r("GET", "/claim", none(), [403, 200, 200, 403, 403, SIGN_IN]),
        r("POST", "/claim", Form(&[("code", "AAAAAAAAAAAAAAAAAAAA")]), [403, 404, 404, 403, 403, SIGN_IN]),
        r("GET", "/account", none(), [200, 200, 200, 200, 200, SIGN_IN]),
        r(
            "POST",
            "/account/password",
            Form(&[("current_password", "wrong"), ("new_password", "whatever long enough")]),
            [403, 403, 403, 403, 403, SIGN_IN],
        ),
        r("POST", "/account/sessions/{sess}/end", Form(&[]), [404, 404, 404, 404, 404, SIGN_IN]),
        r("POST", "/account/passkeys/{key}/remove", Form(&[]), [404, 404, 404, 404, 404, SIGN_IN]),
        r("POST", "/account/support/end", Form(&[]), [403, 303, 303, 403, 403, SIGN_IN]),
        r("GET", "/updates", none(), [200, 403, 403, 403, 403, SIGN_IN]),
        r("POST", "/rollouts", Form(&[("release", "nope.img")]), [404, 403, 403, 403, 403, SIGN_IN]),
        r("POST", "/rollouts/{roll}/pause", Form(&[]), [404, 403, 403, 403, 403, SIGN_IN]),
        r("POST", "/devices/{dev}/postpone", Form(&[("days", "1")]), [409, 409, 404, 404, 403, SIGN_IN]),
        r("GET", "/security-events", none(), [200, 403, 403, 403, 403, SIGN_IN]),
        r("GET", "/security/inbox", none(), [200, 403, 403, 403, 403, SIGN_IN]),
        r("GET", "/security/inbox/{rep}", none(), [404, 403, 403, 403, 403, SIGN_IN]),
        r("POST", "/security/inbox/{rep}/state", Form(&[("state", "fixing")]), [404, 403, 403, 403, 403, SIGN_IN]),
        r("GET", "/audit-log", none(), [200, 403, 403, 403, 403, SIGN_IN]),
        r("GET", "/accounts", none(), [200, 403, 403, 403, 403, SIGN_IN]),
        r(
            "POST",
            "/accounts/invite",
            Form(&[("email", "alice@example.org"), ("role", "support")]),
            [409, 403, 403, 403, 403, SIGN_IN],
        ),
        r("POST", "/accounts/{acct}/disable", Form(&[]), [404, 403, 403, 403, 403, SIGN_IN]),
        // Last, as they change what the rows above need: release and revoke, the owner asking last. Alice releases
        // her device; the owner may release it again (a new wipe); after that only operators see it.
        last("POST", "/api/v1/devices/{dev}/unclaim", Json(json!({})), [202, 202, 404, 404, 403, 401]),
        last("POST", "/devices/{dev}/unclaim", Form(&[]), [303, 404, 404, 404, 404, SIGN_IN]),
        last("POST", "/devices/{dev}/revoke", Form(&[]), [303, 403, 403, 403, 403, SIGN_IN]),
        // Revoking again changes nothing and says so.
        last("POST", "/api/v1/devices/{dev}/revoke", Json(json!({})), [200, 403, 403, 403, 403, 401]),
        // Support grants by consumers (each its own).
        r("POST", "/api/v1/me/support-grant", Json(json!({"hours": 1})), [403, 201, 201, 403, 403, 401]),
        r("POST", "/account/support", Form(&[("hours", "1")]), [403, 303, 303, 403, 403, SIGN_IN]),
        // Signing out, very last: sessions end (support's two columns share one session, ended by the first).
        r("POST", "/api/v1/me/sign-out-everywhere", Json(json!({})), [200, 200, 200, 200, 401, 401]),
        r("POST", "/api/v1/me/sign-out", Json(json!({})), [401, 401, 401, 401, 401, 401]),
        r("POST", "/sign-out", Form(&[]), [SIGN_IN; 6]),
        r("POST", "/account/sign-out-everywhere", Form(&[]), [SIGN_IN; 6]),
    ]
}

/// A signed-in caller: its cookie header and CSRF token (None: anonymous).
type Session = Option<(String, String)>;

async fn session(hub: &TestHub, email: &str, password: &str) -> Session {
    Some(hub.session(email, password).await.expect("sign in"))
}

#[tokio::test]
async fn every_route_and_page_answers_each_role_as_the_table_says() {
    let hub = TestHub::start_with_clock(|_| {}, Clock::system()).await.expect("hub");
    hub.add_account("alice", "alice@example.org", Role::Consumer, "alice's own passphrase").await.expect("account");
    hub.add_account("bob", "bob@example.org", Role::Consumer, "bob's very own passphrase").await.expect("account");
    hub.add_account("sam", "sam@example.org", Role::Support, "sam supports people well").await.expect("account");
    // Alice's device: manufactured, enrolled, claimed, with a reading and a command.
    let (_, made) = hub.post("/api/v1/devices", json!({ "model": "plug-1", "count": 1 })).await.expect("made");
    let made = &made["devices"][0];
    let dev = made["device_id"].as_str().expect("id").to_owned();
    let dir = tempfile::tempdir().expect("dir");
    let token = made["bootstrap_token"].as_str().expect("token");
    let device = hearth_test_support::enrol_at(&hub.client, &hub.base(), &dev, token, dir.path()).await.expect("enrol");
    let alice = session(&hub, "alice@example.org", "alice's own passphrase").await;
    let (cookie, csrf) = alice.clone().expect("alice");
    let claim = hub
        .client
        .post(format!("{}/api/v1/claims", hub.base()))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({ "claim_code": made["claim_code"] }));
    assert_eq!(hub.send(claim).await.expect("claim").0, 201);
    let mut mqtt = V5::connect(&hub, &device).await.expect("connect");
    mqtt.publish(&format!("devices/{dev}/telemetry"), telemetry(1, 20.0), 1).await.expect("publish");
    let (_, cmd) =
        hub.post(&format!("/api/v1/devices/{dev}/commands"), json!({"name": "ping"})).await.expect("command");
    let cmd = cmd["id"].as_str().expect("id").to_owned();

    let owner = session(&hub, OWNER_EMAIL, OWNER_PASSWORD).await;
    let bob = session(&hub, "bob@example.org", "bob's very own passphrase").await;
    let sam = session(&hub, "sam@example.org", "sam supports people well").await;
    let client = hub.browser().expect("client");

    let rows = rows();
    let mut failures = Vec::new();

    for row in &rows {
        let order: Vec<usize> = if row.reverse { (0..6).rev().collect() } else { (0..6).collect() };
        for i in order {
            let who = EVERYONE[i];
            // The table is about who may do what; throttling has its own tests: counters start from zero.
            hub.hub.state.store.clear_login_failures_like("").await.expect("clear");
            let caller = match who {
                Who::Owner => &owner,
                Who::Alice => &alice,
                Who::Bob => &bob,
                Who::SupportNo | Who::SupportGrant => &sam,
                Who::Anonymous => &None,
            };
            // Support with and without Alice's grant: the grant is given or taken back just before (rows may have
            // changed it).
            let wants_grant = who == Who::SupportGrant;
            if who == Who::SupportNo || wants_grant {
                let path = if wants_grant { "/api/v1/me/support-grant" } else { "/api/v1/me/support-grant/revoke" };
                let body = if wants_grant { json!({"hours": 1}) } else { json!({}) };
                let request = hub
                    .client
                    .post(format!("{}{path}", hub.base()))
                    .header("cookie", &cookie)
                    .header("x-csrf-token", &csrf)
                    .json(&body);
                let status = hub.send(request).await.expect("grant").0;
                // (401 once the rows that sign out have ended Alice's session.)
                assert!(matches!(status, 201 | 204 | 401 | 404), "{path}: {status}");
            }
            let path = row
                .path
                .replace("{dev}", &dev)
                .replace("{cmd}", &cmd)
                .replace("{sess}", "nosession")
                .replace("{key}", "nokey")
                .replace("{tok}", "notoken")
                .replace("{acct}", "noaccount")
                .replace("{rel}", "nope.img")
                .replace("{sha}", "0000000000000000000000000000000000000000000000000000000000000000")
                .replace("{model}", "plug-1")
                .replace("{roll}", "rnope")
                .replace("{rep}", "VR-NOPE")
                .replace("{stage}", "early_warning");
            let url = format!("{}{path}", hub.base());
            let mut request = if row.method == "GET" { client.get(&url) } else { client.post(&url) };
            if let Some((cookie, csrf)) = caller {
                request = request.header("cookie", cookie);
                if !path.starts_with("/api/") || row.method != "GET" {
                    request = request.header("x-csrf-token", csrf);
                }
            }
            request = match &row.body {
                Body::None => request,
                Body::Json(v) => request.json(v),
                Body::Form(fields) => {
                    let mut fields: Vec<(&str, &str)> = fields.to_vec();
                    if let Some((_, csrf)) = caller {
                        fields.push(("csrf", csrf));
                    }
                    request.form(&fields)
                }
            };
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            let location = response.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or("").to_owned();
            let got = if status == 303 && location.starts_with("/sign-in") { SIGN_IN } else { status };
            let body = response.text().await.unwrap_or_default();
            // Every API answer keeps the contract too (an empty body has no content type to check).
            let content_type = (!body.is_empty()).then_some("application/json");
            if (path.starts_with("/api/") || path == "/healthz")
                && let Err(e) =
                    hearth_test_support::contract::check(row.method, &path, status, content_type, body.as_bytes())
            {
                failures.push(format!("{} {path} as {who:?}: {e}", row.method));
            }
            if got != row.expect[i] {
                failures.push(format!("{} {} as {who:?}: {got} (expected {})", row.method, row.path, row.expect[i]));
            }
            // Nobody else's data: a refused answer never carries the device's readings or Alice's email.
            if matches!(who, Who::Bob | Who::SupportNo | Who::Anonymous)
                && (body.contains("20.0") && body.contains(&dev))
            {
                failures.push(format!("{} {path} as {who:?} leaked the device's data", row.method));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} answers differ from the table:\n{}",
        failures.len(),
        rows.len() * 6,
        failures.join("\n")
    );

    // Every route of the API document has a row.
    let document: Value = serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json")).expect("doc"),
    )
    .expect("json");
    let generic = |p: &str| {
        p.split('?')
            .next()
            .unwrap_or(p)
            .split('/')
            .map(|s| if s.starts_with('{') { "*" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let covered: BTreeSet<(String, String)> = rows.iter().map(|r| (r.method.to_lowercase(), generic(r.path))).collect();
    let mut missing = Vec::new();
    for (path, ops) in document["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            if !covered.contains(&(method.clone(), generic(path))) {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "routes without a row in the table: {missing:?}");
}

/// The pages' headers and the cross-site refusals, through the router alone (`oneshot`, no socket): every page
/// carries the CSP, no-referrer and frame denial; a form posted from another site is refused before it runs, so
/// nobody can sign a visitor in (or out) from elsewhere.
#[tokio::test]
async fn pages_carry_the_csp_and_refuse_cross_site_form_posts() {
    use axum::body::Body as AxumBody;
    use axum::http::Request;
    use tower::ServiceExt as _;

    let hub = TestHub::start().await.expect("hub");
    let app = || hearth_hub::transport::https::app(hub.hub.state.clone());
    for path in ["/sign-in", "/sign-up", "/forgot", "/setup", "/check-email", "/verify?token=x", "/devices", "/account"]
    {
        let response =
            app().oneshot(Request::get(path).body(AxumBody::empty()).expect("request")).await.expect("answer");
        let headers = response.headers();
        assert_eq!(headers["content-security-policy"], hearth_hub::transport::https::web::CSP, "{path}");
        assert_eq!(
            (&headers["referrer-policy"], &headers["x-frame-options"]),
            (&"no-referrer".parse().expect("v"), &"DENY".parse().expect("v")),
            "{path}"
        );
        assert_eq!(headers["cache-control"], "no-store", "{path}");
    }
    let form = "email=owner%40example.org&password=whatever";
    for (header, value) in
        [("sec-fetch-site", "cross-site"), ("sec-fetch-site", "same-site"), ("origin", "https://evil.example")]
    {
        let request = Request::post("/sign-in")
            .header("content-type", "application/x-www-form-urlencoded")
            .header(header, value)
            .body(AxumBody::from(form))
            .expect("request");
        let response = app().oneshot(request).await.expect("answer");
        assert_eq!(response.status(), 403, "{header}: {value}");
        assert!(response.headers().get("set-cookie").is_none());
    }
    // The same post from this site is judged on its merits (here: a wrong password).
    let request = Request::post("/sign-in")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(AxumBody::from(form))
        .expect("request");
    assert_eq!(app().oneshot(request).await.expect("answer").status(), 401);
    assert!(hub.has_events("csrf_refused", 1).await, "cross-site posts are security events");
}
