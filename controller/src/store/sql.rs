//! One query layer over the two stores: the embedded SQLite file
//! (`rusqlite`) and a PostgreSQL database shared by several controllers
//! (`postgres`, the blocking client over `tokio-postgres`).
//!
//! The store's queries are written once, in SQLite's spelling (`?1`
//! parameters); [`Tx`] runs them on either backend, turning `?N` into
//! PostgreSQL's `$N`. Values cross as [`Value`] (NULL, integer, text: every
//! column the store has), rows come back as [`Row`]s. Every store call is
//! one transaction; on PostgreSQL the first statement that writes first
//! checks the leader's fencing token in that same transaction
//! ([`Fence`]), so a controller that lost its lease can never write.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// One value of a column or a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

/// What a query takes as a parameter.
pub trait Param {
    fn value(&self) -> Value;
}

impl Param for i64 {
    fn value(&self) -> Value {
        Value::Int(*self)
    }
}
impl Param for bool {
    fn value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl Param for str {
    fn value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl Param for String {
    fn value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl Param for Value {
    fn value(&self) -> Value {
        self.clone()
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

/// A query's parameters: `args![a, b]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$(&$x as &dyn $crate::store::sql::Param),*] as &[&dyn $crate::store::sql::Param]
    };
}
pub(crate) use args;

/// What a column's value is read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}
impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as a `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, DbError> {
        let v = self.0.get(i).ok_or(DbError::Column {
            index: i,
            found: "no such column".into(),
            want: std::any::type_name::<T>(),
        })?;
        T::from_value(v).ok_or_else(|| DbError::Column {
            index: i,
            found: format!("{v:?}"),
            want: std::any::type_name::<T>(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Pg(#[from] postgres::Error),
    #[error("column {index} is {found}, not {want}")]
    Column {
        index: usize,
        found: String,
        want: &'static str,
    },
    #[error("a query that must return a row returned none")]
    NoRow,
    /// The store's content says no (the message says why and what to do).
    #[error("{0}")]
    Refused(String),
    /// The leader's write was refused: another controller holds the lease.
    #[error("{}", fenced_message(*.generation))]
    Fenced { generation: i64 },
}

fn fenced_message(generation: i64) -> String {
    if generation == 0 {
        "this controller does not lead (it follows, or lost its lease); nothing was written".into()
    } else {
        format!(
            "this controller no longer leads (its lease generation {generation} was taken over); nothing was written"
        )
    }
}

/// A PostgreSQL error with the server's own message when there is one.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => format!("PostgreSQL: {e}"),
    }
}

/// The leader's fencing token: who holds the lease and under which
/// generation. Generation 0: this controller does not lead, and any write
/// is refused.
#[derive(Debug, Default)]
pub struct Fence {
    /// Set once, when the controller starts taking part in the election;
    /// until then writes are not fenced (`tandem-controller migrate`,
    /// `import-sqlite`).
    holder: OnceLock<String>,
    generation: AtomicI64,
}

impl Fence {
    /// Fence every later write with `holder`'s lease.
    pub fn arm(&self, holder: String) {
        let _ = self.holder.set(holder);
    }
    pub fn holder(&self) -> Option<&str> {
        self.holder.get().map(String::as_str)
    }
    pub fn generation(&self) -> i64 {
        self.generation.load(Ordering::SeqCst)
    }
    pub fn set(&self, generation: i64) {
        self.generation.store(generation, Ordering::SeqCst);
    }
}

/// One transaction on either store.
pub struct Tx<'a> {
    inner: Inner<'a>,
    /// Checked before the transaction's first write (PostgreSQL only).
    fence: Option<&'a Fence>,
    fenced: bool,
}

enum Inner<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Pg(postgres::Transaction<'a>),
}

impl<'a> Tx<'a> {
    pub(super) fn sqlite(tx: rusqlite::Transaction<'a>) -> Tx<'a> {
        Tx {
            inner: Inner::Sqlite(tx),
            fence: None,
            fenced: false,
        }
    }

    pub(super) fn pg(tx: postgres::Transaction<'a>, fence: Option<&'a Fence>) -> Tx<'a> {
        Tx {
            inner: Inner::Pg(tx),
            fence,
            fenced: false,
        }
    }

    /// This transaction's writes are the election's own (`lease.rs`):
    /// they are not fenced.
    pub(super) fn unfenced(&mut self) {
        self.fenced = true;
    }

    pub(super) fn commit(self) -> Result<(), DbError> {
        match self.inner {
            Inner::Sqlite(tx) => tx.commit()?,
            Inner::Pg(tx) => tx.commit()?,
        }
        Ok(())
    }

    /// Run a statement; returns the rows it changed.
    pub fn exec(&mut self, sql: &str, args: &[&dyn Param]) -> Result<u64, DbError> {
        self.check_fence(sql)?;
        let values: Vec<Value> = args.iter().map(|a| a.value()).collect();
        match &mut self.inner {
            Inner::Sqlite(tx) => {
                let n = tx.execute(
                    sql,
                    rusqlite::params_from_iter(values.iter().map(sqlite_value)),
                )?;
                Ok(n as u64)
            }
            Inner::Pg(tx) => {
                let sql = pg_sql(sql);
                let refs: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                Ok(tx.execute(sql.as_str(), &refs)?)
            }
        }
    }

    /// Run a query; returns every row.
    pub fn query(&mut self, sql: &str, args: &[&dyn Param]) -> Result<Vec<Row>, DbError> {
        self.check_fence(sql)?;
        let values: Vec<Value> = args.iter().map(|a| a.value()).collect();
        match &mut self.inner {
            Inner::Sqlite(tx) => {
                let mut stmt = tx.prepare(sql)?;
                let n = stmt.column_count();
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(values.iter().map(sqlite_value)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        row.push(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(i) => Value::Int(i),
                            rusqlite::types::ValueRef::Real(f) => Value::Text(f.to_string()),
                            rusqlite::types::ValueRef::Text(t)
                            | rusqlite::types::ValueRef::Blob(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                        });
                    }
                    out.push(Row(row));
                }
                Ok(out)
            }
            Inner::Pg(tx) => {
                let sql = pg_sql(sql);
                let refs: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                tx.query(sql.as_str(), &refs)?.iter().map(pg_row).collect()
            }
        }
    }

    /// The first row, if any.
    pub fn query_opt(&mut self, sql: &str, args: &[&dyn Param]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row; none is an error.
    pub fn query_one(&mut self, sql: &str, args: &[&dyn Param]) -> Result<Row, DbError> {
        self.query_opt(sql, args)?.ok_or(DbError::NoRow)
    }

    /// Before the first statement that writes, on a fenced store: is this
    /// controller's lease generation still the one in force? The row lock
    /// (`FOR SHARE`) holds a takeover back until this transaction ends, so
    /// the check and the writes are one.
    fn check_fence(&mut self, sql: &str) -> Result<(), DbError> {
        let Some(fence) = self.fence else {
            return Ok(());
        };
        if self.fenced || !writes(sql) {
            return Ok(());
        }
        let Some(holder) = fence.holder() else {
            return Ok(());
        };
        let generation = fence.generation();
        let Inner::Pg(tx) = &mut self.inner else {
            return Ok(());
        };
        let ok = generation > 0
            && tx
                .query_opt(
                    "SELECT 1 FROM tandem_leader WHERE id = 1 AND holder = $1 AND generation = $2 FOR SHARE",
                    &[&holder, &generation],
                )?
                .is_some();
        if !ok {
            return Err(DbError::Fenced { generation });
        }
        self.fenced = true;
        Ok(())
    }
}

/// Whether a statement may change anything.
fn writes(sql: &str) -> bool {
    let first = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    !matches!(first.as_str(), "SELECT" | "WITH" | "PRAGMA" | "SHOW")
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

/// `?N` to `$N` outside quoted strings.
pub fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            c => out.push(c),
        }
    }
    out
}

fn pg_row(r: &postgres::Row) -> Result<Row, DbError> {
    let mut row = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        };
        row.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(row))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else {
                    i.to_string().to_sql(ty, out)
                }
            }
            Value::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// SQLite's schema spelling in PostgreSQL's: `INTEGER` is `BIGINT`, an
/// `AUTOINCREMENT` key an identity column, and every table gets the
/// `rowid` SQLite gives each row (insertion order, which some queries
/// sort by).
pub fn pg_ddl(sql: &str) -> String {
    let mut out = sql.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    );
    out = out.replace("INTEGER", "BIGINT");
    let mut with_rowid = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("CREATE TABLE ") {
        let Some(open) = rest[at..].find('(') else {
            break;
        };
        let end = at + open + 1;
        with_rowid.push_str(&rest[..end]);
        with_rowid.push_str("\n        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,");
        rest = &rest[end..];
    }
    with_rowid.push_str(rest);
    with_rowid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_for_postgresql_outside_strings() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = '?' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $12"
        );
    }

    #[test]
    fn ddl_gets_postgresql_types_and_a_rowid() {
        let ddl = pg_ddl(
            "CREATE TABLE audit (\n id INTEGER PRIMARY KEY AUTOINCREMENT,\n n INTEGER NOT NULL\n);\nCREATE INDEX x ON audit(n);",
        );
        assert!(
            ddl.contains("id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
            "{ddl}"
        );
        assert!(ddl.contains("n BIGINT NOT NULL"), "{ddl}");
        assert!(
            ddl.contains(
                "CREATE TABLE audit (\n        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,"
            ),
            "{ddl}"
        );
        assert!(ddl.contains("CREATE INDEX x ON audit(n)"), "{ddl}");
    }

    #[test]
    fn writes_are_told_from_reads() {
        assert!(!writes("  SELECT 1"));
        assert!(!writes("with x as (select 1) select * from x"));
        assert!(writes("INSERT INTO t VALUES (1)"));
        assert!(writes(
            "UPDATE sets SET generation = 2 RETURNING generation"
        ));
        assert!(writes("DELETE FROM members"));
    }

    #[test]
    fn rows_read_as_the_types_asked() {
        let r = Row(vec![Value::Int(1), Value::Null, Value::Text("x".into())]);
        assert_eq!(r.get::<i64>(0).unwrap(), 1);
        assert!(r.get::<bool>(0).unwrap());
        assert_eq!(r.get::<Option<String>>(1).unwrap(), None);
        assert_eq!(r.get::<String>(2).unwrap(), "x");
        assert!(r.get::<i64>(2).is_err());
        assert!(r.get::<String>(5).is_err());
    }
}
