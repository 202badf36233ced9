//! The REST API (`/api/v1`): owner setup, enrolment and renewal for devices, and for operators (bearer token):
//! manufacturing batches, devices, telemetry, commands, security events. The OpenAPI 3.1 document is generated
//! from these handlers and served at `/api/v1/openapi.json`.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use hearth_proto::enrol::{
    CertificateResponse, EnrolRequest, HubEndpoints, ManufactureRequest, ManufactureResponse, ManufacturedDevice,
    RenewRequest,
};
use hearth_proto::uplink::Fields;
use hearth_proto::{DeviceId, ModelId};

use super::PeerDevice;
use super::auth::Caller;
pub use super::auth::OperatorAuth;
use super::error::ApiError;
use crate::HubState;
use crate::accounts::SetupRefusal;
use crate::commands::CommandError;
use crate::identity::{EnrolError, PresentedCert};
use crate::monitoring::SecurityEvent;
use crate::store::{CommandRow, DeviceRow, Release, UplinkQuery};

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest factory batch per request.
pub const MAX_BATCH: usize = 10_000;

/// The API router.
pub fn router(state: HubState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/setup", post(setup))
        .route("/api/v1/enrol", post(enrol).layer(DefaultBodyLimit::max(hearth_proto::limits::MAX_ENROL_BODY)))
        .route("/api/v1/renew", post(renew).layer(DefaultBodyLimit::max(hearth_proto::limits::MAX_ENROL_BODY)))
        .route("/api/v1/devices", get(list_devices).post(manufacture))
        .route("/api/v1/devices/{id}", get(get_device))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
        .route("/api/v1/devices/{id}/bootstrap", post(reissue_bootstrap))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/api/v1/devices/{id}/telemetry", get(telemetry))
        .route("/api/v1/devices/{id}/commands", post(send_command))
        .route("/api/v1/devices/{id}/commands/{command_id}", get(get_command))
        .route("/api/v1/devices/{id}/unclaim", post(unclaim))
        .route("/api/v1/security-events", get(security_events))
        .merge(super::people::router())
        .merge(super::links::router())
        .merge(super::passkeys::router())
        .merge(super::updates::router())
        .merge(super::disclosure::router())
        .merge(super::web::router())
        .fallback(|| async { ApiError::not_found("endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(hardening_headers))
        .with_state(state)
}

/// Headers on every answer: HTTPS only from now on (HSTS, a year), no content sniffing, and no caching (answers
/// carry tokens, certificates and per-operator data; a handler may say otherwise).
async fn hardening_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::HeaderValue;
    let headers = response.headers_mut();
    headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Hearth hub API", version = "1", description = "Devices, telemetry and commands of a Hearth hub. Operator endpoints take `Authorization: Bearer <token>`."),
    paths(healthz, setup, enrol, renew, manufacture, list_devices, get_device, revoke_device, reissue_bootstrap, list_tokens, create_token, revoke_token, telemetry, send_command, get_command, unclaim, security_events,
        super::people::sign_in, super::people::me, super::people::my_sessions, super::people::end_session, super::people::sign_out, super::people::sign_out_everywhere, super::people::change_password, super::people::audit_log, super::people::claim, super::people::grant_support, super::people::revoke_support_grant,
        super::links::sign_up, super::links::verify, super::links::request_reset, super::links::complete, super::links::list_accounts, super::links::invite, super::links::disable,
        super::passkeys::list, super::passkeys::register_start, super::passkeys::register_finish, super::passkeys::remove, super::passkeys::sign_in_start, super::passkeys::sign_in_finish, super::passkeys::second_factor, super::passkeys::sign_up_start, super::passkeys::sign_up_finish,
        super::updates::check_in, super::updates::repository, super::updates::hub_keys, super::updates::publish, super::updates::file, super::updates::upload, super::updates::releases, super::updates::sbom, super::updates::support_periods, super::updates::set_support, super::updates::list_rollouts, super::updates::create_rollout, super::updates::get_rollout, super::updates::pause_rollout, super::updates::resume_rollout, super::updates::abort_rollout, super::updates::device_update, super::updates::postpone,
        super::disclosure::security_txt, super::disclosure::challenge, super::disclosure::submit, super::disclosure::status, super::disclosure::reporter_message, super::disclosure::inbox, super::disclosure::detail, super::disclosure::set_state, super::disclosure::operator_message, super::disclosure::mark_exploited, super::disclosure::file_cra, super::disclosure::security_statement, super::disclosure::psti_statement),
    components(schemas(Health, super::error::ErrorBody, super::error::ErrorDetail, SetupRequest, SetupResponse, DeviceBody, DeviceList, TelemetryPage, TelemetryItem, CommandRequest, CommandBody, SecurityEventBody, TokenBody, NewTokenRequest, NewTokenResponse, BootstrapBody, EnrolRequest, RenewRequest, CertificateResponse, ManufactureRequest, ManufactureResponse, ManufacturedDevice, HubEndpoints, DeviceId, ModelId,
        hearth_proto::update::CheckIn, hearth_proto::update::CheckInAnswer, hearth_proto::update::Goal, hearth_proto::update::StepReport, hearth_proto::update::InstalledImage, hearth_proto::update::UpdateStep,
        super::updates::RepositoryBody, super::updates::HubKeysBody, super::updates::PublishRequest, super::updates::FileBody, super::updates::ReleaseBody, super::updates::ReleaseList, super::updates::SupportBody, super::updates::SupportList, super::updates::SetSupport, super::updates::RolloutList, super::updates::PostponeRequest, super::updates::PostponedBody, crate::updates::rollouts::RolloutPlan, crate::updates::rollouts::RolloutView, crate::updates::rollouts::DeviceUpdateView, crate::updates::rollouts::PendingUpdate,
        crate::disclosure::pow::Challenge, crate::disclosure::NewReport, crate::disclosure::ReporterView, crate::disclosure::MessageView, crate::disclosure::ReportView, crate::disclosure::Deadline, crate::disclosure::ReportDetail, super::disclosure::SubmittedBody, super::disclosure::MessageBody, super::disclosure::InboxBody, super::disclosure::StateBody, crate::disclosure::CraClock, crate::disclosure::CraStage, crate::disclosure::statement::SecurityStatement)),
    modifiers(&BearerScheme, &CommonResponses)
)]
struct ApiDoc;

/// The answers any operation of a kind can give, declared once for all of them: a body that is not JSON, of the
/// wrong type or shape, too large or too slow (400, 415, 422, 413, 408); a missing or refused token (401); a
/// malformed path id (400) or an unknown one (404); a malformed query (400). An operation declares its own
/// answers besides these in its `#[utoipa::path]`.
struct CommonResponses;
impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, schema::Ref};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                let params = op.parameters.iter().flatten().filter_map(|p| match p {
                    RefOr::T(p) => Some(p.parameter_in.clone()),
                    RefOr::Ref(_) => None,
                });
                let (mut in_path, mut in_query) = (false, false);
                for place in params {
                    in_path |= matches!(place, ParameterIn::Path);
                    in_query |= matches!(place, ParameterIn::Query);
                }
                let mut add = |status: &str, description: &str| {
                    op.responses.responses.entry(status.to_owned()).or_insert_with(|| error(description));
                };
                if in_path || in_query {
                    add("400", "A malformed path id or query parameter");
                }
                if in_path {
                    add("404", "No such device (or other item the path names)");
                }
                if op.request_body.is_some() {
                    add("400", "The body is not valid JSON, or a value is out of range");
                    add("408", "The body did not arrive within 10 s");
                    add("413", "The body is too large");
                    add("415", "The body is not `application/json`");
                    add("422", "The body does not match the request schema");
                }
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add("401", "Missing, unknown, expired or revoked API token or session");
                    add("403", "The account's role may not do this, or a session request without its CSRF token");
                }
                // OpenAPI requires a description on every response; where a handler gave none, its status says it.
                for (status, response) in &mut op.responses.responses {
                    if let RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        let reason = status.parse::<u16>().ok().and_then(|s| StatusCode::from_u16(s).ok());
                        response.description = reason.and_then(|s| s.canonical_reason()).unwrap_or("Answer").to_owned();
                    }
                }
            }
        }
    }
}

struct BearerScheme;
impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // A browser's sign-in session; unsafe methods also need the `X-CSRF-Token` header.
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::new(super::auth::SESSION_COOKIE),
            )),
        );
    }
}

/// The OpenAPI document.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_document().to_json().unwrap_or_default())
}

/// Time allowed to send a request body: a client trickling a body holds its connection no longer than this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// JSON body extractor whose rejections are [`ApiError`]s; the body must arrive within [`BODY_TIMEOUT`].
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match tokio::time::timeout(BODY_TIMEOUT, Json::<T>::from_request(req, state)).await {
            Ok(Ok(Json(v))) => Ok(ApiJson(v)),
            Ok(Err(rejection)) => Err(rejection.into()),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            )),
        }
    }
}

/// Query extractor whose rejections are [`ApiError`]s (400 with a JSON body, like every other refusal).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::bad_request("invalid_query", rejection.body_text())),
        }
    }
}

/// Path extractor whose rejections are [`ApiError`]s.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::bad_request("invalid_path", rejection.body_text())),
        }
    }
}

/// Whether `s` is `min` to `max` bytes without control characters (which, NUL first, no database column takes).
/// The schema says the same with the pattern `^[^\x00-\x1f\x7f-\x9f]*$`.
pub(super) fn plain_text(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && !s.chars().any(char::is_control)
}

/// Which devices a caller may see: the fleet (owner, admin), the devices its account claimed (consumer), or the
/// devices of consumers whose support grant holds now (support, read only).
pub(super) enum Scope<'a> {
    Fleet,
    Own(&'a str),
    Granted,
}

pub(super) fn scope(caller: &crate::accounts::Operator) -> Result<Scope<'_>, ApiError> {
    match (caller.role, caller.account_id.as_deref()) {
        (crate::accounts::Role::Owner | crate::accounts::Role::Admin, _) => Ok(Scope::Fleet),
        (crate::accounts::Role::Consumer, Some(account)) => Ok(Scope::Own(account)),
        (crate::accounts::Role::Support, _) => Ok(Scope::Granted),
        _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this token belongs to no account")),
    }
}

/// The device `raw` names, if the caller may see it: the one place that decides "may this person see that
/// device". A device the caller may not see is answered exactly like one that does not exist.
pub(super) async fn visible_device(
    state: &HubState,
    caller: &crate::accounts::Operator,
    raw: &str,
) -> Result<DeviceRow, ApiError> {
    let id = device_id(raw)?;
    let row = state.store.device(id.as_str()).await?.ok_or_else(|| ApiError::not_found("device"))?;
    match scope(caller)? {
        Scope::Fleet => Ok(row),
        Scope::Own(account) if row.owner_account_id.as_deref() == Some(account) => Ok(row),
        Scope::Granted => match &row.owner_account_id {
            Some(owner) if state.store.support_grant(owner, state.clock.now_ms()).await?.is_some() => Ok(row),
            _ => Err(ApiError::not_found("device")),
        },
        Scope::Own(_) => Err(ApiError::not_found("device")),
    }
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).map_err(|e| ApiError::bad_request("invalid_device_id", e.to_string()))
}

/// Liveness. Says nothing about the hub's configuration.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health, description = "The hub is up")))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
}

// Public only so that `fuzz/` deserializes the real body type (like `CommandRequest`); a plain comment, not a doc
// comment, so the OpenAPI document stays the same.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The one-time setup token the hub printed at first start.
    #[schema(min_length = 1, max_length = 256)]
    setup_token: String,
    /// The owner's email address (the owner signs in with it).
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    /// The owner's password: at least 12 characters, not a common or default one, not built from the email or
    /// the product's name, and not easily guessed (the answer says which rule it breaks).
    #[schema(min_length = 12, max_length = 512)]
    password: String,
    /// A label for the owner's first API token (default `owner`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    label: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct SetupResponse {
    /// The owner's first API token. Shown once; store it safely.
    token: String,
    /// The owner's account.
    account: super::people::AccountBody,
}

/// Creates the owner account with the one-time setup token and a password the owner chooses, and returns the
/// owner's first API token. Once an owner exists, a new setup token (from `hearth setup-token`) with the owner's
/// email sets a new owner password instead.
#[utoipa::path(post, path = "/api/v1/setup", request_body = SetupRequest,
    responses((status = 201, body = SetupResponse),
        (status = 400, body = super::error::ErrorBody, description = "Invalid label or email, or a password that breaks a rule (`weak_password`, with the rule)"),
        (status = 401, body = super::error::ErrorBody, description = "Unknown, used or expired setup token"),
        (status = 503, body = super::error::ErrorBody, description = "Too many password checks at once; retry")))]
async fn setup(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let label = req.label.unwrap_or_else(|| "owner".into());
    if !plain_text(&label, 1, 64) {
        return Err(ApiError::bad_request("invalid_label", "label must be 1 to 64 bytes"));
    }
    let source = peer.map(|p| p.0.0.ip());
    let outcome = state
        .accounts
        .setup_owner(req.setup_token.trim(), &req.email, &req.password, &label, source)
        .await
        .map_err(super::people::accounts_error)?;
    match outcome {
        Ok((account, token)) => {
            tracing::info!(account = %account.id, "owner setup completed; the setup token is now used up");
            Ok((
                StatusCode::CREATED,
                [(header::CACHE_CONTROL, "no-store")],
                Json(SetupResponse { token: token.token.expose().to_owned(), account: account.into() }),
            ))
        }
        Err(SetupRefusal::InvalidToken) => {
            state.monitor.record(SecurityEvent {
                device: None,
                source,
                kind: "setup_failed",
                detail: "unknown, used or expired setup token".into(),
            });
            Err(ApiError::unauthorized("invalid_setup_token", "the setup token is unknown, already used or expired"))
        }
        Err(refusal @ SetupRefusal::InvalidEmail(_)) => {
            Err(ApiError::bad_request("invalid_email", refusal.to_string()))
        }
        Err(SetupRefusal::Password(refusal)) => Err(ApiError::bad_request("weak_password", refusal.to_string())),
    }
}

/// Where devices reach this hub (in every bootstrap file).
fn hub_endpoints(state: &HubState) -> HubEndpoints {
    HubEndpoints {
        url: state.public.https_url.clone(),
        mqtt_host: state.public.mqtt_host.clone(),
        mqtt_port: state.public.mqtt_port,
        ca_pem: state.identity.authorities().server_ca_pem.clone(),
    }
}

fn enrol_error(e: EnrolError) -> ApiError {
    match e {
        EnrolError::InvalidToken => ApiError::unauthorized("invalid_token", e.to_string()),
        EnrolError::TokenExpired => ApiError::unauthorized("token_expired", e.to_string()),
        EnrolError::TokenUsed => ApiError::new(StatusCode::CONFLICT, "token_used", e.to_string()),
        EnrolError::Revoked => ApiError::new(StatusCode::FORBIDDEN, "revoked", e.to_string()),
        EnrolError::NotEnrolled => ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string()),
        EnrolError::Superseded => ApiError::new(StatusCode::FORBIDDEN, "certificate_superseded", e.to_string()),
        EnrolError::Expired => ApiError::new(StatusCode::FORBIDDEN, "certificate_expired", e.to_string()),
        EnrolError::RenewedRecently(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "renewed_recently", e.to_string())
        }
        EnrolError::Csr(c) => ApiError::bad_request("invalid_csr", c.to_string()),
        EnrolError::Internal(m) => ApiError::internal(m),
    }
}

/// A device's first enrolment with its single-use bootstrap token and a CSR.
#[utoipa::path(post, path = "/api/v1/enrol", request_body = EnrolRequest,
    responses((status = 200, body = CertificateResponse),
        (status = 400, body = super::error::ErrorBody, description = "Invalid CSR"),
        (status = 401, body = super::error::ErrorBody, description = "Unknown or expired bootstrap token"),
        (status = 403, body = super::error::ErrorBody, description = "The device is revoked"),
        (status = 409, body = super::error::ErrorBody, description = "Token already used")))]
async fn enrol(
    State(state): State<HubState>,
    Extension(peer): Extension<super::PeerAddr>,
    body: Result<ApiJson<EnrolRequest>, ApiError>,
) -> Result<Json<CertificateResponse>, ApiError> {
    // A malformed body is a refused enrolment too, and recorded like the others.
    let ApiJson(req) = body.inspect_err(|e| refused_body(&state, peer.0.ip(), None, "enrol_refused", e))?;
    match state.identity.enrol(&req).await {
        Ok(resp) => {
            tracing::info!(device = %req.device_id, "device enrolled");
            Ok(Json(resp))
        }
        Err(e) => {
            if !matches!(e, EnrolError::Internal(_)) {
                state.monitor.record(SecurityEvent {
                    device: Some(req.device_id.to_string()),
                    source: Some(peer.0.ip()),
                    kind: "enrol_refused",
                    detail: e.to_string(),
                });
            }
            Err(enrol_error(e))
        }
    }
}

/// Records a request body refused before it could be read (malformed JSON, wrong content type, unknown fields).
fn refused_body(state: &HubState, source: std::net::IpAddr, device: Option<String>, kind: &'static str, e: &ApiError) {
    state.monitor.record(SecurityEvent { device, source: Some(source), kind, detail: format!("request body: {e}") });
}

/// Certificate renewal, authenticated by the device's current certificate (mutual TLS). A certificate expired
/// within the hub's renewal grace period may renew (and do nothing else).
#[utoipa::path(post, path = "/api/v1/renew", request_body = RenewRequest,
    responses((status = 200, body = CertificateResponse),
        (status = 400, body = super::error::ErrorBody, description = "Invalid CSR"),
        (status = 401, body = super::error::ErrorBody, description = "No client certificate"),
        (status = 403, body = super::error::ErrorBody, description = "Revoked, superseded or expired past the grace period"),
        (status = 409, body = super::error::ErrorBody, description = "The device has not enrolled"),
        (status = 429, body = super::error::ErrorBody, description = "Renewed too recently")))]
async fn renew(
    State(state): State<HubState>,
    Extension(PeerDevice(peer)): Extension<PeerDevice>,
    Extension(addr): Extension<super::PeerAddr>,
    body: Result<ApiJson<RenewRequest>, ApiError>,
) -> Result<Json<CertificateResponse>, ApiError> {
    let device = peer.as_ref().map(|f| f.device.to_string());
    let ApiJson(req) = body.inspect_err(|e| refused_body(&state, addr.0.ip(), device, "renew_refused", e))?;
    let facts = peer.ok_or_else(|| {
        ApiError::unauthorized(
            "client_certificate_required",
            "renewal needs the device's current certificate (mutual TLS)",
        )
    })?;
    let device = facts.device.clone();
    let expired = facts.not_after_ms < state.clock.now_ms();
    match state.identity.renew(&PresentedCert { facts }, &req.csr_pem).await {
        Ok(resp) => {
            if expired {
                state.monitor.record(SecurityEvent {
                    device: Some(device.to_string()),
                    source: Some(addr.0.ip()),
                    kind: "renewed_after_expiry",
                    detail: "an expired certificate was renewed within the grace period".into(),
                });
            }
            tracing::info!(device = %device, "device certificate renewed");
            Ok(Json(resp))
        }
        Err(e) => {
            if !matches!(e, EnrolError::Internal(_)) {
                state.monitor.record(SecurityEvent {
                    device: Some(device.to_string()),
                    source: Some(addr.0.ip()),
                    kind: "renew_refused",
                    detail: e.to_string(),
                });
            }
            Err(enrol_error(e))
        }
    }
}

/// Creates a batch of device records (the factory). Secrets are returned once and stored only as MACs.
#[utoipa::path(post, path = "/api/v1/devices", request_body = ManufactureRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = ManufactureResponse), (status = 400, body = super::error::ErrorBody)))]
async fn manufacture(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiJson(req): ApiJson<ManufactureRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let model = req.model;
    if req.count == 0 || req.count > MAX_BATCH {
        return Err(ApiError::bad_request("invalid_count", format!("count must be 1 to {MAX_BATCH}")));
    }
    let made = state.identity.manufacture(&model, req.count).await.map_err(enrol_error)?;
    tracing::info!(model = %model, count = made.len(), "devices manufactured");
    let body = ManufactureResponse {
        hub: hub_endpoints(&state),
        devices: made
            .into_iter()
            .map(|d| ManufacturedDevice {
                device_id: d.id,
                model: d.model,
                bootstrap_token: d.bootstrap_token.expose().to_owned(),
                claim_code: d.claim_code.expose().to_owned(),
            })
            .collect(),
    };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)))
}

#[derive(Serialize, ToSchema)]
struct DeviceBody {
    id: String,
    model: String,
    /// `manufactured`, `enrolled` or `revoked`.
    status: String,
    /// Connected to this hub now.
    connected: bool,
    created_at_ms: i64,
    enrolled_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
    last_seen_at_ms: Option<i64>,
    cert_serial: Option<String>,
    cert_not_after_ms: Option<i64>,
    /// Last reported state.
    #[schema(value_type = Option<Object>)]
    state: Option<serde_json::Value>,
    /// Claimed by a consumer.
    claimed: bool,
    /// Released, and its wipe not yet confirmed by the device (nobody can claim it until then).
    wipe_pending: bool,
    /// When the device last confirmed a wipe.
    wiped_at_ms: Option<i64>,
}

/// Nodes alive in the last 15 s (three heartbeats).
async fn live_nodes(state: &HubState) -> Result<Vec<String>, ApiError> {
    Ok(state.store.live_nodes(state.clock.now_ms() - 15_000).await?)
}

/// Connected to this node, or (as the store records it) to another node that is alive.
pub(super) fn is_connected(state: &HubState, live: &[String], d: &DeviceRow) -> bool {
    let elsewhere = d.session_open && d.session_node.as_ref().is_some_and(|n| live.contains(n));
    elsewhere || state.routing.is_connected(&d.id)
}

fn device_body(state: &HubState, live: &[String], d: DeviceRow) -> DeviceBody {
    let connected = is_connected(state, live, &d);
    DeviceBody {
        connected,
        state: d
            .state_json
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v.get("state").cloned()),
        id: d.id.to_string(),
        model: d.model,
        status: d.status.to_string(),
        created_at_ms: d.created_at,
        enrolled_at_ms: d.enrolled_at,
        revoked_at_ms: d.revoked_at,
        last_seen_at_ms: d.last_seen_at,
        claimed: d.owner_account_id.is_some(),
        wipe_pending: d.wipe_command_id.is_some(),
        wiped_at_ms: d.wiped_at,
        cert_serial: d.cert_serial,
        cert_not_after_ms: d.cert_not_after,
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Return devices with ids after this one (the previous page's `next_after`).
    #[param(max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct DeviceList {
    devices: Vec<DeviceBody>,
    /// Pass as `after` for the next page; null once a page comes back short.
    next_after: Option<String>,
}

pub(super) fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be 1 to {max}")));
    }
    Ok(limit)
}

/// Lists devices, ordered by id.
#[utoipa::path(get, path = "/api/v1/devices", params(ListParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = DeviceList), (status = 401, body = super::error::ErrorBody)))]
async fn list_devices(
    State(state): State<HubState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<DeviceList>, ApiError> {
    let limit = page_limit(params.limit, 100, 1000)?;
    if params.after.as_ref().is_some_and(|a| !plain_text(a, 0, DeviceId::MAX_LEN)) {
        return Err(ApiError::bad_request(
            "invalid_after",
            "after is a device id: at most 64 bytes, no control characters",
        ));
    }
    let rows = match scope(&caller)? {
        Scope::Fleet => state.store.devices(params.after.as_deref(), limit).await?,
        Scope::Own(account) => state.store.devices_of_account(account, params.after.as_deref(), limit).await?,
        Scope::Granted => state.store.devices_granted(state.clock.now_ms(), params.after.as_deref(), limit).await?,
    };
    let next_after = (rows.len() as i64 == limit).then(|| rows.last().map(|d| d.id.to_string())).flatten();
    let live = live_nodes(&state).await?;
    Ok(Json(DeviceList { devices: rows.into_iter().map(|d| device_body(&state, &live, d)).collect(), next_after }))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", params(("id" = DeviceId, Path, description = "Device id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = DeviceBody), (status = 404, body = super::error::ErrorBody)))]
async fn get_device(
    State(state): State<HubState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceBody>, ApiError> {
    let row = visible_device(&state, &caller, &id).await?;
    Ok(Json(device_body(&state, &live_nodes(&state).await?, row)))
}

/// Revokes a device: its connection closes within seconds and every later connection or renewal is refused.
#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", params(("id" = DeviceId, Path, description = "Device id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = DeviceBody), (status = 404, body = super::error::ErrorBody)))]
async fn revoke_device(
    State(state): State<HubState>,
    auth: OperatorAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceBody>, ApiError> {
    let id = device_id(&id)?;
    if !state.identity.revoke(&id).await? {
        return Err(ApiError::not_found("device"));
    }
    state.accounts.record(&auth.0, "device_revoked", id.as_str(), None).await;
    let row = state.store.device(id.as_str()).await?.ok_or_else(|| ApiError::not_found("device"))?;
    Ok(Json(device_body(&state, &live_nodes(&state).await?, row)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TelemetryParams {
    /// Device time from (inclusive), Unix ms. Default 0.
    #[param(minimum = 0)]
    from: Option<i64>,
    /// Device time to (exclusive), Unix ms, above `from`. Default: no limit.
    #[param(minimum = 1)]
    to: Option<i64>,
    /// Only messages with seq greater than this (the previous page's `next_after_seq`).
    after_seq: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct TelemetryItem {
    seq: i64,
    /// `telemetry`, `event` or `state`.
    kind: String,
    device_ts_ms: i64,
    received_at_ms: i64,
    #[schema(value_type = Object)]
    body: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
struct TelemetryPage {
    items: Vec<TelemetryItem>,
    /// Pass as `after_seq` for the next page; null once a page comes back short.
    next_after_seq: Option<i64>,
}

/// A device's stored uplinks (telemetry, events, state) in a device-time range, ordered by sequence number.
#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", params(("id" = DeviceId, Path, description = "Device id"), TelemetryParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = TelemetryPage), (status = 404, body = super::error::ErrorBody)))]
async fn telemetry(
    State(state): State<HubState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<TelemetryParams>,
) -> Result<Json<TelemetryPage>, ApiError> {
    let id = device_id(&id)?;
    let limit = page_limit(p.limit, 100, 1000)?;
    let (from, to) = (p.from.unwrap_or(0), p.to.unwrap_or(i64::MAX));
    if from < 0 || to <= from {
        return Err(ApiError::bad_request("invalid_range", "need 0 <= from < to"));
    }
    let device = visible_device(&state, &caller, id.as_str()).await?;
    // A consumer (and support on a consumer's behalf) sees what the device sent since it was claimed, never a
    // previous owner's data.
    let received_from = match scope(&caller)? {
        Scope::Fleet => 0,
        Scope::Own(_) | Scope::Granted => device.claimed_at.unwrap_or(i64::MAX),
    };
    let rows = state
        .store
        .uplinks(&UplinkQuery {
            device_id: id.to_string(),
            received_from,
            from_ts: from,
            to_ts: to,
            after_seq: p.after_seq.unwrap_or(0),
            limit,
        })
        .await?;
    let next_after_seq = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.seq)).flatten();
    let items = rows
        .into_iter()
        .map(|r| TelemetryItem {
            seq: r.seq,
            kind: r.kind.as_str().to_owned(),
            device_ts_ms: r.device_ts,
            received_at_ms: r.received_at,
            body: serde_json::from_str(&r.body_json).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(Json(TelemetryPage { items, next_after_seq }))
}

// Public with public fields so that `fuzz/` can run the body through `Commands::send`'s validation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Command name (`a-z 0-9 _`), for example `ping`, `set_interval`, `report_state`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9_]+$")]
    pub name: String,
    /// Arguments: names to numbers, booleans or short strings.
    #[serde(default)]
    #[schema(schema_with = hearth_proto::uplink::fields_schema)]
    pub args: Fields,
    /// Seconds until the command times out, 1 to 604800 (a week; default 60).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_secs: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct CommandBody {
    id: String,
    device_id: String,
    name: String,
    #[schema(value_type = Object)]
    args: serde_json::Value,
    /// `pending`, `sent`, `ok`, `error`, `unsupported`, `expired` or `timeout`.
    status: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    /// When it was first sent to the device.
    sent_at_ms: Option<i64>,
    /// How many times it was sent: again at each SUBSCRIBE until answered (devices de-duplicate by id).
    deliveries: i64,
    answered_at_ms: Option<i64>,
    detail: Option<String>,
}

impl From<CommandRow> for CommandBody {
    fn from(r: CommandRow) -> Self {
        CommandBody {
            args: serde_json::from_str(&r.args_json).unwrap_or(serde_json::Value::Null),
            id: r.id,
            device_id: r.device_id.to_string(),
            name: r.name,
            status: r.status.as_str().to_owned(),
            created_at_ms: r.created_at,
            expires_at_ms: r.expires_at,
            sent_at_ms: r.sent_at,
            deliveries: r.deliveries,
            answered_at_ms: r.answered_at,
            detail: r.detail,
        }
    }
}

/// Sends a command. It is recorded first, delivered when the device is connected and subscribed, and ends as
/// the device's answer or `timeout`.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", params(("id" = DeviceId, Path, description = "Device id")), request_body = CommandRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 202, body = CommandBody), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn send_command(
    State(state): State<HubState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CommandRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let id = visible_device(&state, &caller, &id).await?.id;
    if caller.role == crate::accounts::Role::Support {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "support sees a consumer's devices; it does not command them",
        ));
    }
    let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(60));
    let row = state.commands.send(&id, &req.name, req.args, timeout).await.map_err(|e| match e {
        CommandError::UnknownDevice => ApiError::not_found("device"),
        CommandError::NotEnrolled(_) => ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string()),
        CommandError::Invalid(v) => ApiError::bad_request("invalid_command", v.to_string()),
        CommandError::Store(s) => ApiError::internal(s),
    })?;
    Ok((StatusCode::ACCEPTED, Json(CommandBody::from(row))))
}

#[derive(Serialize, ToSchema)]
struct UnclaimedBody {
    device_id: String,
    /// The wipe command sent to the device (follow it under `/commands/{id}`); null if the device never
    /// enrolled or is revoked, so there is nothing to wipe or nobody to reach.
    wipe_command_id: Option<String>,
}

/// Releases a device: its consumer (or the owner or an admin) gives it up, for instance to pass it on. The
/// consumer loses access at once; the device is sent a `wipe` command (its agent erases user data and settings
/// and confirms), and nobody can claim it again, with the code on its label, until the device confirms. An
/// operator may release a device whose wipe is still unconfirmed, to send a new wipe.
#[utoipa::path(post, path = "/api/v1/devices/{id}/unclaim", params(("id" = DeviceId, Path, description = "Device id")), security(("bearer" = []), ("session" = [])),
    responses((status = 202, body = UnclaimedBody, description = "Released; the wipe is on its way"),
        (status = 404, body = super::error::ErrorBody, description = "No such device visible to the caller, or not claimed")))]
async fn unclaim(
    State(state): State<HubState>,
    peer: Option<Extension<super::PeerAddr>>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<UnclaimedBody>), ApiError> {
    let id = visible_device(&state, &caller, &id).await?.id;
    let by = match scope(&caller)? {
        Scope::Fleet => Release::Operator,
        Scope::Own(account) => Release::Owner(account),
        Scope::Granted => {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "support does not release devices"));
        }
    };
    let wipe = state.commands.release(&id, by).await.map_err(|e| match e {
        CommandError::UnknownDevice => ApiError::not_found("claimed device"),
        CommandError::NotEnrolled(_) => ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string()),
        CommandError::Invalid(v) => ApiError::internal(v),
        CommandError::Store(s) => ApiError::internal(s),
    })?;
    state.accounts.record(&caller, "device_released", id.as_str(), peer.map(|p| p.0.0.ip())).await;
    Ok((StatusCode::ACCEPTED, Json(UnclaimedBody { device_id: id.to_string(), wipe_command_id: wipe })))
}

/// One command and its outcome.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands/{command_id}", params(("id" = DeviceId, Path, description = "Device id"), ("command_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$", description = "Command id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = CommandBody), (status = 404, body = super::error::ErrorBody)))]
async fn get_command(
    State(state): State<HubState>,
    Caller(caller): Caller,
    ApiPath((id, command_id)): ApiPath<(String, String)>,
) -> Result<Json<CommandBody>, ApiError> {
    let id = visible_device(&state, &caller, &id).await?.id;
    if !plain_text(&command_id, 1, 64) {
        return Err(ApiError::not_found("command"));
    }
    let row = state.commands.get(&id, &command_id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    Ok(Json(row.into()))
}

#[derive(Serialize, ToSchema)]
struct BootstrapBody {
    /// Where the device reaches the hub.
    hub: HubEndpoints,
    /// The device with its new single-use bootstrap token (shown once; `claim_code` is empty: the label's code
    /// stays valid).
    device: ManufacturedDevice,
    /// When the token stops working, Unix ms.
    expires_at_ms: i64,
}

/// Re-issues a single-use bootstrap token for a device that is not revoked: for a device whose enrol reply was
/// lost for good, that was offline past its certificate's lifetime and renewal grace, or lost its key. Its
/// current certificate keeps working until it enrols again with the new token; then only the new one does.
#[utoipa::path(post, path = "/api/v1/devices/{id}/bootstrap", params(("id" = DeviceId, Path, description = "Device id")), security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = BootstrapBody), (status = 404, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody, description = "Revoked")))]
async fn reissue_bootstrap(
    State(state): State<HubState>,
    auth: OperatorAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = device_id(&id)?;
    let made = state.identity.reissue_bootstrap(&id).await.map_err(|e| match e {
        EnrolError::InvalidToken => ApiError::not_found("device"),
        other => enrol_error(other),
    })?;
    tracing::info!(device = %id, token = %auth.0.token_id, "bootstrap token re-issued by an operator");
    let body = BootstrapBody {
        hub: hub_endpoints(&state),
        device: ManufacturedDevice {
            device_id: made.id,
            model: made.model,
            bootstrap_token: made.bootstrap_token.expose().to_owned(),
            // The claim code is not re-issued (the hub keeps only its MAC); the label's code stays valid.
            claim_code: String::new(),
        },
        expires_at_ms: made.expires_at_ms,
    };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)))
}

#[derive(Serialize, ToSchema)]
struct TokenBody {
    id: String,
    label: String,
    created_at_ms: i64,
    /// When it stops working, Unix ms (tokens made before tokens expired got 90 days from the upgrade).
    expires_at_ms: i64,
    revoked_at_ms: Option<i64>,
}

/// Lists API tokens (never their values), newest first.
#[utoipa::path(get, path = "/api/v1/tokens", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = [TokenBody]), (status = 401, body = super::error::ErrorBody)))]
async fn list_tokens(State(state): State<HubState>, _auth: OperatorAuth) -> Result<Json<Vec<TokenBody>>, ApiError> {
    let tokens = state.accounts.tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenBody {
                id: t.id,
                label: t.label,
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                revoked_at_ms: t.revoked_at_ms,
            })
            .collect(),
    ))
}

// Public only so that `fuzz/` deserializes the real body type, as `SetupRequest`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// What the token is for (1 to 64 bytes).
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    label: String,
    /// Days until it expires (1 to 397; default the hub's `accounts.operator_token_days`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 397)]
    expires_in_days: Option<u32>,
}

#[derive(Serialize, ToSchema)]
struct NewTokenResponse {
    id: String,
    /// The token. Shown once; store it safely.
    token: String,
    expires_at_ms: i64,
}

/// Creates an API token for the caller's account. It never outlives the caller's own token or session.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = NewTokenRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = NewTokenResponse), (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody)))]
async fn create_token(
    State(state): State<HubState>,
    auth: OperatorAuth,
    ApiJson(req): ApiJson<NewTokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !plain_text(&req.label, 1, 64) {
        return Err(ApiError::bad_request("invalid_label", "label must be 1 to 64 bytes"));
    }
    let validity = match req.expires_in_days {
        None => None,
        Some(d @ 1..=397) => Some(time::Duration::days(i64::from(d))),
        Some(_) => return Err(ApiError::bad_request("invalid_expiry", "expires_in_days must be 1 to 397")),
    };
    let made = state.accounts.create_token(&auth.0, &req.label, validity).await?;
    tracing::info!(token = %made.id, by = %auth.0.token_id, "API token created");
    state.accounts.record(&auth.0, "api_token_created", &made.id, None).await;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(NewTokenResponse {
            id: made.id,
            token: made.token.expose().to_owned(),
            expires_at_ms: made.expires_at_ms,
        }),
    ))
}

/// Revokes an API token (also the caller's own).
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", params(("id" = String, Path, min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$", description = "Token id")), security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Revoked"), (status = 404, body = super::error::ErrorBody)))]
async fn revoke_token(
    State(state): State<HubState>,
    auth: OperatorAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !plain_text(&id, 1, 64) || !state.accounts.revoke_token(&id).await? {
        return Err(ApiError::not_found("token"));
    }
    tracing::info!(token = %id, by = %auth.0.token_id, "API token revoked");
    state.accounts.record(&auth.0, "api_token_revoked", &id, None).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventParams {
    /// Only events of this device.
    #[param(min_length = 3, max_length = 64, pattern = "^[a-z0-9][a-z0-9-]*$")]
    device: Option<String>,
    /// Only events of this kind.
    #[param(max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    kind: Option<String>,
    /// How many, newest first, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct SecurityEventBody {
    id: i64,
    /// First occurrence in this row's interval.
    at_ms: i64,
    /// Last occurrence.
    last_at_ms: i64,
    /// Occurrences this row stands for (events are aggregated per kind, device and source).
    count: i64,
    device_id: Option<String>,
    source: Option<String>,
    kind: String,
    detail: String,
}

/// Recent security events (refused connections, ACL violations, invalid payloads, limit breaches).
#[utoipa::path(get, path = "/api/v1/security-events", params(EventParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = [SecurityEventBody])))]
async fn security_events(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Json<Vec<SecurityEventBody>>, ApiError> {
    let limit = page_limit(p.limit, 100, 1000)?;
    let device = match p.device.as_deref() {
        Some(d) => Some(device_id(d)?),
        None => None,
    };
    if p.kind.as_ref().is_some_and(|k| !plain_text(k, 0, 64)) {
        return Err(ApiError::bad_request("invalid_kind", "kind is at most 64 bytes, no control characters"));
    }
    let rows = state.store.security_events(device.as_ref().map(DeviceId::as_str), p.kind.as_deref(), limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SecurityEventBody {
                id: r.id,
                at_ms: r.at,
                last_at_ms: r.last_at,
                count: r.count,
                device_id: r.device_id,
                source: r.source,
                kind: r.kind,
                detail: r.detail,
            })
            .collect(),
    ))
}
