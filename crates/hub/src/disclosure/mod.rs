//! Vulnerability disclosure (guideline 2, EN 303 645 5.2-1…5.2-3, CRA Annex I part II): `security.txt` (RFC 9116)
//! and the disclosure policy from `[disclosure]`; report intake that anyone may use without an account; and the
//! operators' triage of what comes in, with the deadlines the policy promises.
//!
//! The intake is open to the internet, so it is bounded three ways before anything is stored: a proof of work
//! (`pow`: a challenge signed by the hub, good for one report and ten minutes, whose solution costs the sender
//! about 2^bits hashes), reports per source address per hour, and reports per hour in all. Sizes are capped per
//! field. What a reporter sends is kept as text and only ever shown as text. The reporter gets a tracking id and
//! a private status link (its token is stored as a hash) through which they read the status and the operators'
//! messages and answer them.

pub mod pow;
pub mod security_txt;
pub mod statement;

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::monitoring::{Monitor, SecurityEvent};
use crate::store::{MessageInsert, ReportInsert, ReportMessageRow, ReportRow, Store, StoreError};

/// A report's states, in the order a report usually moves through them.
pub const STATES: [&str; 7] = ["new", "acknowledged", "triaging", "fixing", "fixed", "published", "rejected"];
/// States in which a report is closed: no status deadline runs.
pub const CLOSED: [&str; 2] = ["published", "rejected"];

/// Longest summary, characters.
pub const MAX_SUMMARY: usize = 200;
/// Longest report text, bytes.
pub const MAX_DETAILS: usize = 32 * 1024;
/// Longest "what is affected", characters.
pub const MAX_AFFECTED: usize = 1000;
/// Longest reporter name, characters.
pub const MAX_NAME: usize = 100;
/// Longest email address.
pub const MAX_EMAIL: usize = 254;
/// Longest message, bytes.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Messages a reporter may add to one report (with [`MAX_MESSAGE`]: at most 320 KiB a report).
pub const MAX_REPORTER_MESSAGES: usize = 20;

/// Why a disclosure request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DisclosureError {
    /// The request is wrong; the message says how (nothing changed).
    #[error("{0}")]
    Refused(String),
    /// No such report, or the link's token is wrong (the two are not told apart).
    #[error("no such report")]
    NotFound,
    /// Too many reports from this source or in all; try again after this many seconds.
    #[error("too many reports; try again in {0} s")]
    Throttled(u64),
    /// The state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness.
    #[error("{0}")]
    Internal(String),
}

type Result<T> = std::result::Result<T, DisclosureError>;

fn refused(msg: impl Into<String>) -> DisclosureError {
    DisclosureError::Refused(msg.into())
}

/// `[disclosure]`, as the hub runs with it (the validated configuration itself).
pub type DisclosureSettings = crate::config::Disclosure;

/// A report as sent.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReport {
    /// One line: what is wrong (1 to 200 characters).
    pub summary: String,
    /// The report: what, where, how to reproduce (up to 32 KiB). May be an OpenPGP message to the maker's key.
    pub details: String,
    /// Products and versions affected, as far as you know (up to 1000 characters).
    #[serde(default)]
    pub affected: String,
    /// How you want to be named in the acknowledgements (optional).
    #[serde(default)]
    pub name: String,
    /// Where to reach you besides the status link (optional).
    #[serde(default)]
    pub email: String,
    /// The challenge from `GET /api/v1/reports/challenge`.
    pub challenge: String,
    /// A nonce such that SHA-256(challenge ":" nonce) starts with the challenge's number of zero bits.
    pub nonce: String,
}

/// A stored report's receipt: shown once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// The tracking id.
    pub id: String,
    /// The private status link's token (only its hash is kept: it cannot be shown again).
    pub token: String,
}

/// What the reporter sees through the status link.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReporterView {
    /// The tracking id.
    pub id: String,
    /// The state.
    pub state: String,
    /// The summary as sent.
    pub summary: String,
    /// Received, Unix ms.
    pub received_at: i64,
    /// Acknowledged, Unix ms.
    pub acknowledged_at: Option<i64>,
    /// The conversation, oldest first.
    pub messages: Vec<MessageView>,
}

/// A message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    /// Sent, Unix ms.
    pub at: i64,
    /// reporter or operator.
    pub author: String,
    /// The text.
    pub body: String,
}

/// A report in the operators' inbox, with its deadlines.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReportView {
    /// The tracking id.
    pub id: String,
    /// The state.
    pub state: String,
    /// One line.
    pub summary: String,
    /// What the reporter says is affected.
    pub affected: String,
    /// Received, Unix ms.
    pub received_at: i64,
    /// Acknowledged, Unix ms.
    pub acknowledged_at: Option<i64>,
    /// Marked actively exploited, Unix ms.
    pub exploited_at: Option<i64>,
    /// The next promise to keep: `acknowledge` (a new report) or `status` (tell the reporter the status);
    /// none once the report is closed.
    pub next_deadline: Option<Deadline>,
    /// That deadline has passed.
    pub overdue: bool,
}

/// A promise with its time.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Deadline {
    /// acknowledge or status.
    pub kind: String,
    /// Due, Unix ms.
    pub due_at: i64,
}

/// The EU Cyber Resilience Act's reporting clock (Article 14) for an actively exploited vulnerability: an early
/// warning within 24 hours of becoming aware, a notification within 72 hours, a final report within 14 days of a
/// fix being available. The hub drafts each report for ENISA's single reporting platform (a web form, no API);
/// a person files it and records that here. Nothing is sent automatically.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CraClock {
    /// Became aware (marked actively exploited), Unix ms.
    pub started_at: i64,
    /// The three reports, in order.
    pub stages: Vec<CraStage>,
}

/// One CRA report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CraStage {
    /// early_warning, notification or final_report.
    pub stage: String,
    /// Due, Unix ms (the final report: none until a fix is available).
    pub due_at: Option<i64>,
    /// Recorded as filed, Unix ms.
    pub filed_at: Option<i64>,
    /// Due and not filed.
    pub overdue: bool,
    /// What to enter on ENISA's platform, drafted from the report (check and complete it).
    pub draft: String,
}

/// The CRA's deadlines, ms.
const CRA_EARLY_WARNING_MS: i64 = 24 * 3_600_000;
const CRA_NOTIFICATION_MS: i64 = 72 * 3_600_000;
const CRA_FINAL_REPORT_MS: i64 = 14 * 86_400_000;

/// One report in full, for operators.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReportDetail {
    /// The summary with its deadlines.
    pub report: ReportView,
    /// The report text as sent.
    pub details: String,
    /// The text is an OpenPGP message (decrypt it with the maker's key, outside the hub).
    pub encrypted: bool,
    /// The reporter's name as given.
    pub reporter_name: String,
    /// The reporter's email as given.
    pub reporter_email: String,
    /// The conversation, oldest first.
    pub messages: Vec<MessageView>,
    /// The CRA reporting clock, once the vulnerability is marked actively exploited.
    pub cra: Option<CraClock>,
}

/// Vulnerability disclosure. Cheap to clone.
#[derive(Clone)]
pub struct Disclosure {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Clock,
    monitor: Monitor,
    settings: DisclosureSettings,
    challenges: pow::Issuer,
}

impl std::fmt::Debug for Disclosure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disclosure").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

/// The source a report counts against: an IPv4 address, or an IPv6 /64 (one subscriber's network, whose
/// addresses it can change at will).
pub fn source_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn sha256_hex(s: &str) -> String {
    crate::identity::ca::hex(digest(&SHA256, s.as_bytes()).as_ref())
}

/// Plain text of at most `max` characters, without control characters (`multiline` allows line breaks and tabs).
fn text_ok(s: &str, max_chars: usize, multiline: bool) -> bool {
    s.chars().count() <= max_chars
        && !s.chars().any(|c| {
            (c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t'))) || (!multiline && is_invisible(c))
        })
}

/// Characters that change how the text around them reads without being seen (bidirectional overrides and
/// isolates, zero-width characters): refused in one-line fields, where they could disguise a summary or a name.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

impl Disclosure {
    /// Disclosure over `store`; challenges are signed with `challenge_key` (the same on every node).
    pub fn new(
        store: Store,
        clock: Clock,
        monitor: Monitor,
        settings: DisclosureSettings,
        challenge_key: &[u8],
    ) -> Disclosure {
        Disclosure {
            inner: Arc::new(Inner { store, clock, monitor, challenges: pow::Issuer::new(challenge_key), settings }),
        }
    }

    /// A model's product security statement, for a hub at `base_url`.
    pub async fn statement(
        &self,
        updates: &crate::updates::UpdateSettings,
        model: &str,
        base_url: &str,
    ) -> Result<statement::SecurityStatement> {
        statement::statement(&self.inner.store, &self.inner.settings, updates, model, base_url).await
    }

    /// The settings.
    pub fn settings(&self) -> &DisclosureSettings {
        &self.inner.settings
    }

    /// `security.txt` for a hub reached at `base_url` (`https://host[:port]`).
    pub fn security_txt(&self, base_url: &str) -> String {
        security_txt::render(&self.inner.settings, base_url, self.inner.clock.now_ms())
    }

    /// A new proof-of-work challenge.
    pub fn challenge(&self) -> Result<pow::Challenge> {
        self.inner
            .challenges
            .issue(self.inner.settings.proof_of_work_bits, self.inner.clock.now_ms())
            .map_err(|e| DisclosureError::Internal(e.to_string()))
    }

    /// Takes a report from anyone: checked, limited, stored. The receipt carries the status link's token.
    pub async fn submit(&self, report: &NewReport, source: Option<std::net::IpAddr>) -> Result<Submitted> {
        let now = self.inner.clock.now_ms();
        let settings = &self.inner.settings;
        let summary = report.summary.trim();
        if summary.is_empty() || !text_ok(summary, MAX_SUMMARY, false) {
            return Err(refused(format!("summary: 1 to {MAX_SUMMARY} characters on one line")));
        }
        if report.details.trim().is_empty()
            || report.details.len() > MAX_DETAILS
            || !text_ok(&report.details, MAX_DETAILS, true)
        {
            return Err(refused(format!("details: 1 byte to {} KiB of text", MAX_DETAILS / 1024)));
        }
        if !text_ok(&report.affected, MAX_AFFECTED, true) {
            return Err(refused(format!("affected: up to {MAX_AFFECTED} characters")));
        }
        if !text_ok(&report.name, MAX_NAME, false) {
            return Err(refused(format!("name: up to {MAX_NAME} characters on one line")));
        }
        let email = report.email.trim();
        if !email.is_empty()
            && (email.len() > MAX_EMAIL
                || !email.contains('@')
                || email.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(refused("email: an address such as name@example.org, or nothing"));
        }
        // The proof of work first: what follows reads the store.
        if let Err(e) = self.inner.challenges.verify(&report.challenge, &report.nonce, settings.proof_of_work_bits, now)
        {
            return Err(refused(format!("proof of work: {e}")));
        }
        let id = format!(
            "VR-{}",
            crate::secrets::random_base32(10).map_err(|e| DisclosureError::Internal(e.to_string()))?.to_uppercase()
        );
        let token = crate::secrets::random_token("hvr_", 32).map_err(|e| DisclosureError::Internal(e.to_string()))?;
        let encrypted = report.details.trim_start().starts_with("-----BEGIN PGP MESSAGE-----");
        let row = ReportRow {
            id: id.clone(),
            state: "new".into(),
            summary: summary.to_owned(),
            details: report.details.clone(),
            affected: report.affected.trim().to_owned(),
            reporter_name: report.name.trim().to_owned(),
            reporter_email: email.to_owned(),
            encrypted,
            token_hash: sha256_hex(token.expose()),
            challenge: report.challenge.clone(),
            source: source.map(source_key),
            created_at: now,
            acknowledged_at: None,
            status_at: now,
            exploited_at: None,
            fixed_at: None,
            early_warning_filed_at: None,
            notification_filed_at: None,
            final_report_filed_at: None,
            updated_at: now,
        };
        let limits = (i64::from(settings.reports_per_source_per_hour), i64::from(settings.reports_per_hour));
        match self.inner.store.insert_report_within(&row, now - 3_600_000, limits.0, limits.1).await? {
            ReportInsert::Stored => {}
            ReportInsert::ChallengeUsed => {
                return Err(refused("proof of work: this challenge was used already; ask for a new one"));
            }
            ReportInsert::SourceLimit => {
                self.throttled(source, "from one source");
                return Err(DisclosureError::Throttled(3600));
            }
            ReportInsert::HubLimit => {
                self.throttled(source, "in all");
                return Err(DisclosureError::Throttled(600));
            }
        }
        tracing::info!(report = %id, "vulnerability report received");
        Ok(Submitted { id, token: token.expose().to_owned() })
    }

    fn throttled(&self, source: Option<std::net::IpAddr>, why: &str) {
        self.inner.monitor.record(SecurityEvent {
            device: None,
            source,
            kind: "report_throttled",
            detail: format!("vulnerability reports refused: too many {why}"),
        });
    }

    /// The report behind a status link; the same refusal for an unknown id and a wrong token.
    async fn by_link(&self, id: &str, token: &str) -> Result<ReportRow> {
        if id.len() > 32 || token.len() > 128 {
            return Err(DisclosureError::NotFound);
        }
        let row = self.inner.store.report(id).await?.ok_or(DisclosureError::NotFound)?;
        let presented = sha256_hex(token);
        // Equal-length hex strings compared without an early exit.
        let same = presented.len() == row.token_hash.len()
            && presented.bytes().zip(row.token_hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same { Ok(row) } else { Err(DisclosureError::NotFound) }
    }

    async fn messages(&self, id: &str) -> Result<Vec<MessageView>> {
        Ok(self
            .inner
            .store
            .report_messages(id)
            .await?
            .into_iter()
            .map(|m| MessageView { at: m.at, author: m.author, body: m.body })
            .collect())
    }

    /// What the reporter sees through the status link.
    pub async fn reporter_view(&self, id: &str, token: &str) -> Result<ReporterView> {
        let row = self.by_link(id, token).await?;
        Ok(ReporterView {
            messages: self.messages(&row.id).await?,
            id: row.id,
            state: row.state,
            summary: row.summary,
            received_at: row.created_at,
            acknowledged_at: row.acknowledged_at,
        })
    }

    /// The reporter answers through the status link.
    pub async fn reporter_message(&self, id: &str, token: &str, body: &str) -> Result<()> {
        let row = self.by_link(id, token).await?;
        self.add_message(&row.id, "reporter", "", body).await
    }

    async fn add_message(&self, id: &str, author: &str, account: &str, body: &str) -> Result<()> {
        if body.trim().is_empty() || body.len() > MAX_MESSAGE || !text_ok(body, MAX_MESSAGE, true) {
            return Err(refused(format!("message: 1 byte to {} KiB of text", MAX_MESSAGE / 1024)));
        }
        let id_bytes = crate::secrets::random_base32(16).map_err(|e| DisclosureError::Internal(e.to_string()))?;
        let message = ReportMessageRow {
            id: id_bytes,
            report_id: id.to_owned(),
            at: self.inner.clock.now_ms(),
            author: author.into(),
            account_id: account.into(),
            body: body.to_owned(),
        };
        match self.inner.store.add_report_message(&message, MAX_REPORTER_MESSAGES as i64).await? {
            MessageInsert::Stored => Ok(()),
            MessageInsert::NoReport => Err(DisclosureError::NotFound),
            MessageInsert::Closed => Err(DisclosureError::Conflict(
                "this report is closed; write to a contact in security.txt if there is more".into(),
            )),
            MessageInsert::Cap => Err(DisclosureError::Conflict(format!(
                "this report has {MAX_REPORTER_MESSAGES} messages from you; write to a contact in security.txt"
            ))),
        }
    }

    /// The next promise a report's state puts on the operators, and whether it is broken.
    pub fn deadline(&self, row: &ReportRow, now: i64) -> (Option<Deadline>, bool) {
        let s = &self.inner.settings;
        let day = 86_400_000i64;
        let next = if CLOSED.contains(&row.state.as_str()) {
            None
        } else if row.acknowledged_at.is_none() {
            Some(Deadline { kind: "acknowledge".into(), due_at: row.created_at + i64::from(s.acknowledge_days) * day })
        } else {
            Some(Deadline { kind: "status".into(), due_at: row.status_at + i64::from(s.status_days) * day })
        };
        let overdue = next.as_ref().is_some_and(|d| now > d.due_at);
        (next, overdue)
    }

    fn view(&self, row: &ReportRow, now: i64) -> ReportView {
        let (next_deadline, overdue) = self.deadline(row, now);
        ReportView {
            id: row.id.clone(),
            state: row.state.clone(),
            summary: row.summary.clone(),
            affected: row.affected.clone(),
            received_at: row.created_at,
            acknowledged_at: row.acknowledged_at,
            exploited_at: row.exploited_at,
            next_deadline,
            overdue,
        }
    }

    /// The inbox: newest first, at most 500, only `state` when given.
    pub async fn inbox(&self, state: Option<&str>) -> Result<Vec<ReportView>> {
        if let Some(s) = state
            && !STATES.contains(&s)
        {
            return Err(refused(format!("state: one of {}", STATES.join(", "))));
        }
        let now = self.inner.clock.now_ms();
        Ok(self.inner.store.reports(state, 500).await?.iter().map(|r| self.view(r, now)).collect())
    }

    /// The CRA clock of a report marked actively exploited, with drafts.
    pub fn cra_clock(&self, row: &ReportRow, now: i64) -> Option<CraClock> {
        let started = row.exploited_at?;
        let organisation = match self.inner.settings.organisation.as_str() {
            "" => "[the manufacturer: set disclosure.organisation]".to_owned(),
            o => o.to_owned(),
        };
        let affected = if row.affected.is_empty() { "[products and versions affected]" } else { row.affected.as_str() };
        let common = format!(
            "Manufacturer: {organisation}\nProducts and versions affected: {affected}\nInternal reference: {}\n\
             Became aware of active exploitation: {}\n",
            row.id,
            crate::disclosure::security_txt::rfc3339(started)
        );
        let stage = |name: &str, due_at: Option<i64>, filed_at: Option<i64>, draft: String| CraStage {
            stage: name.into(),
            overdue: filed_at.is_none() && due_at.is_some_and(|d| now > d),
            due_at,
            filed_at,
            draft,
        };
        Some(CraClock {
            started_at: started,
            stages: vec![
                stage(
                    "early_warning",
                    Some(started + CRA_EARLY_WARNING_MS),
                    row.early_warning_filed_at,
                    format!(
                        "EARLY WARNING (CRA Art. 14(2)(a))\n{common}Summary: {}\n\
                         Member States where the product is made available: [list them]\n\
                         Suspected malicious action: [yes/no, and why]\n",
                        row.summary
                    ),
                ),
                stage(
                    "notification",
                    Some(started + CRA_NOTIFICATION_MS),
                    row.notification_filed_at,
                    format!(
                        "VULNERABILITY NOTIFICATION (CRA Art. 14(2)(b))\n{common}Summary: {}\n\
                         General nature of the exploit and of the vulnerability: [describe; from the report below]\n\
                         Corrective or mitigating measures taken: [the fix or workaround, and its release]\n\
                         Measures users can take: [what owners should do now]\n\
                         Sensitivity of the information notified: [how it may be shared]\n",
                        row.summary
                    ),
                ),
                stage(
                    "final_report",
                    row.fixed_at.map(|f| f + CRA_FINAL_REPORT_MS),
                    row.final_report_filed_at,
                    format!(
                        "FINAL REPORT (CRA Art. 14(2)(c))\n{common}Fix available since: {}\n\
                         Description of the vulnerability, its severity and impact: [describe]\n\
                         Malicious actor that exploited it, where known: [describe or unknown]\n\
                         Security update or other corrective measures made available: [release and advisory]\n",
                        row.fixed_at
                            .map(crate::disclosure::security_txt::rfc3339)
                            .unwrap_or_else(|| "[not yet]".into())
                    ),
                ),
            ],
        })
    }

    /// Records that an operator filed a CRA report with ENISA's platform (the first record counts).
    pub async fn file_cra(&self, id: &str, stage: &str) -> Result<ReportDetail> {
        if !["early_warning", "notification", "final_report"].contains(&stage) {
            return Err(refused("stage: early_warning, notification or final_report"));
        }
        let now = self.inner.clock.now_ms();
        if !self.inner.store.file_cra_stage(id, stage, now).await? {
            let row = self.inner.store.report(id).await?.ok_or(DisclosureError::NotFound)?;
            let filed = match stage {
                "early_warning" => row.early_warning_filed_at,
                "notification" => row.notification_filed_at,
                _ => row.final_report_filed_at,
            };
            if filed.is_none() {
                return Err(DisclosureError::Conflict(if row.exploited_at.is_none() {
                    "the report is not marked actively exploited".into()
                } else {
                    "the final report is due after a fix: move the report to fixed first".into()
                }));
            }
        }
        self.detail(id).await
    }

    /// One report in full.
    pub async fn detail(&self, id: &str) -> Result<ReportDetail> {
        let row = self.inner.store.report(id).await?.ok_or(DisclosureError::NotFound)?;
        let now = self.inner.clock.now_ms();
        Ok(ReportDetail {
            cra: self.cra_clock(&row, now),
            report: self.view(&row, now),
            messages: self.messages(&row.id).await?,
            details: row.details,
            encrypted: row.encrypted,
            reporter_name: row.reporter_name,
            reporter_email: row.reporter_email,
        })
    }

    /// Moves a report to `to`. Any open state may move to any other; a closed one (published, rejected) may
    /// only be reopened to triaging.
    pub async fn set_state(&self, id: &str, to: &str) -> Result<ReportDetail> {
        if !STATES.contains(&to) || to == "new" {
            return Err(refused(format!("state: one of {}", STATES[1..].join(", "))));
        }
        let from: Vec<&str> = if to == "triaging" {
            STATES.iter().copied().filter(|s| *s != to).collect()
        } else {
            STATES.iter().copied().filter(|s| *s != to && !CLOSED.contains(s)).collect()
        };
        let now = self.inner.clock.now_ms();
        if !self.inner.store.set_report_state(id, &from, to, now).await? {
            return match self.inner.store.report(id).await? {
                None => Err(DisclosureError::NotFound),
                Some(r) => Err(DisclosureError::Conflict(format!("the report is {}; it cannot become {to}", r.state))),
            };
        }
        self.detail(id).await
    }

    /// An operator writes to the reporter (it counts as telling them the status).
    pub async fn operator_message(&self, id: &str, account: &str, body: &str) -> Result<ReportDetail> {
        self.add_message(id, "operator", account, body).await?;
        self.detail(id).await
    }

    /// Marks a report actively exploited (the CRA's clock starts at the first mark).
    pub async fn mark_exploited(&self, id: &str) -> Result<ReportDetail> {
        let now = self.inner.clock.now_ms();
        if !self.inner.store.mark_report_exploited(id, now).await? && self.inner.store.report(id).await?.is_none() {
            return Err(DisclosureError::NotFound);
        }
        self.detail(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks_allow_line_breaks_only_where_asked() {
        assert!(text_ok("one line", 10, false));
        assert!(!text_ok("two\nlines", 20, false));
        assert!(text_ok("two\nlines\tand a tab", 30, true));
        assert!(!text_ok("bell\u{7}", 30, true));
        assert!(!text_ok("elevenchars", 10, false));
        assert!(text_ok("ünïcödé", 7, false), "characters, not bytes");
        assert!(!text_ok("evil\u{202E}txt.exe", 30, false), "no bidi override on one line");
        assert!(text_ok("a report may quote \u{202E} as found", 60, true), "the body keeps what was found");
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64() {
        let key = |s: &str| source_key(s.parse().expect("ip"));
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"), "one /64, one source");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7", "a mapped IPv4 is that address");
    }
}
