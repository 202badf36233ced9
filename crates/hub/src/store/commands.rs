//! Commands sent to devices and their outcomes.

use super::{Result, Store};

/// A command to record before sending.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// Command id.
    pub id: String,
    /// Target device.
    pub device_id: String,
    /// Command name.
    pub name: String,
    /// Arguments, JSON object.
    pub args_json: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
}

/// A stored command.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandRow {
    /// Command id.
    pub id: String,
    /// Target device.
    pub device_id: String,
    /// Command name.
    pub name: String,
    /// Arguments, JSON.
    pub args_json: String,
    /// `pending`, `sent`, `ok`, `error`, `unsupported`, `expired`.
    pub status: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// When it was last sent.
    pub sent_at: Option<i64>,
    /// When the device answered or it timed out.
    pub answered_at: Option<i64>,
    /// The device's detail text.
    pub detail: Option<String>,
}

const COLUMNS: &str = "id, device_id, name, args_json, status, created_at, expires_at, sent_at, answered_at, detail";

impl Store {
    /// Records a new pending command.
    pub async fn insert_command(&self, c: &NewCommand) -> Result<()> {
        sqlx::query(
            "INSERT INTO commands (id, device_id, name, args_json, status, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
        )
        .bind(&c.id)
        .bind(&c.device_id)
        .bind(&c.name)
        .bind(&c.args_json)
        .bind(c.created_at)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One command of one device.
    pub async fn command(&self, device_id: &str, id: &str) -> Result<Option<CommandRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND id = $2"));
        Ok(sqlx::query_as::<_, CommandRow>(sql).bind(device_id).bind(id).fetch_optional(&self.pool).await?)
    }

    /// Unanswered, unexpired commands of a device, oldest first.
    pub async fn open_commands(&self, device_id: &str, now: i64) -> Result<Vec<CommandRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND status IN ('pending', 'sent') \
             AND expires_at > $2 ORDER BY created_at, id"
        ));
        Ok(sqlx::query_as::<_, CommandRow>(sql).bind(device_id).bind(now).fetch_all(&self.pool).await?)
    }

    /// Marks a command as sent.
    pub async fn mark_command_sent(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE commands SET status = 'sent', sent_at = $2 WHERE id = $1 AND status IN ('pending', 'sent')",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a device's answer; false if the command is unknown, not this device's, or already answered.
    pub async fn answer_command(
        &self,
        device_id: &str,
        id: &str,
        status: &str,
        detail: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE commands SET status = $3, detail = $4, answered_at = $5 \
             WHERE id = $2 AND device_id = $1 AND status IN ('pending', 'sent')",
        )
        .bind(device_id)
        .bind(id)
        .bind(status)
        .bind(detail)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks every unanswered command past its expiry as timed out; returns how many.
    pub async fn expire_commands(&self, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE commands SET status = 'timeout', answered_at = $1 \
             WHERE status IN ('pending', 'sent') AND expires_at <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
