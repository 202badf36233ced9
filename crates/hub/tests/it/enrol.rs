//! Enrolment and renewal through the HTTPS API: single-use tokens, CSR checks, mutual-TLS renewal.

use hearth_test_support::{TestHub, client_for, csr_for};
use serde_json::json;

async fn enrol_raw(hub: &TestHub, device_id: &str, token: &str, csr: &str) -> (u16, serde_json::Value) {
    let request = hub
        .client
        .post(format!("{}/api/v1/enrol", hub.base()))
        .json(&json!({ "device_id": device_id, "bootstrap_token": token, "csr_pem": csr }));
    let (status, _, body) = hub.send(request).await.expect("request");
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn bootstrap_token_works_once_and_refusals_change_nothing() {
    let hub = TestHub::start().await.expect("hub");
    let files = hub.manufacture("plug-1", 2).await.expect("manufacture");
    let (a, b) = (&files[0], &files[1]);
    let key = rcgen::KeyPair::generate().expect("key");

    // A CSR naming another device is refused and does not use up the token.
    let (status, body) =
        enrol_raw(&hub, a.device_id.as_str(), &a.bootstrap_token, &csr_for(&key, b.device_id.as_str()).expect("csr"))
            .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_csr")), "{body}");
    // Garbage CSR.
    let (status, body) = enrol_raw(
        &hub,
        a.device_id.as_str(),
        &a.bootstrap_token,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_csr")));
    // A wrong token with a garbage CSR: refused as unauthenticated before the CSR is even looked at.
    let (status, body) = enrol_raw(&hub, a.device_id.as_str(), "hbt_wrong", "not a CSR").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")));
    // Another device's token.
    let csr_a = csr_for(&key, a.device_id.as_str()).expect("csr");
    let (status, body) = enrol_raw(&hub, a.device_id.as_str(), &b.bootstrap_token, &csr_a).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")));
    // Unknown device: the same answer as a wrong token (nothing disclosed).
    let (status, _) = enrol_raw(&hub, "zzzzzzzzzzzzzzzz", &a.bootstrap_token, &csr_a).await;
    assert_eq!(status, 401);
    let (_, dev) = hub.get(&format!("/api/v1/devices/{}", a.device_id)).await.expect("get");
    assert_eq!(dev["status"], "manufactured", "refusals must not change the device");

    // The real enrolment succeeds and yields a certificate naming the device, signed by the device CA.
    let (status, cert) = enrol_raw(&hub, a.device_id.as_str(), &a.bootstrap_token, &csr_a).await;
    assert_eq!(status, 200, "{cert}");
    let chain = cert["certificate_chain_pem"].as_str().expect("chain");
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(cert["renew_after_ms"].as_u64() < cert["not_after_ms"].as_u64());

    // A replay with another key: refused, and the device keeps the certificate it got. (A retry with the same
    // key is the lost-reply case: `enrol_retry_after_a_lost_reply_...` below.)
    let other_key = rcgen::KeyPair::generate().expect("key");
    let csr_other = csr_for(&other_key, a.device_id.as_str()).expect("csr");
    let (status, body) = enrol_raw(&hub, a.device_id.as_str(), &a.bootstrap_token, &csr_other).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("token_used")));
    let (_, dev) = hub.get(&format!("/api/v1/devices/{}", a.device_id)).await.expect("get");
    assert_eq!(dev["status"], "enrolled");

    // Security events recorded the refusals (aggregated per source and device, each counted).
    assert!(hub.has_events("enrol_refused", 6).await, "all six refusals must be recorded as security events");
}

#[tokio::test]
async fn renewal_needs_the_current_certificate_and_stops_at_revocation() {
    let hub = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("dir");
    let device = hub.enrolled_device(dir.path()).await.expect("device");
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = csr_for(&key, device.id.as_str()).expect("csr");

    // Without a client certificate.
    let (status, _, _) = hub
        .send(hub.client.post(format!("{}/api/v1/renew", hub.base())).json(&json!({ "csr_pem": csr })))
        .await
        .expect("send");
    assert_eq!(status, 401);

    // With it.
    let identity = format!("{}{}", device.key_pem, device.chain_pem);
    let mtls = client_for(&hub.hub.server_ca_path, Some(identity.as_bytes())).expect("client");
    let request = mtls.post(format!("{}/api/v1/renew", hub.base())).json(&json!({ "csr_pem": csr }));
    let (status, _, body) = hearth_test_support::checked(request).await.expect("send");
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["device_id"], device.id.as_str());

    // A CSR for another name is refused even over mutual TLS.
    let other = csr_for(&key, "someoneelse").expect("csr");
    let request = mtls.post(format!("{}/api/v1/renew", hub.base())).json(&json!({ "csr_pem": other }));
    let (status, _, _) = hearth_test_support::checked(request).await.expect("send");
    assert_eq!(status, 400);

    // After revocation the TLS handshake itself refuses the certificate.
    let (status, _) = hub.post(&format!("/api/v1/devices/{}/revoke", device.id), json!({})).await.expect("revoke");
    assert_eq!(status, 200);
    let mtls = client_for(&hub.hub.server_ca_path, Some(identity.as_bytes())).expect("client");
    let result = mtls.post(format!("{}/api/v1/renew", hub.base())).json(&json!({ "csr_pem": csr })).send().await;
    assert!(result.is_err() || result.as_ref().is_ok_and(|r| r.status() != 200), "revoked renewal must fail");
}
