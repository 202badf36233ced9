//! The store: the only module that writes SQL. Capabilities call its typed functions and get domain types back;
//! none of them sees a table, a connection or a driver type.
//!
//! Two backends, one contract. The embedded default is SQLite in WAL mode with `synchronous = FULL`, so a
//! committed transaction survives a crash or power cut. Beyond one machine it is PostgreSQL, shared by every hub
//! node. Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`); the statements are
//! written once where both accept them (`$n` placeholders, `ON CONFLICT`, `RETURNING`, Unix-millisecond BIGINT
//! times) and per backend where PostgreSQL has a better way (partitioned telemetry, `UNNEST` batches). The
//! contract suite (`tests/it/store_contract.rs`) runs every story on both.
//!
//! [`on_pool!`] runs one body against whichever pool the store has; the body is compiled once per backend, so
//! a statement that one backend does not accept fails the contract suite, not a user.

/// Runs `$body` with `$pool` bound to the store's pool (`&SqlitePool` or `&PgPool`).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { pool: $pool, .. } => $body,
            $crate::store::Backend::Postgres { pool: $pool } => $body,
        }
    };
}

mod accounts;
mod commands;
mod devices;
mod events;
mod migrate;
mod partitions;
mod passkeys;
mod reports;
mod tokens;
mod updates;
mod uplinks;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, SqlSafeStr as _, Sqlite};

pub use accounts::{
    AccountRow, AuditRow, LinkPurpose, NO_PASSWORD_YET, NewAccount, NewWebSession, Role, WebSessionRow,
};
pub use commands::{CommandRow, CommandStatus, NewCommand};
pub use devices::{
    CertRecord, CertSerialsRow, CurrentCert, DeviceRow, DeviceStatus, EnrolOutcome, NewDevice, OpenedSession, Release,
    SessionOpen, TokenState,
};
pub use events::{NewSecurityEvent, SecurityEventRow};
pub use migrate::CopyReport;
pub use passkeys::{CeremonyKind, PasskeyRow};
pub use reports::{MessageInsert, ReportInsert, ReportMessageRow, ReportRow};
pub use tokens::NewApiToken;
pub use updates::{
    DeviceSoftwareRow, FINAL_DEVICE_STATES, GoalRow, ModelSupportRow, ReleaseRow, RolloutDeviceRow, RolloutRow,
    TufMetadataRow, WaveCount,
};
pub use uplinks::{UplinkQuery, UplinkRecord, UplinkRow, Written};

/// A storage failure. The message is for the log, not for API callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A schema migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No randomness for a new id or token (raised by capabilities that mint them before storing).
    #[error("no randomness: {0}")]
    Random(String),
    /// A stored value is not one the hub writes (the database was changed by hand, or by a newer hub).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Reading what is to be stored (a target file being uploaded).
    #[error("reading: {0}")]
    Io(std::io::Error),
}

/// Result of store calls.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Where the store lives: `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server (the URL as given; it may hold a password, so it is never logged whole).
    Postgres(String),
}

impl StoreUrl {
    /// Parses `sqlite://PATH` (a relative path is relative to the working directory) or `postgres://…` /
    /// `postgresql://…`. The error says what is accepted.
    pub fn parse(url: &str) -> std::result::Result<StoreUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err("sqlite:// needs a file path, for example sqlite:///var/lib/hearth/hearth.db".into());
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.parse::<PgConnectOptions>().map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        Err("must start with sqlite:// or postgres://".into())
    }

    /// The URL with any password replaced, for logs and `doctor`.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            StoreUrl::Postgres(url) => match url.parse::<PgConnectOptions>() {
                Ok(o) => format!(
                    "postgres://{}@{}:{}/{}",
                    o.get_username(),
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or("")
                ),
                Err(_) => "postgres://(invalid)".into(),
            },
        }
    }
}

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A write transaction on its own pooled connection, begun and ended with explicit `BEGIN`/`COMMIT` statements.
///
/// Why not sqlx's `Transaction`: when SQLite hits `SQLITE_FULL` or an I/O error inside a statement it may roll
/// the whole transaction back by itself. sqlx's own `ROLLBACK` then fails, its idea of the nesting depth stays
/// at one, and the connection's *next* "transaction" becomes a `SAVEPOINT` inside a transaction that is never
/// committed: its `COMMIT` succeeds and nothing is durable. (Found by the disk-full fault: acknowledged
/// messages were missing.) Here a transaction that did not commit closes its connection instead of returning it
/// to the pool, and closing a connection rolls back whatever it had open. PostgreSQL gets the same treatment.
pub(crate) struct WriteTx<DB: sqlx::Database> {
    conn: sqlx::pool::PoolConnection<DB>,
    committed: bool,
}

/// Begins a [`WriteTx`] on a pool (a trait so that one `on_pool!` body serves both backends).
pub(crate) trait BeginWrite {
    /// The database.
    type Db: sqlx::Database;
    /// Begins a write transaction (SQLite takes its write lock now, waiting up to the busy timeout).
    async fn begin_write(&self) -> Result<WriteTx<Self::Db>>;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<WriteTx<Sqlite>> {
        let mut conn = self.acquire().await?;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(WriteTx { conn, committed: false })
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<WriteTx<Postgres>> {
        let mut conn = self.acquire().await?;
        if let Err(e) = sqlx::query("BEGIN").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(WriteTx { conn, committed: false })
    }
}

impl WriteTx<Sqlite> {
    /// The connection, for the transaction's statements.
    pub(crate) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    /// Commits. On failure nothing of the transaction is kept.
    pub(crate) async fn commit(mut self) -> Result<()> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl WriteTx<Postgres> {
    /// The connection, for the transaction's statements.
    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }

    /// Commits. On failure nothing of the transaction is kept.
    pub(crate) async fn commit(mut self) -> Result<()> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl<DB: sqlx::Database> Drop for WriteTx<DB> {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

/// The pools of one backend.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite {
        pool: SqlitePool,
        /// One connection for the telemetry writer, which waits at most 2 s for a lock held elsewhere: past
        /// that the batch fails and devices are told to resend later, instead of every session stalling behind
        /// the writer.
        ingest: SqlitePool,
    },
    Postgres {
        pool: PgPool,
    },
}

/// Handle to the hub's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    location: String,
}

/// Pool settings for [`Store::open`].
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most connections to PostgreSQL from this node (SQLite uses its own fixed, small pool).
    pub max_connections: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { max_connections: 16 }
    }
}

impl Store {
    /// Opens the store at `url` and brings its schema up to date (creating a SQLite file if needed).
    pub async fn open(url: &StoreUrl, settings: PoolSettings) -> Result<Store> {
        match url {
            StoreUrl::Sqlite(path) => Store::open_sqlite(path).await,
            StoreUrl::Postgres(url) => Store::open_postgres(url, settings).await,
        }
    }

    /// Opens (creating if needed) the SQLite database at `path` and brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options.clone()).await?;
        migrator(SQLITE_MIGRATIONS).run(&pool).await?;
        let ingest = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.busy_timeout(Duration::from_secs(2)))
            .await?;
        Ok(Store { backend: Backend::Sqlite { pool, ingest }, location: format!("sqlite://{}", path.display()) })
    }

    /// Connects to PostgreSQL, brings its schema up to date and makes sure this week's telemetry partitions
    /// exist. Several nodes may start at once: migrations and partition creation take an advisory lock.
    pub async fn open_postgres(url: &str, settings: PoolSettings) -> Result<Store> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        migrator(POSTGRES_MIGRATIONS).run(&pool).await?;
        let store =
            Store { backend: Backend::Postgres { pool }, location: StoreUrl::Postgres(url.to_owned()).redacted() };
        Ok(store)
    }

    /// Creates (dropping any earlier one) an empty database `name` on the PostgreSQL server that `admin_url`
    /// reaches, and returns its URL. For benchmarks and tests that need a fresh hub on a shared server.
    pub async fn fresh_postgres_database(admin_url: &str, name: &str) -> Result<String> {
        use sqlx::Connection as _;
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(StoreError::Corrupt(format!("bad database name {name:?}")));
        }
        let options: PgConnectOptions = admin_url.parse()?;
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
        let _ = conn.close().await;
        Ok(with_database(admin_url, name))
    }

    /// Where the database lives (for `doctor` and logs; no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The engine.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres { .. } => BackendKind::Postgres,
        }
    }

    /// Closes the pools, waiting for connections to finish.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { pool, ingest } => {
                ingest.close().await;
                pool.close().await;
            }
            Backend::Postgres { pool } => pool.close().await,
        }
    }
}

/// `url` with its database replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    format!("{}/{name}{}", &base[..path_start], query.map(|q| format!("?{q}")).unwrap_or_default())
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../../migrations/sqlite/0001_initial.sql")),
    (2, "hardening", include_str!("../../migrations/sqlite/0002_hardening.sql")),
    (3, "scale_out", include_str!("../../migrations/sqlite/0003_scale_out.sql")),
    (4, "command_deliveries", include_str!("../../migrations/sqlite/0004_command_deliveries.sql")),
    (5, "session_expiry", include_str!("../../migrations/sqlite/0005_session_expiry.sql")),
    (6, "accounts", include_str!("../../migrations/sqlite/0006_accounts.sql")),
    (7, "claims", include_str!("../../migrations/sqlite/0007_claims.sql")),
    (8, "support_grants", include_str!("../../migrations/sqlite/0008_support_grants.sql")),
    (9, "wipe", include_str!("../../migrations/sqlite/0009_wipe.sql")),
    (10, "mail_links", include_str!("../../migrations/sqlite/0010_mail_links.sql")),
    (11, "passkeys", include_str!("../../migrations/sqlite/0011_passkeys.sql")),
    (12, "updates", include_str!("../../migrations/sqlite/0012_updates.sql")),
    (13, "reports", include_str!("../../migrations/sqlite/0013_reports.sql")),
];

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../../migrations/postgres/0001_initial.sql")),
    (2, "command_deliveries", include_str!("../../migrations/postgres/0002_command_deliveries.sql")),
    (3, "session_expiry", include_str!("../../migrations/postgres/0003_session_expiry.sql")),
    (4, "accounts", include_str!("../../migrations/postgres/0004_accounts.sql")),
    (5, "claims", include_str!("../../migrations/postgres/0005_claims.sql")),
    (6, "support_grants", include_str!("../../migrations/postgres/0006_support_grants.sql")),
    (7, "wipe", include_str!("../../migrations/postgres/0007_wipe.sql")),
    (8, "mail_links", include_str!("../../migrations/postgres/0008_mail_links.sql")),
    (9, "passkeys", include_str!("../../migrations/postgres/0009_passkeys.sql")),
    (10, "updates", include_str!("../../migrations/postgres/0010_updates.sql")),
    (11, "reports", include_str!("../../migrations/postgres/0011_reports.sql")),
];

fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = migrations
        .iter()
        .map(|&(version, name, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                sqlx::AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn store_urls_are_parsed_and_redacted() {
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/h/hearth.db"),
            Ok(StoreUrl::Sqlite("/var/lib/h/hearth.db".into()))
        );
        assert_eq!(StoreUrl::parse("sqlite://rel/h.db?mode=rwc"), Ok(StoreUrl::Sqlite("rel/h.db".into())));
        assert!(StoreUrl::parse("sqlite://").is_err());
        assert!(StoreUrl::parse("mysql://x").unwrap_err().contains("sqlite:// or postgres://"));
        let pg = StoreUrl::parse("postgres://hub:s3cret@db.example:5433/hearth").unwrap();
        assert_eq!(pg.redacted(), "postgres://hub@db.example:5433/hearth");
        assert!(!pg.redacted().contains("s3cret"));
        assert!(StoreUrl::parse("postgresql://h@localhost/x").is_ok());
    }
}
