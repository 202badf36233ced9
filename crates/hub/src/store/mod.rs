//! The store: the only module that writes SQL. Capabilities call its typed functions; none of them sees a table.
//!
//! The embedded default is SQLite in WAL mode with `synchronous = FULL`, so a committed transaction survives a
//! crash or power cut. The SQL is kept portable (TEXT ids, INTEGER Unix-millisecond times, `$n` placeholders,
//! `ON CONFLICT`), so the PostgreSQL backend can follow behind this same API.

mod commands;
pub(crate) mod devices;
mod events;
mod tokens;
pub(crate) mod uplinks;

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use sqlx::SqlSafeStr as _;
use sqlx::SqlitePool;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use commands::{CommandRow, NewCommand};
pub use devices::{CertRecord, CertSerialsRow, DeviceRow, EnrolOutcome, NewDevice, TokenState};
pub use events::{NewSecurityEvent, SecurityEventRow};
pub use tokens::NewApiToken;
pub use uplinks::{UplinkQuery, UplinkRecord, UplinkRow};

/// A storage failure. The message is for the log, not for API callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A schema migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result of store calls.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Handle to the hub's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    path: String,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        let store = Store { pool, path: path.display().to_string() };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let migrations = [
            (1, "initial", include_str!("../../migrations/0001_initial.sql")),
            (2, "hardening", include_str!("../../migrations/0002_hardening.sql")),
        ]
        .into_iter()
        .map(|(version, name, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                sqlx::AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        })
        .collect();
        Migrator::with_migrations(migrations).run(&self.pool).await?;
        Ok(())
    }

    /// Where the database lives (for `doctor` and logs).
    pub fn location(&self) -> &str {
        &self.path
    }

    /// A dedicated connection for the telemetry writer, which keeps it for its whole life.
    pub async fn writer_connection(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        Ok(self.pool.acquire().await?)
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
