//! The disclosure pages anyone may open: the policy made from `[disclosure]`, the report form (with the proof of
//! work done by `static/report.js`), and a report's status page behind its private link, where the reporter
//! reads the conversation and answers. Everything a reporter sent is shown as escaped text.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Chrome, PageError, SameSite, SignedIn, csrf_ok, html, operator_only, when};
use crate::HubState;
use crate::disclosure::{DisclosureError, NewReport};

#[derive(Template)]
#[template(path = "security_policy.html")]
struct PolicyPage {
    chrome: Chrome,
    organisation: String,
    scope: String,
    contacts: Vec<String>,
    encryption_key_url: Option<String>,
    languages: String,
    acknowledge_days: u32,
    status_days: u32,
    fix_days: u32,
}

/// `GET /security/policy`.
pub async fn policy(State(state): State<HubState>) -> Response {
    let s = state.disclosure.settings();
    html(&PolicyPage {
        chrome: Chrome::anonymous(),
        organisation: if s.organisation.is_empty() {
            "The maker of these devices".into()
        } else {
            s.organisation.clone()
        },
        scope: s.scope.clone(),
        contacts: s.contacts.clone(),
        encryption_key_url: s.encryption_key_url.clone(),
        languages: s.preferred_languages.join(", "),
        acknowledge_days: s.acknowledge_days,
        status_days: s.status_days,
        fix_days: s.fix_days,
    })
}

#[derive(Template)]
#[template(path = "security_report.html")]
struct ReportPage {
    chrome: Chrome,
    error: Option<String>,
    challenge: String,
    bits: u8,
    summary: String,
    details: String,
    affected: String,
    name: String,
    email: String,
    contacts: Vec<String>,
}

/// The form's fields.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ReportForm {
    summary: String,
    details: String,
    affected: String,
    name: String,
    email: String,
    challenge: String,
    nonce: String,
    bits: String,
}

fn report_page(state: &HubState, form: ReportForm, error: Option<String>) -> Result<ReportPage, PageError> {
    let c =
        state.disclosure.challenge().map_err(|e| PageError::Page(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // Given back as typed, cut to the limits (the page never grows with what was sent).
    let cut = |s: String, n: usize| s.chars().take(n).collect::<String>();
    Ok(ReportPage {
        chrome: Chrome::anonymous(),
        error,
        challenge: c.challenge,
        bits: c.bits,
        summary: cut(form.summary, crate::disclosure::MAX_SUMMARY),
        details: cut(form.details, crate::disclosure::MAX_DETAILS),
        affected: cut(form.affected, crate::disclosure::MAX_AFFECTED),
        name: cut(form.name, crate::disclosure::MAX_NAME),
        email: cut(form.email, crate::disclosure::MAX_EMAIL),
        contacts: state.disclosure.settings().contacts.clone(),
    })
}

/// `GET /security/report`.
pub async fn report_form(State(state): State<HubState>) -> Result<Response, PageError> {
    Ok(html(&report_page(&state, ReportForm::default(), None)?))
}

/// `POST /security/report`: the report is taken, and the status page shows the private link once.
pub async fn report(
    State(state): State<HubState>,
    _same: SameSite,
    peer: Option<axum::Extension<super::super::PeerAddr>>,
    Form(form): Form<ReportForm>,
) -> Result<Response, PageError> {
    let _ = &form.bits;
    let new = NewReport {
        summary: form.summary.clone(),
        details: form.details.clone(),
        affected: form.affected.clone(),
        name: form.name.clone(),
        email: form.email.clone(),
        challenge: form.challenge.clone(),
        nonce: form.nonce.clone(),
    };
    match state.disclosure.submit(&new, super::super::source_ip(&peer)).await {
        Ok(done) => {
            let link = format!("{}/security/reports/{}?token={}", state.public.https_url, done.id, done.token);
            let view = state.disclosure.reporter_view(&done.id, &done.token).await?;
            let page = status_page(&state, view, done.token, Some(link), None);
            Ok((StatusCode::CREATED, html(&page)).into_response())
        }
        Err(e @ (DisclosureError::Refused(_) | DisclosureError::Throttled(_))) => {
            let status = if matches!(e, DisclosureError::Throttled(_)) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let mut response = (status, html(&report_page(&state, form, Some(e.to_string()))?)).into_response();
            if let DisclosureError::Throttled(wait) = e {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, wait.into());
            }
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

/// A message on the status page.
pub struct MessageLine {
    who: String,
    at: String,
    body: String,
}

#[derive(Template)]
#[template(path = "security_status.html")]
struct StatusPage {
    chrome: Chrome,
    id: String,
    token: String,
    new_link: Option<String>,
    summary: String,
    state: String,
    received: String,
    acknowledged: Option<String>,
    acknowledge_days: u32,
    messages: Vec<MessageLine>,
    error: Option<String>,
}

fn status_page(
    state: &HubState,
    view: crate::disclosure::ReporterView,
    token: String,
    new_link: Option<String>,
    error: Option<String>,
) -> StatusPage {
    StatusPage {
        chrome: Chrome::anonymous(),
        token,
        new_link,
        summary: view.summary,
        state: view.state,
        received: when(view.received_at),
        acknowledged: view.acknowledged_at.map(when),
        acknowledge_days: state.disclosure.settings().acknowledge_days,
        messages: view
            .messages
            .into_iter()
            .map(|m| MessageLine {
                who: if m.author == "operator" { "Security team".into() } else { "You".into() },
                at: when(m.at),
                body: m.body,
            })
            .collect(),
        error,
        id: view.id,
    }
}

/// The status link's token.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct TokenQuery {
    token: String,
}

/// `GET /security/reports/{id}?token=…`.
pub async fn status(
    State(state): State<HubState>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, PageError> {
    let view = state.disclosure.reporter_view(&id, &q.token).await.map_err(|_| PageError::not_found())?;
    Ok(html(&status_page(&state, view, q.token, None, None)))
}

/// The reporter's answer.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AnswerForm {
    token: String,
    body: String,
}

/// `POST /security/reports/{id}`.
pub async fn answer(
    State(state): State<HubState>,
    _same: SameSite,
    Path(id): Path<String>,
    Form(form): Form<AnswerForm>,
) -> Result<Response, PageError> {
    let outcome = state.disclosure.reporter_message(&id, &form.token, &form.body).await;
    let view = state.disclosure.reporter_view(&id, &form.token).await.map_err(|_| PageError::not_found())?;
    match outcome {
        Ok(()) => Ok(html(&status_page(&state, view, form.token, None, None))),
        Err(DisclosureError::NotFound) => Err(PageError::not_found()),
        Err(e) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            Ok((status, html(&status_page(&state, view, form.token, None, Some(e.to_string())))).into_response())
        }
    }
}

/// A report in the inbox.
pub struct InboxLine {
    id: String,
    summary: String,
    state: String,
    exploited: bool,
    received: String,
    deadline: Option<String>,
    overdue: bool,
}

fn deadline_text(d: &crate::disclosure::Deadline) -> String {
    let what = if d.kind == "acknowledge" { "acknowledge" } else { "tell the status" };
    format!("{what} by {}", when(d.due_at))
}

#[derive(Template)]
#[template(path = "security_inbox.html")]
struct InboxPage {
    chrome: Chrome,
    reports: Vec<InboxLine>,
    acknowledge_days: u32,
    status_days: u32,
}

/// `GET /security/inbox`: operators only.
pub async fn inbox(State(state): State<HubState>, SignedIn(v): SignedIn) -> Result<Response, PageError> {
    operator_only(&v)?;
    let reports = state
        .disclosure
        .inbox(None)
        .await?
        .into_iter()
        .map(|r| InboxLine {
            deadline: r.next_deadline.as_ref().map(deadline_text),
            overdue: r.overdue,
            exploited: r.exploited_at.is_some(),
            received: when(r.received_at),
            id: r.id,
            summary: r.summary,
            state: r.state,
        })
        .collect();
    let s = state.disclosure.settings();
    Ok(html(&InboxPage {
        chrome: v.chrome(),
        reports,
        acknowledge_days: s.acknowledge_days,
        status_days: s.status_days,
    }))
}

/// One CRA report on the page.
pub struct CraLine {
    stage: String,
    title: &'static str,
    due: Option<String>,
    filed: Option<String>,
    overdue: bool,
    draft: String,
}

#[derive(Template)]
#[template(path = "security_inbox_report.html")]
struct InboxReportPage {
    cra: Vec<CraLine>,
    chrome: Chrome,
    id: String,
    summary: String,
    state: String,
    received: String,
    deadline: Option<String>,
    overdue: bool,
    affected: String,
    reporter: String,
    exploited: Option<String>,
    encrypted: bool,
    details: String,
    messages: Vec<MessageLine>,
    next_states: Vec<&'static str>,
}

/// `GET /security/inbox/{id}`.
pub async fn inbox_report(
    State(state): State<HubState>,
    SignedIn(v): SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    operator_only(&v)?;
    if id.len() > 32 {
        return Err(PageError::not_found());
    }
    let d = state.disclosure.detail(&id).await.map_err(|_| PageError::not_found())?;
    let reporter = match (d.reporter_name.is_empty(), d.reporter_email.is_empty()) {
        (true, true) => "anonymous".to_owned(),
        (false, true) => d.reporter_name.clone(),
        (true, false) => d.reporter_email.clone(),
        (false, false) => format!("{} <{}>", d.reporter_name, d.reporter_email),
    };
    let r = &d.report;
    let cra = d
        .cra
        .iter()
        .flat_map(|c| c.stages.iter())
        .map(|st| CraLine {
            title: match st.stage.as_str() {
                "early_warning" => "Early warning (24 hours)",
                "notification" => "Vulnerability notification (72 hours)",
                _ => "Final report (14 days after a fix)",
            },
            stage: st.stage.clone(),
            due: st.due_at.map(when),
            filed: st.filed_at.map(when),
            overdue: st.overdue,
            draft: st.draft.clone(),
        })
        .collect();
    Ok(html(&InboxReportPage {
        cra,
        chrome: v.chrome(),
        next_states: crate::disclosure::STATES.iter().copied().filter(|s| *s != "new" && *s != r.state).collect(),
        id: r.id.clone(),
        summary: r.summary.clone(),
        state: r.state.clone(),
        received: when(r.received_at),
        deadline: r.next_deadline.as_ref().map(deadline_text),
        overdue: r.overdue,
        affected: r.affected.clone(),
        reporter,
        exploited: r.exploited_at.map(when),
        encrypted: d.encrypted,
        details: d.details.clone(),
        messages: d
            .messages
            .iter()
            .map(|m| MessageLine {
                who: if m.author == "operator" { "Security team".into() } else { "Reporter".into() },
                at: when(m.at),
                body: m.body.clone(),
            })
            .collect(),
    }))
}

/// An operator's form on a report.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct InboxForm {
    csrf: String,
    state: String,
    body: String,
}

/// `POST /security/inbox/{id}/{action}`: state, message or exploited.
pub async fn inbox_action(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<axum::Extension<super::super::PeerAddr>>,
    headers: axum::http::HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<InboxForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    operator_only(&v)?;
    let (audited, target) = match action.as_str() {
        "state" => {
            state.disclosure.set_state(&id, &form.state).await?;
            ("report_state", format!("{id} {}", form.state))
        }
        "message" => {
            state.disclosure.operator_message(&id, &v.account.id, &form.body).await?;
            ("report_message", id.clone())
        }
        "exploited" => {
            state.disclosure.mark_exploited(&id).await?;
            ("report_exploited", id.clone())
        }
        cra if cra.starts_with("cra-") => {
            let stage = &cra[4..];
            state.disclosure.file_cra(&id, stage).await?;
            ("report_cra_filed", format!("{id} {stage}"))
        }
        _ => return Err(PageError::not_found()),
    };
    state.accounts.record(&v.op, audited, &target, super::super::source_ip(&peer)).await;
    Ok(axum::response::Redirect::to(&format!("/security/inbox/{id}")).into_response())
}

#[derive(Template)]
#[template(path = "security_snippet.html")]
struct SnippetFragment<'a> {
    s: &'a crate::disclosure::statement::SecurityStatement,
    until: Option<String>,
    report: &'a str,
}

#[derive(Template)]
#[template(path = "security_statement.html")]
struct StatementPage {
    chrome: Chrome,
    s: crate::disclosure::statement::SecurityStatement,
    until: Option<String>,
    snippet: String,
}

/// The date part of [`when`].
fn day(ms: i64) -> String {
    when(ms).split(' ').next().unwrap_or_default().to_owned()
}

async fn statement_of(
    state: &HubState,
    model: &str,
) -> Result<crate::disclosure::statement::SecurityStatement, PageError> {
    let model = hearth_proto::ModelId::parse(model).map_err(|_| PageError::not_found())?;
    state
        .disclosure
        .statement(state.updates.settings(), model.as_str(), &state.public.https_url)
        .await
        .map_err(|_| PageError::not_found())
}

fn snippet(s: &crate::disclosure::statement::SecurityStatement) -> Result<String, PageError> {
    let report = s.report_contacts.first().cloned().unwrap_or_default();
    SnippetFragment { s, until: s.support_until.map(day), report: &report }
        .render()
        .map_err(|e| PageError::Page(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /security/products/{model}`: the public statement, with the snippet to copy.
pub async fn statement_page(State(state): State<HubState>, Path(model): Path<String>) -> Result<Response, PageError> {
    let s = statement_of(&state, &model).await?;
    let snippet = snippet(&s)?;
    Ok(html(&StatementPage { chrome: Chrome::anonymous(), until: s.support_until.map(day), snippet, s }))
}

/// `GET /security/products/{model}/snippet.html`: the HTML fragment alone.
pub async fn statement_snippet(
    State(state): State<HubState>,
    Path(model): Path<String>,
) -> Result<Response, PageError> {
    let s = statement_of(&state, &model).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], snippet(&s)?).into_response())
}
