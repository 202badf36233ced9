//! Outside services some tests need: PostgreSQL (`HEARTH_TEST_POSTGRES_URL`) and NATS with JetStream
//! (`HEARTH_TEST_NATS_URL`). When the variable is unset the test says SKIPPED and returns; under
//! `HEARTH_REQUIRE_ALL=1` (CI) it fails instead, so a backend can never be skipped silently there.

use sqlx::Connection as _;

fn required(var: &str, test: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("HEARTH_REQUIRE_ALL").is_ok_and(|v| v == "1") {
                panic!("{test}: {what} is required (HEARTH_REQUIRE_ALL=1) but {var} is not set");
            }
            eprintln!("SKIPPED {test}: {what} not configured; set {var} to run it");
            None
        }
    }
}

/// The NATS URL for tests, or `None` (after printing SKIPPED) when none is configured.
pub fn nats_url(test: &str) -> Option<String> {
    required("HEARTH_TEST_NATS_URL", test, "NATS with JetStream")
}

/// A fresh PostgreSQL database for one test, dropped when this value is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    admin: String,
    name: String,
}

/// Creates an empty database on the configured server, or returns `None` (after printing SKIPPED) when no
/// server is configured.
pub async fn pg_database(test: &str) -> Option<PgDatabase> {
    let admin = required("HEARTH_TEST_POSTGRES_URL", test, "PostgreSQL")?;
    let name = format!("hearth_t_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let url = hearth_hub::store::Store::fresh_postgres_database(&admin, &name)
        .await
        .expect("create a test database on HEARTH_TEST_POSTGRES_URL");
    Some(PgDatabase { url, admin, name })
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A runtime of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
