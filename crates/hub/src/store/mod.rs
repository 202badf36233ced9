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
pub use devices::{CertRecord, CertSerialsRow, CurrentCert, DeviceRow, EnrolOutcome, NewDevice, TokenState};
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
    /// No randomness for a new id or token (raised by capabilities that mint them before storing).
    #[error("no randomness: {0}")]
    Random(String),
}

/// Result of store calls.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A write transaction on its own pooled connection, begun with `BEGIN IMMEDIATE` and ended with explicit
/// `COMMIT`/`ROLLBACK` statements.
///
/// Why not sqlx's `Transaction`: when SQLite hits `SQLITE_FULL` or an I/O error inside a statement it may roll
/// the whole transaction back by itself. sqlx's own `ROLLBACK` then fails, its idea of the nesting depth stays
/// at one, and the connection's *next* "transaction" becomes a `SAVEPOINT` inside a transaction that is never
/// committed: its `COMMIT` succeeds and nothing is durable. (Found by the disk-full fault: acknowledged
/// messages were missing.) Here a transaction that did not commit closes its connection instead of returning it
/// to the pool, and closing a SQLite connection rolls back whatever it had open.
pub struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    committed: bool,
}

impl WriteTx {
    /// Begins a write transaction (takes SQLite's write lock now, waiting up to the busy timeout).
    pub async fn begin(pool: &SqlitePool) -> Result<WriteTx> {
        let mut conn = pool.acquire().await?;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(WriteTx { conn, committed: false })
    }

    /// The connection, for the transaction's statements.
    pub fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    /// Commits. On failure nothing of the transaction is kept.
    pub async fn commit(mut self) -> Result<()> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").field("committed", &self.committed).finish()
    }
}

/// Handle to the hub's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// One connection for the telemetry writer, which waits at most 2 s for a lock held elsewhere: past that the
    /// batch fails and devices are told to resend later, instead of every session stalling behind the writer.
    ingest_pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options.clone()).await?;
        let store = Store { ingest_pool: pool.clone(), pool, path: path.display().to_string() };
        store.migrate().await?;
        let ingest_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.busy_timeout(Duration::from_secs(2)))
            .await?;
        let store = Store { ingest_pool, ..store };
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

    /// A write transaction for the telemetry writer, on its own connection (see [`WriteTx`]).
    pub async fn write_tx(&self) -> Result<WriteTx> {
        WriteTx::begin(&self.ingest_pool).await
    }

    /// Closes the pools, waiting for connections to finish.
    pub async fn close(&self) {
        self.ingest_pool.close().await;
        self.pool.close().await;
    }
}
