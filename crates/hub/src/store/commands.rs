//! Commands sent to devices and their outcomes.

use hearth_proto::DeviceId;
use hearth_proto::command::AckStatus;

use super::{Result, Store, StoreError};

/// Where a command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Recorded, not yet sent.
    Pending,
    /// Sent at least once, not answered.
    Sent,
    /// The device did it.
    Ok,
    /// The device tried and failed.
    Error,
    /// The device does not know the command.
    Unsupported,
    /// The device received it after its expiry.
    Expired,
    /// No answer before its expiry.
    Timeout,
}

impl CommandStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "pending",
            CommandStatus::Sent => "sent",
            CommandStatus::Ok => "ok",
            CommandStatus::Error => "error",
            CommandStatus::Unsupported => "unsupported",
            CommandStatus::Expired => "expired",
            CommandStatus::Timeout => "timeout",
        }
    }

    /// Whether the command still waits for delivery or an answer.
    pub fn is_open(self) -> bool {
        matches!(self, CommandStatus::Pending | CommandStatus::Sent)
    }
}

impl From<AckStatus> for CommandStatus {
    fn from(a: AckStatus) -> Self {
        match a {
            AckStatus::Ok => CommandStatus::Ok,
            AckStatus::Error => CommandStatus::Error,
            AckStatus::Unsupported => CommandStatus::Unsupported,
            AckStatus::Expired => CommandStatus::Expired,
        }
    }
}

impl TryFrom<String> for CommandStatus {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self> {
        Ok(match s.as_str() {
            "pending" => CommandStatus::Pending,
            "sent" => CommandStatus::Sent,
            "ok" => CommandStatus::Ok,
            "error" => CommandStatus::Error,
            "unsupported" => CommandStatus::Unsupported,
            "expired" => CommandStatus::Expired,
            "timeout" => CommandStatus::Timeout,
            _ => return Err(StoreError::Corrupt(format!("command status {s:?}"))),
        })
    }
}

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
    #[sqlx(try_from = "String")]
    pub device_id: DeviceId,
    /// Command name.
    pub name: String,
    /// Arguments, JSON.
    pub args_json: String,
    /// Where it stands.
    #[sqlx(try_from = "String")]
    pub status: CommandStatus,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// When it was first sent.
    pub sent_at: Option<i64>,
    /// How many times it was sent (again at each SUBSCRIBE until answered).
    pub deliveries: i64,
    /// When the device answered or it timed out.
    pub answered_at: Option<i64>,
    /// The device's detail text.
    pub detail: Option<String>,
}

/// Inserts `$c` (a `NewCommand`) as pending through the executor `$conn`.
macro_rules! insert_command {
    ($conn:expr, $c:expr) => {
        sqlx::query(
            "INSERT INTO commands (id, device_id, name, args_json, status, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
        )
        .bind(&$c.id)
        .bind(&$c.device_id)
        .bind(&$c.name)
        .bind(&$c.args_json)
        .bind($c.created_at)
        .bind($c.expires_at)
        .execute($conn)
        .await?
        .rows_affected()
    };
}
pub(crate) use insert_command;

const COLUMNS: &str =
    "id, device_id, name, args_json, status, created_at, expires_at, sent_at, deliveries, answered_at, detail";

impl Store {
    /// Records a new pending command.
    pub async fn insert_command(&self, c: &NewCommand) -> Result<()> {
        on_pool!(self, pool => insert_command!(pool, c));
        Ok(())
    }

    /// One command of one device.
    pub async fn command(&self, device_id: &str, id: &str) -> Result<Option<CommandRow>> {
        let sql = format!("SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND id = $2");
        on_pool!(self, pool => Ok(sqlx::query_as::<_, CommandRow>(sqlx::AssertSqlSafe(sql))
            .bind(device_id)
            .bind(id)
            .fetch_optional(pool)
            .await?))
    }

    /// Unanswered, unexpired commands of a device, oldest first.
    pub async fn open_commands(&self, device_id: &str, now: i64) -> Result<Vec<CommandRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND status IN ('pending', 'sent') \
             AND expires_at > $2 ORDER BY created_at, id"
        );
        on_pool!(self, pool => Ok(sqlx::query_as::<_, CommandRow>(sqlx::AssertSqlSafe(sql))
            .bind(device_id)
            .bind(now)
            .fetch_all(pool)
            .await?))
    }

    /// Marks a command as sent (once more): the first send time stays, the deliveries are counted.
    pub async fn mark_command_sent(&self, id: &str, now: i64) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE commands SET status = 'sent', sent_at = COALESCE(sent_at, $2), deliveries = deliveries + 1 \
             WHERE id = $1 AND status IN ('pending', 'sent')",
        )
        .bind(id)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Records a device's answer; false if the command is unknown, not this device's, or already answered.
    pub async fn answer_command(
        &self,
        device_id: &str,
        id: &str,
        status: CommandStatus,
        detail: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE commands SET status = $3, detail = $4, answered_at = $5 \
             WHERE id = $2 AND device_id = $1 AND status IN ('pending', 'sent')",
        )
        .bind(device_id)
        .bind(id)
        .bind(status.as_str())
        .bind(detail)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Marks every unanswered command past its expiry as timed out; returns how many.
    pub async fn expire_commands(&self, now: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query(
            "UPDATE commands SET status = 'timeout', answered_at = $1 \
             WHERE status IN ('pending', 'sent') AND expires_at <= $1",
        )
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()))
    }
}
