//! Who is asking, decided once per request: an API token (`Authorization: Bearer …`) or a sign-in session (the
//! `__Host-hearth_session` cookie; unsafe methods must then carry the session's CSRF token in `X-CSRF-Token`, and a
//! browser's `Sec-Fetch-Site` must not say cross-site). Handlers take a [`Caller`] (any account) or an
//! [`OperatorAuth`] (owner or admin) and never look at headers themselves.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};

use super::error::ApiError;
use crate::HubState;
use crate::accounts::{Operator, Role, TokenRefusal};
use crate::monitoring::SecurityEvent;

/// The session cookie's name (`__Host-`: Secure, path `/`, no Domain, so no other host can set it).
pub const SESSION_COOKIE: &str = "__Host-hearth_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Any signed-in account, through an API token or a session.
pub struct Caller(pub Operator);

/// An operator who may run the fleet: the owner or an admin.
pub struct OperatorAuth(pub Operator);

fn peer_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<super::PeerAddr>().map(|p| p.0.ip())
}

/// The `Set-Cookie` value of a session cookie: `__Host-` (Secure, path `/`, no Domain), HttpOnly, SameSite=Strict;
/// an empty value with `max_age` 0 clears it.
pub fn session_cookie_header(value: &str, max_age: i64) -> String {
    format!("{SESSION_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

impl FromRequestParts<HubState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &HubState) -> Result<Self, Self::Rejection> {
        let refused = |kind: &'static str, detail: String| {
            state.monitor.record(SecurityEvent { device: None, source: peer_ip(parts), kind, detail });
        };
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
                ApiError::unauthorized("missing_token", "the Authorization header must be `Bearer <token>`")
            })?;
            if token.len() > 256 {
                return Err(ApiError::unauthorized("invalid_token", "the token is not valid"));
            }
            return match state.accounts.authenticate(token.trim()).await? {
                Ok(op) => Ok(Caller(op)),
                Err(refusal) => {
                    // Recorded (aggregated per source) like every other refusal.
                    refused("auth_failed", format!("API token {refusal:?} for {} {}", parts.method, parts.uri.path()));
                    match refusal {
                        TokenRefusal::Expired => Err(ApiError::unauthorized("token_expired", "the token has expired")),
                        TokenRefusal::Invalid => Err(ApiError::unauthorized("invalid_token", "the token is not valid")),
                    }
                }
            };
        }
        let Some(cookie) = session_cookie(&parts.headers) else {
            return Err(ApiError::unauthorized(
                "missing_token",
                "sign in, or send `Authorization: Bearer <API token>`",
            ));
        };
        if cookie.len() > 256 {
            return Err(ApiError::unauthorized("invalid_session", "the session is not valid; sign in again"));
        }
        let Some((op, _)) = state.accounts.session(cookie).await? else {
            refused("auth_failed", format!("session cookie not live for {} {}", parts.method, parts.uri.path()));
            return Err(ApiError::unauthorized("invalid_session", "the session has ended; sign in again"));
        };
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if unsafe_method {
            let cross_site = parts
                .headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v != "same-origin" && v != "none");
            let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if cross_site || !state.accounts.csrf_ok(cookie, presented) {
                refused("csrf_refused", format!("{} {} without a valid CSRF token", parts.method, parts.uri.path()));
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf_refused",
                    "a request with a session cookie must carry the session's X-CSRF-Token and come from this site",
                ));
            }
        }
        Ok(Caller(op))
    }
}

impl FromRequestParts<HubState> for OperatorAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &HubState) -> Result<Self, Self::Rejection> {
        let Caller(op) = Caller::from_request_parts(parts, state).await?;
        if matches!(op.role, Role::Owner | Role::Admin) {
            Ok(OperatorAuth(op))
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs the owner or an admin"))
        }
    }
}
