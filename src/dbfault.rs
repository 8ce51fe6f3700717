//! What a database error means for the caller: a fault of the storage or the connection
//! that clears by itself (retry, answer 503), or a problem with this one statement.
//!
//! One classification for every caller, so the API's 503s, `/readyz`, `STATUS=` and the
//! runner's back-off agree on what "the database is unavailable" is and say the same reason.

/// A fault of the database as a whole, not of one statement: it clears by itself (or
/// when an operator frees space, fixes permissions, restarts the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbFault {
    pub kind: FaultKind,
    /// One sentence for people: what is wrong and what to do.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// No space left where the database writes.
    DiskFull,
    /// The database files, their mount, or the server is read-only.
    ReadOnly,
    /// The connection was lost or could not be made or taken from the pool.
    Unavailable,
    /// Locked by another writer or over a statement timeout.
    Busy,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DiskFull => "disk full",
            FaultKind::ReadOnly => "read-only",
            FaultKind::Unavailable => "unavailable",
            FaultKind::Busy => "busy",
        }
    }
}

impl std::fmt::Display for DbFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl DbFault {
    fn new(kind: FaultKind) -> Self {
        let reason = match kind {
            FaultKind::DiskFull => {
                "database: disk full; free space where the database lives (shiftd resumes by itself)"
            }
            FaultKind::ReadOnly => {
                "database: read-only; make its files and mount writable (or point database.url at a primary server)"
            }
            FaultKind::Unavailable => {
                "database: unavailable (the connection was lost or refused); retry shortly"
            }
            FaultKind::Busy => "database: busy (locked or over its statement timeout); retry shortly",
        };
        Self {
            kind,
            reason: reason.to_string(),
        }
    }
}

/// `Some` when `e` is a fault of the database rather than of the statement: the caller
/// should retry later (and an API caller gets 503). `None`: the statement itself failed.
pub fn classify(e: &sqlx::Error) -> Option<DbFault> {
    use sqlx::Error as E;
    let kind = match e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::WorkerCrashed | E::Tls(_) => {
            FaultKind::Unavailable
        }
        E::Protocol(_) => FaultKind::Unavailable,
        E::Database(db) => {
            let code = db.code()?;
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                sqlite_code(&code)?
            } else {
                postgres_code(&code)?
            }
        }
        _ => return None,
    };
    Some(DbFault::new(kind))
}

/// SQLite's extended result codes: the primary code is the low byte.
fn sqlite_code(code: &str) -> Option<FaultKind> {
    match code.parse::<i32>().ok()? & 0xff {
        13 => Some(FaultKind::DiskFull), // SQLITE_FULL
        8 => Some(FaultKind::ReadOnly),  // SQLITE_READONLY
        // SQLITE_IOERR: ENOSPC is reported as SQLITE_FULL, so what is left here is a
        // failing or vanished device: the database cannot be written.
        10 | 14 | 3 => Some(FaultKind::ReadOnly), // IOERR, CANTOPEN, PERM
        5 | 6 => Some(FaultKind::Busy),           // SQLITE_BUSY, SQLITE_LOCKED
        _ => None,
    }
}

/// PostgreSQL's SQLSTATEs.
fn postgres_code(code: &str) -> Option<FaultKind> {
    let kind = match code {
        "53100" => FaultKind::DiskFull,
        "25006" => FaultKind::ReadOnly, // read_only_sql_transaction (a standby)
        "57014" | "55P03" | "40001" | "40P01" => FaultKind::Busy,
        c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
            FaultKind::Unavailable
        }
        _ => return None,
    };
    Some(kind)
}

/// The last storage fault a write ran into, until a write commits again.
#[derive(Debug, Default)]
pub struct StorageHealth {
    fault: std::sync::Mutex<Option<DbFault>>,
}

impl StorageHealth {
    pub fn fault(&self) -> Option<DbFault> {
        self.fault.lock().expect("poisoned").clone()
    }

    pub fn set(&self, fault: DbFault) {
        let mut current = self.fault.lock().expect("poisoned");
        if current.as_ref() != Some(&fault) {
            tracing::warn!("{}", fault.reason);
        }
        *current = Some(fault);
    }

    pub fn clear(&self) {
        if let Some(fault) = self.fault.lock().expect("poisoned").take() {
            tracing::info!(was = fault.kind.as_str(), "database: writes commit again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_and_postgres_codes() {
        assert_eq!(sqlite_code("13"), Some(FaultKind::DiskFull));
        assert_eq!(sqlite_code("776"), Some(FaultKind::ReadOnly)); // READONLY_ROLLBACK
        assert_eq!(sqlite_code("1032"), Some(FaultKind::ReadOnly)); // READONLY_DBMOVED
        assert_eq!(sqlite_code("5"), Some(FaultKind::Busy));
        assert_eq!(sqlite_code("2067"), None); // CONSTRAINT_UNIQUE: the statement's fault
        assert_eq!(postgres_code("57P01"), Some(FaultKind::Unavailable));
        assert_eq!(postgres_code("08006"), Some(FaultKind::Unavailable));
        assert_eq!(postgres_code("53100"), Some(FaultKind::DiskFull));
        assert_eq!(postgres_code("22021"), None); // bad UTF-8: the statement's fault
        assert_eq!(postgres_code("23505"), None);
    }

    #[test]
    fn pool_and_io_errors_are_faults() {
        assert!(classify(&sqlx::Error::PoolTimedOut).is_some());
        assert!(classify(&sqlx::Error::Io(std::io::Error::other("reset"))).is_some());
        assert!(classify(&sqlx::Error::RowNotFound).is_none());
    }
}
