//! One SQL surface over the two stores: the embedded SQLite (the zero-setup
//! default) and PostgreSQL (for replicas). The store writes its queries once, in
//! the dialect both accept, with `?N` placeholders; this module runs them on
//! either and hands back rows of plain values.
//!
//! The shape follows rusqlite's (`execute`, `query_row`, `prepare(..).query_map`,
//! `optional`, `params!`) so the store reads like ordinary rusqlite code.
//! PostgreSQL parameters are converted to the types the prepared statement asks
//! for, never spliced into the text.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_types::{IsNull, Type};

mod values;

pub(crate) use values::params;
pub use values::{Error, OptionalExtension, Params, Result, Row, ToSql, Value};

/// Which database a connection speaks to, for the rare statement that differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection to either store. Methods take `&self`, as rusqlite's do.
pub struct Connection {
    backend: Backend,
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PgClient>>),
}

/// A PostgreSQL connection driven by its own single-thread runtime while a call
/// blocks on it (as the `postgres` crate's client is), so writes can be
/// pipelined: see `execute_deferred`.
struct PgClient {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    /// Sent ahead of the next statement, in the same round trip.
    deferred: Vec<Deferred>,
}

enum Deferred {
    /// Simple-protocol text (a transaction's `BEGIN` and its lock).
    Batch(String),
    Write(tokio_postgres::Statement, Vec<PgParam>),
}

/// Held across all transactions of a PostgreSQL store, so they run one at a time
/// across every replica, as SQLite runs them on one machine: the store's
/// read-then-write transactions stay correct without retry loops. The hot path
/// holds it shared and locks its rows instead (`transaction_shared`).
pub const WRITE_LOCK: i64 = 0x6b696c6e; // "kiln"

impl Connection {
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            backend: Backend::Sqlite(conn),
        }
    }

    /// Connects to PostgreSQL. Call it off any async runtime (the connection
    /// brings its own).
    pub fn connect_postgres(url: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let (config, tls) = crate::db::pg_tls::connection(url)?;
        let (client, connection) = runtime.block_on(config.connect(tls))?;
        // Runs only while a call blocks on the runtime: that is when it is needed.
        runtime.spawn(connection);
        Ok(Self {
            backend: Backend::Postgres(Box::new(RefCell::new(PgClient {
                runtime,
                client,
                statements: HashMap::new(),
                deferred: Vec::new(),
            }))),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Whether a PostgreSQL connection broke (the pool drops it then).
    pub fn is_broken(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres(client) => client.borrow().client.is_closed(),
        }
    }

    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Backend::Postgres(client) => client
                .borrow_mut()
                .after_deferred(|client| Box::pin(client.batch_execute(sql))),
        }
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.values();
        match &self.backend {
            Backend::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter().map(sqlite_value)))?)
            }
            Backend::Postgres(client) => {
                let mut client = client.borrow_mut();
                let stmt = client.prepare(sql)?;
                let params = pg_params(&stmt, &values)?;
                let count = client.after_deferred(|client| {
                    Box::pin(async move { client.execute(&stmt, &params_refs(&params)).await })
                })?;
                Ok(count as usize)
            }
        }
    }

    /// Every row of a query, in order.
    pub fn query_all<P: Params>(&self, sql: &str, params: P) -> Result<Vec<Row>> {
        let [rows] = self.query_together([(sql, params.values())])?;
        Ok(rows)
    }

    /// Every row of each query, in order. On PostgreSQL they go out together
    /// (with any deferred writes before them), in one round trip: for reads
    /// that do not depend on each other.
    pub fn query_together<const N: usize>(
        &self,
        queries: [(&str, Vec<Value>); N],
    ) -> Result<[Vec<Row>; N]> {
        let results: Vec<Vec<Row>> = match &self.backend {
            Backend::Sqlite(conn) => queries
                .iter()
                .map(|(sql, values)| sqlite_rows(conn, sql, values))
                .collect::<Result<_>>()?,
            Backend::Postgres(client) => {
                let mut client = client.borrow_mut();
                let prepared = queries
                    .iter()
                    .map(|(sql, values)| {
                        let stmt = client.prepare(sql)?;
                        let params = pg_params(&stmt, values)?;
                        Ok((stmt, params))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let answers = client.after_deferred(|client| {
                    let prepared = &prepared;
                    Box::pin(async move {
                        let refs: Vec<_> = prepared
                            .iter()
                            .map(|(_, params)| params_refs(params))
                            .collect();
                        futures::future::join_all(
                            prepared
                                .iter()
                                .zip(&refs)
                                .map(|((stmt, _), refs)| client.query(stmt, refs)),
                        )
                        .await
                        .into_iter()
                        .collect::<std::result::Result<Vec<_>, _>>()
                    })
                })?;
                prepared
                    .iter()
                    .zip(answers)
                    .map(|((stmt, _), rows)| postgres_rows(stmt, &rows))
                    .collect::<Result<_>>()?
            }
        };
        Ok(results
            .try_into()
            .unwrap_or_else(|_| unreachable!("one answer per query")))
    }

    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        let rows = self.query_all(sql, params)?;
        f(rows.first().ok_or(Error::NoRows)?)
    }

    /// rusqlite's two-step form; the statement is cached by both backends.
    pub fn prepare<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        Ok(Statement {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        self.prepare(sql)
    }

    /// Starts a transaction; dropped without `commit`, it rolls back. On
    /// PostgreSQL it holds the store-wide write lock (see `WRITE_LOCK`).
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.begin("pg_advisory_xact_lock")
    }

    /// A transaction of the hot path (an agent's claim, watch and status, a
    /// push) that changes only rows it first locks with `for_update`. On
    /// PostgreSQL these run side by side, holding the write lock shared: never
    /// beside another kind of transaction, always beside each other. On SQLite
    /// it is `transaction`.
    pub fn transaction_shared(&mut self) -> Result<Transaction<'_>> {
        self.begin("pg_advisory_xact_lock_shared")
    }

    fn begin(&mut self, lock_function: &str) -> Result<Transaction<'_>> {
        match &self.backend {
            // IMMEDIATE: another connection (`kiln-server agents`, a test) then
            // waits its turn instead of failing to upgrade a read lock.
            Backend::Sqlite(conn) => conn.execute_batch("BEGIN IMMEDIATE")?,
            // Sent with the transaction's first statement (the lock key is a
            // constant; the statement runs once the lock is held).
            Backend::Postgres(client) => client.borrow_mut().deferred.push(Deferred::Batch(
                format!("BEGIN; SELECT {lock_function}({WRITE_LOCK})"),
            )),
        }
        Ok(Transaction {
            conn: self,
            open: true,
        })
    }

    /// Appended to a `SELECT` of rows a shared transaction changes: PostgreSQL
    /// locks them (SQLite's one writer needs nothing).
    pub fn for_update(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// As `for_update`, locking only the rows of `table` in a join.
    pub fn for_update_of(&self, table: &str) -> String {
        match self.dialect() {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!(" FOR UPDATE OF {table}"),
        }
    }

    /// As `for_update`, passing over rows another transaction holds.
    pub fn for_update_skip_locked(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

pub struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
}

impl Statement<'_> {
    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.conn.query_all(&self.sql, params)?;
        Ok(rows.iter().map(f).collect::<Vec<_>>().into_iter())
    }

    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        self.conn.query_row(&self.sql, params, f)
    }
}

pub struct Transaction<'c> {
    conn: &'c mut Connection,
    open: bool,
}

impl Transaction<'_> {
    /// A write whose row count nobody reads. On PostgreSQL it goes out with
    /// the transaction's next statement (at the latest its `COMMIT`), in one
    /// round trip; a failure comes back from that statement. On SQLite it
    /// runs now.
    pub fn execute_deferred<P: Params>(&self, sql: &str, params: P) -> Result<()> {
        match &self.conn.backend {
            Backend::Sqlite(_) => self.conn.execute(sql, params).map(drop),
            Backend::Postgres(client) => {
                let mut client = client.borrow_mut();
                let stmt = client.prepare(sql)?;
                let params = pg_params(&stmt, &params.values())?;
                client.deferred.push(Deferred::Write(stmt, params));
                Ok(())
            }
        }
    }

    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        self.conn.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves a broken connection, which the pool drops.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

type PgFuture<'c, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'c>>;

impl PgClient {
    fn prepare(&mut self, sql: &str) -> Result<tokio_postgres::Statement> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let text = postgres_placeholders(sql);
        let stmt =
            self.after_deferred(|client| Box::pin(async move { client.prepare(&text).await }))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// Runs `last` after the deferred statements, all in one round trip:
    /// requests sent together are pipelined. The first failure in sending
    /// order is the one returned (later statements of a failed transaction
    /// fail only because it did).
    fn after_deferred<'s, T>(
        &'s mut self,
        last: impl FnOnce(&'s tokio_postgres::Client) -> PgFuture<'s, T>,
    ) -> Result<T> {
        let Self {
            runtime,
            client,
            deferred,
            ..
        } = self;
        let deferred = std::mem::take(deferred);
        let client: &'s tokio_postgres::Client = client;
        runtime.block_on(async {
            let earlier =
                futures::future::join_all(deferred.iter().map(|write| match write {
                    Deferred::Batch(sql) => Box::pin(client.batch_execute(sql)) as PgFuture<'_, ()>,
                    Deferred::Write(stmt, params) => Box::pin(async move {
                        client.execute(stmt, &params_refs(params)).await.map(drop)
                    }),
                }));
            let (earlier, last) = futures::join!(earlier, last(client));
            for result in earlier {
                result?;
            }
            Ok(last?)
        })
    }
}

/// `?N` (and bare `?`) become `$N`, outside quoted text.
fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    digits = next.to_string();
                }
                next = next.max(digits.parse::<usize>().unwrap_or(0) + 1);
                out.push('$');
                out.push_str(&digits);
            }
            (None, c) => out.push(c),
        }
    }
    out
}

fn sqlite_value(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::Null => V::Null,
        Value::Integer(n) => V::Integer(*n),
        Value::Real(x) => V::Real(*x),
        Value::Text(text) => V::Text(text.clone()),
        Value::Blob(bytes) => V::Blob(bytes.clone()),
    }
}

fn from_sqlite(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as V;
    match value {
        V::Null => Value::Null,
        V::Integer(n) => Value::Integer(n),
        V::Real(x) => Value::Real(x),
        V::Text(bytes) => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
        V::Blob(bytes) => Value::Blob(bytes.to_vec()),
    }
}

fn from_postgres(row: &tokio_postgres::Row, index: usize) -> Result<Value> {
    let ty = row.columns()[index].type_();
    let value = if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(index)?.map(Value::Integer)
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(index)?
            .map(|n| Value::Integer(n.into()))
    } else if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(index)?
            .map(|n| Value::Integer(n.into()))
    } else if *ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(index)?
            .map(|b| Value::Integer(b.into()))
    } else if *ty == Type::FLOAT8 {
        row.try_get::<_, Option<f64>>(index)?.map(Value::Real)
    } else if *ty == Type::FLOAT4 {
        row.try_get::<_, Option<f32>>(index)?
            .map(|x| Value::Real(x.into()))
    } else if *ty == Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob)
    } else {
        row.try_get::<_, Option<String>>(index)?.map(Value::Text)
    };
    Ok(value.unwrap_or(Value::Null))
}

/// A value bound as whatever type the prepared statement asks for.
#[derive(Debug)]
struct PgParam(Value);

fn pg_params(stmt: &tokio_postgres::Statement, values: &[Value]) -> Result<Vec<PgParam>> {
    for (index, ty) in stmt.params().iter().enumerate() {
        let fits = match values.get(index) {
            None | Some(Value::Null) => true,
            Some(Value::Integer(_)) => [
                Type::INT8,
                Type::INT4,
                Type::INT2,
                Type::BOOL,
                Type::FLOAT8,
                Type::TEXT,
                Type::VARCHAR,
            ]
            .contains(ty),
            Some(Value::Real(_)) => *ty == Type::FLOAT8,
            Some(Value::Text(_)) => {
                [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty)
            }
            Some(Value::Blob(_)) => *ty == Type::BYTEA,
        };
        if !fits {
            return Err(Error::Parameter {
                index: index + 1,
                ty: ty.clone(),
            });
        }
    }
    Ok(values.iter().cloned().map(PgParam).collect())
}

fn sqlite_rows(conn: &rusqlite::Connection, sql: &str, values: &[Value]) -> Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let columns: Arc<[String]> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let count = columns.len();
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter().map(sqlite_value)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..count)
            .map(|i| row.get_ref(i).map(from_sqlite))
            .collect::<rusqlite::Result<_>>()?;
        out.push(Row {
            columns: columns.clone(),
            values,
        });
    }
    Ok(out)
}

fn postgres_rows(
    stmt: &tokio_postgres::Statement,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<Row>> {
    let columns: Arc<[String]> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
    rows.iter()
        .map(|row| {
            let values = (0..columns.len())
                .map(|i| from_postgres(row, i))
                .collect::<Result<_>>()?;
            Ok(Row {
                columns: columns.clone(),
                values,
            })
        })
        .collect()
}

fn params_refs(params: &[PgParam]) -> Vec<&(dyn postgres_types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres_types::ToSql + Sync))
        .collect()
}

impl postgres_types::ToSql for PgParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(n) if *ty == Type::INT8 => n.to_sql(ty, out),
            Value::Integer(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            Value::Integer(n) if *ty == Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
            Value::Integer(n) if *ty == Type::BOOL => (*n != 0).to_sql(ty, out),
            Value::Integer(n) if *ty == Type::FLOAT8 => (*n as f64).to_sql(ty, out),
            Value::Integer(n) => n.to_string().to_sql(ty, out),
            Value::Real(x) => x.to_sql(ty, out),
            Value::Text(text) => text.to_sql(ty, out),
            Value::Blob(bytes) => bytes.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // `pg_params` checked each value against its statement's types.
        true
    }

    postgres_types::to_sql_checked!();
}

/// A database failure, as the API answers it.
impl From<Error> for crate::error::ApiError {
    fn from(error: Error) -> Self {
        Self::Internal(format!("database: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_writes_commit_and_their_failure_is_told_as_itself() {
        let mut conn = crate::db::in_memory();
        conn.execute_batch("CREATE TABLE deferred_probe (id TEXT PRIMARY KEY)")
            .unwrap();
        let insert = "INSERT INTO deferred_probe (id) VALUES (?1)";
        let tx = conn.transaction().unwrap();
        tx.execute_deferred(insert, ["a"]).unwrap();
        tx.execute_deferred(insert, ["b"]).unwrap();
        tx.commit().unwrap();
        let count = |conn: &Connection| {
            conn.query_row("SELECT COUNT(*) FROM deferred_probe", params![], |row| {
                row.get::<_, i64>(0)
            })
        };
        assert_eq!(count(&conn).unwrap(), 2);

        let tx = conn.transaction().unwrap();
        // SQLite refuses it at once; PostgreSQL with the next statement, whose
        // own failure (the transaction is aborted) must not hide it.
        let error = tx
            .execute_deferred(insert, ["a"])
            .and_then(|()| count(&tx).map(drop))
            .unwrap_err();
        assert!(
            error.to_string().to_lowercase().contains("unique"),
            "{error}"
        );
        drop(tx);
        assert_eq!(count(&conn).unwrap(), 2, "the connection is usable again");
    }

    #[test]
    fn reads_together_answer_each_in_its_order_after_the_deferred_writes() {
        let mut conn = crate::db::in_memory();
        conn.execute_batch("CREATE TABLE together_probe (id TEXT PRIMARY KEY, n BIGINT)")
            .unwrap();
        let tx = conn.transaction().unwrap();
        for (id, n) in [("a", 1), ("b", 2), ("c", 3)] {
            tx.execute_deferred(
                "INSERT INTO together_probe (id, n) VALUES (?1, ?2)",
                params![id, n],
            )
            .unwrap();
        }
        let [small, large, none] = tx
            .query_together([
                (
                    "SELECT id FROM together_probe WHERE n < ?1 ORDER BY n",
                    params![3].values(),
                ),
                (
                    "SELECT n, id FROM together_probe WHERE n >= ?1 ORDER BY n",
                    params![2].values(),
                ),
                (
                    "SELECT id FROM together_probe WHERE id = ?1",
                    params!["z"].values(),
                ),
            ])
            .unwrap();
        let ids = |rows: &[Row], column: usize| -> Vec<String> {
            rows.iter().map(|row| row.get(column).unwrap()).collect()
        };
        assert_eq!(ids(&small, 0), ["a", "b"]);
        assert_eq!(ids(&large, 1), ["b", "c"]);
        assert_eq!(large[1].get::<_, i64>(0).unwrap(), 3);
        assert!(none.is_empty());
        // A failing one is told as itself, whichever of them it is.
        let error = tx
            .query_together([
                ("SELECT id FROM together_probe", Vec::new()),
                ("SELECT no_such_column FROM together_probe", Vec::new()),
            ])
            .err()
            .expect("a query of a missing column fails");
        assert!(error.to_string().contains("no_such_column"), "{error}");
    }

    #[test]
    fn placeholders_are_renumbered_outside_quotes() {
        assert_eq!(
            postgres_placeholders("SELECT '?1', ?2, ? FROM t WHERE a = ?1"),
            "SELECT '?1', $2, $3 FROM t WHERE a = $1"
        );
    }
}
