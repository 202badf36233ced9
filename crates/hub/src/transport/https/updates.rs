//! Signed updates over HTTPS. For devices (mutual TLS, a current device certificate): the TUF repository under
//! `/tuf/` (metadata by version, target files by `{sha256}.{name}` with HTTP ranges so downloads resume) and the
//! check-in `POST /api/v1/device/update`. For operators: the hub's online keys, publishing the maker's signed
//! metadata and uploading target files, releases and their SBOMs, support periods and rollouts. For a device's
//! consumer: postponing its update within the limits.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use utoipa::ToSchema;

use hearth_proto::update::{CheckIn, CheckInAnswer};
use hearth_proto::{DeviceId, ModelId};

use super::PeerDevice;
use super::api::{ApiJson, ApiPath, OperatorAuth, Scope, scope, visible_device};
use super::auth::Caller;
use super::error::ApiError;
use crate::HubState;
use crate::identity::CertFacts;
use crate::store::ModelSupportRow;
use crate::updates::rollouts::{DeviceUpdateView, RolloutPlan, RolloutView};
use crate::updates::{Publication, RepositoryStatus, UpdateError};

/// The routes.
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/tuf/{file}", get(tuf_metadata))
        .route("/tuf/targets/{file}", get(tuf_target))
        .route("/api/v1/device/update", post(check_in))
        .route("/api/v1/updates", get(repository))
        .route("/api/v1/updates/keys", get(hub_keys))
        .route("/api/v1/updates/publish", post(publish).layer(DefaultBodyLimit::max(crate::updates::MAX_METADATA * 3)))
        .route("/api/v1/updates/files/{sha256}", get(file).post(upload).layer(DefaultBodyLimit::disable()))
        .route("/api/v1/releases", get(releases))
        .route("/api/v1/releases/{name}/sbom", get(sbom))
        .route("/api/v1/models/support", get(support_periods))
        .route("/api/v1/models/{model}/support", post(set_support))
        .route("/api/v1/rollouts", get(list_rollouts).post(create_rollout))
        .route("/api/v1/rollouts/{id}", get(get_rollout))
        .route("/api/v1/rollouts/{id}/pause", post(pause_rollout))
        .route("/api/v1/rollouts/{id}/resume", post(resume_rollout))
        .route("/api/v1/rollouts/{id}/abort", post(abort_rollout))
        .route("/api/v1/devices/{id}/update", get(device_update))
        .route("/api/v1/devices/{id}/update/postpone", post(postpone))
}

impl From<UpdateError> for ApiError {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::Refused(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", m),
            UpdateError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            UpdateError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            UpdateError::Store(e) => ApiError::internal(e),
            UpdateError::Internal(e) => ApiError::internal(e),
            UpdateError::Throttled(wait) => {
                let message = format!("too many check-ins; try again in {wait} s");
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", message).with_retry_after(wait)
            }
        }
    }
}

/// The device whose current certificate authenticated the connection (an expired one, let through for renewal,
/// is refused here).
fn device_peer(state: &HubState, peer: &PeerDevice) -> Result<CertFacts, ApiError> {
    match &peer.0 {
        Some(facts) if facts.not_after_ms >= state.clock.now_ms() => Ok(facts.clone()),
        Some(_) => Err(ApiError::unauthorized("certificate_expired", "renew the device certificate first")),
        None => Err(ApiError::unauthorized(
            "client_certificate_required",
            "updates are served to devices only, over mutual TLS with the device certificate",
        )),
    }
}

/// TUF metadata: `timestamp.json`, `N.root.json`, `N.snapshot.json`, `N.targets.json`.
async fn tuf_metadata(
    State(state): State<HubState>,
    Extension(peer): Extension<PeerDevice>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    device_peer(&state, &peer)?;
    let body = state.updates.metadata(&file).await?.ok_or_else(|| ApiError::not_found("metadata"))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Bytes read from the file per chunk of a download. Each connection holds about one chunk in flight, so this
/// sets the hub's memory per concurrent download (`hearth bench downloads` measured 256 KiB against 64 KiB).
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// A target file, `{sha256}.{name}`, whole or one byte range (`Range: bytes=a-` or `bytes=a-b`).
async fn tuf_target(
    State(state): State<HubState>,
    Extension(peer): Extension<PeerDevice>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    device_peer(&state, &peer)?;
    let sha = file.split_once('.').map(|(sha, _)| sha).ok_or_else(|| ApiError::not_found("target"))?;
    let (path, length) = state.updates.local_file(sha).await?.ok_or_else(|| ApiError::not_found("target"))?;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|v| parse_range(v, length));
    let (start, end) = match range {
        None | Some(RangeAsk::Ignore) => (0, length),
        Some(RangeAsk::Unsatisfiable) => {
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{length}"))])
                .into_response());
        }
        Some(RangeAsk::Bytes(start, end)) => (start, end),
    };
    let mut f = tokio::fs::File::open(&path).await.map_err(ApiError::internal)?;
    f.seek(std::io::SeekFrom::Start(start)).await.map_err(ApiError::internal)?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(end - start), DOWNLOAD_CHUNK);
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, header::HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, (end - start).into());
    h.insert(header::ETAG, header::HeaderValue::from_str(&format!("\"{sha}\"")).map_err(ApiError::internal)?);
    if range.is_some_and(|r| matches!(r, RangeAsk::Bytes(..))) {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {start}-{}/{length}", end - 1);
        response.headers_mut().insert(header::CONTENT_RANGE, value.parse().map_err(ApiError::internal)?);
    }
    Ok(response)
}

/// What a `Range` header asks of a file of `length` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeAsk {
    /// Not a single byte range this server serves: send the whole file.
    Ignore,
    /// Starts past the end.
    Unsatisfiable,
    /// Bytes `[start, end)`.
    Bytes(u64, u64),
}

pub(crate) fn parse_range(value: &str, length: u64) -> RangeAsk {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeAsk::Ignore };
    if length == 0 {
        // No byte of an empty file can be asked for.
        return RangeAsk::Unsatisfiable;
    }
    if spec.contains(',') {
        return RangeAsk::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else { return RangeAsk::Ignore };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // A suffix: the last b bytes.
        return match b.parse::<u64>() {
            Ok(0) => RangeAsk::Unsatisfiable,
            Ok(n) => RangeAsk::Bytes(length.saturating_sub(n), length),
            Err(_) => RangeAsk::Ignore,
        };
    }
    let Ok(start) = a.parse::<u64>() else { return RangeAsk::Ignore };
    if start >= length {
        return RangeAsk::Unsatisfiable;
    }
    let end = match b {
        "" => length,
        b => match b.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(length),
            _ => return RangeAsk::Ignore,
        },
    };
    RangeAsk::Bytes(start, end)
}

/// A device checks in: what it runs and how its update went; the answer is the release its rollout wants on it.
/// Mutual TLS with the device's current certificate.
#[utoipa::path(post, path = "/api/v1/device/update", request_body = CheckIn,
    responses((status = 200, body = CheckInAnswer), (status = 401, body = super::error::ErrorBody, description = "No current device certificate"),
        (status = 429, body = super::error::ErrorBody, description = "Too many check-ins from this device (60 at once, then one a second); see Retry-After")))]
async fn check_in(
    State(state): State<HubState>,
    Extension(peer): Extension<PeerDevice>,
    addr: Option<Extension<super::PeerAddr>>,
    body: Result<ApiJson<CheckIn>, ApiError>,
) -> Result<Json<CheckInAnswer>, ApiError> {
    let facts = device_peer(&state, &peer)?;
    let ApiJson(report) = body?;
    let row = state.store.device(facts.device.as_str()).await?.ok_or_else(|| ApiError::not_found("device"))?;
    let model = ModelId::parse(&row.model).map_err(ApiError::internal)?;
    let answer = state.updates.check_in(&facts.device, &model, super::source_ip(&addr), &report).await?;
    Ok(Json(answer))
}

/// What the update repository holds: versions and expiry of each role.
#[utoipa::path(get, path = "/api/v1/updates", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = RepositoryBody)))]
async fn repository(State(state): State<HubState>, _auth: OperatorAuth) -> Result<Json<RepositoryBody>, ApiError> {
    Ok(Json(state.updates.status().await?.into()))
}

/// The update repository's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryBody {
    /// Root version (0: none yet).
    pub root_version: i64,
    /// Targets version.
    pub targets_version: i64,
    /// Snapshot version.
    pub snapshot_version: i64,
    /// Timestamp version.
    pub timestamp_version: i64,
    /// When the root expires, Unix ms.
    pub root_expires_at: i64,
    /// When the targets metadata expires, Unix ms: sign it again before.
    pub targets_expires_at: i64,
    /// When the timestamp expires, Unix ms (renewed by the hub).
    pub timestamp_expires_at: i64,
}

impl From<RepositoryStatus> for RepositoryBody {
    fn from(s: RepositoryStatus) -> Self {
        RepositoryBody {
            root_version: s.root_version,
            targets_version: s.targets_version,
            snapshot_version: s.snapshot_version,
            timestamp_version: s.timestamp_version,
            root_expires_at: s.root_expires_at,
            targets_expires_at: s.targets_expires_at,
            timestamp_expires_at: s.timestamp_expires_at,
        }
    }
}

/// The public halves of the hub's snapshot and timestamp keys (TUF key objects), for the maker's root
/// (`hearth release init --hub-keys`).
#[utoipa::path(get, path = "/api/v1/updates/keys", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = HubKeysBody)))]
async fn hub_keys(State(state): State<HubState>, _auth: OperatorAuth) -> Result<Json<HubKeysBody>, ApiError> {
    let keys = state.updates.hub_keys()?;
    Ok(Json(HubKeysBody {
        snapshot: serde_json::to_value(&keys.snapshot).map_err(ApiError::internal)?,
        timestamp: serde_json::to_value(&keys.timestamp).map_err(ApiError::internal)?,
    }))
}

/// The hub's online keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubKeysBody {
    /// The snapshot key (TUF key object).
    #[schema(value_type = Object)]
    pub snapshot: serde_json::Value,
    /// The timestamp key (TUF key object).
    #[schema(value_type = Object)]
    pub timestamp: serde_json::Value,
}

/// Signed metadata from the maker.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// New root versions, each the next, oldest first (signed TUF root metadata).
    #[serde(default)]
    #[schema(value_type = Vec<Object>, max_items = 16)]
    pub roots: Vec<serde_json::Value>,
    /// New targets metadata (signed TUF targets metadata).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub targets: Option<serde_json::Value>,
}

/// Publishes the maker's signed root versions and/or targets metadata (every file they list uploaded first);
/// the hub signs a new snapshot and timestamp. All or nothing.
#[utoipa::path(post, path = "/api/v1/updates/publish", request_body = PublishRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = RepositoryBody),
        (status = 409, body = super::error::ErrorBody, description = "Another publication came first"),
        (status = 422, body = super::error::ErrorBody, description = "Refused: signatures, versions, expiry, missing files or release metadata")))]
async fn publish(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Json<RepositoryBody>, ApiError> {
    if req.roots.len() > 16 {
        return Err(ApiError::bad_request("too_many_roots", "at most 16 root versions at once"));
    }
    let status = state.updates.publish(Publication { roots: req.roots, targets: req.targets }).await?;
    let target = format!("targets {} root {}", status.targets_version, status.root_version);
    state.accounts.record(&auth.0, "updates_published", &target, super::source_ip(&addr)).await;
    Ok(Json(status.into()))
}

/// A stored target file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileBody {
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its length.
    pub length: u64,
}

/// A file's name: its SHA-256 as 64 lowercase hex digits (400 otherwise, like any malformed path id).
fn sha_path(sha256: &str) -> Result<(), ApiError> {
    if hearth_proto::update::is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_sha256", "a file is named by its SHA-256: 64 lowercase hex digits"))
    }
}

/// Whether a target file is uploaded.
#[utoipa::path(get, path = "/api/v1/updates/files/{sha256}", params(("sha256" = String, Path, pattern = "^[0-9a-f]{64}$", description = "SHA-256 of the file, 64 lowercase hex digits")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = FileBody), (status = 404, body = super::error::ErrorBody)))]
async fn file(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiPath(sha256): ApiPath<String>,
) -> Result<Json<FileBody>, ApiError> {
    sha_path(&sha256)?;
    let length = state.updates.file_length(&sha256).await?.ok_or_else(|| ApiError::not_found("file"))?;
    Ok(Json(FileBody { sha256, length }))
}

/// Uploads a target file (an image or an SBOM) named by its SHA-256, as `application/octet-stream`, up to
/// `updates.max_file_mb`. Refused if the content does not hash to the name. Uploading a stored file again
/// changes nothing.
#[utoipa::path(post, path = "/api/v1/updates/files/{sha256}", params(("sha256" = String, Path, pattern = "^[0-9a-f]{64}$", description = "SHA-256 of the file, 64 lowercase hex digits")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"), security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = FileBody, description = "Stored"), (status = 200, body = FileBody, description = "Stored already"),
        (status = 422, body = super::error::ErrorBody, description = "The content does not match the name, or is too large")))]
async fn upload(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(sha256): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileBody>), ApiError> {
    sha_path(&sha256)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type != "application/octet-stream" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "upload the file as application/octet-stream",
        ));
    }
    if let Some(length) = state.updates.file_length(&sha256).await? {
        return Ok((StatusCode::OK, Json(FileBody { sha256, length })));
    }
    let stored = state.updates.put_file(&sha256, body.into_data_stream()).await?;
    let length = state.updates.file_length(&sha256).await?.ok_or_else(|| ApiError::internal("file vanished"))?;
    state.accounts.record(&auth.0, "update_file_uploaded", &sha256, super::source_ip(&addr)).await;
    Ok((if stored { StatusCode::CREATED } else { StatusCode::OK }, Json(FileBody { sha256, length })))
}

/// A release, as its signed metadata describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseBody {
    /// Its image's target name.
    pub name: String,
    /// The release metadata (model, version, hardware, security version, kind, disruption, what it fixes,
    /// notes, SBOM target).
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
    /// The image's SHA-256, hex.
    pub sha256: String,
    /// The image's length.
    pub length: i64,
    /// When the hub published it, Unix ms.
    pub published_at: i64,
    /// The model's security updates end then (Unix ms), if the maker said.
    pub support_until: Option<i64>,
}

/// Releases.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseList {
    /// Newest first.
    pub releases: Vec<ReleaseBody>,
}

/// Published releases, newest first, with what each fixes and the model's support period.
#[utoipa::path(get, path = "/api/v1/releases", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ReleaseList)))]
async fn releases(State(state): State<HubState>, _caller: Caller) -> Result<Json<ReleaseList>, ApiError> {
    let support = state.store.model_support(None).await?;
    let mut out = Vec::new();
    for r in state.store.releases(None).await? {
        out.push(ReleaseBody {
            info: serde_json::from_str(&r.info_json).map_err(ApiError::internal)?,
            support_until: support.iter().find(|s| s.model == r.model).map(|s| s.support_until),
            name: r.target_name,
            sha256: r.sha256,
            length: r.length,
            published_at: r.published_at,
        });
    }
    Ok(Json(ReleaseList { releases: out }))
}

/// The CycloneDX SBOM of a release (as signed with it).
#[utoipa::path(get, path = "/api/v1/releases/{name}/sbom", params(("name" = String, Path, description = "The release's target name")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "CycloneDX JSON", content_type = "application/vnd.cyclonedx+json", body = Object), (status = 404, body = super::error::ErrorBody)))]
async fn sbom(
    State(state): State<HubState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let release = state.store.release(&name).await?.ok_or_else(|| ApiError::not_found("release"))?;
    let info: hearth_proto::release::ReleaseInfo =
        serde_json::from_str(&release.info_json).map_err(ApiError::internal)?;
    let sbom_name = info.sbom.ok_or_else(|| ApiError::not_found("SBOM"))?;
    let targets = state.updates.metadata("targets.json").await?.ok_or_else(|| ApiError::not_found("SBOM"))?;
    let targets: serde_json::Value = serde_json::from_slice(&targets).map_err(ApiError::internal)?;
    let sha = targets["signed"]["targets"][&sbom_name]["hashes"]["sha256"]
        .as_str()
        .ok_or_else(|| ApiError::not_found("SBOM"))?
        .to_owned();
    let (path, _) = state.updates.local_file(&sha).await?.ok_or_else(|| ApiError::not_found("SBOM"))?;
    let body = tokio::fs::read(path).await.map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/vnd.cyclonedx+json")], body).into_response())
}

/// A model's defined support period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SupportBody {
    /// The model.
    #[serde(default)]
    pub model: String,
    /// Security updates until, Unix ms.
    pub support_until: i64,
    /// The policy in plain words (up to 2000 characters).
    #[schema(max_length = 2000)]
    pub policy: String,
}

/// Support periods.
#[derive(Debug, Serialize, ToSchema)]
pub struct SupportList {
    /// By model.
    pub models: Vec<SupportBody>,
}

/// The defined support period of every model that has one (EN 303 645 5.3-13).
#[utoipa::path(get, path = "/api/v1/models/support", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = SupportList)))]
async fn support_periods(State(state): State<HubState>, _caller: Caller) -> Result<Json<SupportList>, ApiError> {
    let rows = state.store.model_support(None).await?;
    Ok(Json(SupportList {
        models: rows
            .into_iter()
            .map(|r| SupportBody { model: r.model, support_until: r.support_until, policy: r.policy })
            .collect(),
    }))
}

/// The support period of a model: the end date and the policy. An end date cannot move earlier.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSupport {
    /// Security updates until, Unix ms.
    pub support_until: i64,
    /// The policy in plain words (up to 2000 characters).
    #[schema(max_length = 2000)]
    pub policy: String,
}

/// Sets a model's defined support period. It may be extended, never shortened.
#[utoipa::path(post, path = "/api/v1/models/{model}/support", params(("model" = ModelId, Path, description = "Model")), request_body = SetSupport, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = SupportBody), (status = 409, body = super::error::ErrorBody, description = "Shortening a published support period")))]
async fn set_support(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(model): ApiPath<String>,
    ApiJson(req): ApiJson<SetSupport>,
) -> Result<Json<SupportBody>, ApiError> {
    let model = ModelId::parse(&model)?;
    if req.policy.chars().count() > 2000 || req.policy.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request("invalid_policy", "policy: up to 2000 characters, no control characters"));
    }
    if req.support_until <= state.clock.now_ms() {
        return Err(ApiError::bad_request("invalid_support_until", "support_until must be in the future"));
    }
    if let Some(current) = state.store.model_support(Some(model.as_str())).await?.first()
        && req.support_until < current.support_until
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "support_shortened",
            "a published support period may be extended, never shortened",
        ));
    }
    let row = ModelSupportRow {
        model: model.to_string(),
        support_until: req.support_until,
        policy: req.policy,
        updated_at: state.clock.now_ms(),
    };
    state.store.set_model_support(&row).await?;
    state.accounts.record(&auth.0, "support_period_set", model.as_str(), super::source_ip(&addr)).await;
    Ok(Json(SupportBody { model: row.model, support_until: row.support_until, policy: row.policy }))
}

/// Rollouts.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutList {
    /// Newest first, the newest 500.
    pub rollouts: Vec<RolloutView>,
}

/// The newest 500 rollouts with their progress.
#[utoipa::path(get, path = "/api/v1/rollouts", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = RolloutList)))]
async fn list_rollouts(State(state): State<HubState>, _auth: OperatorAuth) -> Result<Json<RolloutList>, ApiError> {
    Ok(Json(RolloutList { rollouts: state.updates.rollout_views(500).await? }))
}

/// Starts a rollout of a published release to every enrolled device of its model: a canary, then waves, each
/// opened when the success gate passes; the failure gate pauses it.
#[utoipa::path(post, path = "/api/v1/rollouts", request_body = RolloutPlan, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = RolloutView), (status = 404, body = super::error::ErrorBody, description = "No such release"),
        (status = 409, body = super::error::ErrorBody, description = "Another rollout of the model is running or paused, or no device to update")))]
async fn create_rollout(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiJson(plan): ApiJson<RolloutPlan>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let by = auth.0.account_id.clone().unwrap_or_else(|| "owner".into());
    let view = state.updates.create_rollout(&plan, &by).await?;
    state.accounts.record(&auth.0, "rollout_created", &view.id, super::source_ip(&addr)).await;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One rollout with its progress.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", params(("id" = String, Path, description = "Rollout id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = RolloutView), (status = 404, body = super::error::ErrorBody)))]
async fn get_rollout(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(state.updates.rollout_view(&id).await?.ok_or_else(|| ApiError::not_found("rollout"))?))
}

/// Who changed a rollout, as its reason shows it: the account's email (a token from an older hub's setup stands
/// for the owner).
pub async fn by_whom(state: &HubState, op: &crate::accounts::Operator) -> Result<String, ApiError> {
    Ok(match &op.account_id {
        Some(id) => state.store.account(id).await?.map(|a| a.email).unwrap_or_else(|| id.clone()),
        None => "the owner".into(),
    })
}

async fn control(
    state: HubState,
    auth: OperatorAuth,
    addr: Option<std::net::IpAddr>,
    id: String,
    action: &str,
) -> Result<Json<RolloutView>, ApiError> {
    let view = state.updates.control_rollout(&id, action, &by_whom(&state, &auth.0).await?).await?;
    let audited = match action {
        "pause" => "rollout_paused",
        "resume" => "rollout_resumed",
        _ => "rollout_aborted",
    };
    state.accounts.record(&auth.0, audited, &id, addr).await;
    Ok(Json(view))
}

/// Pauses a running rollout: no device starts the release until it resumes.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", params(("id" = String, Path, description = "Rollout id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = RolloutView), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "Not running")))]
async fn pause_rollout(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    control(state, auth, super::source_ip(&addr), id, "pause").await
}

/// Resumes a paused rollout (one paused by its failure gate too).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", params(("id" = String, Path, description = "Rollout id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = RolloutView), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "Not paused")))]
async fn resume_rollout(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    control(state, auth, super::source_ip(&addr), id, "resume").await
}

/// Aborts a rollout for good: no device starts the release.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", params(("id" = String, Path, description = "Rollout id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = RolloutView), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "Completed or aborted already")))]
async fn abort_rollout(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    control(state, auth, super::source_ip(&addr), id, "abort").await
}

/// What the device runs, its model's support period, and the update waiting for it (with how often it may still
/// be postponed).
#[utoipa::path(get, path = "/api/v1/devices/{id}/update", params(("id" = DeviceId, Path, description = "Device id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = DeviceUpdateView), (status = 404, body = super::error::ErrorBody)))]
async fn device_update(
    State(state): State<HubState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceUpdateView>, ApiError> {
    let row = visible_device(&state, &caller, &id).await?;
    Ok(Json(state.updates.device_update(&row.id, &row.model).await?))
}

/// How long to postpone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostponeRequest {
    /// Days (1 to `updates.max_postpone_days`).
    #[schema(minimum = 1, maximum = 30)]
    pub days: u32,
}

/// Postponed until.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostponedBody {
    /// The update waits until then, Unix ms (a security update never past its deadline).
    pub until: i64,
}

/// Postpones the device's waiting update, within the limits: a few times, a few days each, and a security
/// update never past its deadline. Automatic updates stay on.
#[utoipa::path(post, path = "/api/v1/devices/{id}/update/postpone", params(("id" = DeviceId, Path, description = "Device id")), request_body = PostponeRequest, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = PostponedBody), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody, description = "Nothing waiting, postponed too often, or past a security deadline"),
        (status = 422, body = super::error::ErrorBody, description = "Days out of range")))]
async fn postpone(
    State(state): State<HubState>,
    Caller(caller): Caller,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PostponeRequest>,
) -> Result<Json<PostponedBody>, ApiError> {
    let device: DeviceId = visible_device(&state, &caller, &id).await?.id;
    if matches!(scope(&caller)?, Scope::Granted) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "support does not postpone updates"));
    }
    let until = state.updates.postpone(&device, req.days).await?;
    state.accounts.record(&caller, "update_postponed", device.as_str(), super::source_ip(&addr)).await;
    Ok(Json(PostponedBody { until }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-", 10), RangeAsk::Bytes(0, 10));
        assert_eq!(parse_range("bytes=4-", 10), RangeAsk::Bytes(4, 10));
        assert_eq!(parse_range("bytes=4-6", 10), RangeAsk::Bytes(4, 7));
        assert_eq!(parse_range("bytes=4-60", 10), RangeAsk::Bytes(4, 10));
        assert_eq!(parse_range("bytes=-3", 10), RangeAsk::Bytes(7, 10));
        assert_eq!(parse_range("bytes=10-", 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=6-4", 10), RangeAsk::Ignore);
        assert_eq!(parse_range("bytes=0-1,4-5", 10), RangeAsk::Ignore);
        assert_eq!(parse_range("items=0-1", 10), RangeAsk::Ignore);
        assert_eq!(parse_range("bytes=x-", 10), RangeAsk::Ignore);
        assert_eq!(parse_range("bytes=18446744073709551615-18446744073709551615", 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), RangeAsk::Unsatisfiable, "an empty file");
    }
}
