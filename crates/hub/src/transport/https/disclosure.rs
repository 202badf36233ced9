//! Disclosure over HTTPS: `/.well-known/security.txt`; the report intake, open to anyone without an account (a
//! proof-of-work challenge, then the report; the answer is the tracking id and the private status link); the
//! reporter's status and answers through that link; and the operators' inbox (list, one report, state, messages,
//! "actively exploited").

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{ApiJson, ApiPath, ApiQuery, OperatorAuth};
use super::error::ApiError;
use crate::HubState;
use crate::disclosure::pow::Challenge;
use crate::disclosure::{DisclosureError, NewReport, ReportDetail, ReportView, ReporterView};

/// The disclosure routes.
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/.well-known/security.txt", get(security_txt))
        .route("/api/v1/reports/challenge", get(challenge))
        .route("/api/v1/reports", get(inbox).post(submit))
        .route("/api/v1/reports/{id}", get(detail))
        .route("/api/v1/reports/{id}/state", post(set_state))
        .route("/api/v1/reports/{id}/messages", post(operator_message))
        .route("/api/v1/reports/{id}/exploited", post(mark_exploited))
        .route("/api/v1/reports/{id}/cra/{stage}", post(file_cra))
        .route("/api/v1/models/{model}/security-statement", get(security_statement))
        .route("/api/v1/models/{model}/psti-statement", get(psti_statement))
        .route("/api/v1/reports/{id}/status", get(status))
        .route("/api/v1/reports/{id}/status/messages", post(reporter_message))
}

impl From<DisclosureError> for ApiError {
    fn from(e: DisclosureError) -> Self {
        match e {
            DisclosureError::Refused(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", m),
            DisclosureError::NotFound => ApiError::not_found("report"),
            DisclosureError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            DisclosureError::Throttled(wait) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format!("too many reports; try again in {wait} s, or write to a contact in security.txt"),
            )
            .with_retry_after(wait),
            DisclosureError::Store(e) => ApiError::internal(e),
            DisclosureError::Internal(e) => ApiError::internal(e),
        }
    }
}

/// Security contacts and policy (RFC 9116), from `[disclosure]`.
#[utoipa::path(get, path = "/.well-known/security.txt",
    responses((status = 200, description = "RFC 9116 security.txt", content_type = "text/plain", body = String)))]
async fn security_txt(State(state): State<HubState>) -> Response {
    let text = state.disclosure.security_txt(&state.public.https_url);
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], text)
        .into_response()
}

/// A proof-of-work challenge for one report (no account needed).
#[utoipa::path(get, path = "/api/v1/reports/challenge", responses((status = 200, body = Challenge)))]
async fn challenge(State(state): State<HubState>) -> Result<Json<Challenge>, ApiError> {
    Ok(Json(state.disclosure.challenge()?))
}

/// The receipt of a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmittedBody {
    /// The tracking id.
    pub id: String,
    /// The private status link (keep it: only you can read the status and the answers there; it is shown once).
    pub status_url: String,
    /// The status link's token, for `GET /api/v1/reports/{id}/status?token=…`.
    pub token: String,
}

/// Reports a vulnerability (no account needed). Solve a challenge from `GET /api/v1/reports/challenge` first.
/// What you send is kept as text and only ever shown as text.
#[utoipa::path(post, path = "/api/v1/reports", request_body = NewReport,
    responses((status = 201, body = SubmittedBody), (status = 422, body = super::error::ErrorBody, description = "A field out of its limits, or the proof of work"),
        (status = 429, body = super::error::ErrorBody, description = "Too many reports from this address or in all; see Retry-After")))]
async fn submit(
    State(state): State<HubState>,
    addr: Option<Extension<super::PeerAddr>>,
    ApiJson(report): ApiJson<NewReport>,
) -> Result<(StatusCode, Json<SubmittedBody>), ApiError> {
    let done = state.disclosure.submit(&report, super::source_ip(&addr)).await?;
    let status_url = format!("{}/security/reports/{}?token={}", state.public.https_url, done.id, done.token);
    Ok((StatusCode::CREATED, Json(SubmittedBody { id: done.id, status_url, token: done.token })))
}

/// The status link's token.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// From the status link (without it, the report is not found).
    pub token: Option<String>,
}

/// The status of your report and the conversation, through its private link.
#[utoipa::path(get, path = "/api/v1/reports/{id}/status", params(("id" = String, Path, description = "Tracking id"), TokenQuery),
    responses((status = 200, body = ReporterView), (status = 404, body = super::error::ErrorBody, description = "No such report, or a wrong token")))]
async fn status(
    State(state): State<HubState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> Result<Json<ReporterView>, ApiError> {
    Ok(Json(state.disclosure.reporter_view(&id, q.token.as_deref().unwrap_or_default()).await?))
}

/// A message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// Plain text, up to 16 KiB.
    pub body: String,
}

/// Answers the operators through the report's private link.
#[utoipa::path(post, path = "/api/v1/reports/{id}/status/messages", params(("id" = String, Path, description = "Tracking id"), TokenQuery), request_body = MessageBody,
    responses((status = 200, body = ReporterView), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
async fn reporter_message(
    State(state): State<HubState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TokenQuery>,
    ApiJson(m): ApiJson<MessageBody>,
) -> Result<Json<ReporterView>, ApiError> {
    let token = q.token.as_deref().unwrap_or_default();
    state.disclosure.reporter_message(&id, token, &m.body).await?;
    Ok(Json(state.disclosure.reporter_view(&id, token).await?))
}

/// Which reports.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// Only this state.
    pub state: Option<String>,
}

/// Reports.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxBody {
    /// Newest first, at most 500.
    pub reports: Vec<ReportView>,
}

/// The operators' inbox: reports with their next deadline, overdue ones flagged.
#[utoipa::path(get, path = "/api/v1/reports", params(InboxQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = InboxBody), (status = 422, body = super::error::ErrorBody, description = "An unknown state")))]
async fn inbox(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiQuery(q): ApiQuery<InboxQuery>,
) -> Result<Json<InboxBody>, ApiError> {
    Ok(Json(InboxBody { reports: state.disclosure.inbox(q.state.as_deref()).await? }))
}

/// One report in full.
#[utoipa::path(get, path = "/api/v1/reports/{id}", params(("id" = String, Path, description = "Tracking id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ReportDetail), (status = 404, body = super::error::ErrorBody)))]
async fn detail(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReportDetail>, ApiError> {
    Ok(Json(state.disclosure.detail(&id).await?))
}

/// A new state.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    /// acknowledged, triaging, fixing, fixed, published or rejected.
    pub state: String,
}

/// Moves a report on (it counts as telling the reporter the status).
#[utoipa::path(post, path = "/api/v1/reports/{id}/state", params(("id" = String, Path, description = "Tracking id")), request_body = StateBody, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ReportDetail), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
async fn set_state(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StateBody>,
) -> Result<Json<ReportDetail>, ApiError> {
    let detail = state.disclosure.set_state(&id, &body.state).await?;
    state.accounts.record(&auth.0, "report_state", &format!("{id} {}", body.state), super::source_ip(&addr)).await;
    Ok(Json(detail))
}

/// Writes to the reporter (they read it through their status link).
#[utoipa::path(post, path = "/api/v1/reports/{id}/messages", params(("id" = String, Path, description = "Tracking id")), request_body = MessageBody, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ReportDetail), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
async fn operator_message(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(m): ApiJson<MessageBody>,
) -> Result<Json<ReportDetail>, ApiError> {
    let account = auth.0.account_id.clone().unwrap_or_else(|| "owner".into());
    let detail = state.disclosure.operator_message(&id, &account, &m.body).await?;
    state.accounts.record(&auth.0, "report_message", &id, super::source_ip(&addr)).await;
    Ok(Json(detail))
}

/// Marks the reported vulnerability as actively exploited: the CRA's reporting clock starts (the first mark
/// counts).
#[utoipa::path(post, path = "/api/v1/reports/{id}/exploited", params(("id" = String, Path, description = "Tracking id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ReportDetail), (status = 404, body = super::error::ErrorBody)))]
async fn mark_exploited(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReportDetail>, ApiError> {
    let detail = state.disclosure.mark_exploited(&id).await?;
    state.accounts.record(&auth.0, "report_exploited", &id, super::source_ip(&addr)).await;
    Ok(Json(detail))
}

/// Records that the CRA report `stage` (early_warning, notification, final_report) was filed with ENISA's
/// platform. The hub files nothing itself; it drafts and keeps the times.
#[utoipa::path(post, path = "/api/v1/reports/{id}/cra/{stage}", params(("id" = String, Path, description = "Tracking id"), ("stage" = String, Path, description = "early_warning, notification or final_report")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ReportDetail), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody, description = "Not marked actively exploited, or (final report) not fixed yet"),
        (status = 422, body = super::error::ErrorBody)))]
async fn file_cra(
    State(state): State<HubState>,
    auth: OperatorAuth,
    addr: Option<Extension<super::PeerAddr>>,
    ApiPath((id, stage)): ApiPath<(String, String)>,
) -> Result<Json<ReportDetail>, ApiError> {
    let detail = state.disclosure.file_cra(&id, &stage).await?;
    state.accounts.record(&auth.0, "report_cra_filed", &format!("{id} {stage}"), super::source_ip(&addr)).await;
    Ok(Json(detail))
}

/// A model's product security statement (public): manufacturer, where to report a vulnerability, the defined
/// support period (and whether it is shorter than the CRA's five years), how updates reach the device.
#[utoipa::path(get, path = "/api/v1/models/{model}/security-statement", params(("model" = String, Path, description = "Model")),
    responses((status = 200, body = crate::disclosure::statement::SecurityStatement), (status = 404, body = super::error::ErrorBody, description = "A model with neither a support period nor a release")))]
async fn security_statement(
    State(state): State<HubState>,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<crate::disclosure::statement::SecurityStatement>, ApiError> {
    let model = hearth_proto::ModelId::parse(&model).map_err(|_| ApiError::not_found("model"))?;
    let settings = state.updates.settings();
    Ok(Json(state.disclosure.statement(settings, model.as_str(), &state.public.https_url).await?))
}

/// A draft of the UK PSTI statement of compliance for a model, for the manufacturer to complete and sign (plain
/// text; what only the manufacturer knows is in brackets).
#[utoipa::path(get, path = "/api/v1/models/{model}/psti-statement", params(("model" = String, Path, description = "Model")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "The draft", content_type = "text/plain", body = String), (status = 404, body = super::error::ErrorBody)))]
async fn psti_statement(
    State(state): State<HubState>,
    _auth: OperatorAuth,
    ApiPath(model): ApiPath<String>,
) -> Result<Response, ApiError> {
    let model = hearth_proto::ModelId::parse(&model).map_err(|_| ApiError::not_found("model"))?;
    let statement =
        state.disclosure.statement(state.updates.settings(), model.as_str(), &state.public.https_url).await?;
    let draft = crate::disclosure::statement::psti_draft(&statement, state.clock.now_ms());
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], draft).into_response())
}
