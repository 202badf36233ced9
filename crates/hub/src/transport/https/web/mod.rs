//! The web app: server-rendered pages for people (askama templates, checked at compile time and escaped), plain
//! HTML forms, no script, and a strict Content-Security-Policy. Consumers see their devices, live state, a
//! telemetry chart, send commands, claim and release devices, and manage their account and sessions; operators
//! also get the fleet with search and paging, revocation, updates (rollouts, releases, support periods; see
//! [`updates`]), security events, the audit log and accounts.
//!
//! Pages use the same capabilities as the API: the session and its CSRF token from `accounts`, who may see a
//! device from `api::visible_device`, commands from `commands`. Every form that changes something carries the
//! session's CSRF token, and every POST must come from this site (`Sec-Fetch-Site`, else `Origin`), so a
//! cross-site form can neither act for a signed-in person nor sign anyone in.

pub mod chart;
pub mod disclosure;
pub mod updates;

use askama::Template;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;

use super::api::{Scope, scope, visible_device};
use super::auth::{session_cookie, session_cookie_header};
use crate::HubState;
use crate::accounts::links::LinkRefusal;
use crate::accounts::{AccountInfo, Operator, Role, SESSION_ABSOLUTE, SignInOutcome, SignInRefusal};
use crate::store::{DeviceRow, LinkPurpose, Release};

/// The Content-Security-Policy of every page: nothing inline, nothing from elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../../../../static/app.css");
const ICON: &str = include_str!("../../../../static/icon.svg");
const PASSKEYS_JS: &str = include_str!("../../../../static/passkeys.js");
const REPORT_JS: &str = include_str!("../../../../static/report.js");

/// The page routes.
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/", get(home))
        .route("/static/app.css", get(css))
        .route("/static/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .route("/static/passkeys.js", get(passkeys_js))
        .route("/static/report.js", get(report_js))
        .route("/security/policy", get(disclosure::policy))
        .route("/security/report", get(disclosure::report_form).post(disclosure::report))
        .route("/security/reports/{id}", get(disclosure::status).post(disclosure::answer))
        .route("/security/products/{model}", get(disclosure::statement_page))
        .route("/security/products/{model}/snippet.html", get(disclosure::statement_snippet))
        .route("/security/inbox", get(disclosure::inbox))
        .route("/security/inbox/{id}", get(disclosure::inbox_report))
        .route("/security/inbox/{id}/{action}", post(disclosure::inbox_action))
        .route("/check-email", get(check_email))
        .route("/account/passkeys/{id}/remove", post(remove_passkey))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-up", get(sign_up_page).post(sign_up))
        .route("/verify", get(verify_page).post(verify))
        .route("/forgot", get(forgot_page).post(forgot))
        .route("/reset", get(reset_page).post(reset))
        .route("/setup", get(setup_page).post(setup))
        .route("/sign-out", post(sign_out))
        .route("/devices", get(devices))
        .route("/devices/{id}", get(device))
        .route("/devices/{id}/command", post(command))
        .route("/devices/{id}/unclaim", post(unclaim))
        .route("/devices/{id}/revoke", post(revoke))
        .route("/claim", get(claim_page).post(claim))
        .route("/account", get(account))
        .route("/account/password", post(change_password))
        .route("/account/sessions/{id}/end", post(end_session))
        .route("/account/sign-out-everywhere", post(sign_out_everywhere))
        .route("/account/support", post(grant_support))
        .route("/account/support/end", post(end_support))
        .route("/security-events", get(security_events))
        .route("/audit-log", get(audit_log))
        .route("/accounts", get(accounts))
        .route("/accounts/invite", post(invite))
        .route("/accounts/{id}/disable", post(disable))
        .route("/updates", get(updates::updates_page))
        .route("/rollouts", post(updates::start))
        .route("/rollouts/{id}/{action}", post(updates::control))
        .route("/devices/{id}/postpone", post(updates::postpone))
        .layer(axum::middleware::map_response(page_headers))
}

/// Headers on every page: the CSP, no referrer (links carry tokens), no framing, no caching.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

async fn report_js() -> Response {
    asset("text/javascript; charset=utf-8", REPORT_JS)
}

async fn passkeys_js() -> Response {
    asset("text/javascript; charset=utf-8", PASSKEYS_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

/// What every page's layout needs: who is signed in (for the navigation) and the CSRF token for its forms.
pub struct Chrome {
    /// The signed-in person's email.
    pub email: Option<String>,
    /// An operator (owner or admin): the fleet pages are in the navigation.
    pub operator: bool,
    /// Support: the granted devices are in the navigation.
    pub support: bool,
    /// The session's CSRF token, for the forms.
    pub csrf: String,
}

impl Chrome {
    fn anonymous() -> Chrome {
        Chrome { email: None, operator: false, support: false, csrf: String::new() }
    }
}

/// The signed-in person behind a page request (a live session cookie).
pub struct Viewer {
    op: Operator,
    account: AccountInfo,
    csrf: String,
}

impl Viewer {
    fn chrome(&self) -> Chrome {
        Chrome {
            email: Some(self.account.email.clone()),
            operator: matches!(self.account.role, Role::Owner | Role::Admin),
            support: self.account.role == Role::Support,
            csrf: self.csrf.clone(),
        }
    }

    fn operator(&self) -> bool {
        matches!(self.account.role, Role::Owner | Role::Admin)
    }
}

/// A page failed or was refused; rendered as a page with a message.
pub enum PageError {
    /// Not signed in: go to the sign-in page, and from there back to this page (a path on this hub).
    SignIn(Option<String>),
    /// A page with this status and message.
    Page(StatusCode, String),
}

impl PageError {
    fn not_found() -> PageError {
        PageError::Page(StatusCode::NOT_FOUND, "There is nothing here, or it is not yours to see.".into())
    }

    fn forbidden(why: &str) -> PageError {
        PageError::Page(StatusCode::FORBIDDEN, why.to_owned())
    }
}

impl<E: std::fmt::Display> From<E> for PageError
where
    E: Into<super::error::ApiError>,
{
    fn from(e: E) -> PageError {
        let api: super::error::ApiError = e.into();
        let status = api.status();
        let message = if status.is_server_error() {
            tracing::error!(error = %api, "a page failed");
            "Something went wrong on our side. Try again in a moment.".to_owned()
        } else {
            api.message().to_owned()
        };
        PageError::Page(status, message)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn(None) => Redirect::to("/sign-in").into_response(),
            PageError::SignIn(Some(next)) => {
                Redirect::to(&format!("/sign-in?next={}", percent_encode(&next))).into_response()
            }
            PageError::Page(status, message) => {
                let page = MessagePage {
                    chrome: Chrome::anonymous(),
                    title: status.canonical_reason().unwrap_or("Error").to_owned(),
                    message,
                    link: Some(("/".into(), "Back to the start".into())),
                };
                (status, html(&page)).into_response()
            }
        }
    }
}

fn html<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be drawn").into_response()
        }
    }
}

/// The viewer, if the request carries a live session cookie.
async fn viewer(state: &HubState, headers: &HeaderMap) -> Result<Option<Viewer>, PageError> {
    let Some(cookie) = session_cookie(headers).filter(|c| c.len() <= 256) else { return Ok(None) };
    let Some((op, account)) = state.accounts.session(cookie).await? else { return Ok(None) };
    let csrf = state.accounts.csrf_token(cookie);
    Ok(Some(Viewer { op, account, csrf }))
}

/// A signed-in viewer (else the sign-in page).
pub struct SignedIn(Viewer);

impl FromRequestParts<HubState> for SignedIn {
    type Rejection = PageError;
    async fn from_request_parts(parts: &mut Parts, state: &HubState) -> Result<Self, Self::Rejection> {
        let next = (parts.method == axum::http::Method::GET)
            .then(|| parts.uri.path_and_query().map(|p| p.as_str().to_owned()))
            .flatten()
            .filter(|p| safe_next(p).is_some());
        viewer(state, &parts.headers).await?.map(SignedIn).ok_or(PageError::SignIn(next))
    }
}

/// A POST from this site: refuses cross-site form posts before anything else runs.
pub struct SameSite;

impl FromRequestParts<HubState> for SameSite {
    type Rejection = PageError;
    async fn from_request_parts(parts: &mut Parts, state: &HubState) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let ok = match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some(site) => site == "same-origin" || site == "none",
            // Older browsers: the Origin, when sent, must be this hub's.
            None => headers
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|origin| origin == state.public.https_url || same_host(origin, headers)),
        };
        if ok {
            Ok(SameSite)
        } else {
            let source = parts.extensions.get::<super::PeerAddr>().map(|p| p.0.ip());
            state.monitor.record(crate::monitoring::SecurityEvent {
                device: None,
                source,
                kind: "csrf_refused",
                detail: format!("cross-site form POST {}", parts.uri.path()),
            });
            Err(PageError::forbidden("This form must be sent from this site."))
        }
    }
}

/// `next` if it is a path on this hub (not `//host` or `/\host`, which browsers read as another site), short and
/// plain; where a sign-in goes afterwards.
fn safe_next(next: &str) -> Option<&str> {
    let plain = next.len() <= 512 && !next.chars().any(|c| c.is_control() || c == '\\');
    (plain && next.starts_with('/') && !next.starts_with("//")).then_some(next)
}

/// Percent-encodes everything but unreserved characters and `/`, for a path carried in a query string.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn same_host(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    !host.is_empty() && origin.strip_prefix("https://") == Some(host)
}

/// Checks the CSRF field of a signed-in form.
fn csrf_ok(state: &HubState, headers: &HeaderMap, presented: &str) -> Result<(), PageError> {
    let cookie = session_cookie(headers).unwrap_or_default();
    if state.accounts.csrf_ok(cookie, presented) {
        Ok(())
    } else {
        Err(PageError::forbidden("This form is out of date. Go back, reload the page and try again."))
    }
}

/// A time as pages show it: `2026-11-26 03:44:00 UTC`.
fn when(ms: i64) -> String {
    crate::disclosure::security_txt::rfc3339(ms).replacen('T', " ", 1).replace('Z', " UTC")
}

/// The answer to a successful sign-in from a page: the session cookie and on to `next`.
fn signed_in_redirect(signed: crate::accounts::SignedIn, next: &str) -> Response {
    let cookie = session_cookie_header(signed.session_token.expose(), SESSION_ABSOLUTE.whole_seconds());
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, next.to_owned())]).into_response()
}

// ---- Signing in, up and out -------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    chrome: Chrome,
    title: String,
    message: String,
    link: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    chrome: Chrome,
    email: String,
    error: Option<String>,
    notice: Option<String>,
    passkeys: bool,
    sign_up: bool,
    /// Where to go after signing in.
    next: String,
}

#[derive(Template)]
#[template(path = "second_factor.html")]
struct SecondFactorPage {
    chrome: Chrome,
    ceremony_id: String,
    options: String,
    next: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NoticeQuery {
    notice: Option<String>,
    next: Option<String>,
}

/// What `?notice=` may say, so no one can put their own words on our page through a link.
fn notice_text(key: Option<&str>) -> Option<String> {
    Some(
        match key? {
            "signed-out" => "You are signed out.",
            "password-set" => "Your password is set. Sign in with it.",
            "verified" => "Your email is confirmed. Welcome.",
            "setup-done" => "The owner account is ready. Sign in with it.",
            "password-changed" => "Your password is changed and every session ended. Sign in again.",
            "released" => "The device is released. It is being wiped and can then be claimed again.",
            "claimed" => "The device is yours.",
            "passkey-added" => "The passkey is added.",
            "passkey-removed" => "The passkey is removed.",
            _ => return None,
        }
        .to_owned(),
    )
}

async fn home(State(state): State<HubState>, headers: HeaderMap) -> Result<Response, PageError> {
    Ok(match viewer(&state, &headers).await? {
        Some(_) => Redirect::to("/devices").into_response(),
        None => Redirect::to("/sign-in").into_response(),
    })
}

async fn sign_in_page(State(state): State<HubState>, Query(q): Query<NoticeQuery>) -> Response {
    html(&SignInPage {
        chrome: Chrome::anonymous(),
        email: String::new(),
        error: None,
        notice: notice_text(q.notice.as_deref()),
        passkeys: state.accounts.passkeys_available(),
        sign_up: state.accounts.sign_up_open(),
        next: q.next.as_deref().and_then(safe_next).unwrap_or("/devices").to_owned(),
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SignInForm {
    email: String,
    password: String,
    next: String,
}

async fn sign_in(
    State(state): State<HubState>,
    _same: SameSite,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, PageError> {
    let passkeys = state.accounts.passkeys_available();
    let sign_up = state.accounts.sign_up_open();
    let next = safe_next(&form.next).unwrap_or("/devices").to_owned();
    let page = |status: StatusCode, error: String| {
        let p = SignInPage {
            chrome: Chrome::anonymous(),
            email: form.email.clone(),
            error: Some(error),
            notice: None,
            passkeys,
            sign_up,
            next: next.clone(),
        };
        Ok((status, html(&p)).into_response())
    };
    if form.email.len() > 254 || form.password.len() > 512 {
        return page(StatusCode::UNAUTHORIZED, "Unknown email or wrong password.".into());
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let outcome = state
        .accounts
        .sign_in(&form.email, &form.password, super::source_ip(&peer), agent)
        .await
        .map_err(super::people::accounts_error)?;
    match outcome {
        Ok(SignInOutcome::SecondFactor(started)) => Ok(html(&SecondFactorPage {
            chrome: Chrome::anonymous(),
            ceremony_id: started.ceremony_id,
            options: started.options.to_string(),
            next: next.clone(),
        })),
        Ok(SignInOutcome::Session(signed)) => Ok(signed_in_redirect(signed, &next)),
        Err(SignInRefusal::Invalid) => {
            state.monitor.record(crate::monitoring::SecurityEvent {
                device: None,
                source: super::source_ip(&peer),
                kind: "sign_in_refused",
                detail: "unknown email or wrong password".into(),
            });
            page(
                StatusCode::UNAUTHORIZED,
                "Unknown email or wrong password. Just signed up? Open the link in our mail first: it signs you in."
                    .into(),
            )
        }
        Err(SignInRefusal::SecondFactorUnavailable) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "This account confirms sign-ins with a passkey, which needs the hub reached by its name. Ask the \
             hub's operator."
                .into(),
        ),
        Err(SignInRefusal::Throttled { retry_after_secs }) => {
            state.monitor.record(crate::monitoring::SecurityEvent {
                device: None,
                source: super::source_ip(&peer),
                kind: "sign_in_throttled",
                detail: "sign-in refused while locked".into(),
            });
            page(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed attempts. Try again in {} minutes.", retry_after_secs.div_ceil(60)),
            )
        }
    }
}

async fn sign_out(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    if let Some(account) = &v.op.account_id {
        state.accounts.end_session(account, &v.op.token_id, super::source_ip(&peer)).await?;
    }
    Ok((
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, session_cookie_header("", 0)), (header::LOCATION, "/sign-in?notice=signed-out".into())],
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "sign_up.html")]
struct SignUpPage {
    chrome: Chrome,
    email: String,
    email_error: Option<String>,
    password_error: Option<String>,
    error: Option<String>,
    passkeys: bool,
}

async fn sign_up_page(State(state): State<HubState>) -> Response {
    html(&SignUpPage {
        chrome: Chrome::anonymous(),
        email: String::new(),
        email_error: None,
        password_error: None,
        error: None,
        passkeys: state.accounts.passkeys_available(),
    })
}

async fn check_email() -> Response {
    html(&MessagePage {
        chrome: Chrome::anonymous(),
        title: "Check your email".into(),
        message: "We sent a mail to the address you gave. Follow the link in it to finish signing up (it works for \
                  24 hours)."
            .into(),
        link: None,
    })
}

async fn sign_up(
    State(state): State<HubState>,
    _same: SameSite,
    peer: Option<Extension<super::PeerAddr>>,
    Form(form): Form<SignInForm>,
) -> Result<Response, PageError> {
    let mut page = SignUpPage {
        chrome: Chrome::anonymous(),
        email: form.email.clone(),
        email_error: None,
        password_error: None,
        error: None,
        passkeys: state.accounts.passkeys_available(),
    };
    if form.email.len() > 254 || form.password.len() > 512 {
        page.error = Some("The email or password is too long.".into());
        return Ok((StatusCode::BAD_REQUEST, html(&page)).into_response());
    }
    let outcome = state
        .accounts
        .sign_up(&form.email, &form.password, super::source_ip(&peer))
        .await
        .map_err(super::people::accounts_error)?;
    let status = match outcome {
        Ok(()) => {
            return Ok(html(&MessagePage {
                chrome: Chrome::anonymous(),
                title: "Check your email".into(),
                message: "We sent a mail to the address you gave. Follow the link in it to finish signing up \
                          (it works for 24 hours)."
                    .into(),
                link: None,
            }));
        }
        Err(LinkRefusal::InvalidEmail(why)) => {
            page.email_error = Some(why.to_owned());
            StatusCode::BAD_REQUEST
        }
        Err(LinkRefusal::Password(why)) => {
            page.password_error = Some(why.to_string());
            StatusCode::BAD_REQUEST
        }
        Err(other) => {
            let status = super::links::refusal(other.clone()).status();
            page.error = Some(other.to_string());
            status
        }
    };
    Ok((status, html(&page)).into_response())
}

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyPage {
    chrome: Chrome,
    token: String,
    passkeys: bool,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokenQuery {
    token: String,
}

/// A GET only shows the form: mail scanners fetch links, and must not confirm anything. The link confirms
/// together with the password (or passkey) chosen at sign-up.
async fn verify_page(State(state): State<HubState>, Query(q): Query<TokenQuery>) -> Response {
    html(&VerifyPage {
        chrome: Chrome::anonymous(),
        token: q.token,
        passkeys: state.accounts.passkeys_available(),
        error: None,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VerifyForm {
    token: String,
    password: String,
}

async fn verify(
    State(state): State<HubState>,
    _same: SameSite,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<VerifyForm>,
) -> Result<Response, PageError> {
    if form.token.len() > 128 || form.password.len() > 512 {
        return Err(PageError::Page(StatusCode::BAD_REQUEST, LinkRefusal::InvalidLink.to_string()));
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let outcome = state
        .accounts
        .verify_email(&form.token, &form.password, super::source_ip(&peer), agent)
        .await
        .map_err(super::people::accounts_error)?;
    let (status, error) = match outcome {
        Ok(signed) => return Ok(signed_in_redirect(signed, "/devices?notice=verified")),
        Err(r @ LinkRefusal::WrongPassword) => (StatusCode::UNAUTHORIZED, r.to_string()),
        Err(r @ LinkRefusal::Throttled { .. }) => (StatusCode::TOO_MANY_REQUESTS, r.to_string()),
        Err(r) => return Err(PageError::Page(StatusCode::BAD_REQUEST, r.to_string())),
    };
    let page = VerifyPage {
        chrome: Chrome::anonymous(),
        token: form.token,
        passkeys: state.accounts.passkeys_available(),
        error: Some(error),
    };
    Ok((status, html(&page)).into_response())
}

#[derive(Template)]
#[template(path = "forgot.html")]
struct ForgotPage {
    chrome: Chrome,
    email: String,
    error: Option<String>,
}

async fn forgot_page() -> Response {
    html(&ForgotPage { chrome: Chrome::anonymous(), email: String::new(), error: None })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EmailForm {
    email: String,
}

async fn forgot(
    State(state): State<HubState>,
    _same: SameSite,
    peer: Option<Extension<super::PeerAddr>>,
    Form(form): Form<EmailForm>,
) -> Result<Response, PageError> {
    let outcome = if form.email.len() > 254 {
        Err(LinkRefusal::InvalidEmail("an email address is at most 254 characters"))
    } else {
        state
            .accounts
            .request_reset(&form.email, super::source_ip(&peer))
            .await
            .map_err(super::people::accounts_error)?
    };
    match outcome {
        Ok(()) => Ok(html(&MessagePage {
            chrome: Chrome::anonymous(),
            title: "Check your email".into(),
            message: "If this address has an account, a mail with a link to choose a new password is on its way. \
                      The link works once, for 30 minutes."
                .into(),
            link: None,
        })),
        Err(r) => {
            let status = super::links::refusal(r.clone()).status();
            let page = ForgotPage { chrome: Chrome::anonymous(), email: form.email, error: Some(r.to_string()) };
            Ok((status, html(&page)).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage {
    chrome: Chrome,
    token: String,
    invited: bool,
    error: Option<String>,
}

async fn reset_page(State(state): State<HubState>, Query(q): Query<TokenQuery>) -> Result<Response, PageError> {
    let purpose = if q.token.len() <= 128 { state.accounts.link_purpose(&q.token).await? } else { None };
    match purpose {
        Some(p @ (LinkPurpose::Reset | LinkPurpose::Invite)) => Ok(html(&ResetPage {
            chrome: Chrome::anonymous(),
            token: q.token,
            invited: p == LinkPurpose::Invite,
            error: None,
        })),
        _ => Err(PageError::Page(StatusCode::BAD_REQUEST, LinkRefusal::InvalidLink.to_string())),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResetForm {
    token: String,
    new_password: String,
    invited: bool,
}

async fn reset(
    State(state): State<HubState>,
    _same: SameSite,
    peer: Option<Extension<super::PeerAddr>>,
    Form(form): Form<ResetForm>,
) -> Result<Response, PageError> {
    if form.token.len() > 128 || form.new_password.len() > 512 {
        return Err(PageError::Page(StatusCode::BAD_REQUEST, LinkRefusal::InvalidLink.to_string()));
    }
    let outcome = state
        .accounts
        .complete_link(&form.token, &form.new_password, super::source_ip(&peer))
        .await
        .map_err(super::people::accounts_error)?;
    match outcome {
        Ok(_) => Ok(Redirect::to("/sign-in?notice=password-set").into_response()),
        Err(LinkRefusal::Password(why)) => {
            let page = ResetPage {
                chrome: Chrome::anonymous(),
                token: form.token,
                invited: form.invited,
                error: Some(why.to_string()),
            };
            Ok((StatusCode::BAD_REQUEST, html(&page)).into_response())
        }
        Err(r) => Err(PageError::Page(StatusCode::BAD_REQUEST, r.to_string())),
    }
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    chrome: Chrome,
    email: String,
    token_error: Option<String>,
    email_error: Option<String>,
    password_error: Option<String>,
}

async fn setup_page() -> Response {
    html(&SetupPage {
        chrome: Chrome::anonymous(),
        email: String::new(),
        token_error: None,
        email_error: None,
        password_error: None,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SetupForm {
    setup_token: String,
    email: String,
    password: String,
}

async fn setup(
    State(state): State<HubState>,
    _same: SameSite,
    peer: Option<Extension<super::PeerAddr>>,
    Form(form): Form<SetupForm>,
) -> Result<Response, PageError> {
    use crate::accounts::SetupRefusal;
    let mut page = SetupPage {
        chrome: Chrome::anonymous(),
        email: form.email.clone(),
        token_error: None,
        email_error: None,
        password_error: None,
    };
    if form.setup_token.len() > 128 || form.email.len() > 254 || form.password.len() > 512 {
        page.token_error = Some("Too long.".into());
        return Ok((StatusCode::BAD_REQUEST, html(&page)).into_response());
    }
    let outcome = state
        .accounts
        .setup_owner(&form.setup_token, &form.email, &form.password, "web setup", super::source_ip(&peer))
        .await
        .map_err(super::people::accounts_error)?;
    match outcome {
        Ok((_, token)) => {
            // The web needs no API token: the owner signs in next. (The API's setup hands it out.)
            state.accounts.revoke_token(&token.id).await?;
            Ok(Redirect::to("/sign-in?notice=setup-done").into_response())
        }
        Err(SetupRefusal::InvalidToken) => {
            page.token_error = Some(SetupRefusal::InvalidToken.to_string());
            Ok((StatusCode::UNAUTHORIZED, html(&page)).into_response())
        }
        Err(SetupRefusal::InvalidEmail(why)) => {
            page.email_error = Some(why.to_owned());
            Ok((StatusCode::BAD_REQUEST, html(&page)).into_response())
        }
        Err(SetupRefusal::Password(why)) => {
            page.password_error = Some(why.to_string());
            Ok((StatusCode::BAD_REQUEST, html(&page)).into_response())
        }
    }
}

// ---- Devices ----------------------------------------------------------------------------------------------

/// A device in a list.
pub struct DeviceLine {
    id: String,
    model: String,
    status: String,
    connected: bool,
    last_seen: String,
}

fn device_line(state: &HubState, live: &[String], d: &DeviceRow) -> DeviceLine {
    DeviceLine {
        id: d.id.to_string(),
        model: d.model.clone(),
        status: d.status.to_string(),
        connected: super::api::is_connected(state, live, d),
        last_seen: d.last_seen_at.map_or_else(|| "never".into(), when),
    }
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    chrome: Chrome,
    heading: String,
    devices: Vec<DeviceLine>,
    q: String,
    next: Option<String>,
    fleet: bool,
    consumer: bool,
    notice: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DevicesQuery {
    q: String,
    after: Option<String>,
    notice: Option<String>,
}

const PAGE: i64 = 50;

async fn devices(
    State(state): State<HubState>,
    SignedIn(v): SignedIn,
    Query(q): Query<DevicesQuery>,
) -> Result<Response, PageError> {
    // Device ids are letters, digits and `-._`: nothing else can match, and the text goes back into a link.
    let q_text: String =
        q.q.trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .take(64)
            .collect();
    let after: Option<String> = q.after.filter(|a| a.len() <= 64 && !a.chars().any(char::is_control));
    let after = after.as_deref();
    let (rows, heading) = match scope(&v.op)? {
        Scope::Fleet if q_text.is_empty() => (state.store.devices(after, PAGE).await?, "Fleet"),
        Scope::Fleet => (state.store.devices_with_prefix(&q_text, after, PAGE).await?, "Fleet"),
        Scope::Own(account) => (state.store.devices_of_account(account, after, PAGE).await?, "My devices"),
        Scope::Granted => {
            (state.store.devices_granted(state.clock.now_ms(), after, PAGE).await?, "Devices shared with support")
        }
    };
    let next = (rows.len() as i64 == PAGE).then(|| rows.last().map(|d| d.id.to_string())).flatten();
    let live = state.store.live_nodes(state.clock.now_ms() - 15_000).await?;
    Ok(html(&DevicesPage {
        chrome: v.chrome(),
        heading: heading.into(),
        devices: rows.iter().map(|d| device_line(&state, &live, d)).collect(),
        q: q_text,
        next,
        fleet: v.operator(),
        consumer: v.account.role == Role::Consumer,
        notice: notice_text(q.notice.as_deref()),
    }))
}

/// One reading in the table under the chart.
pub struct ReadingLine {
    at: String,
    values: String,
}

/// A command's outcome, as the device page shows it after sending.
pub struct CommandLine {
    id: String,
    name: String,
    status: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    chrome: Chrome,
    d: DeviceLine,
    state: Vec<(String, String)>,
    chart: Option<String>,
    readings: Vec<ReadingLine>,
    claimed: bool,
    wipe_pending: bool,
    wiped_at: Option<String>,
    can_command: bool,
    can_release: bool,
    can_revoke: bool,
    command: Option<CommandLine>,
    error: Option<String>,
    software: Option<updates::Software>,
    update_notice: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeviceQuery {
    command: Option<String>,
    error: Option<String>,
    update: Option<String>,
}

/// Readings in the chart and table.
const READINGS: i64 = 120;

async fn device(
    State(state): State<HubState>,
    SignedIn(v): SignedIn,
    Path(id): Path<String>,
    Query(q): Query<DeviceQuery>,
) -> Result<Response, PageError> {
    let row = visible_device(&state, &v.op, &id).await.map_err(|_| PageError::not_found())?;
    let received_from = match scope(&v.op)? {
        Scope::Fleet => 0,
        Scope::Own(_) | Scope::Granted => row.claimed_at.unwrap_or(i64::MAX),
    };
    let mut rows = state.store.latest_uplinks(row.id.as_str(), received_from, READINGS).await?;
    rows.reverse();
    let mut readings = Vec::new();
    for r in rows.iter().filter(|r| r.kind == hearth_proto::uplink::UplinkKind::Telemetry) {
        let body: serde_json::Value = serde_json::from_str(&r.body_json).unwrap_or_default();
        let metrics: Vec<(String, f64)> = body["metrics"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x))).collect())
            .unwrap_or_default();
        readings.push(chart::Reading { at_ms: r.received_at, metrics });
    }
    let chart = chart::svg(&readings, &format!("Telemetry of {}", row.id));
    let table = readings
        .iter()
        .rev()
        .take(20)
        .map(|r| ReadingLine {
            at: when(r.at_ms),
            values: r.metrics.iter().map(|(k, v)| format!("{k} {}", chart::number(*v))).collect::<Vec<_>>().join(", "),
        })
        .collect();
    let state_fields: Vec<(String, String)> = row
        .state_json
        .as_deref()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get("state").and_then(|s| s.as_object().cloned()))
        .map(|m| m.into_iter().map(|(k, v)| (k, v.to_string().trim_matches('"').to_owned())).collect())
        .unwrap_or_default();
    let command = match q.command.filter(|c| c.len() <= 64) {
        Some(cid) => state.commands.get(&row.id, &cid).await?.map(|c| CommandLine {
            id: c.id,
            name: c.name,
            status: c.status.as_str().to_owned(),
            detail: c.detail.unwrap_or_default(),
        }),
        None => None,
    };
    let live = state.store.live_nodes(state.clock.now_ms() - 15_000).await?;
    let role = v.account.role;
    Ok(html(&DevicePage {
        chrome: v.chrome(),
        d: device_line(&state, &live, &row),
        state: state_fields,
        chart,
        readings: table,
        claimed: row.owner_account_id.is_some(),
        wipe_pending: row.wipe_command_id.is_some(),
        wiped_at: row.wiped_at.map(when),
        can_command: role != Role::Support && row.status == crate::store::DeviceStatus::Enrolled,
        can_release: match role {
            Role::Consumer => true,
            Role::Owner | Role::Admin => row.owner_account_id.is_some() || row.wipe_command_id.is_some(),
            Role::Support => false,
        },
        can_revoke: matches!(role, Role::Owner | Role::Admin) && row.status != crate::store::DeviceStatus::Revoked,
        command,
        error: q.error.and_then(|e| command_error_text(&e)),
        software: updates::software(&state, &v, &row).await,
        update_notice: (q.update.as_deref() == Some("postponed")).then(|| "The update is postponed.".to_owned()),
    }))
}

/// What `?error=` may say on the device page.
fn command_error_text(key: &str) -> Option<String> {
    Some(
        match key {
            "seconds" => "The interval is a whole number of seconds from 1 to 86400.",
            "command" => "Choose a command.",
            "not-enrolled" => "The device has not enrolled yet, so it cannot take commands.",
            _ => return None,
        }
        .to_owned(),
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CsrfForm {
    csrf: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CommandForm {
    csrf: String,
    name: String,
    seconds: String,
}

async fn command(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CommandForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let row = visible_device(&state, &v.op, &id).await.map_err(|_| PageError::not_found())?;
    if v.account.role == Role::Support {
        return Err(PageError::forbidden("Support sees a consumer's devices; it does not command them."));
    }
    let back = |error: &str| Redirect::to(&format!("/devices/{}?error={error}", row.id)).into_response();
    let mut args = hearth_proto::uplink::Fields::new();
    match form.name.as_str() {
        "ping" | "report_state" => {}
        "set_interval" => match form.seconds.trim().parse::<u32>() {
            Ok(s) if (1..=86_400).contains(&s) => {
                args.insert("seconds".into(), hearth_proto::uplink::Value::Number(f64::from(s)));
            }
            _ => return Ok(back("seconds")),
        },
        _ => return Ok(back("command")),
    }
    match state.commands.send(&row.id, &form.name, args, std::time::Duration::from_secs(60)).await {
        Ok(c) => Ok(Redirect::to(&format!("/devices/{}?command={}", row.id, c.id)).into_response()),
        Err(crate::commands::CommandError::NotEnrolled(_)) => Ok(back("not-enrolled")),
        Err(e) => Err(PageError::Page(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

async fn unclaim(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let row = visible_device(&state, &v.op, &id).await.map_err(|_| PageError::not_found())?;
    let by = match scope(&v.op)? {
        Scope::Fleet => Release::Operator,
        Scope::Own(account) => Release::Owner(account),
        Scope::Granted => return Err(PageError::forbidden("Support does not release devices.")),
    };
    match state.commands.release(&row.id, by).await {
        Ok(_) => {}
        Err(crate::commands::CommandError::UnknownDevice) => return Err(PageError::not_found()),
        Err(e) => return Err(PageError::Page(StatusCode::CONFLICT, e.to_string())),
    }
    state.accounts.record(&v.op, "device_released", row.id.as_str(), super::source_ip(&peer)).await;
    Ok(Redirect::to("/devices?notice=released").into_response())
}

async fn revoke(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    if !v.operator() {
        return Err(PageError::forbidden("Only the owner and admins revoke devices."));
    }
    let row = visible_device(&state, &v.op, &id).await.map_err(|_| PageError::not_found())?;
    if !state.identity.revoke(&row.id).await? {
        return Err(PageError::not_found());
    }
    state.accounts.record(&v.op, "device_revoked", row.id.as_str(), super::source_ip(&peer)).await;
    Ok(Redirect::to(&format!("/devices/{}", row.id)).into_response())
}

#[derive(Template)]
#[template(path = "claim.html")]
struct ClaimPage {
    chrome: Chrome,
    code: String,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ClaimQuery {
    code: String,
}

/// The page a label's QR code opens (`/claim?code=…`), with the code filled in.
async fn claim_page(SignedIn(v): SignedIn, Query(q): Query<ClaimQuery>) -> Result<Response, PageError> {
    if v.account.role != Role::Consumer {
        return Err(PageError::forbidden("Devices are claimed by consumer accounts."));
    }
    let code: String =
        q.code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ' ').take(64).collect();
    Ok(html(&ClaimPage { chrome: v.chrome(), code, error: None }))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ClaimForm {
    csrf: String,
    code: String,
}

async fn claim(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<ClaimForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let (Role::Consumer, Some(account)) = (v.account.role, v.op.account_id.as_deref()) else {
        return Err(PageError::forbidden("Devices are claimed by consumer accounts."));
    };
    let page = |status: StatusCode, error: String| {
        let p = ClaimPage { chrome: v.chrome(), code: form.code.chars().take(64).collect(), error: Some(error) };
        Ok((status, html(&p)).into_response())
    };
    let source = super::source_ip(&peer);
    if let Some(secs) = state.accounts.count_claim_attempt(account, source).await? {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many attempts. Try again in {} minutes.", secs.div_ceil(60)),
        );
    }
    if form.code.len() > 64 {
        return page(StatusCode::BAD_REQUEST, "A claim code is 20 letters and digits.".into());
    }
    let Some(device) = state.identity.claim(&form.code, account).await? else {
        state.monitor.record(crate::monitoring::SecurityEvent {
            device: None,
            source,
            kind: "claim_refused",
            detail: "unknown or already used claim code".into(),
        });
        return page(
            StatusCode::NOT_FOUND,
            "No device waiting to be claimed has this code. Check the code on the label.".into(),
        );
    };
    state.accounts.claim_succeeded(account, source).await?;
    state.accounts.record(&v.op, "device_claimed", &device, source).await;
    Ok(Redirect::to(&format!("/devices/{device}")).into_response())
}

// ---- Account ----------------------------------------------------------------------------------------------

/// A passkey in the account page's list.
pub struct PasskeyLine {
    id: String,
    name: String,
    added: String,
    used: Option<String>,
}

/// A session in the account page's list.
pub struct SessionLine {
    id: String,
    started: String,
    last_seen: String,
    from: String,
    agent: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    /// Signs in with a passkey only: no password to change.
    passkey_only: bool,
    chrome: Chrome,
    email: String,
    role: String,
    operator: bool,
    passkeys_available: bool,
    passkeys: Vec<PasskeyLine>,
    notice: Option<String>,
    sessions: Vec<SessionLine>,
    consumer: bool,
    grant_until: Option<String>,
    current_error: Option<String>,
    new_error: Option<String>,
}

async fn account_page(state: &HubState, v: &Viewer) -> Result<AccountPage, PageError> {
    let account = v.op.account_id.as_deref().unwrap_or_default();
    let sessions = state
        .accounts
        .sessions(account)
        .await?
        .into_iter()
        .map(|s| SessionLine {
            current: s.id == v.op.token_id,
            id: s.id,
            started: when(s.created_at),
            last_seen: when(s.last_seen_at),
            from: s.source.unwrap_or_else(|| "?".into()),
            agent: s.user_agent.unwrap_or_default(),
        })
        .collect();
    let consumer = v.account.role == Role::Consumer;
    let grant_until =
        if consumer { state.store.support_grant(account, state.clock.now_ms()).await?.map(when) } else { None };
    let passkeys = state
        .accounts
        .passkeys(account)
        .await?
        .into_iter()
        .map(|p| PasskeyLine {
            id: p.id,
            name: p.name,
            added: when(p.created_at_ms),
            used: p.last_used_at_ms.map(when),
        })
        .collect();
    let passkey_only = state.store.account(account).await?.is_some_and(|a| crate::accounts::passkeys::passkey_only(&a));
    Ok(AccountPage {
        passkey_only,
        chrome: v.chrome(),
        email: v.account.email.clone(),
        role: v.account.role.as_str().to_owned(),
        operator: v.account.role != Role::Consumer,
        passkeys_available: state.accounts.passkeys_available(),
        passkeys,
        notice: None,
        sessions,
        consumer,
        grant_until,
        current_error: None,
        new_error: None,
    })
}

async fn account(
    State(state): State<HubState>,
    SignedIn(v): SignedIn,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, PageError> {
    let mut page = account_page(&state, &v).await?;
    page.notice = notice_text(q.notice.as_deref());
    Ok(html(&page))
}

async fn remove_passkey(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    if id.len() > 1400 {
        return Err(PageError::not_found());
    }
    match state
        .accounts
        .remove_passkey(&v.op, &id, super::source_ip(&peer))
        .await
        .map_err(super::people::accounts_error)?
    {
        Ok(()) => Ok(Redirect::to("/account?notice=passkey-removed").into_response()),
        Err(r) => Err(PageError::Page(super::passkeys::refusal(r.clone()).status(), r.to_string())),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PasswordForm {
    csrf: String,
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Result<Response, PageError> {
    use crate::accounts::ChangeRefusal;
    csrf_ok(&state, &headers, &form.csrf)?;
    let account = v.op.account_id.clone().unwrap_or_default();
    let mut page = account_page(&state, &v).await?;
    if form.current_password.len() > 512 || form.new_password.len() > 512 {
        page.new_error = Some("A password is at most 128 characters.".into());
        return Ok((StatusCode::BAD_REQUEST, html(&page)).into_response());
    }
    let outcome = state
        .accounts
        .change_password(&account, &form.current_password, &form.new_password, super::source_ip(&peer))
        .await
        .map_err(super::people::accounts_error)?;
    let status = match outcome {
        Ok(()) => {
            return Ok((
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, session_cookie_header("", 0)),
                    (header::LOCATION, "/sign-in?notice=password-changed".into()),
                ],
            )
                .into_response());
        }
        Err(ChangeRefusal::WrongPassword) => {
            page.current_error = Some(ChangeRefusal::WrongPassword.to_string());
            StatusCode::FORBIDDEN
        }
        Err(r @ ChangeRefusal::Throttled { .. }) => {
            page.current_error = Some(r.to_string());
            StatusCode::TOO_MANY_REQUESTS
        }
        Err(ChangeRefusal::Password(why)) => {
            page.new_error = Some(why.to_string());
            StatusCode::BAD_REQUEST
        }
    };
    Ok((status, html(&page)).into_response())
}

async fn end_session(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let account = v.op.account_id.clone().unwrap_or_default();
    if id.len() > 64 || !state.accounts.end_session(&account, &id, super::source_ip(&peer)).await? {
        return Err(PageError::not_found());
    }
    Ok(Redirect::to("/account").into_response())
}

async fn sign_out_everywhere(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let account = v.op.account_id.clone().unwrap_or_default();
    state.accounts.end_all_sessions(&account, super::source_ip(&peer)).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, session_cookie_header("", 0)), (header::LOCATION, "/sign-in?notice=signed-out".into())],
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GrantForm {
    csrf: String,
    hours: String,
}

async fn grant_support(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<GrantForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let (Role::Consumer, Some(account)) = (v.account.role, v.op.account_id.as_deref()) else {
        return Err(PageError::forbidden("A consumer grants support access to its devices."));
    };
    let Some(hours) = form.hours.trim().parse::<i64>().ok().filter(|h| (1..=168).contains(h)) else {
        return Err(PageError::Page(StatusCode::BAD_REQUEST, "Choose 1 to 168 hours.".into()));
    };
    let now = state.clock.now_ms();
    state.store.grant_support(account, now, now + hours * 3_600_000).await?;
    state.accounts.record(&v.op, "support_granted", account, super::source_ip(&peer)).await;
    Ok(Redirect::to("/account").into_response())
}

async fn end_support(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let (Role::Consumer, Some(account)) = (v.account.role, v.op.account_id.as_deref()) else {
        return Err(PageError::forbidden("A consumer grants support access to its devices."));
    };
    if state.store.revoke_support_grant(account).await? {
        state.accounts.record(&v.op, "support_grant_revoked", account, super::source_ip(&peer)).await;
    }
    Ok(Redirect::to("/account").into_response())
}

// ---- Operators --------------------------------------------------------------------------------------------

fn operator_only(v: &Viewer) -> Result<(), PageError> {
    if v.operator() { Ok(()) } else { Err(PageError::forbidden("This page is for the owner and admins.")) }
}

/// A security event in the list.
pub struct EventLine {
    last: String,
    count: i64,
    kind: String,
    device: String,
    source: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    chrome: Chrome,
    events: Vec<EventLine>,
}

async fn security_events(State(state): State<HubState>, SignedIn(v): SignedIn) -> Result<Response, PageError> {
    operator_only(&v)?;
    let rows = state.store.security_events(None, None, 200).await?;
    let events = rows
        .into_iter()
        .map(|e| EventLine {
            last: when(e.last_at),
            count: e.count,
            kind: e.kind,
            device: e.device_id.unwrap_or_default(),
            source: e.source.unwrap_or_default(),
            detail: e.detail,
        })
        .collect();
    Ok(html(&EventsPage { chrome: v.chrome(), events }))
}

/// An audit entry in the list.
pub struct AuditLine {
    at: String,
    account: String,
    action: String,
    target: String,
    source: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    entries: Vec<AuditLine>,
}

async fn audit_log(State(state): State<HubState>, SignedIn(v): SignedIn) -> Result<Response, PageError> {
    operator_only(&v)?;
    let entries = state
        .accounts
        .audit_log(200)
        .await?
        .into_iter()
        .map(|e| AuditLine {
            at: when(e.at),
            account: e.account_id.unwrap_or_default(),
            action: e.action,
            target: e.target.unwrap_or_default(),
            source: e.source.unwrap_or_default(),
            detail: e.detail,
        })
        .collect();
    Ok(html(&AuditPage { chrome: v.chrome(), entries }))
}

/// An account in the list.
pub struct AccountLine {
    id: String,
    email: String,
    role: String,
    state: String,
    can_disable: bool,
}

#[derive(Template)]
#[template(path = "accounts.html")]
struct AccountsPage {
    chrome: Chrome,
    accounts: Vec<AccountLine>,
    email: String,
    owner: bool,
    email_error: Option<String>,
    invite_link: Option<String>,
    notice: Option<String>,
}

async fn accounts_page(state: &HubState, v: &Viewer) -> Result<AccountsPage, PageError> {
    let rows = state.store.accounts(None, 500).await?;
    let me = v.op.account_id.clone().unwrap_or_default();
    let accounts = rows
        .into_iter()
        .map(|a| AccountLine {
            can_disable: a.disabled_at.is_none()
                && a.id != me
                && match (v.account.role, a.role) {
                    (_, Role::Owner) => false,
                    (Role::Owner, _) => true,
                    (Role::Admin, Role::Support | Role::Consumer) => true,
                    _ => false,
                },
            state: match (a.disabled_at, a.verified_at) {
                (Some(_), _) => "disabled".into(),
                (None, None) => "waiting for its email link".into(),
                (None, Some(_)) => "active".into(),
            },
            role: a.role.as_str().to_owned(),
            id: a.id,
            email: a.email,
        })
        .collect();
    Ok(AccountsPage {
        chrome: v.chrome(),
        accounts,
        email: String::new(),
        owner: v.account.role == Role::Owner,
        email_error: None,
        invite_link: None,
        notice: None,
    })
}

async fn accounts(State(state): State<HubState>, SignedIn(v): SignedIn) -> Result<Response, PageError> {
    operator_only(&v)?;
    Ok(html(&accounts_page(&state, &v).await?))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InviteForm {
    csrf: String,
    email: String,
    role: String,
}

async fn invite(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<InviteForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    operator_only(&v)?;
    let role = match form.role.as_str() {
        "admin" => Role::Admin,
        "support" => Role::Support,
        _ => return Err(PageError::Page(StatusCode::BAD_REQUEST, "Choose admin or support.".into())),
    };
    let outcome = if form.email.len() > 254 {
        Err(LinkRefusal::InvalidEmail("an email address is at most 254 characters"))
    } else {
        state
            .accounts
            .invite(&v.op, &form.email, role, super::source_ip(&peer))
            .await
            .map_err(super::people::accounts_error)?
    };
    let mut page = accounts_page(&state, &v).await?;
    let status = match outcome {
        Ok(invited) => {
            page.notice = Some(match &invited.link {
                Some(_) => {
                    format!("{} is invited. This hub sends no mail: give them the link below.", invited.account.email)
                }
                None => {
                    format!("{} is invited and gets a mail with a link to choose a password.", invited.account.email)
                }
            });
            page.invite_link = invited.link;
            StatusCode::CREATED
        }
        Err(r) => {
            page.email = form.email.chars().take(254).collect();
            let status = super::links::refusal(r.clone()).status();
            page.email_error = Some(r.to_string());
            status
        }
    };
    Ok((status, html(&page)).into_response())
}

async fn disable(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<super::PeerAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    operator_only(&v)?;
    if id.len() > 64 {
        return Err(PageError::not_found());
    }
    match state.accounts.disable(&v.op, &id, super::source_ip(&peer)).await.map_err(super::people::accounts_error)? {
        Ok(()) => Ok(Redirect::to("/accounts").into_response()),
        Err(LinkRefusal::InvalidLink) => Err(PageError::not_found()),
        Err(r) => Err(PageError::forbidden(&r.to_string())),
    }
}
