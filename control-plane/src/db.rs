//! The embedded SQLite database: opening it, migrating its schema, and running
//! blocking queries off the async runtime.
//!
//! One connection behind a mutex: the reference control plane serves a small team,
//! and SQLite serialises writers anyway. Queries run on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot migrate database schema: {0}")]
    Migrate(#[from] rusqlite_migration::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Schema versions, applied in order at start. Append; never edit a released one.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema/001_initial.sql")),
        M::up(include_str!("schema/002_secret_scan.sql")),
        M::up(include_str!("schema/003_submodules.sql")),
        M::up(include_str!("schema/004_dashboard.sql")),
        M::up(include_str!("schema/005_git_hosts.sql")),
        M::up(include_str!("schema/006_build_cache.sql")),
        M::up(include_str!("schema/007_fleet.sql")),
    ])
}

/// A migrated in-memory database, for the store's unit tests.
#[cfg(test)]
pub(crate) fn in_memory() -> Connection {
    let mut conn = Connection::open_in_memory().expect("in-memory SQLite opens");
    conn.pragma_update(None, "foreign_keys", "ON")
        .expect("foreign keys switch on");
    migrations().to_latest(&mut conn).expect("migrations apply");
    conn
}

/// Opens and migrates the database file: for the server, and for `kiln-server
/// users`, which may run beside it (WAL lets both; writes wait up to 5 s).
pub fn connect(path: &Path) -> Result<Connection, DbError> {
    let mut conn = Connection::open(path).map_err(|source| DbError::Open {
        path: path.display().to_string(),
        source,
    })?;
    // WAL survives a kill -9 with every committed transaction intact.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrations().to_latest(&mut conn)?;
    Ok(conn)
}

#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Ok(Self {
            conn: Arc::new(Mutex::new(connect(path)?)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = crate::lock(&conn);
            f(&mut guard)
        })
        .await
        .expect("database task panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn reopening_keeps_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.sqlite");
        Db::open(&path).unwrap();
        Db::open(&path).unwrap();
    }
}
