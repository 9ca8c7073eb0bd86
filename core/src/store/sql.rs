//! The small SQL runner every store query goes through, so one set of queries serves both
//! engines.
//!
//! Queries are written once, in plain portable SQL with `?1`, `?2` placeholders, INTEGER /
//! TEXT / BLOB values and no engine-only functions; parameters are typed [`Value`]s (built
//! with the `args!` macro) and rows come back as [`Row`]s of `Value`s. For PostgreSQL the
//! placeholders are rewritten to `$1`, `$2` once per statement and the prepared statement is
//! cached per connection.
//!
//! ## Why PostgreSQL runs on its own thread
//! The store's methods are synchronous (they are called from async handlers, as the SQLite
//! store always was). The synchronous `postgres` crate cannot be used from a tokio worker
//! thread: it `block_on`s its own runtime and panics inside another. So the PostgreSQL
//! engine uses `tokio-postgres` instead: a dedicated OS thread runs a small current-thread
//! runtime that owns the connections' I/O tasks, and store calls wait on the client's
//! futures with `futures::executor::block_on`. Those futures only exchange messages with the
//! connection task over channels, so they need no runtime on the calling thread, and the
//! calling thread blocks for one round trip exactly as it blocks on SQLite's lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use super::StoreError;

/// Which database engine a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Embedded SQLite.
    Sqlite,
    /// A PostgreSQL server, possibly shared by several core replicas.
    Postgres,
}

/// One SQL value, parameter or column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (SQLite INTEGER, PostgreSQL BIGINT/INTEGER/BOOLEAN).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Blob(Vec<u8>),
}

/// A database error, with the one distinction callers act on: a constraint violation.
#[derive(Debug)]
pub struct DbError {
    /// What the engine said.
    pub message: String,
    /// True for a unique, primary-key or foreign-key violation.
    pub constraint: bool,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let constraint = matches!(&e, rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation);
        StoreError::Db(DbError {
            message: e.to_string(),
            constraint,
        })
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let code = e.code();
        let constraint = code == Some(&SqlState::UNIQUE_VIOLATION)
            || code == Some(&SqlState::FOREIGN_KEY_VIOLATION);
        // The server's own message is more useful than the driver's "db error".
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            // "error performing TLS handshake" alone does not say why; the source does.
            None => match std::error::Error::source(&e) {
                Some(src) => format!("{e}: {src}"),
                None => e.to_string(),
            },
        };
        StoreError::Db(DbError {
            message,
            constraint,
        })
    }
}

/// Conversion of a Rust value to a SQL parameter.
pub trait ToValue {
    /// The SQL value.
    fn to_value(&self) -> Value;
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// Builds a parameter list: `args![a, b, c]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::sql::ToValue::to_value(&$x)),*] as &[$crate::store::sql::Value]
    };
}
pub(crate) use args;

/// Conversion of a SQL column to a Rust value.
pub trait FromValue: Sized {
    /// The Rust value, or `None` if the column has another type.
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
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as a `T`; a missing column or another type is a corrupt record.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("row has no column {i}")))?;
        T::from_value(v)
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} has an unexpected type")))
    }
}

/// A connection or transaction that runs portable SQL.
pub trait Sql {
    /// The engine behind it, for the few statements that differ (locks, DDL).
    fn engine(&self) -> Engine;
    /// Runs a statement; returns the number of rows changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query; returns all rows.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;

    /// Runs several statements in order, all or none of their effects kept by the caller's
    /// transaction. On PostgreSQL they are pipelined (sent together, one round trip); on
    /// SQLite they simply run one after the other.
    fn execute_pipelined(&mut self, stmts: &[(&str, &[Value])]) -> Result<(), StoreError> {
        for (sql, args) in stmts {
            self.execute(sql, args)?;
        }
        Ok(())
    }

    /// At most one row.
    fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
    /// Exactly one row.
    fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, args)?
            .ok_or_else(|| StoreError::Corrupt("query returned no row".into()))
    }
}

// ---- SQLite ----------------------------------------------------------------------------

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// A SQLite connection (or transaction, which derefs to one) as a [`Sql`] runner.
pub struct Lite<'a>(pub &'a rusqlite::Connection);

impl Sql for Lite<'_> {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args.iter()))? as u64)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.0.prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Real(f) => Value::Int(f as i64),
                    ValueRef::Text(t) => Value::Text(
                        String::from_utf8(t.to_vec())
                            .map_err(|_| StoreError::Corrupt("text column is not UTF-8".into()))?,
                    ),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(Row(vals));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

// ---- PostgreSQL ------------------------------------------------------------------------

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("integer parameter for a {ty} column").into()),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A PostgreSQL column read into a [`Value`].
struct PgValue(Value);

impl<'a> FromSql<'a> for PgValue {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgValue(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)? as i64),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)? as i64),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)? as i64),
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            Type::NUMERIC => {
                return Err("NUMERIC columns are not used by the store; cast to BIGINT".into())
            }
            _ => Value::Text(String::from_sql(ty, raw)?),
        }))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Opens one connection and spawns its I/O task on the current (the pool's) runtime.
async fn open_connection(
    config: tokio_postgres::Config,
    tls: Option<super::pg_tls::MakeRustls>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let client = match tls {
        Some(tls) => {
            let (client, conn) = config.connect(tls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                }
            });
            client
        }
        None => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                }
            });
            client
        }
    };
    Ok(client)
}

/// `?1` → `$1`, leaving string literals alone.
fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_str = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                in_str = !in_str;
                out.push(c);
            }
            '?' if !in_str => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// One pooled PostgreSQL connection with its prepared statements.
pub struct PgSlot {
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
}

/// A PostgreSQL client or transaction as a [`Sql`] runner.
pub struct Pg<'a, C: tokio_postgres::GenericClient> {
    client: &'a C,
    statements: &'a mut HashMap<String, tokio_postgres::Statement>,
}

impl<C: tokio_postgres::GenericClient + Sync> Pg<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = futures::executor::block_on(self.client.prepare(&pg_placeholders(sql)))?;
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }
}

fn pg_params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl<C: tokio_postgres::GenericClient + Sync> Sql for Pg<'_, C> {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        Ok(futures::executor::block_on(
            self.client.execute(&stmt, &pg_params(args)),
        )?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let rows = futures::executor::block_on(self.client.query(&stmt, &pg_params(args)))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut vals = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                vals.push(r.try_get::<_, PgValue>(i)?.0);
            }
            out.push(Row(vals));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(futures::executor::block_on(self.client.batch_execute(sql))?)
    }
}

/// A small pool of PostgreSQL connections whose I/O runs on one dedicated thread. A
/// connection found closed (server restart, failover, network cut) is opened again on its
/// next use; the statement that found it closed fails, the next one works.
pub struct PgPool {
    slots: Vec<Mutex<PgSlot>>,
    next: AtomicUsize,
    config: tokio_postgres::Config,
    tls: Option<super::pg_tls::MakeRustls>,
    runtime: tokio::runtime::Handle,
    // Dropping the sender stops the runtime thread (and closes the connections).
    _stop: std::sync::mpsc::SyncSender<()>,
}

impl PgPool {
    /// Connects `size` connections with `config` on a new runtime thread, without TLS.
    pub fn connect(config: tokio_postgres::Config, size: usize) -> Result<Arc<Self>, StoreError> {
        Self::connect_with(config, None, size)
    }

    /// Connects `size` connections with `config` on a new runtime thread, over TLS when
    /// `tls` is given.
    pub fn connect_with(
        config: tokio_postgres::Config,
        tls: Option<super::pg_tls::MakeRustls>,
        size: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let pool_tls = tls.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(0);
        let pool_config = config.clone();
        std::thread::Builder::new()
            .name("keygrid-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Db(DbError {
                            message: format!("runtime: {e}"),
                            constraint: false,
                        })));
                        return;
                    }
                };
                let clients = rt.block_on(async {
                    let mut clients = Vec::with_capacity(size);
                    for _ in 0..size.max(1) {
                        clients.push(open_connection(config.clone(), tls.clone()).await?);
                    }
                    Ok::<_, tokio_postgres::Error>(clients)
                });
                let failed = clients.is_err();
                let _ = ready_tx.send(
                    clients
                        .map(|c| (c, rt.handle().clone()))
                        .map_err(StoreError::from),
                );
                if failed {
                    return;
                }
                // Drive the connection tasks until the pool is dropped.
                rt.block_on(async move {
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                });
            })
            .map_err(|e| {
                StoreError::Db(DbError {
                    message: format!("cannot start the PostgreSQL thread: {e}"),
                    constraint: false,
                })
            })?;
        let (clients, runtime) = ready_rx.recv().map_err(|_| {
            StoreError::Db(DbError {
                message: "the PostgreSQL thread stopped".into(),
                constraint: false,
            })
        })??;
        Ok(Arc::new(PgPool {
            config: pool_config,
            tls: pool_tls,
            runtime,
            slots: clients
                .into_iter()
                .map(|client| {
                    Mutex::new(PgSlot {
                        client,
                        statements: HashMap::new(),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            _stop: stop_tx,
        }))
    }

    /// A free connection if there is one, else waits for the next in turn; reopened first
    /// if it was closed.
    fn slot(&self) -> Result<MutexGuard<'_, PgSlot>, StoreError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = self.slots[(start + i) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut g = match guard {
            Some(g) => g,
            None => self.slots[start % n]
                .lock()
                .map_err(|_| StoreError::Poisoned)?,
        };
        if g.client.is_closed() {
            let task = self
                .runtime
                .spawn(open_connection(self.config.clone(), self.tls.clone()));
            let client = futures::executor::block_on(task).map_err(|e| {
                StoreError::Db(DbError {
                    message: format!("PostgreSQL reconnect task: {e}"),
                    constraint: false,
                })
            })??;
            tracing::info!("PostgreSQL connection reopened");
            g.client = client;
            g.statements.clear();
        }
        Ok(g)
    }

    /// Runs `f` outside a transaction (single statements commit on their own).
    pub fn run<R>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut slot = self.slot()?;
        let PgSlot { client, statements } = &mut *slot;
        f(&mut Pg {
            client: &*client,
            statements,
        })
    }

    /// Runs `f` in one transaction, committed only if `f` succeeds.
    pub fn transaction<R>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut slot = self.slot()?;
        let PgSlot { client, statements } = &mut *slot;
        let tx = futures::executor::block_on(client.transaction())?;
        let out = f(&mut Pg {
            client: &tx,
            statements,
        });
        match out {
            Ok(v) => {
                futures::executor::block_on(tx.commit())?;
                Ok(v)
            }
            Err(e) => {
                // Dropping a transaction rolls it back; do it explicitly to see errors.
                let _ = futures::executor::block_on(tx.rollback());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_literals() {
        assert_eq!(
            pg_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $12"
        );
    }
}
