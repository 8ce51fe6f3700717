//! The database a test runs on: [`Backend`] for tests that run on both, and for
//! PostgreSQL a fresh database per test ([`TestDatabase`]) on the server `PG_TEST_URL`
//! names.

use testkit::secs;

use super::process::{Shiftd, ShiftdBuilder};

/// The admin URL for PostgreSQL when `PG_TEST_URL` is not set.
pub const DEFAULT_PG_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A builder polling fast, on the backend (a fresh PostgreSQL database for `Postgres`); the
/// database lives as long as the returned guard.
pub async fn builder(backend: Backend) -> (ShiftdBuilder, Option<TestDatabase>) {
    let b = Shiftd::builder()
        .set("jobs.poll_interval", "100ms")
        .set("jobs.log_flush_interval", "100ms");
    match backend {
        Backend::Sqlite => (b, None),
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            (b.set("database.url", db.url.clone()), Some(db))
        }
    }
}

/// A database created for one test on the server `PG_TEST_URL` names; dropped (best effort,
/// forcibly) when this value is dropped.
pub struct TestDatabase {
    /// The URL to give shiftd as `database.url`.
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates `shiftd_test_<random>`. Fails the test if PostgreSQL is not reachable.
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin_url = std::env::var("PG_TEST_URL").unwrap_or_else(|_| DEFAULT_PG_TEST_URL.into());
        let name = format!("shiftd_test_{:016x}", rand::random::<u64>());
        let mut admin = tokio::time::timeout(secs(10), sqlx::PgConnection::connect(&admin_url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {admin_url} timed out (set PG_TEST_URL)"))
            .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e} (set PG_TEST_URL)"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        let url = match admin_url.rfind('/') {
            Some(i) if i > "postgres://".len() => format!("{}/{name}", &admin_url[..i]),
            _ => panic!("PG_TEST_URL {admin_url} has no database part"),
        };
        Self {
            url,
            name,
            admin_url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop is not async and may run inside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(Ok(mut admin)) =
                    tokio::time::timeout(secs(5), sqlx::PgConnection::connect(&admin_url)).await
                {
                    let _ = tokio::time::timeout(
                        secs(10),
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut admin),
                    )
                    .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A migrated `Store` on the backend, without a process; the guards keep its database alive.
pub async fn migrated_store(
    backend: Backend,
) -> (shiftd::jobs::Store, Option<TestDatabase>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (url, kind, guard) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}/q.db?mode=rwc", dir.path().display()),
            shiftd::config::Backend::Sqlite,
            None,
        ),
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            (db.url.clone(), shiftd::config::Backend::Postgres, Some(db))
        }
    };
    let config = shiftd::config::DatabaseConfig {
        url,
        ..shiftd::config::DatabaseConfig::default()
    };
    let db = shiftd::db::connect(&config, kind).await.expect("connect");
    db.migrate().await.expect("migrate");
    (shiftd::jobs::Store::new(&db), guard, dir)
}
