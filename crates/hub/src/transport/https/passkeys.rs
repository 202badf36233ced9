//! Passkey endpoints: add, list and remove the caller's passkeys; sign in with a passkey; confirm an operator's
//! password sign-in with one; sign up with one. Each ceremony is two calls: `…/start` answers a ceremony id and
//! the options for `navigator.credentials.create()` or `.get()`; `…/finish` takes the id and the browser's
//! answer (`PublicKeyCredential.toJSON()`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{ApiJson, ApiPath, plain_text};
use super::auth::Caller;
use super::error::ApiError;
use super::people::{accounts_error, signed_in};
use crate::HubState;
use crate::accounts::passkeys::{PasskeyInfo, PasskeyRefusal, Started};

/// The passkey routes.
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/api/v1/me/passkeys", get(list))
        .route("/api/v1/me/passkeys/register/start", post(register_start))
        .route("/api/v1/me/passkeys/register/finish", post(register_finish))
        .route("/api/v1/me/passkeys/{id}/remove", post(remove))
        .route("/api/v1/sessions/passkey/start", post(sign_in_start))
        .route("/api/v1/sessions/passkey/finish", post(sign_in_finish))
        .route("/api/v1/sessions/second-factor", post(second_factor))
        .route("/api/v1/sign-up/passkey/start", post(sign_up_start))
        .route("/api/v1/sign-up/passkey/finish", post(sign_up_finish))
}

/// The API answer for a refusal.
pub fn refusal(r: PasskeyRefusal) -> ApiError {
    let message = r.to_string();
    match r {
        PasskeyRefusal::Unavailable => ApiError::new(StatusCode::NOT_FOUND, "passkeys_unavailable", message),
        PasskeyRefusal::InvalidCeremony => ApiError::bad_request("invalid_ceremony", message),
        PasskeyRefusal::Rejected(_) => ApiError::bad_request("passkey_rejected", message),
        PasskeyRefusal::UnknownPasskey => ApiError::unauthorized("unknown_passkey", message),
        PasskeyRefusal::SignInAgain => ApiError::new(StatusCode::FORBIDDEN, "sign_in_again", message),
        PasskeyRefusal::LastCredential => ApiError::new(StatusCode::CONFLICT, "last_credential", message),
        PasskeyRefusal::TooMany => ApiError::new(StatusCode::CONFLICT, "too_many_passkeys", message),
        PasskeyRefusal::NoSuchPasskey => ApiError::not_found("passkey"),
        PasskeyRefusal::SignUp(l) => super::links::refusal(l),
    }
}

/// A ceremony started.
#[derive(Serialize, ToSchema)]
pub struct CeremonyBody {
    /// Send it back with the browser's answer, within 5 minutes.
    pub ceremony_id: String,
    /// For `navigator.credentials.create()` or `.get()`: `{"publicKey": …}` as WebAuthn's JSON (base64url).
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

impl From<Started> for CeremonyBody {
    fn from(s: Started) -> Self {
        CeremonyBody { ceremony_id: s.ceremony_id, options: s.options }
    }
}

#[derive(Serialize, ToSchema)]
struct PasskeyBody {
    /// The credential id, base64url.
    id: String,
    name: String,
    created_at_ms: i64,
    last_used_at_ms: Option<i64>,
}

impl From<PasskeyInfo> for PasskeyBody {
    fn from(p: PasskeyInfo) -> Self {
        PasskeyBody { id: p.id, name: p.name, created_at_ms: p.created_at_ms, last_used_at_ms: p.last_used_at_ms }
    }
}

/// The caller's passkeys.
#[utoipa::path(get, path = "/api/v1/me/passkeys", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = [PasskeyBody])))]
async fn list(State(state): State<HubState>, Caller(op): Caller) -> Result<Json<Vec<PasskeyBody>>, ApiError> {
    let Some(account) = &op.account_id else { return Ok(Json(Vec::new())) };
    Ok(Json(state.accounts.passkeys(account).await?.into_iter().map(PasskeyBody::from).collect()))
}

/// Starts adding a passkey to the caller's account. For an operator, a passkey then confirms every password
/// sign-in (second factor).
#[utoipa::path(post, path = "/api/v1/me/passkeys/register/start", security(("bearer" = []), ("session" = [])),
        responses((status = 200, body = CeremonyBody),
        (status = 403, body = super::error::ErrorBody, description = "Not signed in through a session within the last 10 minutes (`sign_in_again`)"),
        (status = 404, body = super::error::ErrorBody, description = "Passkeys are off: the hub is reached by an IP address"),
        (status = 409, body = super::error::ErrorBody, description = "The account has 10 passkeys")))]
async fn register_start(State(state): State<HubState>, Caller(op): Caller) -> Result<Json<CeremonyBody>, ApiError> {
    let started = state.accounts.passkey_registration_start(&op).await.map_err(accounts_error)?.map_err(refusal)?;
    Ok(Json(started.into()))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterFinish {
    #[schema(min_length = 1, max_length = 64)]
    ceremony_id: String,
    /// A name to tell it apart, such as "laptop" (at most 64 characters).
    #[schema(max_length = 64)]
    name: Option<String>,
    /// The browser's answer: `PublicKeyCredential.toJSON()` of `navigator.credentials.create()`.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

/// Finishes adding a passkey.
#[utoipa::path(post, path = "/api/v1/me/passkeys/register/finish", request_body = RegisterFinish, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = PasskeyBody, description = "Added"),
        (status = 400, body = super::error::ErrorBody, description = "`invalid_ceremony` or `passkey_rejected`"),
        (status = 404, body = super::error::ErrorBody, description = "Passkeys are off"),
        (status = 409, body = super::error::ErrorBody, description = "The account has 10 passkeys")))]
async fn register_finish(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
    ApiJson(req): ApiJson<RegisterFinish>,
) -> Result<(StatusCode, Json<PasskeyBody>), ApiError> {
    if !plain_text(&req.ceremony_id, 1, 64) {
        return Err(refusal(PasskeyRefusal::InvalidCeremony));
    }
    let name = req.name.unwrap_or_default();
    let added = state
        .accounts
        .passkey_registration_finish(&op, &req.ceremony_id, &name, req.credential, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok((StatusCode::CREATED, Json(added.into())))
}

/// Removes one of the caller's passkeys (not the only credential of a passkey-only account).
#[utoipa::path(post, path = "/api/v1/me/passkeys/{id}/remove", params(("id" = String, Path, min_length = 1, max_length = 1400, pattern = "^[A-Za-z0-9_-]+$", description = "Passkey id")), security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Removed"),
                (status = 404, body = super::error::ErrorBody, description = "No such passkey"),
        (status = 409, body = super::error::ErrorBody, description = "It is the account's only way to sign in (`last_credential`)")))]
async fn remove(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !plain_text(&id, 1, 1400) {
        return Err(ApiError::not_found("passkey"));
    }
    state.accounts.remove_passkey(&op, &id, super::source_ip(&peer)).await.map_err(accounts_error)?.map_err(refusal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts signing in with a passkey. No email: the browser offers the passkeys it holds for this hub. Starts are
/// capped per source network (429 with `Retry-After`).
#[utoipa::path(post, path = "/api/v1/sessions/passkey/start",
    responses((status = 200, body = CeremonyBody),
        (status = 404, body = super::error::ErrorBody, description = "Passkeys are off"),
        (status = 429, body = super::error::ErrorBody, description = "Too many starts from this network")))]
async fn sign_in_start(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
) -> Result<Json<CeremonyBody>, ApiError> {
    let started = state
        .accounts
        .passkey_sign_in_start(super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok(Json(started.into()))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CeremonyAnswer {
    #[schema(min_length = 1, max_length = 64)]
    ceremony_id: String,
    /// The browser's answer: `PublicKeyCredential.toJSON()`.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeySignIn {
    #[schema(min_length = 1, max_length = 64)]
    ceremony_id: String,
    /// The browser's answer: `PublicKeyCredential.toJSON()`.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
    /// For a passkey sign-up not yet confirmed: the `token` of the link in its mail (the mailbox and the passkey
    /// together confirm the email).
    #[schema(max_length = 128)]
    verify_token: Option<String>,
}

/// Finishes a passkey sign-in: the session cookie, as `POST /api/v1/sessions` sets it.
#[utoipa::path(post, path = "/api/v1/sessions/passkey/finish", request_body = PasskeySignIn,
    responses((status = 201, body = super::people::SignedInBody, description = "Signed in; the session cookie is set"),
        (status = 400, body = super::error::ErrorBody, description = "`invalid_ceremony` or `passkey_rejected`"),
                (status = 401, body = super::error::ErrorBody, description = "The passkey signs in to no account here (or to a sign-up not confirmed: send the link's `verify_token`)"),
        (status = 404, body = super::error::ErrorBody, description = "Passkeys are off")))]
async fn sign_in_finish(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PasskeySignIn>,
) -> Result<Response, ApiError> {
    if req.verify_token.as_deref().is_some_and(|t| !plain_text(t, 1, 128)) {
        return Err(super::links::refusal(crate::accounts::links::LinkRefusal::InvalidLink));
    }
    if !plain_text(&req.ceremony_id, 1, 64) {
        return Err(refusal(PasskeyRefusal::InvalidCeremony));
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let signed = state
        .accounts
        .passkey_sign_in_finish(
            &req.ceremony_id,
            req.credential,
            req.verify_token.as_deref(),
            super::source_ip(&peer),
            agent,
        )
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok(signed_in(signed))
}

/// Confirms an operator's password sign-in with a passkey (the `second_factor` ceremony `POST /api/v1/sessions`
/// answered): the session cookie.
#[utoipa::path(post, path = "/api/v1/sessions/second-factor", request_body = CeremonyAnswer,
    responses((status = 201, body = super::people::SignedInBody, description = "Signed in; the session cookie is set"),
        (status = 400, body = super::error::ErrorBody, description = "`invalid_ceremony` or `passkey_rejected`"),
        (status = 404, body = super::error::ErrorBody, description = "Passkeys are off")))]
async fn second_factor(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CeremonyAnswer>,
) -> Result<Response, ApiError> {
    if !plain_text(&req.ceremony_id, 1, 64) {
        return Err(refusal(PasskeyRefusal::InvalidCeremony));
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let signed = state
        .accounts
        .second_factor_finish(&req.ceremony_id, req.credential, super::source_ip(&peer), agent)
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok(signed_in(signed))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeySignUp {
    #[schema(min_length = 3, max_length = 254)]
    email: String,
}

/// Starts signing up with a passkey instead of a password. The same answers as `POST /api/v1/sign-up` otherwise:
/// whether or not the email has an account shows only in the mail.
#[utoipa::path(post, path = "/api/v1/sign-up/passkey/start", request_body = PasskeySignUp,
    responses((status = 200, body = CeremonyBody),
        (status = 403, body = super::error::ErrorBody, description = "This hub takes no sign-ups"),
        (status = 404, body = super::error::ErrorBody, description = "Passkeys are off"),
        (status = 429, body = super::error::ErrorBody, description = "Too many sign-ups from this network"),
        (status = 503, body = super::error::ErrorBody, description = "No mailer")))]
async fn sign_up_start(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    ApiJson(req): ApiJson<PasskeySignUp>,
) -> Result<Json<CeremonyBody>, ApiError> {
    if req.email.len() > 254 {
        return Err(ApiError::bad_request("invalid_email", "an email address is at most 254 characters"));
    }
    let started = state
        .accounts
        .passkey_sign_up_start(&req.email, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok(Json(started.into()))
}

#[derive(Serialize, ToSchema)]
struct AcceptedBody {
    /// Always `check_your_email`.
    status: &'static str,
}

/// Finishes a passkey sign-up: a mail with the link that confirms the address is on its way (or, for a taken
/// email, a note).
#[utoipa::path(post, path = "/api/v1/sign-up/passkey/finish", request_body = CeremonyAnswer,
    responses((status = 202, body = AcceptedBody, description = "A mail is on its way"),
        (status = 400, body = super::error::ErrorBody, description = "`invalid_ceremony` or `passkey_rejected`"),
        (status = 404, body = super::error::ErrorBody, description = "Passkeys are off")))]
async fn sign_up_finish(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    ApiJson(req): ApiJson<CeremonyAnswer>,
) -> Result<impl IntoResponse, ApiError> {
    if !plain_text(&req.ceremony_id, 1, 64) {
        return Err(refusal(PasskeyRefusal::InvalidCeremony));
    }
    state
        .accounts
        .passkey_sign_up_finish(&req.ceremony_id, req.credential, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok((StatusCode::ACCEPTED, Json(AcceptedBody { status: "check_your_email" })))
}
