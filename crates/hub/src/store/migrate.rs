//! Moving an embedded hub's SQLite data to PostgreSQL (`hearth store migrate --to postgres://…`): every table
//! copied in order, telemetry in batches with its day partitions made first, the per-device high-water marks
//! set, identities continued, and the copy verified by counting both sides. The hub must be stopped; a target
//! that already holds devices or keys is refused, so nothing is ever merged or overwritten.

use sqlx::{PgPool, SqlitePool};

use super::{Backend, BeginWrite as _, Result, Store, StoreError, partitions};

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// (table, rows) in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

#[derive(sqlx::FromRow)]
struct DeviceCopy {
    id: String,
    model: String,
    status: String,
    bootstrap_mac: Vec<u8>,
    bootstrap_expires_at: i64,
    bootstrap_used_at: Option<i64>,
    claim_mac: Vec<u8>,
    cert_serial: Option<String>,
    cert_not_after: Option<i64>,
    created_at: i64,
    enrolled_at: Option<i64>,
    revoked_at: Option<i64>,
    last_seen_at: Option<i64>,
    state_json: Option<String>,
    state_seq: Option<i64>,
    prev_cert_serial: Option<String>,
    cert_spki: Option<String>,
    cert_chain_pem: Option<String>,
    cert_used_at: Option<i64>,
    session_epoch: i64,
    session_subscribed: bool,
    session_expiry_ms: i64,
    session_expires_at: Option<i64>,
    owner_account_id: Option<String>,
    claimed_at: Option<i64>,
    wipe_command_id: Option<String>,
    wiped_at: Option<i64>,
}

const PAGE: i64 = 5_000;

impl Store {
    /// Copies everything from this (SQLite) store into `to` (an empty PostgreSQL store). `progress` is told
    /// (table, rows so far) as the copy goes. Connections the source still records as open (its hub stopped
    /// without closing them) are closed at `now_ms`: their sessions last their expiry from then.
    pub async fn copy_into(&self, to: &Store, now_ms: i64, mut progress: impl FnMut(&str, u64)) -> Result<CopyReport> {
        let (Backend::Sqlite { pool: src, .. }, Backend::Postgres { pool: dst }) = (&self.backend, &to.backend) else {
            return Err(StoreError::Corrupt("migrate copies from SQLite to PostgreSQL only".into()));
        };
        let (held,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM devices) + (SELECT COUNT(*) FROM keys) + (SELECT COUNT(*) FROM api_tokens) \
             + (SELECT COUNT(*) FROM accounts) \
             + (SELECT COUNT(*) FROM commands) + (SELECT COUNT(*) FROM security_events) \
             + (SELECT COUNT(*) FROM setup_tokens) + (SELECT COUNT(*) FROM uplinks)",
        )
        .fetch_one(dst)
        .await?;
        if held > 0 {
            return Err(StoreError::Corrupt(format!(
                "the target database already holds {held} rows (devices, keys, tokens, commands, events or \
                 telemetry); migrate into an empty database"
            )));
        }
        let mut report = CopyReport::default();
        report.tables.push(("keys", copy_keys(src, dst).await?));
        progress("keys", report.tables[0].1);
        // Accounts before devices: a claimed device names its owner's account.
        report.tables.push(("accounts", copy_accounts(src, dst).await?));
        progress("accounts", report.tables[1].1);
        report.tables.push(("devices", copy_devices(src, dst, now_ms, &mut progress).await?));
        report.tables.push(("commands", copy_commands(src, dst).await?));
        progress("commands", report.tables[3].1);
        report.tables.push(("api_tokens", copy_tokens(src, dst).await?));
        progress("api_tokens", report.tables[4].1);
        report.tables.push(("security_events", copy_events(src, dst).await?));
        progress("security_events", report.tables[5].1);
        report.tables.push(("uplinks", copy_uplinks(src, dst, &mut progress).await?));
        for (table, copied) in copy_updates(src, dst).await? {
            progress(table, copied);
            report.tables.push((table, copied));
        }
        // Verify: every table has as many rows on both sides.
        for table in report.tables.iter().map(|(t, _)| *t).chain([
            "setup_tokens",
            "web_sessions",
            "login_failures",
            "audit_log",
            "support_grants",
            "mail_links",
            "passkeys",
        ]) {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            let (a,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).fetch_one(src).await?;
            let (b,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(dst).await?;
            if a != b {
                return Err(StoreError::Corrupt(format!("{table}: {a} rows in SQLite but {b} in PostgreSQL")));
            }
        }
        Ok(report)
    }
}

async fn copy_keys(src: &SqlitePool, dst: &PgPool) -> Result<u64> {
    let rows: Vec<(String, String, Vec<u8>, i64)> =
        sqlx::query_as("SELECT name, cert_pem, sealed_key, created_at FROM keys").fetch_all(src).await?;
    let mut tx = dst.begin_write().await?;
    for (name, pem, sealed, at) in &rows {
        sqlx::query("INSERT INTO keys (name, cert_pem, sealed_key, created_at) VALUES ($1, $2, $3, $4)")
            .bind(name)
            .bind(pem)
            .bind(sealed)
            .bind(at)
            .execute(tx.conn())
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

async fn copy_devices(
    src: &SqlitePool,
    dst: &PgPool,
    now_ms: i64,
    progress: &mut impl FnMut(&str, u64),
) -> Result<u64> {
    let mut after = String::new();
    let mut copied = 0u64;
    loop {
        let rows: Vec<DeviceCopy> = sqlx::query_as(
            "SELECT id, model, status, bootstrap_mac, bootstrap_expires_at, bootstrap_used_at, claim_mac, \
             cert_serial, cert_not_after, created_at, enrolled_at, revoked_at, last_seen_at, state_json, state_seq, \
             prev_cert_serial, cert_spki, cert_chain_pem, cert_used_at, session_epoch, session_subscribed, \
             session_expiry_ms, \
             CASE WHEN session_open <> 0 AND session_expires_at IS NULL THEN $3 + session_expiry_ms \
             ELSE session_expires_at END AS session_expires_at, owner_account_id, claimed_at, wipe_command_id, \
             wiped_at FROM devices WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(&after)
        .bind(PAGE)
        .bind(now_ms)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.id.clone();
        let mut tx = dst.begin_write().await?;
        for d in &rows {
            sqlx::query(
                "INSERT INTO devices (id, model, status, bootstrap_mac, bootstrap_expires_at, bootstrap_used_at, \
                 claim_mac, cert_serial, cert_not_after, created_at, enrolled_at, revoked_at, last_seen_at, state_json, \
                 state_seq, prev_cert_serial, cert_spki, cert_chain_pem, cert_used_at, session_epoch, \
                 session_subscribed, session_expiry_ms, session_expires_at, owner_account_id, claimed_at, wipe_command_id, \
                 wiped_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                 $20, $21, $22, $23, $24, $25, $26, $27)",
            )
            .bind(&d.id)
            .bind(&d.model)
            .bind(&d.status)
            .bind(&d.bootstrap_mac)
            .bind(d.bootstrap_expires_at)
            .bind(d.bootstrap_used_at)
            .bind(&d.claim_mac)
            .bind(&d.cert_serial)
            .bind(d.cert_not_after)
            .bind(d.created_at)
            .bind(d.enrolled_at)
            .bind(d.revoked_at)
            .bind(d.last_seen_at)
            .bind(&d.state_json)
            .bind(d.state_seq)
            .bind(&d.prev_cert_serial)
            .bind(&d.cert_spki)
            .bind(&d.cert_chain_pem)
            .bind(d.cert_used_at)
            .bind(d.session_epoch)
            .bind(d.session_subscribed)
            .bind(d.session_expiry_ms)
            .bind(d.session_expires_at)
            .bind(&d.owner_account_id)
            .bind(d.claimed_at)
            .bind(&d.wipe_command_id)
            .bind(d.wiped_at)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        copied += rows.len() as u64;
        progress("devices", copied);
    }
    Ok(copied)
}

async fn copy_commands(src: &SqlitePool, dst: &PgPool) -> Result<u64> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        String,
        String,
        String,
        String,
        String,
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        Option<String>,
        i64,
    )> = sqlx::query_as(
        "SELECT id, device_id, name, args_json, status, created_at, expires_at, sent_at, answered_at, detail, \
             deliveries FROM commands",
    )
    .fetch_all(src)
    .await?;
    let mut tx = dst.begin_write().await?;
    for r in &rows {
        sqlx::query(
            "INSERT INTO commands (id, device_id, name, args_json, status, created_at, expires_at, sent_at, \
             answered_at, detail, deliveries) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&r.0)
        .bind(&r.1)
        .bind(&r.2)
        .bind(&r.3)
        .bind(&r.4)
        .bind(r.5)
        .bind(r.6)
        .bind(r.7)
        .bind(r.8)
        .bind(&r.9)
        .bind(r.10)
        .execute(tx.conn())
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Copies one table whose columns are all TEXT, BIGINT or BLOB, `PAGE` rows at a time in key order.
macro_rules! copy_table {
    ($src:expr, $dst:expr, $table:literal, $key:literal, $cols:literal, $ty:ty, |$q:ident, $r:ident| $bind:expr) => {{
        let mut copied = 0u64;
        let mut offset = 0i64;
        loop {
            let rows: Vec<$ty> =
                sqlx::query_as(concat!("SELECT ", $cols, " FROM ", $table, " ORDER BY ", $key, " LIMIT $1 OFFSET $2"))
                    .bind(if $table == "update_file_chunks" { 16 } else { PAGE })
                    .bind(offset)
                    .fetch_all($src)
                    .await?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as i64;
            let mut tx = $dst.begin_write().await?;
            for $r in &rows {
                let $q = sqlx::query(sqlx::AssertSqlSafe(insert_sql($table, $cols)));
                $bind.execute(tx.conn()).await?;
            }
            tx.commit().await?;
            copied += rows.len() as u64;
        }
        copied
    }};
}

fn insert_sql(table: &str, cols: &str) -> String {
    let n = cols.split(',').count();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!("INSERT INTO {table} ({cols}) VALUES ({})", params.join(", "))
}

/// Signed updates: the repository's metadata, target files, releases, support periods, rollouts, and what each
/// device last said it runs.
async fn copy_updates(src: &SqlitePool, dst: &PgPool) -> Result<Vec<(&'static str, u64)>> {
    let mut out = Vec::new();
    let n = copy_table!(
        src,
        dst,
        "tuf_metadata",
        "role, version",
        "role, version, body, expires_at, created_at",
        (String, i64, Vec<u8>, i64, i64),
        |q, r| q.bind(&r.0).bind(r.1).bind(&r.2).bind(r.3).bind(r.4)
    );
    out.push(("tuf_metadata", n));
    let n = copy_table!(
        src,
        dst,
        "update_files",
        "sha256",
        "sha256, length, chunks, uploaded_at",
        (String, i64, i64, i64),
        |q, r| q.bind(&r.0).bind(r.1).bind(r.2).bind(r.3)
    );
    out.push(("update_files", n));
    let n = copy_table!(
        src,
        dst,
        "update_file_chunks",
        "sha256, idx",
        "sha256, idx, data",
        (String, i64, Vec<u8>),
        |q, r| q.bind(&r.0).bind(r.1).bind(&r.2)
    );
    out.push(("update_file_chunks", n));
    let n = copy_table!(
        src,
        dst,
        "releases",
        "target_name",
        "target_name, model, version, security_version, kind, info_json, sha256, length, targets_version, published_at",
        (String, String, String, i64, String, String, String, i64, i64, i64),
        |q, r| q
            .bind(&r.0)
            .bind(&r.1)
            .bind(&r.2)
            .bind(r.3)
            .bind(&r.4)
            .bind(&r.5)
            .bind(&r.6)
            .bind(r.7)
            .bind(r.8)
            .bind(r.9)
    );
    out.push(("releases", n));
    let n = copy_table!(
        src,
        dst,
        "model_support",
        "model",
        "model, support_until, policy, updated_at",
        (String, i64, String, i64),
        |q, r| q.bind(&r.0).bind(r.1).bind(&r.2).bind(r.3)
    );
    out.push(("model_support", n));
    #[allow(clippy::type_complexity)]
    let n = copy_table!(
        src,
        dst,
        "rollouts",
        "id",
        "id, release, model, state, waves, wave, success_percent, pause_failure_percent, accepted_failures, starts_at, window_start, window_end, reason, created_by, created_at, updated_at",
        (
            String,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            String,
            String,
            i64,
            i64
        ),
        |q, r| q
            .bind(&r.0)
            .bind(&r.1)
            .bind(&r.2)
            .bind(&r.3)
            .bind(r.4)
            .bind(r.5)
            .bind(r.6)
            .bind(r.7)
            .bind(r.8)
            .bind(r.9)
            .bind(r.10)
            .bind(r.11)
            .bind(&r.12)
            .bind(&r.13)
            .bind(r.14)
            .bind(r.15)
    );
    out.push(("rollouts", n));
    let n = copy_table!(
        src,
        dst,
        "rollout_devices",
        "rollout_id, device_id",
        "rollout_id, device_id, wave, state, detail, postponed_until, postpones, updated_at",
        (String, String, i64, String, String, Option<i64>, i64, i64),
        |q, r| q.bind(&r.0).bind(&r.1).bind(r.2).bind(&r.3).bind(&r.4).bind(r.5).bind(r.6).bind(r.7)
    );
    out.push(("rollout_devices", n));
    let n = copy_table!(
        src,
        dst,
        "vuln_reports",
        "id",
        "id, state, summary, details, affected, reporter_name, reporter_email, encrypted, token_hash, challenge, source, created_at, acknowledged_at, status_at, exploited_at, fixed_at, early_warning_filed_at, notification_filed_at, final_report_filed_at, updated_at",
        super::ReportRow,
        |q, r| q
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
    );
    out.push(("vuln_reports", n));
    let n = copy_table!(
        src,
        dst,
        "vuln_report_messages",
        "id",
        "id, report_id, at, author, account_id, body",
        super::ReportMessageRow,
        |q, r| q.bind(&r.id).bind(&r.report_id).bind(r.at).bind(&r.author).bind(&r.account_id).bind(&r.body)
    );
    out.push(("vuln_report_messages", n));
    #[allow(clippy::type_complexity)]
    let firmware: Vec<(String, Option<String>, Option<String>, Option<String>, Option<i64>, Option<i64>)> =
        sqlx::query_as(
            "SELECT id, image_sha256, image_version, hardware, security_floor, checked_in_at FROM devices \
         WHERE checked_in_at IS NOT NULL",
        )
        .fetch_all(src)
        .await?;
    let mut tx = dst.begin_write().await?;
    for f in &firmware {
        sqlx::query(
            "UPDATE devices SET image_sha256 = $2, image_version = $3, hardware = $4, security_floor = $5, \
             checked_in_at = $6 WHERE id = $1",
        )
        .bind(&f.0)
        .bind(&f.1)
        .bind(&f.2)
        .bind(&f.3)
        .bind(f.4)
        .bind(f.5)
        .execute(tx.conn())
        .await?;
    }
    tx.commit().await?;
    Ok(out)
}

async fn copy_tokens(src: &SqlitePool, dst: &PgPool) -> Result<u64> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, Vec<u8>, String, i64, Option<i64>, Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT id, token_mac, label, created_at, revoked_at, expires_at, account_id FROM api_tokens")
            .fetch_all(src)
            .await?;
    let setup: Vec<(Vec<u8>, i64, Option<i64>)> =
        sqlx::query_as("SELECT token_mac, expires_at, used_at FROM setup_tokens").fetch_all(src).await?;
    let mut tx = dst.begin_write().await?;
    for r in &rows {
        sqlx::query(
            "INSERT INTO api_tokens (id, token_mac, label, created_at, revoked_at, expires_at, account_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&r.0)
        .bind(&r.1)
        .bind(&r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
        .bind(&r.6)
        .execute(tx.conn())
        .await?;
    }
    for s in &setup {
        sqlx::query("INSERT INTO setup_tokens (token_mac, expires_at, used_at) VALUES ($1, $2, $3)")
            .bind(&s.0)
            .bind(s.1)
            .bind(s.2)
            .execute(tx.conn())
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Accounts, their sessions and login counters, and the audit log (small tables: one transaction).
async fn copy_accounts(src: &SqlitePool, dst: &PgPool) -> Result<u64> {
    #[allow(clippy::type_complexity)]
    let accounts: Vec<(String, String, String, String, i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT id, email, role, password_hash, created_at, password_changed_at, disabled_at, verified_at FROM accounts",
    )
    .fetch_all(src)
    .await?;
    #[allow(clippy::type_complexity)]
    let sessions: Vec<(String, Vec<u8>, String, i64, i64, i64, Option<String>, Option<String>, Option<i64>)> =
        sqlx::query_as(
            "SELECT id, token_mac, account_id, created_at, last_seen_at, expires_at, source, user_agent, revoked_at \
             FROM web_sessions",
        )
        .fetch_all(src)
        .await?;
    let failures: Vec<(String, i64, i64, Option<i64>)> =
        sqlx::query_as("SELECT key, failures, first_at, locked_until FROM login_failures").fetch_all(src).await?;
    #[allow(clippy::type_complexity)]
    let grants: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT account_id, granted_at, expires_at FROM support_grants").fetch_all(src).await?;
    #[allow(clippy::type_complexity)]
    let links: Vec<(Vec<u8>, String, String, i64, i64, Option<i64>)> =
        sqlx::query_as("SELECT token_mac, purpose, account_id, created_at, expires_at, used_at FROM mail_links")
            .fetch_all(src)
            .await?;
    #[allow(clippy::type_complexity)]
    let passkeys: Vec<(String, String, String, String, i64, Option<i64>)> =
        sqlx::query_as("SELECT credential_id, account_id, name, passkey_json, created_at, last_used_at FROM passkeys")
            .fetch_all(src)
            .await?;
    #[allow(clippy::type_complexity)]
    let audit: Vec<(i64, i64, Option<String>, String, Option<String>, Option<String>, String)> =
        sqlx::query_as("SELECT id, at, account_id, action, target, source, detail FROM audit_log")
            .fetch_all(src)
            .await?;
    let mut tx = dst.begin_write().await?;
    for a in &accounts {
        sqlx::query(
            "INSERT INTO accounts (id, email, role, password_hash, created_at, password_changed_at, disabled_at, \
             verified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&a.0)
        .bind(&a.1)
        .bind(&a.2)
        .bind(&a.3)
        .bind(a.4)
        .bind(a.5)
        .bind(a.6)
        .bind(a.7)
        .execute(tx.conn())
        .await?;
    }
    for s in &sessions {
        sqlx::query(
            "INSERT INTO web_sessions (id, token_mac, account_id, created_at, last_seen_at, expires_at, source, \
             user_agent, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&s.0)
        .bind(&s.1)
        .bind(&s.2)
        .bind(s.3)
        .bind(s.4)
        .bind(s.5)
        .bind(&s.6)
        .bind(&s.7)
        .bind(s.8)
        .execute(tx.conn())
        .await?;
    }
    for f in &failures {
        sqlx::query("INSERT INTO login_failures (key, failures, first_at, locked_until) VALUES ($1, $2, $3, $4)")
            .bind(&f.0)
            .bind(f.1)
            .bind(f.2)
            .bind(f.3)
            .execute(tx.conn())
            .await?;
    }
    for g in &grants {
        sqlx::query("INSERT INTO support_grants (account_id, granted_at, expires_at) VALUES ($1, $2, $3)")
            .bind(&g.0)
            .bind(g.1)
            .bind(g.2)
            .execute(tx.conn())
            .await?;
    }
    for l in &links {
        sqlx::query(
            "INSERT INTO mail_links (token_mac, purpose, account_id, created_at, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&l.0)
        .bind(&l.1)
        .bind(&l.2)
        .bind(l.3)
        .bind(l.4)
        .bind(l.5)
        .execute(tx.conn())
        .await?;
    }
    for p in &passkeys {
        sqlx::query(
            "INSERT INTO passkeys (credential_id, account_id, name, passkey_json, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&p.0)
        .bind(&p.1)
        .bind(&p.2)
        .bind(&p.3)
        .bind(p.4)
        .bind(p.5)
        .execute(tx.conn())
        .await?;
    }
    for e in &audit {
        sqlx::query(
            "INSERT INTO audit_log (id, at, account_id, action, target, source, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.0)
        .bind(e.1)
        .bind(&e.2)
        .bind(&e.3)
        .bind(&e.4)
        .bind(&e.5)
        .bind(&e.6)
        .execute(tx.conn())
        .await?;
    }
    tx.commit().await?;
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), \
         GREATEST((SELECT COALESCE(MAX(id), 0) FROM audit_log), 1))",
    )
    .execute(dst)
    .await?;
    Ok(accounts.len() as u64)
}

async fn copy_events(src: &SqlitePool, dst: &PgPool) -> Result<u64> {
    let mut after = 0i64;
    let mut copied = 0u64;
    loop {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(i64, i64, Option<String>, Option<String>, String, String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT id, at, device_id, source, kind, detail, last_at, count FROM security_events \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(PAGE)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let mut tx = dst.begin_write().await?;
        for r in &rows {
            sqlx::query(
                "INSERT INTO security_events (id, at, device_id, source, kind, detail, last_at, count) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(r.0)
            .bind(r.1)
            .bind(&r.2)
            .bind(&r.3)
            .bind(&r.4)
            .bind(&r.5)
            .bind(r.6)
            .bind(r.7)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        copied += rows.len() as u64;
    }
    // New events continue after the copied ids.
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('security_events', 'id'), \
         GREATEST((SELECT COALESCE(MAX(id), 0) FROM security_events), 1))",
    )
    .execute(dst)
    .await?;
    Ok(copied)
}

async fn copy_uplinks(src: &SqlitePool, dst: &PgPool, progress: &mut impl FnMut(&str, u64)) -> Result<u64> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(received_at), MAX(received_at) FROM uplinks").fetch_one(src).await?;
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let (mut day, last) = (lo.div_euclid(partitions::DAY_MS), hi.div_euclid(partitions::DAY_MS));
        while day <= last {
            partitions::ensure(dst, day, (day + 400).min(last)).await?;
            day += 401;
        }
    }
    let (mut after_dev, mut after_seq) = (String::new(), i64::MIN);
    let mut copied = 0u64;
    loop {
        let rows: Vec<(String, i64, String, i64, i64, String)> = sqlx::query_as(
            "SELECT device_id, seq, kind, device_ts, received_at, body_json FROM uplinks \
             WHERE device_id > $1 OR (device_id = $1 AND seq > $2) ORDER BY device_id, seq LIMIT $3",
        )
        .bind(&after_dev)
        .bind(after_seq)
        .bind(PAGE)
        .fetch_all(src)
        .await?;
        let Some(last) = rows.last() else { break };
        (after_dev, after_seq) = (last.0.clone(), last.1);
        sqlx::query(
            "INSERT INTO uplinks (device_id, seq, kind, device_ts, received_at, body_json) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[])",
        )
        .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.4).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.5.as_str()).collect::<Vec<_>>())
        .execute(dst)
        .await?;
        copied += rows.len() as u64;
        progress("uplinks", copied);
    }
    // Each device's high-water mark: what PostgreSQL's ingest checks resends against.
    sqlx::query(
        "UPDATE devices AS d SET uplink_hwm = m.h FROM \
         (SELECT device_id, MAX(seq) AS h FROM uplinks GROUP BY device_id) AS m WHERE d.id = m.device_id",
    )
    .execute(dst)
    .await?;
    Ok(copied)
}
