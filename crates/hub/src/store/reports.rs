//! Vulnerability reports and their messages: what anyone may send without an account (checked and limited by
//! `disclosure` before it gets here), the operators' triage states, and the conversation with the reporter. A
//! proof-of-work challenge is good for one report (a unique column), so a replayed submission is refused by the
//! insert itself, on every node.

use super::{BeginWrite as _, Result, Store};

/// A vulnerability report.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReportRow {
    /// `VR-…` tracking id.
    pub id: String,
    /// new, acknowledged, triaging, fixing, fixed, published or rejected.
    pub state: String,
    /// One line.
    pub summary: String,
    /// The report itself (plain text, or an OpenPGP message when `encrypted`).
    pub details: String,
    /// What the reporter says is affected.
    pub affected: String,
    /// How the reporter wants to be named (may be empty).
    pub reporter_name: String,
    /// Where to reach the reporter besides the status link (may be empty).
    pub reporter_email: String,
    /// The details are encrypted to the maker's key.
    pub encrypted: bool,
    /// SHA-256 of the status link's token, hex.
    pub token_hash: String,
    /// The proof-of-work challenge it came with.
    pub challenge: String,
    /// The sender's address, as the hub saw it.
    pub source: Option<String>,
    /// Received, Unix ms.
    pub created_at: i64,
    /// Acknowledged to the reporter, Unix ms.
    pub acknowledged_at: Option<i64>,
    /// The reporter was last told the status, Unix ms.
    pub status_at: i64,
    /// Marked actively exploited, Unix ms.
    pub exploited_at: Option<i64>,
    /// First moved to fixed, Unix ms.
    pub fixed_at: Option<i64>,
    /// The CRA early warning was filed (as an operator recorded), Unix ms.
    pub early_warning_filed_at: Option<i64>,
    /// The CRA notification was filed, Unix ms.
    pub notification_filed_at: Option<i64>,
    /// The CRA final report was filed, Unix ms.
    pub final_report_filed_at: Option<i64>,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// A message in a report's conversation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReportMessageRow {
    /// Its id.
    pub id: String,
    /// The report.
    pub report_id: String,
    /// Sent, Unix ms.
    pub at: i64,
    /// reporter or operator.
    pub author: String,
    /// The operator's account id (empty for the reporter).
    pub account_id: String,
    /// The text.
    pub body: String,
}

/// What became of a report sent to [`Store::insert_report_within`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportInsert {
    /// Stored.
    Stored,
    /// Its challenge was used already.
    ChallengeUsed,
    /// Its source sent as many as allowed.
    SourceLimit,
    /// The hub took as many as allowed.
    HubLimit,
}

/// What became of a message sent to [`Store::add_report_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageInsert {
    /// Stored.
    Stored,
    /// No such report.
    NoReport,
    /// The report is closed (a reporter's message).
    Closed,
    /// The reporter sent as many as allowed.
    Cap,
}

/// The advisory lock that serialises intakes on PostgreSQL.
const INTAKE_LOCK: i64 = 0x4845_5254_4856_5231;

const REPORT_COLUMNS: &str = "id, state, summary, details, affected, reporter_name, reporter_email, encrypted, \
     token_hash, challenge, source, created_at, acknowledged_at, status_at, exploited_at, fixed_at, \
     early_warning_filed_at, notification_filed_at, final_report_filed_at, updated_at";

impl Store {
    /// Stores a new report unless its challenge was used already, or `from_source` reports from its source (or
    /// `in_all` from anywhere) were received since `since`. The counts and the insert are one transaction,
    /// serialised against other intakes (on PostgreSQL by an advisory lock), so parallel reports cannot all
    /// pass the same count.
    pub async fn insert_report_within(
        &self,
        r: &ReportRow,
        since: i64,
        from_source: i64,
        in_all: i64,
    ) -> Result<ReportInsert> {
        let insert = format!(
            "INSERT INTO vuln_reports ({REPORT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17, $18, $19, $20) ON CONFLICT (challenge) DO NOTHING"
        );
        let postgres = self.kind() == super::BackendKind::Postgres;
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INTAKE_LOCK).execute(tx.conn()).await?;
            }
            if let Some(source) = &r.source {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM vuln_reports WHERE source = $1 AND created_at >= $2",
                )
                .bind(source)
                .bind(since)
                .fetch_one(tx.conn())
                .await?;
                if n >= from_source {
                    return Ok(ReportInsert::SourceLimit);
                }
            }
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vuln_reports WHERE created_at >= $1")
                .bind(since)
                .fetch_one(tx.conn())
                .await?;
            if n >= in_all {
                return Ok(ReportInsert::HubLimit);
            }
            let stored = sqlx::query(sqlx::AssertSqlSafe(insert))
                .bind(&r.id)
                .bind(&r.state)
                .bind(&r.summary)
                .bind(&r.details)
                .bind(&r.affected)
                .bind(&r.reporter_name)
                .bind(&r.reporter_email)
                .bind(r.encrypted)
                .bind(&r.token_hash)
                .bind(&r.challenge)
                .bind(&r.source)
                .bind(r.created_at)
                .bind(r.acknowledged_at)
                .bind(r.status_at)
                .bind(r.exploited_at)
                .bind(r.fixed_at)
                .bind(r.early_warning_filed_at)
                .bind(r.notification_filed_at)
                .bind(r.final_report_filed_at)
                .bind(r.updated_at)
                .execute(tx.conn())
                .await?
                .rows_affected()
                == 1;
            tx.commit().await?;
            Ok(if stored { ReportInsert::Stored } else { ReportInsert::ChallengeUsed })
        })
    }

    /// One report.
    pub async fn report(&self, id: &str) -> Result<Option<ReportRow>> {
        let sql = format!("SELECT {REPORT_COLUMNS} FROM vuln_reports WHERE id = $1");
        on_pool!(self, pool => Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?))
    }

    /// Reports, newest first, at most `limit`; only those in `state` when given.
    pub async fn reports(&self, state: Option<&str>, limit: i64) -> Result<Vec<ReportRow>> {
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM vuln_reports WHERE ($1 = '' OR state = $1) \
             ORDER BY created_at DESC, id LIMIT $2"
        );
        on_pool!(self, pool => Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(state.unwrap_or(""))
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Moves a report from one of `from` to `to`; the first move out of `new` acknowledges it, and every change
    /// counts as telling the reporter the status. False if it was not in one of `from`.
    pub async fn set_report_state(&self, id: &str, from: &[&str], to: &str, now: i64) -> Result<bool> {
        let Some(current) = self.report(id).await?.map(|r| r.state).filter(|c| from.contains(&c.as_str())) else {
            return Ok(false);
        };
        // Compare and set: a change made meanwhile (another operator, another node) wins, this one is refused.
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE vuln_reports SET state = $1, status_at = $2, updated_at = $2, \
             acknowledged_at = CASE WHEN acknowledged_at IS NULL AND $1 <> 'new' THEN $2 ELSE acknowledged_at END, \
             fixed_at = CASE WHEN fixed_at IS NULL AND $1 = 'fixed' THEN $2 ELSE fixed_at END \
             WHERE id = $3 AND state = $4",
        )
        .bind(to)
        .bind(now)
        .bind(id)
        .bind(&current)
        .execute(pool)
        .await?
        .rows_affected() == 1))
    }

    /// Marks a report actively exploited (once: the first time counts); true if it changed.
    pub async fn mark_report_exploited(&self, id: &str, now: i64) -> Result<bool> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE vuln_reports SET exploited_at = $1, updated_at = $1 WHERE id = $2 AND exploited_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected() == 1))
    }

    /// Records that an operator filed a CRA report (`early_warning`, `notification` or `final_report`) with
    /// ENISA's platform; the first record counts. False if the report has no such stage open (not marked
    /// exploited, or, for the final report, not fixed) or it was recorded already.
    pub async fn file_cra_stage(&self, id: &str, stage: &str, now: i64) -> Result<bool> {
        let (column, needs) = match stage {
            "early_warning" => ("early_warning_filed_at", "exploited_at"),
            "notification" => ("notification_filed_at", "exploited_at"),
            "final_report" => ("final_report_filed_at", "fixed_at"),
            _ => return Ok(false),
        };
        let sql = format!(
            "UPDATE vuln_reports SET {column} = $1, updated_at = $1 WHERE id = $2 AND {column} IS NULL \
             AND exploited_at IS NOT NULL AND {needs} IS NOT NULL"
        );
        on_pool!(self, pool => Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected() == 1))
    }

    /// Adds a message; an operator's message counts as telling the reporter the status. A reporter's is refused
    /// once they sent `reporter_cap` to this report or it is closed (published or rejected). The cap and the insert
    /// are one transaction.
    pub async fn add_report_message(&self, m: &ReportMessageRow, reporter_cap: i64) -> Result<MessageInsert> {
        let status_at = if m.author == "operator" { "status_at = $1, " } else { "" };
        let touch = format!("UPDATE vuln_reports SET {status_at}updated_at = $1 WHERE id = $2");
        let reporter = m.author == "reporter";
        let postgres = self.kind() == super::BackendKind::Postgres;
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INTAKE_LOCK).execute(tx.conn()).await?;
            }
            let state: Option<String> = sqlx::query_scalar("SELECT state FROM vuln_reports WHERE id = $1")
                .bind(&m.report_id)
                .fetch_optional(tx.conn())
                .await?;
            let Some(state) = state else { return Ok(MessageInsert::NoReport) };
            if reporter {
                if state == "published" || state == "rejected" {
                    return Ok(MessageInsert::Closed);
                }
                let sent: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM vuln_report_messages WHERE report_id = $1 AND author = 'reporter'",
                )
                .bind(&m.report_id)
                .fetch_one(tx.conn())
                .await?;
                if sent >= reporter_cap {
                    return Ok(MessageInsert::Cap);
                }
            }
            sqlx::query(sqlx::AssertSqlSafe(touch)).bind(m.at).bind(&m.report_id).execute(tx.conn()).await?;
            sqlx::query(
                "INSERT INTO vuln_report_messages (id, report_id, at, author, account_id, body) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&m.id)
            .bind(&m.report_id)
            .bind(m.at)
            .bind(&m.author)
            .bind(&m.account_id)
            .bind(&m.body)
            .execute(tx.conn())
            .await?;
            tx.commit().await?;
            Ok(MessageInsert::Stored)
        })
    }

    /// A report's messages, oldest first.
    pub async fn report_messages(&self, id: &str) -> Result<Vec<ReportMessageRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT id, report_id, at, author, account_id, body FROM vuln_report_messages WHERE report_id = $1 \
             ORDER BY at, id",
        )
        .bind(id)
        .fetch_all(pool)
        .await?))
    }
}
