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

use hearth_proto::DeviceId;
use hearth_proto::enrol::{
    CertificateResponse, EnrolRequest, HubEndpoints, ManufactureRequest, ManufactureResponse, ManufacturedDevice,
    RenewRequest,
};
use hearth_proto::uplink::Fields;

use super::PeerDevice;
use super::error::ApiError;
use crate::HubState;
use crate::commands::CommandError;
use crate::identity::EnrolError;
use crate::store::{CommandRow, DeviceRow, UplinkQuery};

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
        .route("/api/v1/enrol", post(enrol))
        .route("/api/v1/renew", post(renew))
        .route("/api/v1/devices", get(list_devices).post(manufacture))
        .route("/api/v1/devices/{id}", get(get_device))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
        .route("/api/v1/devices/{id}/telemetry", get(telemetry))
        .route("/api/v1/devices/{id}/commands", post(send_command))
        .route("/api/v1/devices/{id}/commands/{command_id}", get(get_command))
        .route("/api/v1/security-events", get(security_events))
        .fallback(|| async { ApiError::not_found("endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Hearth hub API", version = "1", description = "Devices, telemetry and commands of a Hearth hub. Operator endpoints take `Authorization: Bearer <token>`."),
    paths(healthz, setup, enrol, renew, manufacture, list_devices, get_device, revoke_device, telemetry, send_command, get_command, security_events),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail, SetupRequest, SetupResponse, DeviceBody, DeviceList, TelemetryPage, TelemetryItem, CommandRequest, CommandBody, SecurityEventBody)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;
impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
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

/// JSON body extractor whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// An authenticated operator.
pub struct OperatorAuth(pub crate::accounts::Operator);

impl FromRequestParts<HubState> for OperatorAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &HubState) -> Result<Self, Self::Rejection> {
        let value =
            parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                ApiError::unauthorized("missing_token", "send `Authorization: Bearer <operator token>`")
            })?;
        let token = value.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthorized("missing_token", "the Authorization header must be `Bearer <token>`")
        })?;
        match state.accounts.authenticate(token.trim()).await? {
            Some(op) => Ok(OperatorAuth(op)),
            None => Err(ApiError::unauthorized("invalid_token", "the token is not valid")),
        }
    }
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).map_err(|e| ApiError::bad_request("invalid_device_id", e.to_string()))
}

/// Liveness. Says nothing about the hub's configuration.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The hub is up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetupRequest {
    /// The one-time setup token the hub printed at first start.
    setup_token: String,
    /// A label for the operator token (default `owner`).
    #[serde(default)]
    label: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct SetupResponse {
    /// The first operator token. Shown once; store it safely.
    token: String,
}

/// Exchanges the one-time setup token for the first operator token.
#[utoipa::path(post, path = "/api/v1/setup", request_body = SetupRequest,
    responses((status = 201, body = SetupResponse), (status = 401, body = super::error::ErrorBody, description = "Unknown, used or expired setup token")))]
async fn setup(
    State(state): State<HubState>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let label = req.label.unwrap_or_else(|| "owner".into());
    if label.is_empty() || label.len() > 64 {
        return Err(ApiError::bad_request("invalid_label", "label must be 1 to 64 bytes"));
    }
    match state.accounts.complete_setup(req.setup_token.trim(), &label).await? {
        Some(token) => {
            tracing::info!("owner setup completed; the setup token is now used up");
            Ok((StatusCode::CREATED, Json(SetupResponse { token: token.expose().to_owned() })))
        }
        None => {
            Err(ApiError::unauthorized("invalid_setup_token", "the setup token is unknown, already used or expired"))
        }
    }
}

fn enrol_error(e: EnrolError) -> ApiError {
    match e {
        EnrolError::InvalidToken => ApiError::unauthorized("invalid_token", e.to_string()),
        EnrolError::TokenExpired => ApiError::unauthorized("token_expired", e.to_string()),
        EnrolError::TokenUsed => ApiError::new(StatusCode::CONFLICT, "token_used", e.to_string()),
        EnrolError::Revoked => ApiError::new(StatusCode::FORBIDDEN, "revoked", e.to_string()),
        EnrolError::NotEnrolled => ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string()),
        EnrolError::Csr(c) => ApiError::bad_request("invalid_csr", c.to_string()),
        EnrolError::Internal(m) => ApiError::internal(m),
    }
}

/// A device's first enrolment with its single-use bootstrap token and a CSR.
#[utoipa::path(post, path = "/api/v1/enrol", request_body(content = Object, description = "EnrolRequest: device_id, bootstrap_token, csr_pem"),
    responses((status = 200, body = Object, description = "CertificateResponse: device_id, certificate_chain_pem, not_after_ms, renew_after_ms"),
        (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "Token already used")))]
async fn enrol(
    State(state): State<HubState>,
    Extension(peer): Extension<super::PeerAddr>,
    ApiJson(req): ApiJson<EnrolRequest>,
) -> Result<Json<CertificateResponse>, ApiError> {
    match state.identity.enrol(&req).await {
        Ok(resp) => {
            tracing::info!(device = %req.device_id, "device enrolled");
            Ok(Json(resp))
        }
        Err(e) => {
            if !matches!(e, EnrolError::Internal(_)) {
                state.monitor.record(crate::monitoring::SecurityEvent {
                    device: Some(req.device_id.to_string()),
                    source: Some(peer.0.to_string()),
                    kind: "enrol_refused",
                    detail: e.to_string(),
                });
            }
            Err(enrol_error(e))
        }
    }
}

/// Certificate renewal, authenticated by the device's current certificate (mutual TLS).
#[utoipa::path(post, path = "/api/v1/renew", request_body(content = Object, description = "RenewRequest: csr_pem"),
    responses((status = 200, body = Object, description = "CertificateResponse"), (status = 401, body = super::error::ErrorBody, description = "No client certificate")))]
async fn renew(
    State(state): State<HubState>,
    Extension(PeerDevice(peer)): Extension<PeerDevice>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<CertificateResponse>, ApiError> {
    let device = peer.ok_or_else(|| {
        ApiError::unauthorized(
            "client_certificate_required",
            "renewal needs the device's current certificate (mutual TLS)",
        )
    })?;
    let resp = state.identity.renew(&device, &req.csr_pem).await.map_err(enrol_error)?;
    tracing::info!(device = %device, "device certificate renewed");
    Ok(Json(resp))
}

/// Creates a batch of device records (the factory). Secrets are returned once and stored only as MACs.
#[utoipa::path(post, path = "/api/v1/devices", request_body(content = Object, description = "ManufactureRequest: model, count (1 to 10000)"), security(("bearer" = [])),
    responses((status = 201, body = Object, description = "ManufactureResponse: hub {url, mqtt_host, mqtt_port, ca_pem}, devices [{device_id, model, bootstrap_token, claim_code}]"), (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody)))]
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
        hub: HubEndpoints {
            url: state.public.https_url.clone(),
            mqtt_host: state.public.mqtt_host.clone(),
            mqtt_port: state.public.mqtt_port,
            ca_pem: state.identity.authorities().server_ca_pem.clone(),
        },
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
    Ok((StatusCode::CREATED, Json(body)))
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
    #[schema(value_type = Object)]
    state: Option<serde_json::Value>,
}

fn device_body(state: &HubState, d: DeviceRow) -> DeviceBody {
    let connected = DeviceId::parse(&d.id).map(|id| state.routing.is_connected(&id)).unwrap_or(false);
    DeviceBody {
        connected,
        state: d
            .state_json
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v.get("state").cloned()),
        id: d.id,
        model: d.model,
        status: d.status,
        created_at_ms: d.created_at,
        enrolled_at_ms: d.enrolled_at,
        revoked_at_ms: d.revoked_at,
        last_seen_at_ms: d.last_seen_at,
        cert_serial: d.cert_serial,
        cert_not_after_ms: d.cert_not_after,
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Return devices with ids after this one (the previous page's `next_after`).
    after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct DeviceList {
    devices: Vec<DeviceBody>,
    /// Pass as `after` for the next page; null once a page comes back short.
    next_after: Option<String>,
}

fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be 1 to {max}")));
    }
    Ok(limit)
}

/// Lists devices, ordered by id.
#[utoipa::path(get, path = "/api/v1/devices", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = DeviceList), (status = 401, body = super::error::ErrorBody)))]
async fn list_devices(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    Query(params): Query<ListParams>,
) -> Result<Json<DeviceList>, ApiError> {
    let limit = page_limit(params.limit, 100, 1000)?;
    let rows = state.store.devices(params.after.as_deref(), limit).await?;
    let next_after = (rows.len() as i64 == limit).then(|| rows.last().map(|d| d.id.clone())).flatten();
    Ok(Json(DeviceList { devices: rows.into_iter().map(|d| device_body(&state, d)).collect(), next_after }))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = DeviceBody), (status = 404, body = super::error::ErrorBody)))]
async fn get_device(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    Path(id): Path<String>,
) -> Result<Json<DeviceBody>, ApiError> {
    let id = device_id(&id)?;
    let row = state.store.device(id.as_str()).await?.ok_or_else(|| ApiError::not_found("device"))?;
    Ok(Json(device_body(&state, row)))
}

/// Revokes a device: its connection closes within seconds and every later connection or renewal is refused.
#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = DeviceBody), (status = 404, body = super::error::ErrorBody)))]
async fn revoke_device(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    Path(id): Path<String>,
) -> Result<Json<DeviceBody>, ApiError> {
    let id = device_id(&id)?;
    if !state.identity.revoke(&id).await? {
        return Err(ApiError::not_found("device"));
    }
    let row = state.store.device(id.as_str()).await?.ok_or_else(|| ApiError::not_found("device"))?;
    Ok(Json(device_body(&state, row)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct TelemetryParams {
    /// Device time from (inclusive), Unix ms. Default 0.
    from: Option<i64>,
    /// Device time to (exclusive), Unix ms. Default: no limit.
    to: Option<i64>,
    /// Only messages with seq greater than this (the previous page's `next_after_seq`).
    after_seq: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
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
#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", params(("id" = String, Path), TelemetryParams), security(("bearer" = [])),
    responses((status = 200, body = TelemetryPage), (status = 404, body = super::error::ErrorBody)))]
async fn telemetry(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    Path(id): Path<String>,
    Query(p): Query<TelemetryParams>,
) -> Result<Json<TelemetryPage>, ApiError> {
    let id = device_id(&id)?;
    let limit = page_limit(p.limit, 100, 1000)?;
    let (from, to) = (p.from.unwrap_or(0), p.to.unwrap_or(i64::MAX));
    if from < 0 || to <= from {
        return Err(ApiError::bad_request("invalid_range", "need 0 <= from < to"));
    }
    if state.store.device(id.as_str()).await?.is_none() {
        return Err(ApiError::not_found("device"));
    }
    let rows = state
        .store
        .uplinks(&UplinkQuery {
            device_id: id.to_string(),
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
            kind: r.kind,
            device_ts_ms: r.device_ts,
            received_at_ms: r.received_at,
            body: serde_json::from_str(&r.body_json).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(Json(TelemetryPage { items, next_after_seq }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    /// Command name (`a-z 0-9 _`), for example `ping`, `set_interval`, `report_state`.
    name: String,
    /// Arguments: names to numbers, booleans or short strings.
    #[serde(default)]
    #[schema(value_type = Object)]
    args: Fields,
    /// Seconds until the command times out (default 60).
    #[serde(default)]
    timeout_secs: Option<u64>,
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
    sent_at_ms: Option<i64>,
    answered_at_ms: Option<i64>,
    detail: Option<String>,
}

impl From<CommandRow> for CommandBody {
    fn from(r: CommandRow) -> Self {
        CommandBody {
            args: serde_json::from_str(&r.args_json).unwrap_or(serde_json::Value::Null),
            id: r.id,
            device_id: r.device_id,
            name: r.name,
            status: r.status,
            created_at_ms: r.created_at,
            expires_at_ms: r.expires_at,
            sent_at_ms: r.sent_at,
            answered_at_ms: r.answered_at,
            detail: r.detail,
        }
    }
}

/// Sends a command. It is recorded first, delivered when the device is connected and subscribed, and ends as
/// the device's answer or `timeout`.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", params(("id" = String, Path)), request_body = CommandRequest, security(("bearer" = [])),
    responses((status = 202, body = CommandBody), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn send_command(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CommandRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let id = device_id(&id)?;
    let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(60));
    let row = state.commands.send(&id, &req.name, req.args, timeout).await.map_err(|e| match e {
        CommandError::UnknownDevice => ApiError::not_found("device"),
        CommandError::NotEnrolled(_) => ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string()),
        CommandError::Invalid(v) => ApiError::bad_request("invalid_command", v.to_string()),
        CommandError::Store(s) => ApiError::internal(s),
    })?;
    Ok((StatusCode::ACCEPTED, Json(CommandBody::from(row))))
}

/// One command and its outcome.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands/{command_id}", params(("id" = String, Path), ("command_id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = CommandBody), (status = 404, body = super::error::ErrorBody)))]
async fn get_command(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    Path((id, command_id)): Path<(String, String)>,
) -> Result<Json<CommandBody>, ApiError> {
    let id = device_id(&id)?;
    let row = state.commands.get(&id, &command_id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    Ok(Json(row.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct EventParams {
    /// Only events of this device.
    device: Option<String>,
    /// How many, newest first, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct SecurityEventBody {
    id: i64,
    at_ms: i64,
    device_id: Option<String>,
    source: Option<String>,
    kind: String,
    detail: String,
}

/// Recent security events (refused connections, ACL violations, invalid payloads, limit breaches).
#[utoipa::path(get, path = "/api/v1/security-events", params(EventParams), security(("bearer" = [])),
    responses((status = 200, body = [SecurityEventBody])))]
async fn security_events(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    Query(p): Query<EventParams>,
) -> Result<Json<Vec<SecurityEventBody>>, ApiError> {
    let limit = page_limit(p.limit, 100, 1000)?;
    let device = match p.device.as_deref() {
        Some(d) => Some(device_id(d)?),
        None => None,
    };
    let rows = state.store.security_events(device.as_ref().map(DeviceId::as_str), limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SecurityEventBody {
                id: r.id,
                at_ms: r.at,
                device_id: r.device_id,
                source: r.source,
                kind: r.kind,
                detail: r.detail,
            })
            .collect(),
    ))
}
