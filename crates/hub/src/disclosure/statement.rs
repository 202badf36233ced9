//! The product security statement of a model (EN 303 645 5.2-1 and 5.3-13, the UK PSTI statement of compliance's
//! facts, CRA Annex II): who makes it, how to report a vulnerability, until when it gets security updates, and how
//! updates reach it. Public (a page, JSON and an HTML fragment a shop can embed), made from `[disclosure]`, the
//! `[updates]` policy and the model's defined support period. The CRA expects a support period of at least five
//! years from when a product is placed on the market; the statement says when it is shorter, counted from the
//! model's first published release (or, before one, from when the period was set).

use serde::Serialize;

use super::{DisclosureError, DisclosureSettings};
use crate::store::Store;

/// Five years, ms (365.25 days a year).
pub const FIVE_YEARS_MS: i64 = 5 * 31_557_600_000;

/// A model's security statement.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecurityStatement {
    /// The model.
    pub model: String,
    /// Who makes it (empty until `disclosure.organisation` is set).
    pub manufacturer: String,
    /// Security updates until, Unix ms (none: the maker has not defined a support period yet).
    pub support_until: Option<i64>,
    /// The maker's support policy in plain words.
    pub support_policy: String,
    /// The support period is shorter than five years from the model's first release (the CRA's expectation).
    pub support_shorter_than_five_years: bool,
    /// Where to report a vulnerability (the hub's form first).
    pub report_contacts: Vec<String>,
    /// The disclosure policy.
    pub policy_url: String,
    /// How updates reach the device, in plain words.
    pub update_policy: String,
}

/// The statement of `model`, for a hub at `base_url`; `NotFound` for a model with neither a support period nor a
/// release.
pub async fn statement(
    store: &Store,
    settings: &DisclosureSettings,
    updates: &crate::updates::UpdateSettings,
    model: &str,
    base_url: &str,
) -> Result<SecurityStatement, DisclosureError> {
    let support = store.model_support(Some(model)).await?.into_iter().next();
    let first_release = store.releases(Some(model)).await?.iter().map(|r| r.published_at).min();
    if support.is_none() && first_release.is_none() {
        return Err(DisclosureError::NotFound);
    }
    let shorter = support
        .as_ref()
        .is_some_and(|s| s.support_until < first_release.unwrap_or(s.updated_at).saturating_add(FIVE_YEARS_MS));
    let mut contacts = vec![format!("{base_url}{}", super::security_txt::REPORT_PATH)];
    contacts.extend(settings.contacts.iter().cloned());
    let day = 86_400_000;
    Ok(SecurityStatement {
        model: model.to_owned(),
        manufacturer: settings.organisation.clone(),
        support_until: support.as_ref().map(|s| s.support_until),
        support_policy: support.map(|s| s.policy).unwrap_or_default(),
        support_shorter_than_five_years: shorter,
        report_contacts: contacts,
        policy_url: format!("{base_url}{}", super::security_txt::POLICY_PATH),
        update_policy: format!(
            "Updates are signed by the manufacturer and checked by the device before it installs them. They are free \
             and install automatically; an owner may postpone one up to {} times, at most {} days each, and a \
             security update is installed within {} days of its release at the latest. The device checks for \
             updates at every start and at least every {} hours.",
            updates.max_postpones,
            updates.max_postpone_ms / day,
            updates.security_deadline_ms / day,
            updates.check_seconds / 3600
        ),
    })
}
