//! The database: one sqlx pool over SQLite (embedded, the default) or PostgreSQL,
//! migrations for each, and a close that cannot hang.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::config::{Backend, DatabaseConfig};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The pool and which SQL dialect it speaks.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// Where the data lives, with passwords redacted (`crate::redact::url`); for logs and status.
    pub location: String,
    /// The storage fault the last write ran into, until a write commits again.
    pub health: std::sync::Arc<crate::dbfault::StorageHealth>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the data directory {path}: {source}; create it or set database.url")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// `message` is the driver's error with any secret of the URL redacted.
    #[error("cannot connect to {location}: {message}")]
    Connect { location: String, message: String },
    #[error("migrating {location} failed: {source}; the database may have been changed by hand or by a newer shiftd")]
    Migrate {
        location: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

/// The state directory: `$STATE_DIRECTORY` under systemd, else `./shiftd-data/`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        // systemd may pass several, separated by ':'; the first is ours.
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("shiftd-data"))
}

/// The embedded SQLite file, in the state directory.
pub fn default_sqlite_path() -> PathBuf {
    state_dir().join("shiftd.db")
}

/// The URL sqlx will use, and the backend it names.
pub fn effective_url(cfg: &DatabaseConfig, backend: Backend) -> Result<String, DbError> {
    if !cfg.url.is_empty() {
        return Ok(cfg.url.clone());
    }
    debug_assert_eq!(backend, Backend::Sqlite);
    let path = default_sqlite_path();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DbError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    Ok(format!("sqlite://{}", path.display()))
}

/// Connects (bounded by `connect_timeout`) and checks the database answers.
pub async fn connect(cfg: &DatabaseConfig, backend: Backend) -> Result<Db, DbError> {
    sqlx::any::install_default_drivers();
    let mut url = effective_url(cfg, backend)?;
    if backend == Backend::Sqlite && !url.contains('?') {
        url.push_str("?mode=rwc");
    }
    let location = crate::redact::url(&url);
    let connect_err = |source: sqlx::Error| DbError::Connect {
        location: location.clone(),
        message: crate::redact::in_text(&source.to_string(), &url),
    };
    let options = AnyConnectOptions::from_str(&url).map_err(connect_err)?;
    // One direct connection first: a pool retries quietly until its timeout and then
    // reports only that it timed out, hiding "connection refused" or "password failed".
    let probe = tokio::time::timeout(cfg.connect_timeout, AnyConnection::connect_with(&options))
        .await
        .map_err(|_| connect_err(sqlx::Error::PoolTimedOut))?
        .map_err(connect_err)?;
    let _ = probe.close().await;
    let health = std::sync::Arc::new(crate::dbfault::StorageHealth::default());
    let faulted = health.clone();
    let mut pool_options = AnyPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // While the storage is faulted, a connection is closed when it comes back rather
        // than reused: SQLite opens a file it cannot write read-only and stays so, and
        // a PostgreSQL connection may be broken. Recovery then opens fresh ones.
        .after_release(move |_conn, _meta| {
            let keep = faulted.fault().is_none();
            Box::pin(async move { Ok(keep) })
        });
    if backend == Backend::Sqlite {
        pool_options = pool_options.after_connect(|conn, _meta| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; busy_timeout makes writers queue
                // instead of failing with SQLITE_BUSY.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        });
    }
    let pool = tokio::time::timeout(cfg.connect_timeout, pool_options.connect_with(options))
        .await
        .map_err(|_| connect_err(sqlx::Error::PoolTimedOut))?
        .map_err(connect_err)?;
    Ok(Db {
        pool,
        backend,
        location,
        health,
    })
}

impl Db {
    /// Applies the migrations of this backend.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| DbError::Migrate {
                location: self.location.clone(),
                source,
            })
    }

    /// True when the database answers a trivial query within `limit`.
    pub async fn ping(&self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        )
    }

    /// Connections open and idle.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
            max: self.pool.options().get_max_connections(),
        }
    }

    /// Closes the pool, waiting at most `limit` for connections in use to come back
    /// (sqlx's own `close()` waits forever). Returns false if it had to give up.
    pub async fn close(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.pool.close()).await.is_ok()
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}
