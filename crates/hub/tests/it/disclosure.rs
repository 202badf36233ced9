//! Vulnerability disclosure through the hub: security.txt by RFC 9116's rules; a report from anyone with a
//! proof of work, its tracking id and private status link; the limits (sizes, challenges used once or forged,
//! reports per source); hostile content kept as text; the operators' inbox with deadlines, states, messages and
//! "actively exploited"; an overdue report flagged.

use std::time::Duration;

use hearth_hub::disclosure::pow;
use hearth_test_support::TestHub;
use serde_json::{Value, json};

/// Asks for a challenge and solves it, as a client does.
async fn solved(hub: &TestHub) -> (String, String) {
    let (status, c) = hub.get("/api/v1/reports/challenge").await.expect("challenge");
    assert_eq!(status, 200, "{c}");
    let challenge = c["challenge"].as_str().expect("challenge").to_owned();
    let bits = c["bits"].as_u64().expect("bits") as u8;
    let nonce = pow::solve(&challenge, bits);
    (challenge, nonce)
}

/// Sends a report without any account.
async fn report(hub: &TestHub, body: Value) -> (u16, Value) {
    let request = hub.client.post(format!("{}/api/v1/reports", hub.base())).json(&body);
    let (status, _, answer) = hub.send(request).await.expect("report");
    (status, serde_json::from_slice(&answer).unwrap_or(Value::Null))
}

#[tokio::test]
async fn security_txt_follows_rfc_9116() {
    let hub = TestHub::start_with(|c| {
        c.disclosure.contacts = vec!["mailto:security@example.org".into()];
        c.disclosure.preferred_languages = vec!["en".into(), "fr".into()];
    })
    .await
    .expect("hub");
    let resp = hub.client.get(format!("{}/.well-known/security.txt", hub.base())).send().await.expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().expect("type").to_owned();
    assert_eq!(content_type, "text/plain; charset=utf-8", "RFC 9116 §3");
    let text = resp.text().await.expect("text");
    let fields: Vec<(&str, &str)> =
        text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| l.split_once(": ").expect(l)).collect();
    let values = |name: &str| fields.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v).collect::<Vec<_>>();
    let contacts = values("Contact");
    assert_eq!(contacts, [format!("{}/security/report", hub.base()).as_str(), "mailto:security@example.org"]);
    assert_eq!(values("Expires").len(), 1, "Expires: exactly once");
    assert_eq!(values("Canonical"), [format!("{}/.well-known/security.txt", hub.base()).as_str()]);
    assert_eq!(values("Preferred-Languages"), ["en, fr"]);
    assert_eq!(values("Policy"), [format!("{}/security/policy", hub.base()).as_str()]);
    for (name, value) in &fields {
        assert!(
            ["Contact", "Expires", "Canonical", "Preferred-Languages", "Policy", "Encryption", "Acknowledgments"]
                .contains(name),
            "an RFC 9116 field: {name}"
        );
        if *name != "Expires" && *name != "Preferred-Languages" {
            assert!(value.starts_with("https://") || value.starts_with("mailto:"), "{name}: {value}");
        }
    }
    // A contact that would add a field is refused when the hub starts.
    let bad =
        TestHub::start_with(|c| c.disclosure.contacts = vec!["mailto:a@example.org\nExpires: never".into()]).await;
    assert!(bad.is_err_and(|e| e.to_string().contains("disclosure.contacts")));
}

#[tokio::test]
async fn an_anonymous_report_gets_a_tracking_id_and_a_private_status_link_and_operators_answer_it() {
    let hub = TestHub::start().await.expect("hub");
    let (challenge, nonce) = solved(&hub).await;
    let hostile = "<script>alert(document.cookie)</script>\r\nX-Injected: yes\n\u{202e}reversed";
    let (status, receipt) = report(
        &hub,
        json!({"summary": "Telnet left open on port 23", "details": hostile, "affected": "plug-1 <= 1.2",
               "name": "<b>Ada</b>", "email": "ada@example.org", "challenge": challenge, "nonce": nonce}),
    )
    .await;
    assert_eq!(status, 201, "{receipt}");
    let id = receipt["id"].as_str().expect("id").to_owned();
    let token = receipt["token"].as_str().expect("token").to_owned();
    assert!(id.starts_with("VR-"), "{id}");
    assert!(receipt["status_url"].as_str().is_some_and(|u| u.contains(&id) && u.contains(&token)), "{receipt}");

    // The same challenge again is refused: one report per challenge.
    let (status, answer) =
        report(&hub, json!({"summary": "again", "details": "again", "challenge": challenge, "nonce": nonce})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("used already")), "{answer}");

    // The reporter reads the status through the link; a wrong token or id says nothing more than "no such report".
    let status_path = |t: &str| format!("/api/v1/reports/{id}/status?token={t}");
    let (status, view) = hub.get(&status_path(&token)).await.expect("status");
    assert_eq!((status, view["state"].as_str()), (200, Some("new")), "{view}");
    let (status, wrong) = hub.get(&status_path("hvr_wrong")).await.expect("wrong");
    let (status2, unknown) = hub.get(&format!("/api/v1/reports/VR-NOPE/status?token={token}")).await.expect("unknown");
    assert_eq!((status, status2), (404, 404));
    assert_eq!(wrong["error"], unknown["error"], "a wrong token and an unknown id look the same");

    // Operators see it in the inbox with its deadline, content exactly as sent (text, never markup).
    let (status, inbox) = hub.get("/api/v1/reports").await.expect("inbox");
    assert_eq!(status, 200);
    let listed = &inbox["reports"][0];
    assert_eq!(
        (listed["id"].as_str(), listed["next_deadline"]["kind"].as_str()),
        (Some(id.as_str()), Some("acknowledge"))
    );
    assert_eq!(listed["overdue"], false);
    let received = listed["received_at"].as_i64().expect("received");
    assert_eq!(listed["next_deadline"]["due_at"].as_i64(), Some(received + 7 * 86_400_000), "7 days by default");
    let (_, detail) = hub.get(&format!("/api/v1/reports/{id}")).await.expect("detail");
    assert_eq!(detail["details"], hostile, "kept byte for byte");
    assert_eq!(detail["reporter_name"], "<b>Ada</b>");

    // Acknowledge, write, mark actively exploited; the reporter sees the state and the message and answers.
    let (status, acked) =
        hub.post(&format!("/api/v1/reports/{id}/state"), json!({"state": "acknowledged"})).await.expect("ack");
    assert_eq!(status, 200, "{acked}");
    assert!(acked["report"]["acknowledged_at"].as_i64().is_some());
    assert_eq!(acked["report"]["next_deadline"]["kind"], "status", "then the status every 30 days");
    let (status, _) = hub.post(&format!("/api/v1/reports/{id}/state"), json!({"state": "new"})).await.expect("new");
    assert_eq!(status, 422, "nothing goes back to new");
    let (status, _) = hub.post(&format!("/api/v1/reports/{id}/state"), json!({"state": "bogus"})).await.expect("bogus");
    assert_eq!(status, 422);
    let (status, _) = hub
        .post(&format!("/api/v1/reports/{id}/messages"), json!({"body": "Thanks, we reproduced it."}))
        .await
        .expect("message");
    assert_eq!(status, 200);
    let (status, marked) = hub.post(&format!("/api/v1/reports/{id}/exploited"), json!({})).await.expect("exploited");
    assert_eq!(status, 200);
    let exploited_at = marked["report"]["exploited_at"].as_i64().expect("marked");
    let (_, again) = hub.post(&format!("/api/v1/reports/{id}/exploited"), json!({})).await.expect("again");
    assert_eq!(again["report"]["exploited_at"].as_i64(), Some(exploited_at), "the first mark counts");
    let reply = hub
        .client
        .post(format!("{}/api/v1/reports/{id}/status/messages?token={token}", hub.base()))
        .json(&json!({"body": "Happy to help."}));
    let (status, _, answer) = hub.send(reply).await.expect("reply");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let (_, view) = hub.get(&status_path(&token)).await.expect("status");
    assert_eq!(view["state"], "acknowledged");
    let authors: Vec<&str> =
        view["messages"].as_array().expect("messages").iter().filter_map(|m| m["author"].as_str()).collect();
    assert_eq!(authors, ["operator", "reporter"]);
    assert!(
        view.get("details").is_none() && view.get("reporter_email").is_none(),
        "the link shows the conversation only"
    );

    // Closed reports have no deadline; a closed one may be reopened to triaging only.
    let (_, rejected) =
        hub.post(&format!("/api/v1/reports/{id}/state"), json!({"state": "rejected"})).await.expect("reject");
    assert!(rejected["report"]["next_deadline"].is_null(), "{rejected}");
    let (status, _) =
        hub.post(&format!("/api/v1/reports/{id}/state"), json!({"state": "fixing"})).await.expect("fixing");
    assert_eq!(status, 409);
    let (status, _) =
        hub.post(&format!("/api/v1/reports/{id}/state"), json!({"state": "triaging"})).await.expect("reopen");
    assert_eq!(status, 200);
    let (_, log) = hub.get("/api/v1/audit-log").await.expect("log");
    let actions: Vec<&str> = log.as_array().expect("log").iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["report_state", "report_message", "report_exploited"] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
}

#[tokio::test]
async fn the_intake_refuses_what_is_too_big_forged_unsolved_or_too_often_and_flags_an_overdue_report() {
    let clock = hearth_hub::clock::Clock::manual(1_795_608_000_000);
    let hub =
        TestHub::start_with_clock(|c| c.disclosure.reports_per_source_per_hour = 2, clock.clone()).await.expect("hub");
    // Each refusal changes nothing.
    let (challenge, nonce) = solved(&hub).await;
    let base = json!({"summary": "s", "details": "d", "challenge": challenge, "nonce": nonce});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, why) in [
        (with("details", json!("x".repeat(33 * 1024))), "details"),
        (with("summary", json!("line\nbreak")), "summary"),
        (with("summary", json!("")), "summary"),
        (with("email", json!("not an email")), "email"),
        (with("nonce", json!("not-a-solution")), "proof of work"),
        (with("challenge", json!(challenge.replacen('.', "x.", 1))), "proof of work"),
    ] {
        let (status, answer) = report(&hub, body).await;
        assert_eq!(status, 422, "{why}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains(why)), "{why}: {answer}");
    }
    let unsolved = pow::solve(&challenge, 0);
    if !pow::solves(&challenge, &unsolved, 16) {
        let (status, _) = report(&hub, with("nonce", json!(unsolved))).await;
        assert_eq!(status, 422, "a nonce that does not reach the difficulty");
    }
    // A body over the API's limit is refused before it is read whole.
    let (status, _) = report(&hub, with("details", json!("x".repeat(200 * 1024)))).await;
    assert_eq!(status, 413);
    let (_, inbox) = hub.get("/api/v1/reports").await.expect("inbox");
    assert_eq!(inbox["reports"].as_array().map(Vec::len), Some(0), "nothing was stored");

    // Two reports an hour from one address; the third is throttled with Retry-After and an event.
    for _ in 0..2 {
        let (c, n) = solved(&hub).await;
        let (status, answer) = report(&hub, json!({"summary": "s", "details": "d", "challenge": c, "nonce": n})).await;
        assert_eq!(status, 201, "{answer}");
    }
    let (c, n) = solved(&hub).await;
    let request = hub
        .client
        .post(format!("{}/api/v1/reports", hub.base()))
        .json(&json!({"summary": "s", "details": "d", "challenge": c, "nonce": n}));
    let (status, headers, _) = hub.send(request).await.expect("third");
    assert_eq!(status, 429);
    assert!(headers.get("retry-after").is_some());
    assert!(hub.has_events("report_throttled", 1).await);

    // A challenge is good for ten minutes.
    let (c, n) = solved(&hub).await;
    clock.advance(Duration::from_secs(11 * 60));
    let (status, answer) = report(&hub, json!({"summary": "late", "details": "d", "challenge": c, "nonce": n})).await;
    assert_eq!(status, 422);
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("expired")), "{answer}");

    // Eight days later, the unacknowledged reports are overdue.
    clock.advance(Duration::from_secs(8 * 86_400));
    let (_, inbox) = hub.get("/api/v1/reports").await.expect("inbox");
    let reports = inbox["reports"].as_array().expect("reports");
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r["overdue"] == true && r["next_deadline"]["kind"] == "acknowledge"), "{inbox}");
    let (_, only_new) = hub.get("/api/v1/reports?state=new").await.expect("filtered");
    assert_eq!(only_new["reports"].as_array().map(Vec::len), Some(2));
    let (status, _) = hub.get("/api/v1/reports?state=bogus").await.expect("bad filter");
    assert_eq!(status, 422);
}

/// The value of `<input … name="NAME" value="…">` in a page.
fn field(page: &str, name: &str) -> String {
    let at = page.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no field {name}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').expect("end")].to_owned()
}

#[tokio::test]
async fn the_pages_take_a_report_show_it_as_text_and_let_operators_answer() {
    let hub = TestHub::start_with(|c| {
        c.disclosure.organisation = "Example Devices Ltd".into();
        c.disclosure.acknowledge_days = 5;
    })
    .await
    .expect("hub");
    let b = hub.browser().expect("client");
    let base = hub.base();
    let policy = b.get(format!("{base}/security/policy")).send().await.expect("policy").text().await.expect("text");
    assert!(policy.contains("Example Devices Ltd") && policy.contains("within <strong>5 days</strong>"), "{policy}");
    assert!(policy.contains("Safe harbour"));

    // The form carries a challenge; the browser's script solves it (here, the test does).
    let form = b.get(format!("{base}/security/report")).send().await.expect("form").text().await.expect("text");
    assert!(form.contains("/static/report.js"), "the proof of work runs in the browser");
    let (challenge, bits) = (field(&form, "challenge"), field(&form, "bits").parse::<u8>().expect("bits"));
    let hostile = "<img src=x onerror=alert(1)> & </pre><script>alert(2)</script>";
    let post = |fields: Vec<(&'static str, String)>| {
        b.post(format!("{base}/security/report")).header("sec-fetch-site", "same-origin").form(&fields).send()
    };
    // Without the proof of work the form comes back with the reason and what was typed, escaped.
    let refused = post(vec![("summary", hostile.into()), ("details", "d".into()), ("challenge", challenge.clone())])
        .await
        .expect("post");
    assert_eq!(refused.status().as_u16(), 422);
    let page = refused.text().await.expect("text");
    assert!(page.contains("proof of work") && !page.contains("<img src=x"), "escaped and explained");
    let nonce = pow::solve(&challenge, bits);
    let sent = post(vec![
        ("summary", "Telnet open".into()),
        ("details", hostile.into()),
        ("challenge", challenge),
        ("nonce", nonce),
        ("name", "<b>Ada</b>".into()),
    ])
    .await
    .expect("post");
    assert_eq!(sent.status().as_u16(), 201);
    let receipt = sent.text().await.expect("text");
    let marker = "id=\"status-link\" type=\"text\" readonly value=\"";
    let at = receipt.find(marker).expect("the status link is shown") + marker.len();
    let link = receipt[at..at + receipt[at..].find('"').expect("end")].replace("&#38;", "&").replace("&#61;", "=");
    let link = link.split_once("/security/").map(|(_, rest)| format!("{base}/security/{rest}")).expect("link");
    assert!(receipt.contains("Keep this private link"));
    let id = receipt.split("<h1>Report ").nth(1).and_then(|s| s.split('<').next()).expect("id").to_owned();
    // A cross-site form post is refused before anything runs.
    let cross = b
        .post(format!("{base}/security/report"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("summary", "x")])
        .send()
        .await
        .expect("cross");
    assert_eq!(cross.status().as_u16(), 403);

    // The operator's inbox shows it, the content as text; the operator answers from the page.
    let (cookie, csrf) =
        hub.session(hearth_test_support::OWNER_EMAIL, hearth_test_support::OWNER_PASSWORD).await.expect("owner");
    let inbox = b.get(format!("{base}/security/inbox")).header("cookie", &cookie).send().await.expect("inbox");
    let inbox = inbox.text().await.expect("text");
    assert!(inbox.contains(&id) && inbox.contains("acknowledge by"), "{inbox}");
    let page = b.get(format!("{base}/security/inbox/{id}")).header("cookie", &cookie).send().await.expect("report");
    let page = page.text().await.expect("text");
    assert!(!page.contains("<img src=x") && !page.contains("<script>alert"), "never markup: {page}");
    assert!(page.contains("&#60;img src") && page.contains("&#60;b&#62;Ada&#60;/b&#62;"), "shown as text: {page}");
    let act = |action: &str, fields: Vec<(&'static str, String)>| {
        let mut fields = fields;
        fields.push(("csrf", csrf.clone()));
        b.post(format!("{base}/security/inbox/{id}/{action}"))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "same-origin")
            .form(&fields)
            .send()
    };
    assert_eq!(act("state", vec![("state", "acknowledged".into())]).await.expect("ack").status().as_u16(), 303);
    assert_eq!(act("message", vec![("body", "We are on it.".into())]).await.expect("msg").status().as_u16(), 303);
    assert_eq!(act("exploited", vec![]).await.expect("exploited").status().as_u16(), 303);
    assert_eq!(act("bogus", vec![]).await.expect("bogus").status().as_u16(), 404);
    let page = b.get(format!("{base}/security/inbox/{id}")).header("cookie", &cookie).send().await.expect("page");
    let page = page.text().await.expect("text");
    assert!(page.contains("Early warning (24 hours)") && page.contains("FINAL REPORT (CRA Art. 14(2)(c))"), "{page}");
    assert_eq!(act("cra-early_warning", vec![]).await.expect("filed").status().as_u16(), 303);
    assert_eq!(act("cra-final_report", vec![]).await.expect("final").status().as_u16(), 409, "not fixed yet");

    // The reporter sees the state and the answer through the link, and answers.
    let status = b.get(&link).send().await.expect("status").text().await.expect("text");
    assert!(status.contains("acknowledged") && status.contains("We are on it."), "{status}");
    assert!(!status.contains("Keep this private link"), "the link is shown once");
    let token = link.split("token=").nth(1).expect("token").to_owned();
    let answer = b
        .post(format!("{base}/security/reports/{id}"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", token.as_str()), ("body", "Thanks! <i>more</i>")])
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status().as_u16(), 200);
    assert!(answer.text().await.expect("text").contains("Thanks! &#60;i&#62;more&#60;/i&#62;"));
    let wrong = b.get(format!("{base}/security/reports/{id}?token=hvr_wrong")).send().await.expect("wrong");
    assert_eq!(wrong.status().as_u16(), 404);
}

#[tokio::test]
async fn marking_a_report_actively_exploited_starts_the_cra_clock_with_drafts_and_deadlines() {
    let clock = hearth_hub::clock::Clock::manual(1_795_608_000_000);
    let hub = TestHub::start_with_clock(|c| c.disclosure.organisation = "Example Devices Ltd".into(), clock.clone())
        .await
        .expect("hub");
    let (challenge, nonce) = solved(&hub).await;
    let (_, receipt) = report(
        &hub,
        json!({"summary": "Remote code execution in the plug's web UI", "details": "d", "affected": "plug-1 1.0-1.2",
               "challenge": challenge, "nonce": nonce}),
    )
    .await;
    let id = receipt["id"].as_str().expect("id").to_owned();
    let path = |tail: &str| format!("/api/v1/reports/{id}{tail}");
    let (_, detail) = hub.get(&path("")).await.expect("detail");
    assert!(detail["cra"].is_null(), "no clock before it is marked exploited");
    let (status, _) = hub.post(&path("/cra/early_warning"), json!({})).await.expect("early");
    assert_eq!(status, 409, "nothing to file yet");

    let (_, marked) = hub.post(&path("/exploited"), json!({})).await.expect("exploited");
    let started = marked["cra"]["started_at"].as_i64().expect("started");
    let stages = marked["cra"]["stages"].as_array().expect("stages").clone();
    let names: Vec<&str> = stages.iter().filter_map(|s| s["stage"].as_str()).collect();
    assert_eq!(names, ["early_warning", "notification", "final_report"]);
    assert_eq!(stages[0]["due_at"].as_i64(), Some(started + 24 * 3_600_000), "24 hours");
    assert_eq!(stages[1]["due_at"].as_i64(), Some(started + 72 * 3_600_000), "72 hours");
    assert!(stages[2]["due_at"].is_null(), "the final report waits for a fix");
    let draft = stages[0]["draft"].as_str().expect("draft");
    assert!(
        draft.contains("Example Devices Ltd") && draft.contains("plug-1 1.0-1.2") && draft.contains(&id),
        "{draft}"
    );
    let (status, _) = hub.post(&path("/cra/final_report"), json!({})).await.expect("final");
    assert_eq!(status, 409, "no final report before a fix");
    let (status, _) = hub.post(&path("/cra/weekly"), json!({})).await.expect("bogus");
    assert_eq!(status, 422);

    // A day later the early warning is overdue; recording it as filed clears that.
    clock.advance(Duration::from_secs(25 * 3600));
    let (_, late) = hub.get(&path("")).await.expect("detail");
    assert_eq!(late["cra"]["stages"][0]["overdue"], true);
    assert_eq!(late["cra"]["stages"][1]["overdue"], false);
    let (status, filed) = hub.post(&path("/cra/early_warning"), json!({})).await.expect("file");
    assert_eq!(status, 200);
    assert_eq!(filed["cra"]["stages"][0]["overdue"], false);
    assert!(filed["cra"]["stages"][0]["filed_at"].as_i64().is_some());

    // The fix: the final report is due 14 days later.
    let (_, fixed) = hub.post(&path("/state"), json!({"state": "fixed"})).await.expect("fixed");
    let fixed_at = clock.now_ms();
    assert_eq!(fixed["cra"]["stages"][2]["due_at"].as_i64(), Some(fixed_at + 14 * 86_400_000));
    let (status, _) = hub.post(&path("/cra/final_report"), json!({})).await.expect("final");
    assert_eq!(status, 200);
    // The notification was never recorded: 72 hours have passed, so it shows overdue.
    clock.advance(Duration::from_secs(48 * 3600));
    let (_, now) = hub.get(&path("")).await.expect("detail");
    assert_eq!(now["cra"]["stages"][1]["overdue"], true);
    let (_, log) = hub.get("/api/v1/audit-log").await.expect("log");
    assert!(log.as_array().expect("log").iter().any(|e| e["action"] == "report_cra_filed"));
}

#[tokio::test]
async fn each_model_has_a_public_security_statement_that_flags_a_support_period_under_five_years() {
    use hearth_test_support::updates::{Maker, release_info};
    let hub = TestHub::start_with(|c| {
        c.disclosure.organisation = "Example Devices Ltd".into();
        c.disclosure.contacts = vec!["mailto:security@example.org".into()];
    })
    .await
    .expect("hub");
    let anon = |path: &str| hub.client.get(format!("{}{path}", hub.base())).send();
    assert_eq!(anon("/api/v1/models/test-model/security-statement").await.expect("get").status().as_u16(), 404);
    let dir = tempfile::tempdir().expect("dir");
    let maker = Maker::new(&hub.client, &hub.base(), &hub.token, dir.path()).await.expect("maker");
    maker.release("test-model-1.0.0.img", release_info("test-model", "1.0.0", 1), 1000, 1).await.expect("release");
    let (status, answer) = maker.publish(&hub.client, &hub.base(), &hub.token, &[1], true).await.expect("publish");
    assert_eq!(status, 200, "{answer}");
    let now = hub.hub.state.clock.now_ms();
    let year = 31_557_600_000i64;
    let support = |until: i64| json!({"support_until": until, "policy": "Fixes for <b>known</b> vulnerabilities."});
    assert_eq!(hub.post("/api/v1/models/test-model/support", support(now + 3 * year)).await.expect("support").0, 200);

    // Anyone may read it: no account, no token.
    let resp = anon("/api/v1/models/test-model/security-statement").await.expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    let s: Value = resp.json().await.expect("json");
    assert_eq!(s["manufacturer"], "Example Devices Ltd");
    assert_eq!(s["support_until"].as_i64(), Some(now + 3 * year));
    assert_eq!(s["support_shorter_than_five_years"], true, "three years is under the CRA's five");
    let contacts: Vec<&str> =
        s["report_contacts"].as_array().expect("contacts").iter().filter_map(Value::as_str).collect();
    assert_eq!(contacts, [format!("{}/security/report", hub.base()).as_str(), "mailto:security@example.org"]);
    assert!(s["update_policy"].as_str().is_some_and(|p| p.contains("within 14 days") && p.contains("free")), "{s}");

    // The page says so and offers the snippet (escaped, to copy); the snippet alone carries no script.
    let page = anon("/security/products/test-model").await.expect("page").text().await.expect("text");
    assert!(page.contains("shorter than five years") && page.contains("id=\"snippet\""), "{page}");
    assert!(!page.contains("<b>known</b>"), "the maker's policy is text too");
    let snippet = anon("/security/products/test-model/snippet.html").await.expect("snippet");
    assert!(snippet.headers()["content-type"].to_str().expect("type").starts_with("text/html"));
    let snippet = snippet.text().await.expect("text");
    assert!(snippet.starts_with("<section class=\"hearth-security-statement\"") && !snippet.contains("<script"));
    assert!(snippet.contains("/security/report") && snippet.contains("Example Devices Ltd"));

    // The owner gets a PSTI statement of compliance to complete and sign; nobody else does.
    let (status, _, draft) = hub
        .send(hub.client.get(format!("{}/api/v1/models/test-model/psti-statement", hub.base())).bearer_auth(&hub.token))
        .await
        .expect("draft");
    let draft = String::from_utf8(draft).expect("text");
    assert_eq!(status, 200, "{draft}");
    assert!(
        draft.contains("STATEMENT OF COMPLIANCE")
            && draft.contains("test-model")
            && draft.contains("Example Devices Ltd")
    );
    assert_eq!(anon("/api/v1/models/test-model/psti-statement").await.expect("anon").status().as_u16(), 401);

    // Extended to six years: no longer flagged. An unknown or malformed model is not found.
    assert_eq!(hub.post("/api/v1/models/test-model/support", support(now + 6 * year)).await.expect("support").0, 200);
    let s: Value = anon("/api/v1/models/test-model/security-statement").await.expect("get").json().await.expect("json");
    assert_eq!(s["support_shorter_than_five_years"], false);
    assert_eq!(anon("/security/products/no-such-model").await.expect("get").status().as_u16(), 404);
    assert_eq!(anon("/security/products/..%2F..").await.expect("get").status().as_u16(), 404);
}
