//! Plain statements on either database, for tables other than the ledger's
//! rows (the registry's): values of three kinds, `$1`-style placeholders
//! (rewritten for SQLite), and transactions that run one at a time across
//! every instance sharing the database.

use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::StoreError;

/// A value bound to, or read from, a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
}

impl Value {
    /// The text, when there is some.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, when there is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// One statement with its parameters (`$1`, `$2`, … in `sql`).
#[derive(Debug, Clone)]
pub struct Statement {
    /// The SQL.
    pub sql: String,
    /// Its parameters, in order.
    pub params: Vec<Value>,
}

impl Statement {
    /// `sql` with `params`.
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}

/// The rows a statement answered, each a list of its columns.
pub type Rows = Vec<Vec<Value>>;

// PostgreSQL infers each parameter's type from the statement; a value is
// written as that type (an integer bound where text is expected is sent as
// its digits), so one `Value` serves every column.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => i.to_string().to_sql(ty, out),
            },
            Value::Text(s) => match *ty {
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                _ => s.as_str().to_sql(ty, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A PostgreSQL answer row as values.
pub(super) fn from_postgres(row: &tokio_postgres::Row) -> Result<Vec<Value>, StoreError> {
    let err = |e: tokio_postgres::Error| StoreError::Query(e.to_string());
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let v = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(err)?.into(),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map_err(err)?
                .map(i64::from)
                .into(),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(err)?
                .map(i64::from)
                .into(),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)
                .map_err(err)?
                .map(i64::from)
                .into(),
            _ => row.try_get::<_, Option<String>>(i).map_err(err)?.into(),
        };
        out.push(v);
    }
    Ok(out)
}

/// A SQLite answer row as values.
pub(super) fn from_sqlite(
    row: &rusqlite::Row<'_>,
    columns: usize,
) -> Result<Vec<Value>, StoreError> {
    use rusqlite::types::ValueRef;
    let mut out = Vec::with_capacity(columns);
    for i in 0..columns {
        out.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::Int(n),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Real(f) => Value::Int(f as i64),
            ValueRef::Blob(_) => return Err(StoreError::Query(format!("column {i} holds a blob"))),
        });
    }
    Ok(out)
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}
