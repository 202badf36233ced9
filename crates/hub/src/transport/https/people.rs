//! People's endpoints: sign in (a session cookie and its CSRF token), who am I, my sessions, sign out here or
//! everywhere, change my password, and the audit log for operators. Owner setup is in `api.rs` with the rest of
//! the first-start flow.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{ApiJson, ApiPath, ApiQuery};
use super::auth::{Caller, OperatorAuth};
use super::error::ApiError;
use crate::HubState;
use crate::accounts::{
    AccountInfo, AccountsError, ChangeRefusal, Role, SESSION_ABSOLUTE, SignInOutcome, SignInRefusal,
};
use crate::monitoring::SecurityEvent;

/// The people routes.
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/api/v1/sessions", post(sign_in))
        .route("/api/v1/me", get(me))
        .route("/api/v1/me/sessions", get(my_sessions))
        .route("/api/v1/me/sessions/{id}/revoke", post(end_session))
        .route("/api/v1/me/sign-out", post(sign_out))
        .route("/api/v1/me/sign-out-everywhere", post(sign_out_everywhere))
        .route("/api/v1/me/password", post(change_password))
        .route("/api/v1/audit-log", get(audit_log))
        .route("/api/v1/claims", post(claim))
        .route("/api/v1/me/support-grant", post(grant_support))
        .route("/api/v1/me/support-grant/revoke", post(revoke_support_grant))
}

/// The API answer for a failure of the accounts capability that is not the caller's.
pub fn accounts_error(e: AccountsError) -> ApiError {
    match e {
        AccountsError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
        AccountsError::Store(s) => ApiError::internal(s),
        AccountsError::Hashing(h) => ApiError::internal(h),
    }
}

/// An account as clients see it.
#[derive(Serialize, ToSchema)]
pub struct AccountBody {
    id: String,
    email: String,
    /// `owner`, `admin`, `support` or `consumer`.
    role: String,
}

impl From<AccountInfo> for AccountBody {
    fn from(a: AccountInfo) -> Self {
        AccountBody { id: a.id, email: a.email, role: a.role.as_str().to_owned() }
    }
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    #[schema(min_length = 1, max_length = 254)]
    email: String,
    #[schema(min_length = 1, max_length = 512)]
    password: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct SignedInBody {
    account: AccountBody,
    /// Send it as `X-CSRF-Token` with every unsafe request (POST …) that uses the session cookie.
    csrf_token: String,
    /// When the session ends at the latest, Unix ms (it also ends after 30 minutes unused).
    expires_at_ms: i64,
}

/// Signs in with email and password: the answer sets the session cookie (`__Host-hearth_session`, HttpOnly,
/// Secure, SameSite=Strict) and carries the CSRF token. Unknown email and wrong password get the same answer.
/// Failures are throttled per account and per source network (429 with `Retry-After`; while locked, the right
/// password is refused too).
#[utoipa::path(post, path = "/api/v1/sessions", request_body = SignInRequest,
    responses((status = 201, body = SignedInBody, description = "Signed in; the session cookie is set"),
        (status = 202, body = SecondFactorBody, description = "The right password of an operator with a passkey: confirm with it"),
        (status = 401, body = super::error::ErrorBody, description = "Unknown email, wrong password, or a sign-up not confirmed yet (the same answer)"),
        (status = 429, body = super::error::ErrorBody, description = "Too many failures; see Retry-After"),
        (status = 500, body = super::error::ErrorBody, description = "An operator's passkey cannot be read: refused, never signed in on the password alone"),
        (status = 503, body = super::error::ErrorBody, description = "Too many password checks at once; or an operator's passkey cannot be checked now (`second_factor_unavailable`)")))]
async fn sign_in(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SignInRequest>,
) -> Result<axum::response::Response, ApiError> {
    let source = super::source_ip(&peer);
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    if req.email.len() > 254 || req.password.len() > 512 {
        return Err(ApiError::unauthorized("invalid_credentials", "unknown email or wrong password"));
    }
    match state.accounts.sign_in(&req.email, &req.password, source, agent).await.map_err(accounts_error)? {
        Ok(SignInOutcome::Session(signed)) => Ok(signed_in(signed)),
        Ok(SignInOutcome::SecondFactor(started)) => Ok((
            StatusCode::ACCEPTED,
            Json(SecondFactorBody {
                second_factor: super::passkeys::CeremonyBody {
                    ceremony_id: started.ceremony_id,
                    options: started.options,
                },
            }),
        )
            .into_response()),
        Err(SignInRefusal::Invalid) => {
            // Aggregated per source like every refusal; the email is not recorded (people type passwords there).
            state.monitor.record(SecurityEvent {
                device: None,
                source,
                kind: "sign_in_refused",
                detail: "unknown email or wrong password".into(),
            });
            Err(ApiError::unauthorized("invalid_credentials", INVALID_CREDENTIALS))
        }
        Err(SignInRefusal::SecondFactorUnavailable) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "second_factor_unavailable",
            "this account confirms sign-ins with a passkey, which needs the hub reached by its DNS name",
        )),
        Err(SignInRefusal::Throttled { retry_after_secs }) => {
            state.monitor.record(SecurityEvent {
                device: None,
                source,
                kind: "sign_in_throttled",
                detail: "sign-in refused while locked".into(),
            });
            Err(throttled(retry_after_secs))
        }
    }
}

/// The answer to a sign-in: the session cookie (`__Host-`, HttpOnly, Secure, SameSite=Strict) and the body.
pub fn signed_in(signed: crate::accounts::SignedIn) -> axum::response::Response {
    let cookie = super::auth::session_cookie_header(signed.session_token.expose(), SESSION_ABSOLUTE.whole_seconds());
    let body = SignedInBody {
        account: signed.account.into(),
        csrf_token: signed.csrf_token,
        expires_at_ms: signed.expires_at_ms,
    };
    (StatusCode::CREATED, [(header::SET_COOKIE, cookie)], Json(body)).into_response()
}

#[derive(Serialize, ToSchema)]
struct SecondFactorBody {
    /// The account has a passkey: pass these options to `navigator.credentials.get()` and send the answer to
    /// `POST /api/v1/sessions/second-factor` to get the session.
    second_factor: super::passkeys::CeremonyBody,
}

/// The one answer to a refused sign-in: unknown email, wrong password and an unconfirmed sign-up alike.
pub const INVALID_CREDENTIALS: &str =
    "unknown email or wrong password (just signed up? open the link in our mail first; it signs you in)";

/// The caller's account id, if the caller is a consumer; else 403 saying `why`.
fn consumer<'a>(op: &'a crate::accounts::Operator, why: &str) -> Result<&'a str, ApiError> {
    match (op.role, op.account_id.as_deref()) {
        (Role::Consumer, Some(account)) => Ok(account),
        _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why)),
    }
}

/// 429 with `Retry-After`.
pub fn throttled(retry_after_secs: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        format!("too many failures; try again in {retry_after_secs} s"),
    )
    .with_retry_after(retry_after_secs)
}

#[derive(Serialize, ToSchema)]
struct MeBody {
    /// The account (null for an API token minted by an older hub's setup, which stands for the owner).
    account: Option<AccountBody>,
    /// `owner`, `admin`, `support` or `consumer`.
    role: String,
    /// Signed in through a session (a browser), not an API token.
    session: bool,
}

/// Who the caller is.
#[utoipa::path(get, path = "/api/v1/me", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MeBody)))]
async fn me(State(state): State<HubState>, Caller(op): Caller) -> Result<Json<MeBody>, ApiError> {
    let account = match &op.account_id {
        Some(id) => state.store.account(id).await?.map(|a| AccountInfo::from(&a).into()),
        None => None,
    };
    Ok(Json(MeBody { account, role: op.role.as_str().to_owned(), session: op.session }))
}

#[derive(Serialize, ToSchema)]
struct SessionBody {
    id: String,
    created_at_ms: i64,
    last_seen_at_ms: i64,
    expires_at_ms: i64,
    /// The network it signed in from.
    source: Option<String>,
    user_agent: Option<String>,
    /// The session this request came with.
    current: bool,
}

/// The caller's live sign-in sessions, newest first.
#[utoipa::path(get, path = "/api/v1/me/sessions", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = [SessionBody])))]
async fn my_sessions(State(state): State<HubState>, Caller(op): Caller) -> Result<Json<Vec<SessionBody>>, ApiError> {
    let Some(account) = &op.account_id else { return Ok(Json(Vec::new())) };
    let rows = state.accounts.sessions(account).await?;
    Ok(Json(
        rows.into_iter()
            .map(|s| SessionBody {
                current: op.session && s.id == op.token_id,
                id: s.id,
                created_at_ms: s.created_at,
                last_seen_at_ms: s.last_seen_at,
                expires_at_ms: s.expires_at,
                source: s.source,
                user_agent: s.user_agent,
            })
            .collect(),
    ))
}

/// Ends one of the caller's sessions.
#[utoipa::path(post, path = "/api/v1/me/sessions/{id}/revoke", params(("id" = String, Path, min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$", description = "Session id")), security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Ended")))]
async fn end_session(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let Some(account) = &op.account_id else { return Err(ApiError::not_found("session")) };
    if !super::api::plain_text(&id, 1, 64) {
        return Err(ApiError::not_found("session"));
    }
    if !state.accounts.end_session(account, &id, super::source_ip(&peer)).await? {
        return Err(ApiError::not_found("session"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Ends the session this request came with, and clears its cookie.
#[utoipa::path(post, path = "/api/v1/me/sign-out", security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Signed out")))]
async fn sign_out(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
) -> Result<impl IntoResponse, ApiError> {
    if let (true, Some(account)) = (op.session, &op.account_id) {
        state.accounts.end_session(account, &op.token_id, super::source_ip(&peer)).await?;
    }
    let clear = super::auth::session_cookie_header("", 0);
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]))
}

#[derive(Serialize, ToSchema)]
struct EndedBody {
    /// How many sessions ended.
    ended: u64,
}

/// Ends every session of the caller's account ("sign out everywhere"). API tokens are not affected (revoke them
/// under `/api/v1/tokens`).
#[utoipa::path(post, path = "/api/v1/me/sign-out-everywhere", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = EndedBody)))]
async fn sign_out_everywhere(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
) -> Result<Json<EndedBody>, ApiError> {
    let ended = match &op.account_id {
        Some(account) => state.accounts.end_all_sessions(account, super::source_ip(&peer)).await?,
        None => 0,
    };
    Ok(Json(EndedBody { ended }))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(min_length = 1, max_length = 512)]
    current_password: String,
    /// At least 12 characters, not common, not built from the email or the product's name, not easily guessed.
    #[schema(min_length = 12, max_length = 512)]
    new_password: String,
}

/// Changes the caller's password. Every session of the account ends (sign in again).
#[utoipa::path(post, path = "/api/v1/me/password", request_body = PasswordChange, security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Changed; every session ended"),
        (status = 400, body = super::error::ErrorBody, description = "The new password breaks a rule (`weak_password`)"),
        (status = 403, body = super::error::ErrorBody, description = "The current password is not right"),
        (status = 429, body = super::error::ErrorBody, description = "Too many wrong current passwords; see Retry-After"),
        (status = 503, body = super::error::ErrorBody, description = "Too many password checks at once; retry")))]
async fn change_password(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let Some(account) = &op.account_id else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "no_account", "this API token belongs to no account"));
    };
    let outcome = state
        .accounts
        .change_password(account, &req.current_password, &req.new_password, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?;
    match outcome {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(ChangeRefusal::WrongPassword) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "wrong_password", ChangeRefusal::WrongPassword.to_string()))
        }
        Err(ChangeRefusal::Password(p)) => Err(ApiError::bad_request("weak_password", p.to_string())),
        Err(ChangeRefusal::Throttled { retry_after_secs }) => Err(throttled(retry_after_secs)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// How many, newest first, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct AuditBody {
    at_ms: i64,
    account_id: Option<String>,
    /// `owner_setup`, `owner_recovered`, `owner_recovery_refused`, `sign_in`, `sign_in_refused` (known accounts;
    /// refusals and locks are also aggregated security events), `sign_out`, `sign_out_everywhere`,
    /// `password_changed`, `password_change_refused`, `api_token_created`, `api_token_revoked`, `device_revoked`.
    action: String,
    target: Option<String>,
    /// The source network.
    source: Option<String>,
    detail: String,
}

/// The audit log of security-relevant actions, newest first (owner and admins).
#[utoipa::path(get, path = "/api/v1/audit-log", params(AuditParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = [AuditBody])))]
async fn audit_log(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<Vec<AuditBody>>, ApiError> {
    let limit = super::api::page_limit(p.limit, 100, 1000)?;
    let rows = state.accounts.audit_log(limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditBody {
                at_ms: r.at,
                account_id: r.account_id,
                action: r.action,
                target: r.target,
                source: r.source,
                detail: r.detail,
            })
            .collect(),
    ))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The claim code on the device's label (20 characters; spaces, dashes and case do not matter).
    #[schema(min_length = 1, max_length = 64)]
    claim_code: String,
}

#[derive(Serialize, ToSchema)]
struct ClaimedBody {
    /// The device now the caller's.
    device_id: String,
}

/// Claims a device with the code on its label (or its QR code): it becomes the caller's. Consumers only. A
/// code works once; an unknown code and one already used get the same answer. Attempts are throttled (10 per
/// account and 20 per network in 15 minutes; 429 with `Retry-After`).
#[utoipa::path(post, path = "/api/v1/claims", request_body = ClaimRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = ClaimedBody, description = "Claimed"),
        (status = 404, body = super::error::ErrorBody, description = "No unclaimed device has this code"),
        (status = 429, body = super::error::ErrorBody, description = "Too many attempts; see Retry-After")))]
async fn claim(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<(StatusCode, Json<ClaimedBody>), ApiError> {
    let account = consumer(&op, "devices are claimed by consumer accounts")?;
    let source = super::source_ip(&peer);
    if let Some(retry_after_secs) = state.accounts.count_claim_attempt(account, source).await? {
        return Err(throttled(retry_after_secs));
    }
    let Some(device) = state.identity.claim(&req.claim_code, account).await? else {
        state.monitor.record(SecurityEvent {
            device: None,
            source,
            kind: "claim_refused",
            detail: "unknown or already used claim code".into(),
        });
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_claim", "no unclaimed device has this claim code"));
    };
    state.accounts.claim_succeeded(account, source).await?;
    state.accounts.record(&op, "device_claimed", &device, source).await;
    Ok((StatusCode::CREATED, Json(ClaimedBody { device_id: device })))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupportGrantRequest {
    /// How long support may see the caller's devices, 1 to 168 hours.
    #[schema(minimum = 1, maximum = 168)]
    hours: u32,
}

#[derive(Serialize, ToSchema)]
struct SupportGrantBody {
    /// When support stops seeing the caller's devices, Unix ms.
    expires_at_ms: i64,
}

/// Lets support accounts see the caller's devices (read only) for a while; a new grant replaces the old one.
/// Consumers only.
#[utoipa::path(post, path = "/api/v1/me/support-grant", request_body = SupportGrantRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = SupportGrantBody, description = "Granted")))]
async fn grant_support(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
    ApiJson(req): ApiJson<SupportGrantRequest>,
) -> Result<(StatusCode, Json<SupportGrantBody>), ApiError> {
    let account = consumer(&op, "a consumer grants support access to its devices")?;
    if !(1..=168).contains(&req.hours) {
        return Err(ApiError::bad_request("invalid_hours", "hours must be 1 to 168"));
    }
    let now = state.clock.now_ms();
    let expires_at = now + i64::from(req.hours) * 3_600_000;
    state.store.grant_support(account, now, expires_at).await?;
    state.accounts.record(&op, "support_granted", account, super::source_ip(&peer)).await;
    Ok((StatusCode::CREATED, Json(SupportGrantBody { expires_at_ms: expires_at })))
}

/// Ends the caller's support grant at once.
#[utoipa::path(post, path = "/api/v1/me/support-grant/revoke", security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Ended"), (status = 404, body = super::error::ErrorBody, description = "No grant")))]
async fn revoke_support_grant(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(op): Caller,
) -> Result<StatusCode, ApiError> {
    let account = consumer(&op, "a consumer grants support access to its devices")?;
    if !state.store.revoke_support_grant(account).await? {
        return Err(ApiError::not_found("support grant"));
    }
    state.accounts.record(&op, "support_grant_revoked", account, super::source_ip(&peer)).await;
    Ok(StatusCode::NO_CONTENT)
}
