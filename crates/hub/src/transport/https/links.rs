//! Endpoints for what goes through a mail link: consumer sign-up and email verification, password reset,
//! operator invitations; and the operators' list of accounts with disabling.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{ApiJson, ApiPath, ApiQuery, page_limit, plain_text};
use super::auth::OperatorAuth;
use super::error::ApiError;
use super::people::{AccountBody, accounts_error};
use crate::HubState;
use crate::accounts::Role;
use crate::accounts::links::LinkRefusal;

/// The mail-link and account-administration routes.
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/api/v1/sign-up", post(sign_up))
        .route("/api/v1/sign-up/verify", post(verify))
        .route("/api/v1/password-reset", post(request_reset))
        .route("/api/v1/password-reset/complete", post(complete))
        .route("/api/v1/accounts", get(list_accounts).post(invite))
        .route("/api/v1/accounts/{id}/disable", post(disable))
}

/// The API answer for a refusal.
pub fn refusal(r: LinkRefusal) -> ApiError {
    let message = r.to_string();
    match r {
        LinkRefusal::SignUpClosed => ApiError::new(StatusCode::FORBIDDEN, "sign_up_closed", message),
        LinkRefusal::NoMailer => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mail_not_configured", message),
        LinkRefusal::InvalidEmail(_) => ApiError::bad_request("invalid_email", message),
        LinkRefusal::Password(_) => ApiError::bad_request("weak_password", message),
        LinkRefusal::Throttled { retry_after_secs } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", message).with_retry_after(retry_after_secs)
        }
        LinkRefusal::InvalidLink => ApiError::bad_request("invalid_link", message),
        LinkRefusal::WrongPassword => ApiError::unauthorized("invalid_credentials", message),
        LinkRefusal::EmailTaken => ApiError::new(StatusCode::CONFLICT, "email_taken", message),
        LinkRefusal::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
    }
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUpRequest {
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    /// At least 12 characters, not common, not built from the email or the product's name, not easily guessed.
    #[schema(min_length = 12, max_length = 512)]
    password: String,
}

#[derive(Serialize, ToSchema)]
struct AcceptedBody {
    /// Always `check_your_email`: the same answer whether or not the email has an account.
    status: &'static str,
}

const CHECK: AcceptedBody = AcceptedBody { status: "check_your_email" };

/// A consumer creates an account. The answer is the same whether or not the email has one: a new account gets
/// a verification link by mail (it cannot sign in before following it), a known email a note that someone tried.
/// Sign-ups are capped per source network (429 with `Retry-After`).
#[utoipa::path(post, path = "/api/v1/sign-up", request_body = SignUpRequest,
    responses((status = 202, body = AcceptedBody, description = "A mail is on its way"),
        (status = 403, body = super::error::ErrorBody, description = "This hub takes no sign-ups (`sign_up_closed`)"),
        (status = 429, body = super::error::ErrorBody, description = "Too many sign-ups from this network"),
        (status = 503, body = super::error::ErrorBody, description = "No mailer, or too many password checks at once")))]
async fn sign_up(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    ApiJson(req): ApiJson<SignUpRequest>,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    if req.email.len() > 254 {
        return Err(ApiError::bad_request("invalid_email", "an email address is at most 254 characters"));
    }
    if req.password.len() > 512 {
        return Err(ApiError::bad_request("weak_password", "a password is at most 128 characters"));
    }
    state
        .accounts
        .sign_up(&req.email, &req.password, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok((StatusCode::ACCEPTED, Json(CHECK)))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The `token` of the link in the sign-up mail.
    #[schema(min_length = 1, max_length = 128)]
    token: String,
    /// The password chosen at sign-up: the mailbox and the password together confirm the email. (A passkey
    /// sign-up confirms through `POST /api/v1/sessions/passkey/finish` with `verify_token`.)
    #[schema(min_length = 1, max_length = 512)]
    password: String,
}

/// Confirms a consumer's email: the token of the link in the sign-up mail and the password chosen at sign-up.
/// Signs in: the answer sets the session cookie, as `POST /api/v1/sessions` does. Wrong passwords are throttled as
/// at sign-in.
#[utoipa::path(post, path = "/api/v1/sign-up/verify", request_body = VerifyRequest,
    responses((status = 201, body = super::people::SignedInBody, description = "Confirmed and signed in"),
        (status = 400, body = super::error::ErrorBody, description = "The link is unknown, used or expired (`invalid_link`)"),
        (status = 401, body = super::error::ErrorBody, description = "Not the password chosen at sign-up"),
        (status = 429, body = super::error::ErrorBody, description = "Too many wrong passwords; see Retry-After"),
        (status = 503, body = super::error::ErrorBody, description = "Too many password checks at once; retry")))]
async fn verify(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<axum::response::Response, ApiError> {
    if !plain_text(&req.token, 1, 128) || req.password.len() > 512 {
        return Err(refusal(LinkRefusal::InvalidLink));
    }
    let agent = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok());
    let signed = state
        .accounts
        .verify_email(&req.token, &req.password, super::source_ip(&peer), agent)
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok(super::people::signed_in(signed))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(min_length = 3, max_length = 254)]
    email: String,
}

/// Asks for a password-reset link. If the email has an account, a link (single use, 30 minutes) is mailed;
/// the answer is the same either way. Capped per source network and per address.
#[utoipa::path(post, path = "/api/v1/password-reset", request_body = ResetRequest,
    responses((status = 202, body = AcceptedBody, description = "If the email has an account, a mail is on its way"),
        (status = 429, body = super::error::ErrorBody, description = "Too many requests from this network"),
        (status = 503, body = super::error::ErrorBody, description = "This hub cannot send mail")))]
async fn request_reset(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    ApiJson(req): ApiJson<ResetRequest>,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    if req.email.len() > 254 {
        return Err(ApiError::bad_request("invalid_email", "an email address is at most 254 characters"));
    }
    state
        .accounts
        .request_reset(&req.email, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok((StatusCode::ACCEPTED, Json(CHECK)))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The `token` of the reset or invitation link.
    #[schema(min_length = 1, max_length = 128)]
    token: String,
    /// At least 12 characters, not common, not built from the email or the product's name, not easily guessed.
    #[schema(min_length = 12, max_length = 512)]
    new_password: String,
}

#[derive(Serialize, ToSchema)]
struct CompletedBody {
    /// The account, which may now sign in with the new password.
    account: AccountBody,
}

/// Sets a password with a reset or invitation link: the link is used up, every session of the account ends, and
/// the account signs in with the new password. A password that breaks a rule is refused without using the link.
#[utoipa::path(post, path = "/api/v1/password-reset/complete", request_body = CompleteRequest,
    responses((status = 200, body = CompletedBody, description = "The password is set"),
        (status = 400, body = super::error::ErrorBody, description = "`invalid_link`, or `weak_password` with the reason"),
        (status = 503, body = super::error::ErrorBody, description = "Too many password checks at once; retry")))]
async fn complete(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<CompletedBody>, ApiError> {
    if !plain_text(&req.token, 1, 128) {
        return Err(refusal(LinkRefusal::InvalidLink));
    }
    if req.new_password.len() > 512 {
        return Err(ApiError::bad_request("weak_password", "a password is at most 128 characters"));
    }
    let account = state
        .accounts
        .complete_link(&req.token, &req.new_password, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok(Json(CompletedBody { account: account.into() }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AccountParams {
    /// The last email of the previous page.
    #[param(max_length = 254)]
    after: Option<String>,
    /// How many, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct AccountListItem {
    id: String,
    email: String,
    /// `owner`, `admin`, `support` or `consumer`.
    role: String,
    created_at_ms: i64,
    /// Null: a consumer who has not confirmed the email, or an invitee who has not set a password.
    verified_at_ms: Option<i64>,
    disabled_at_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct AccountList {
    accounts: Vec<AccountListItem>,
    /// Pass as `after` for the next page; null on the last.
    next_after: Option<String>,
}

/// Every account, in email order. For the owner and admins.
#[utoipa::path(get, path = "/api/v1/accounts", params(AccountParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = AccountList)))]
async fn list_accounts(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiQuery(p): ApiQuery<AccountParams>,
) -> Result<Json<AccountList>, ApiError> {
    let limit = page_limit(p.limit, 100, 500)?;
    if p.after.as_deref().is_some_and(|a| !plain_text(a, 0, 254)) {
        return Err(ApiError::bad_request("invalid_after", "after is an email from the previous page"));
    }
    let rows = state.store.accounts(p.after.as_deref(), limit).await?;
    let next_after = (rows.len() as i64 == limit).then(|| rows.last().map(|a| a.email.clone())).flatten();
    let accounts = rows
        .into_iter()
        .map(|a| AccountListItem {
            role: a.role.as_str().to_owned(),
            created_at_ms: a.created_at,
            verified_at_ms: a.verified_at,
            disabled_at_ms: a.disabled_at,
            id: a.id,
            email: a.email,
        })
        .collect();
    Ok(Json(AccountList { accounts, next_after }))
}

// Public only so that `fuzz/` can deserialize the real body type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    /// `admin` (the owner only) or `support`.
    #[schema(pattern = "^(admin|support)$")]
    role: String,
}

#[derive(Serialize, ToSchema)]
struct InvitedBody {
    account: AccountBody,
    /// The invitation link, only when the hub has no mailer: hand it to the invitee (it sets their password; single
    /// use, 72 hours). Null when it was mailed.
    invite_link: Option<String>,
}

/// Invites an admin (owner only) or a support person (owner or admin). The account has no password until the
/// invitee follows the link (mailed; or returned here when the hub has no mailer) and sets one.
#[utoipa::path(post, path = "/api/v1/accounts", request_body = InviteRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = InvitedBody, description = "Invited"),
        (status = 409, body = super::error::ErrorBody, description = "An account has this email (`email_taken`)")))]
async fn invite(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    OperatorAuth(op): OperatorAuth,
    ApiJson(req): ApiJson<InviteRequest>,
) -> Result<(StatusCode, Json<InvitedBody>), ApiError> {
    let role = match req.role.as_str() {
        "admin" => Role::Admin,
        "support" => Role::Support,
        _ => return Err(ApiError::bad_request("invalid_role", "role is admin or support; consumers sign up")),
    };
    if req.email.len() > 254 {
        return Err(ApiError::bad_request("invalid_email", "an email address is at most 254 characters"));
    }
    let invited = state
        .accounts
        .invite(&op, &req.email, role, super::source_ip(&peer))
        .await
        .map_err(accounts_error)?
        .map_err(refusal)?;
    Ok((StatusCode::CREATED, Json(InvitedBody { account: invited.account.into(), invite_link: invited.link })))
}

/// Disables an account: it cannot sign in, its sessions end and its API tokens are revoked. The owner disables
/// admins, support and consumers; admins disable support and consumers; nobody disables the owner or themselves.
#[utoipa::path(post, path = "/api/v1/accounts/{id}/disable", params(("id" = String, Path, min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$", description = "Account id")), security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Disabled"), (status = 404, body = super::error::ErrorBody, description = "No such enabled account")))]
async fn disable(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    OperatorAuth(op): OperatorAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !plain_text(&id, 1, 64) {
        return Err(ApiError::not_found("account"));
    }
    match state.accounts.disable(&op, &id, super::source_ip(&peer)).await.map_err(accounts_error)? {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(LinkRefusal::InvalidLink) => Err(ApiError::not_found("account")),
        Err(other) => Err(refusal(other)),
    }
}
