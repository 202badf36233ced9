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

/// A draft of the UK PSTI statement of compliance (The Product Security and Telecommunications Infrastructure
/// (Security Requirements for Relevant Connectable Products) Regulations 2023, Schedule 2) for `s`, for the
/// manufacturer to complete and sign. What only the manufacturer knows is in brackets.
pub fn psti_draft(s: &SecurityStatement, issued_ms: i64) -> String {
    let day = |ms: i64| super::security_txt::rfc3339(ms)[..10].to_owned();
    let manufacturer = if s.manufacturer.is_empty() { "[manufacturer's name]" } else { s.manufacturer.as_str() };
    let support = match s.support_until {
        Some(until) => format!("Security updates will be provided until at least {}.", day(until)),
        None => "[the defined support period: not yet set on the hub]".to_owned(),
    };
    format!(
        "STATEMENT OF COMPLIANCE\n\
         The Product Security and Telecommunications Infrastructure (Security Requirements for Relevant Connectable \
         Products) Regulations 2023\n\n\
         1. Product type: {model} [and the batch or serial numbers this statement covers]\n\
         2. Manufacturer: {manufacturer}, [manufacturer's address]\n\
         3. This statement of compliance is prepared by or on behalf of the manufacturer.\n\
         4. In the opinion of the manufacturer, the manufacturer has complied with the applicable security \
         requirements in Schedule 1 of the Regulations: no universal default passwords (each device has its own \
         identity and no password); a means to report security issues ({report}, policy: {policy}); and the \
         defined support period below.\n\
         5. Defined support period: {support}\n\
         6. Signed for and on behalf of {manufacturer}:\n   Name: [name]\n   Function: [function]\n\
         \x20  Place of issue: [place]\n   Date of issue: {issued}\n   Signature: [signature]\n",
        model = s.model,
        report = s.report_contacts.first().map(String::as_str).unwrap_or("[where to report]"),
        policy = s.policy_url,
        issued = day(issued_ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_psti_draft_names_the_product_the_maker_the_contact_and_the_support_period() {
        let s = SecurityStatement {
            model: "plug-1".into(),
            manufacturer: "Example Devices Ltd".into(),
            support_until: Some(1_955_000_000_000),
            support_policy: String::new(),
            support_shorter_than_five_years: false,
            report_contacts: vec!["https://hub.example.org/security/report".into()],
            policy_url: "https://hub.example.org/security/policy".into(),
            update_policy: String::new(),
        };
        let draft = psti_draft(&s, 1_795_608_000_000);
        for needed in [
            "plug-1",
            "Example Devices Ltd",
            "https://hub.example.org/security/report",
            "until at least 2031-",
            "Date of issue: 2026-11-25",
            "Schedule 1",
        ] {
            assert!(draft.contains(needed), "{needed}: {draft}");
        }
        let unset = psti_draft(&SecurityStatement { manufacturer: String::new(), support_until: None, ..s }, 0);
        assert!(unset.contains("[manufacturer's name]") && unset.contains("not yet set"), "{unset}");
    }
}
