//! The values that cross the SQL surface, whichever database is behind it:
//! `Value`, what converts to and from one (`ToSql`, `FromSql`, `Params`,
//! `params!`), a result `Row`, and the surface's `Error`.

use std::error::Error as StdError;
use std::sync::Arc;

use postgres_types::Type;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("query returned no rows")]
    NoRows,
    #[error("column {column}: expected {expected}, found {found:?}")]
    Conversion {
        column: usize,
        expected: &'static str,
        found: Value,
    },
    #[error("no column named {0:?}")]
    NoColumn(String),
    #[error("stored value of column {column} is not valid: {reason}")]
    Invalid { column: usize, reason: String },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgresql: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("parameter {index} cannot be sent as PostgreSQL type {ty}")]
    Parameter { index: usize, ty: Type },
    #[error("starting the PostgreSQL connection's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::db::pg_tls::TlsSetupError),
}

/// The server's own words (`db error` alone says nothing).
fn postgres_message(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        // The cause of a failed TLS handshake or connection is in the chain.
        None => {
            let mut message = error.to_string();
            let mut source = StdError::source(error);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            message
        }
    }
}

impl Error {
    /// A stored value the store cannot read back (a status name from a newer
    /// version, say).
    pub fn invalid(column: usize, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            column,
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub trait ToSql {
    fn to_value(&self) -> Value;
}

pub trait FromSql: Sized {
    fn from_value(value: &Value, column: usize) -> Result<Self>;
}

macro_rules! integer_sql {
    ($($ty:ty),*) => {$(
        impl ToSql for $ty {
            fn to_value(&self) -> Value {
                Value::Integer(*self as i64)
            }
        }
        impl FromSql for $ty {
            fn from_value(value: &Value, column: usize) -> Result<Self> {
                match value {
                    Value::Integer(n) => <$ty>::try_from(*n).map_err(|e| Error::invalid(column, e)),
                    other => Err(Error::Conversion { column, expected: "integer", found: other.clone() }),
                }
            }
        }
    )*};
}
integer_sql!(i64, i32, u32, u64, usize, u16, u8);

impl ToSql for bool {
    fn to_value(&self) -> Value {
        Value::Integer(i64::from(*self))
    }
}

impl FromSql for bool {
    fn from_value(value: &Value, column: usize) -> Result<Self> {
        Ok(i64::from_value(value, column)? != 0)
    }
}

impl ToSql for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl FromSql for f64 {
    fn from_value(value: &Value, column: usize) -> Result<Self> {
        match value {
            Value::Real(x) => Ok(*x),
            Value::Integer(n) => Ok(*n as f64),
            other => Err(Error::Conversion {
                column,
                expected: "real",
                found: other.clone(),
            }),
        }
    }
}

impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl FromSql for String {
    fn from_value(value: &Value, column: usize) -> Result<Self> {
        match value {
            Value::Text(text) => Ok(text.clone()),
            other => Err(Error::Conversion {
                column,
                expected: "text",
                found: other.clone(),
            }),
        }
    }
}

impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToSql for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::to_value)
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_value(value: &Value, column: usize) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other, column).map(Some),
        }
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// What a query's placeholders are bound to.
pub trait Params {
    fn values(&self) -> Vec<Value>;
}

impl Params for &[&dyn ToSql] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl Params for [&dyn ToSql; 0] {
    fn values(&self) -> Vec<Value> {
        Vec::new()
    }
}

macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn values(&self) -> Vec<Value> {
                self.iter().map(ToSql::to_value).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// `params![a, b]`: positional parameters of mixed types.
macro_rules! params {
    () => { &[] as &[&dyn $crate::db::sql::ToSql] };
    ($($param:expr),+ $(,)?) => { &[$(&$param as &dyn $crate::db::sql::ToSql),+] as &[&dyn $crate::db::sql::ToSql] };
}
pub(crate) use params;

/// One result row, owned.
pub struct Row {
    pub(super) columns: Arc<[String]>,
    pub(super) values: Vec<Value>,
}

pub trait RowIndex {
    fn index(&self, row: &Row) -> Result<usize>;
}

impl RowIndex for usize {
    fn index(&self, row: &Row) -> Result<usize> {
        if *self < row.values.len() {
            Ok(*self)
        } else {
            Err(Error::NoColumn(self.to_string()))
        }
    }
}

impl RowIndex for &str {
    fn index(&self, row: &Row) -> Result<usize> {
        row.columns
            .iter()
            .position(|name| name.eq_ignore_ascii_case(self))
            .ok_or_else(|| Error::NoColumn((*self).to_owned()))
    }
}

impl Row {
    pub fn get<I: RowIndex, T: FromSql>(&self, index: I) -> Result<T> {
        let index = index.index(self)?;
        T::from_value(&self.values[index], index)
    }
}

pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
