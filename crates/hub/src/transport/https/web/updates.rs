//! The update pages. Operators get `/updates`: every rollout with its waves, its devices by state and why it is
//! paused (the health gate says so in its reason), with pause, resume and abort; a form to start one; the
//! published releases with what each fixes and how it disrupts the device; and each model's support period.
//! A device's page (drawn in the parent module) shows its software from [`software`]: the version it runs, its
//! model's support period, and the update waiting for it, which its owner may postpone within the limits.
//!
//! Everything here goes through the same `Updates` calls as the API, and the same audit entries.

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Chrome, PageError, SameSite, SignedIn, Viewer, csrf_ok, html, operator_only, when};
use crate::HubState;
use crate::accounts::Role;
use crate::store::DeviceRow;
use crate::transport::https::api::{Scope, scope, visible_device};
use crate::updates::rollouts::{DeviceUpdateView, RolloutPlan, RolloutView};

/// A rollout in the list.
pub struct RolloutLine {
    id: String,
    release: String,
    model: String,
    state: String,
    reason: String,
    progress: String,
    counts: String,
    gates: String,
    created: String,
    can_pause: bool,
    can_resume: bool,
    can_abort: bool,
}

fn rollout_line(r: RolloutView) -> RolloutLine {
    let counts = r.counts.iter().map(|(state, n)| format!("{n} {}", state.replace('_', " "))).collect::<Vec<_>>();
    RolloutLine {
        progress: if r.wave < 0 {
            format!("no wave open yet (of {})", r.waves)
        } else {
            format!("wave {} of {}", r.wave + 1, r.waves)
        },
        counts: format!("{} devices: {}", r.devices, counts.join(", ")),
        gates: format!("next wave at {}% succeeded; pauses at {}% failed", r.success_percent, r.pause_failure_percent),
        created: when(r.created_at),
        can_pause: r.state == "running",
        can_resume: r.state == "paused",
        can_abort: r.state == "running" || r.state == "paused",
        id: r.id,
        release: r.release,
        model: r.model,
        state: r.state,
        reason: r.reason,
    }
}

/// A release in the list.
pub struct ReleaseLine {
    name: String,
    model: String,
    version: String,
    kind: String,
    security_version: u64,
    disruption: String,
    fixes: String,
    published: String,
    support: String,
}

/// A model's support period.
pub struct SupportLine {
    model: String,
    until: String,
    policy: String,
}

#[derive(Template)]
#[template(path = "updates.html")]
struct UpdatesPage {
    chrome: Chrome,
    notice: Option<String>,
    rollouts: Vec<RolloutLine>,
    releases: Vec<ReleaseLine>,
    support: Vec<SupportLine>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

fn disruption_text(restarts: bool, seconds: u32) -> String {
    match (restarts, seconds) {
        (false, 0) => "none".into(),
        (true, s) => format!("restarts, about {s} s out of service"),
        (false, s) => format!("about {s} s out of service"),
    }
}

/// What `?notice=` may say on the updates page.
fn notice_text(key: Option<&str>) -> Option<String> {
    Some(
        match key? {
            "started" => "The rollout has started. Its first wave opens within seconds.",
            "pause" => "The rollout is paused. No device starts the release until it resumes.",
            "resume" => "The rollout is running again.",
            "abort" => "The rollout is aborted. No device starts the release.",
            _ => return None,
        }
        .to_owned(),
    )
}

/// `GET /updates`: rollouts, releases and support periods, for operators.
pub async fn updates_page(
    State(state): State<HubState>,
    SignedIn(v): SignedIn,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, PageError> {
    operator_only(&v)?;
    Ok(html(&page(&state, &v, notice_text(q.notice.as_deref())).await?))
}

async fn page(state: &HubState, v: &Viewer, notice: Option<String>) -> Result<UpdatesPage, PageError> {
    let rollouts = state.updates.rollout_views(50).await?.into_iter().map(rollout_line).collect();
    let support_rows = state.store.model_support(None).await?;
    let mut releases = Vec::new();
    for r in state.store.releases(None).await? {
        let Ok(info) = serde_json::from_str::<hearth_proto::release::ReleaseInfo>(&r.info_json) else { continue };
        releases.push(ReleaseLine {
            support: support_rows
                .iter()
                .find(|s| s.model == r.model)
                .map(|s| when(s.support_until))
                .unwrap_or_else(|| "not stated".into()),
            name: r.target_name,
            model: r.model,
            version: info.version,
            kind: r.kind,
            security_version: info.security_version,
            disruption: disruption_text(info.disruption.restarts, info.disruption.seconds),
            fixes: info.fixes,
            published: when(r.published_at),
        });
    }
    let support = support_rows
        .into_iter()
        .map(|s| SupportLine { model: s.model, until: when(s.support_until), policy: s.policy })
        .collect();
    Ok(UpdatesPage { chrome: v.chrome(), notice, rollouts, releases, support })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StartForm {
    csrf: String,
    release: String,
    canary: String,
    percents: String,
}

/// `POST /rollouts`: starts a rollout with the usual gates.
pub async fn start(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<crate::transport::https::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<StartForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    operator_only(&v)?;
    let bad = |why: &str| PageError::Page(StatusCode::UNPROCESSABLE_ENTITY, why.to_owned());
    let canary = match form.canary.trim() {
        "" => 1,
        c => c.parse::<u32>().map_err(|_| bad("The canary is a number of devices, 1 to 1000."))?,
    };
    let percents = match form.percents.trim() {
        "" => vec![10, 50, 100],
        p => p
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('%').parse::<u8>())
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad("The waves are rising percentages, such as 10, 50, 100."))?,
    };
    let plan = RolloutPlan {
        release: form.release.chars().take(256).collect(),
        canary,
        percents,
        success_percent: 90,
        pause_failure_percent: 20,
        starts_at: None,
        window_start: None,
        window_end: None,
    };
    let view = state.updates.create_rollout(&plan, &v.account.id).await?;
    state.accounts.record(&v.op, "rollout_created", &view.id, crate::transport::https::source_ip(&peer)).await;
    Ok(Redirect::to("/updates?notice=started").into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /rollouts/{id}/{action}`: pause, resume or abort.
pub async fn control(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<crate::transport::https::PeerAddr>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    operator_only(&v)?;
    let audited = match action.as_str() {
        "pause" => "rollout_paused",
        "resume" => "rollout_resumed",
        "abort" => "rollout_aborted",
        _ => return Err(PageError::not_found()),
    };
    if id.len() > 64 {
        return Err(PageError::not_found());
    }
    state.updates.control_rollout(&id, &action, &v.account.email).await?;
    state.accounts.record(&v.op, audited, &id, crate::transport::https::source_ip(&peer)).await;
    Ok(Redirect::to(&format!("/updates?notice={action}")).into_response())
}

/// A device's software, as its page shows it.
pub struct Software {
    pub(super) installed: String,
    pub(super) checked_in: String,
    pub(super) floor: String,
    pub(super) support: String,
    pub(super) policy: String,
    pub(super) pending: Option<PendingLine>,
    /// Days the postpone form offers (empty: it is not shown).
    pub(super) postpone_days: Vec<u32>,
}

/// The update waiting for a device.
pub struct PendingLine {
    pub(super) version: String,
    pub(super) kind: String,
    pub(super) fixes: String,
    pub(super) notes: String,
    pub(super) disruption: String,
    pub(super) state: String,
    pub(super) postponed_until: Option<String>,
    pub(super) postpones_left: u32,
    pub(super) deadline: Option<String>,
    pub(super) paused: bool,
}

/// The software box of a device page; `None` when it cannot be read (the rest of the page still draws).
pub async fn software(state: &HubState, v: &Viewer, row: &DeviceRow) -> Option<Software> {
    let view: DeviceUpdateView = match state.updates.device_update(&row.id, &row.model).await {
        Ok(view) => view,
        Err(e) => {
            tracing::warn!(device = %row.id, error = %e, "the device's software could not be read");
            return None;
        }
    };
    let may_postpone = v.account.role != Role::Support;
    let max_days = u32::try_from(state.updates.settings().max_postpone_ms / 86_400_000).unwrap_or(0);
    let pending = view.pending.map(|p| PendingLine {
        version: p.version,
        kind: p.kind,
        fixes: p.fixes,
        notes: p.notes,
        disruption: disruption_text(p.restarts, p.disruption_seconds),
        state: p.state.replace('_', " "),
        postponed_until: p.postponed_until.filter(|u| *u > state.clock.now_ms()).map(when),
        postpones_left: p.postpones_left,
        deadline: p.deadline.map(when),
        paused: p.rollout_paused,
    });
    let postpone_days = match &pending {
        Some(p) if may_postpone && p.postpones_left > 0 => (1..=max_days.min(30)).collect(),
        _ => Vec::new(),
    };
    Some(Software {
        installed: match (view.installed_version, view.installed_sha256) {
            (Some(version), _) => version,
            (None, Some(sha)) => format!("an image the hub does not know ({})", &sha[..sha.len().min(12)]),
            (None, None) => "not reported yet".into(),
        },
        checked_in: view.checked_in_at.map(when).unwrap_or_else(|| "never".into()),
        floor: view.security_floor.map(|f| f.to_string()).unwrap_or_else(|| "—".into()),
        support: view.support_until.map(when).unwrap_or_else(|| "not stated by the maker".into()),
        policy: view.support_policy.unwrap_or_default(),
        pending,
        postpone_days,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PostponeForm {
    csrf: String,
    days: String,
}

/// `POST /devices/{id}/postpone`: the device's owner (or an operator) postpones its waiting update.
pub async fn postpone(
    State(state): State<HubState>,
    _same: SameSite,
    SignedIn(v): SignedIn,
    peer: Option<Extension<crate::transport::https::PeerAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<PostponeForm>,
) -> Result<Response, PageError> {
    csrf_ok(&state, &headers, &form.csrf)?;
    let row = visible_device(&state, &v.op, &id).await.map_err(|_| PageError::not_found())?;
    if matches!(scope(&v.op)?, Scope::Granted) {
        return Err(PageError::forbidden("Support sees a consumer's devices; it does not postpone their updates."));
    }
    let days = form
        .days
        .trim()
        .parse::<u32>()
        .map_err(|_| PageError::Page(StatusCode::UNPROCESSABLE_ENTITY, "Choose how many days.".into()))?;
    state.updates.postpone(&row.id, days).await?;
    state.accounts.record(&v.op, "update_postponed", row.id.as_str(), crate::transport::https::source_ip(&peer)).await;
    Ok(Redirect::to(&format!("/devices/{}?update=postponed", row.id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disruption_reads_plainly() {
        assert_eq!(disruption_text(false, 0), "none");
        assert_eq!(disruption_text(true, 30), "restarts, about 30 s out of service");
        assert_eq!(disruption_text(false, 5), "about 5 s out of service");
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert!(notice_text(Some("pause")).is_some());
        assert_eq!(notice_text(Some("<script>")), None);
        assert_eq!(notice_text(None), None);
    }
}
