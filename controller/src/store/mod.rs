//! The controller's store: one embedded SQLite file.
//!
//! It holds what cannot be re-learned from agents (STYLE 7): the inventory
//! (sets, members and generations: `sets.rs`), the agents that registered
//! (address, last facts), and the audit log. SQLite calls are blocking; [`Store::call`] runs
//! them on tokio's blocking pool behind one mutex-guarded connection (WAL
//! journal, so readers of the file, e.g. `sqlite3` by hand, are not blocked).
//! A second backend (etcd/PostgreSQL for an HA controller) would turn the
//! methods below into a trait; with one backend the trait would only be noise.

mod lease;
mod migrations;
mod runs;
mod schedules;
pub mod sql;
mod windows;
pub use windows::FINISHED_STATES;
mod import;
mod sets;

pub use import::import_sqlite;
pub use lease::{Leadership, LeaseRow};
pub use runs::{RunRow, RunSetRow, RunSetState, SetEvent};
pub use schedules::{PolicyRow, ScheduleRow};
pub use sets::SetRow;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tandem_proto::model::AgentState;

use crate::verdicts::Verdict;
use sql::{DbError, Fence, Tx, args};

/// Where the store is: `store` in controller.toml. A `postgresql://` (or
/// `postgres://`) URI is a PostgreSQL database that several controllers may
/// share; anything else is the path of an SQLite file.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreLocation {
    pub fn parse(s: &str) -> StoreLocation {
        if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            StoreLocation::Postgres(s.to_owned())
        } else {
            StoreLocation::Sqlite(PathBuf::from(s))
        }
    }
}

/// The location as logs and messages show it: a URI without its password.
impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "{}", p.display()),
            StoreLocation::Postgres(uri) => match url_without_password(uri) {
                Some(u) => f.write_str(&u),
                None => f.write_str("postgresql://(unparsable URI)"),
            },
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreLocation({self})")
    }
}

fn url_without_password(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let (auth, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let auth = match auth.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((u, _)) => format!("{u}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => auth.to_owned(),
    };
    Some(format!("{scheme}://{auth}{tail}"))
}

impl<'de> serde::Deserialize<'de> for StoreLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(serde::de::Error::custom(
                "empty: give the SQLite file's path or a postgresql:// URI",
            ));
        }
        Ok(StoreLocation::parse(&s))
    }
}

impl From<&Path> for StoreLocation {
    fn from(p: &Path) -> Self {
        StoreLocation::Sqlite(p.to_owned())
    }
}
impl From<&PathBuf> for StoreLocation {
    fn from(p: &PathBuf) -> Self {
        StoreLocation::Sqlite(p.clone())
    }
}
impl From<PathBuf> for StoreLocation {
    fn from(p: PathBuf) -> Self {
        StoreLocation::Sqlite(p)
    }
}
impl From<&StoreLocation> for StoreLocation {
    fn from(l: &StoreLocation) -> Self {
        l.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {at} (field `store`): {source}")]
    Open {
        at: StoreLocation,
        #[source]
        source: DbError,
    },
    #[error(
        "the store {at} has schema version {found}, newer than this controller knows ({known}); run the newer controller"
    )]
    TooNew {
        at: StoreLocation,
        found: usize,
        known: usize,
    },
    #[error("store query failed: {0}")]
    Sql(#[from] DbError),
    #[error("store task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("the store did not answer within {0:?}")]
    NoAnswer(std::time::Duration),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(DbError::Sqlite(e))
    }
}

impl StoreError {
    /// Whether the write was refused because another controller leads.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Sql(DbError::Fenced { .. }))
    }
}

/// An agent as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub name: String,
    pub set: String,
    pub member: String,
    pub address: String,
    pub agent_version: String,
    pub state: AgentState,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// The last facts, as JSON.
    pub facts: Option<String>,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at: Timestamp,
    pub identity: String,
    pub action: String,
    pub arguments: String,
    pub outcome: String,
    pub trace_id: String,
}

#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

// One per controller, behind an `Arc`: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres {
        uri: String,
        client: Mutex<Option<postgres::Client>>,
        /// The election's own connection, opened at its first use.
        lease_client: Mutex<Option<postgres::Client>>,
        fence: Fence,
    },
}

fn state_str(s: AgentState) -> &'static str {
    match s {
        AgentState::NeverSeen => "never_seen",
        AgentState::Online => "online",
        AgentState::Offline => "offline",
    }
}

fn state_parse(s: &str) -> AgentState {
    match s {
        "online" => AgentState::Online,
        "offline" => AgentState::Offline,
        _ => AgentState::NeverSeen,
    }
}

fn ts(s: String) -> Timestamp {
    s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `LIMIT ?` for "the newest `limit`, all when 0" (both stores take it).
fn limit_arg(limit: u32) -> i64 {
    if limit == 0 {
        i64::MAX
    } else {
        i64::from(limit)
    }
}

impl Store {
    /// Open (creating if needed) and migrate the store at `at`: an SQLite
    /// file's path, or a PostgreSQL database (`StoreLocation::Postgres`).
    /// Blocking: call it before the runtime is busy, or from the blocking
    /// pool.
    pub fn open(at: impl Into<StoreLocation>) -> Result<Store, StoreError> {
        let at = at.into();
        let backend = match &at {
            StoreLocation::Sqlite(path) => Backend::Sqlite(Mutex::new(open_sqlite(path, &at)?)),
            StoreLocation::Postgres(uri) => {
                let mut client = pg_connect(uri).map_err(|source| StoreError::Open {
                    at: at.clone(),
                    source,
                })?;
                migrations::migrate_pg(&mut client, &at)?;
                Backend::Postgres {
                    uri: uri.clone(),
                    client: Mutex::new(Some(client)),
                    lease_client: Mutex::new(None),
                    fence: Fence::default(),
                }
            }
        };
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    /// Open the store on the blocking pool (from async code).
    pub async fn open_async(at: StoreLocation) -> Result<Store, StoreError> {
        tokio::task::spawn_blocking(move || Store::open(at)).await?
    }

    /// Whether several controllers may share this store (PostgreSQL), so
    /// one must lead.
    pub fn shared(&self) -> bool {
        matches!(*self.backend, Backend::Postgres { .. })
    }

    /// Run `f` in one transaction, on the blocking pool. On the shared
    /// store a write in it is fenced (`sql::Tx`).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_on(Lane::Data, f).await
    }

    /// [`Store::call`] on the lease's own connection (PostgreSQL): the
    /// leader's renewal must not wait behind the jobs' writes (at 10,000
    /// agents it waited 4.7 s on the shared connection).
    pub(crate) async fn call_lease<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_on(Lane::Lease, f).await
    }

    async fn call_on<T: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let backend = self.backend.clone();
        let out = tokio::task::spawn_blocking(move || backend.run(lane, f)).await??;
        Ok(out)
    }

    /// The fencing token of this controller's lease (PostgreSQL only).
    pub(crate) fn fence(&self) -> Option<&Fence> {
        match &*self.backend {
            Backend::Postgres { fence, .. } => Some(fence),
            Backend::Sqlite(_) => None,
        }
    }

    pub async fn generation(&self, set: String) -> Result<Option<u64>, StoreError> {
        self.call(move |c| {
            c.query_opt("SELECT generation FROM sets WHERE name = ?1", args![set])?
                .map(|r| r.get::<i64>(0).map(|g| g as u64))
                .transpose()
        })
        .await
    }

    /// A new generation for `set` (its roles changed); returns it.
    pub async fn bump_generation(&self, set: String) -> Result<u64, StoreError> {
        self.call(move |c| {
            c.query_one(
                "UPDATE sets SET generation = generation + 1 WHERE name = ?1 RETURNING generation",
                args![set],
            )?
            .get::<i64>(0)
            .map(|g| g as u64)
        })
        .await
    }

    pub async fn upsert_agent(&self, a: AgentRow) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "INSERT INTO agents(name, set_name, member, address, agent_version, state, first_seen, last_seen, facts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(name) DO UPDATE SET set_name = ?2, member = ?3, address = ?4,
                   agent_version = ?5, state = ?6, last_seen = ?8, facts = ?9",
                args![
                    a.name,
                    a.set,
                    a.member,
                    a.address,
                    a.agent_version,
                    state_str(a.state),
                    a.first_seen.to_string(),
                    a.last_seen.to_string(),
                    a.facts
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Record an agent's liveness change.
    pub async fn set_agent_state(
        &self,
        name: String,
        state: AgentState,
        last_seen: Timestamp,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "UPDATE agents SET state = ?2, last_seen = ?3 WHERE name = ?1",
                args![name, state_str(state), last_seen.to_string()],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        self.call(|c| {
            c.query(
                "SELECT name, set_name, member, address, agent_version, state, first_seen, last_seen, facts
                 FROM agents ORDER BY name",
                args![],
            )?
            .iter()
            .map(|r| {
                Ok(AgentRow {
                    name: r.get(0)?,
                    set: r.get(1)?,
                    member: r.get(2)?,
                    address: r.get(3)?,
                    agent_version: r.get(4)?,
                    state: state_parse(&r.get::<String>(5)?),
                    first_seen: ts(r.get(6)?),
                    last_seen: ts(r.get(7)?),
                    facts: r.get(8)?,
                })
            })
            .collect()
        })
        .await
    }

    /// Append an audit record; returns its id.
    pub async fn audit(
        &self,
        identity: String,
        action: &'static str,
        arguments: String,
        outcome: String,
        trace_id: String,
    ) -> Result<i64, StoreError> {
        self.call(move |c| {
            c.query_one(
                "INSERT INTO audit(at, identity, action, arguments, outcome, trace_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                args![Timestamp::now().to_string(), identity, action, arguments, outcome, trace_id],
            )?
            .get(0)
        })
        .await
    }

    /// The newest `limit` audit records (all when 0), newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let limit = limit_arg(limit);
        self.call(move |c| {
            c.query(
                "SELECT id, at, identity, action, arguments, outcome, trace_id FROM audit ORDER BY id DESC LIMIT ?1",
                args![limit],
            )?
            .iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: ts(r.get(1)?),
                    identity: r.get(2)?,
                    action: r.get(3)?,
                    arguments: r.get(4)?,
                    outcome: r.get(5)?,
                    trace_id: r.get(6)?,
                })
            })
            .collect()
        })
        .await
    }
}

/// The blocking PostgreSQL client closes its connection on a runtime of
/// its own, which cannot start on a thread of ours: close it on a plain
/// thread.
impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Postgres {
            client,
            lease_client,
            ..
        } = self
        {
            for client in [client, lease_client] {
                let client = client
                    .get_mut()
                    .map(Option::take)
                    .unwrap_or_else(|p| p.into_inner().take());
                if let Some(client) = client {
                    let _ = std::thread::Builder::new()
                        .name("store-close".into())
                        .spawn(move || drop(client));
                }
            }
        }
    }
}

/// Which connection a call uses (SQLite has one for both).
#[derive(Debug, Clone, Copy)]
enum Lane {
    Data,
    Lease,
}

impl Backend {
    fn run<T>(
        &self,
        lane: Lane,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match self {
            Backend::Sqlite(conn) => {
                let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                let mut tx = Tx::sqlite(c.transaction()?);
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres {
                uri,
                client,
                lease_client,
                fence,
            } => {
                let client = match lane {
                    Lane::Data => client,
                    Lane::Lease => lease_client,
                };
                let mut guard = client.lock().unwrap_or_else(|p| p.into_inner());
                // A connection the server closed (a restart, a failover of
                // the store) is opened again on the next call.
                if guard.as_ref().is_none_or(|c| c.is_closed()) {
                    *guard = Some(pg_connect(uri)?);
                }
                let c = guard.as_mut().expect("connected above");
                let mut tx = Tx::pg(c.transaction()?, Some(fence));
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            }
        }
    }
}

fn open_sqlite(path: &Path, at: &StoreLocation) -> Result<rusqlite::Connection, StoreError> {
    let open_err = |source: rusqlite::Error| StoreError::Open {
        at: at.clone(),
        source: source.into(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            open_err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot create {}: {e}", dir.display())),
            ))
        })?;
    }
    let mut conn = rusqlite::Connection::open(path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    migrations::migrate_sqlite(&mut conn, at)?;
    Ok(conn)
}

/// Connect to the PostgreSQL store (no TLS: reach it over a local socket,
/// a private network, or a TLS-terminating pooler).
fn pg_connect(uri: &str) -> Result<postgres::Client, DbError> {
    let mut cfg: postgres::Config = uri.parse()?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(std::time::Duration::from_secs(10));
    }
    cfg.application_name("tandem-controller");
    cfg.options("-c client_min_messages=warning");
    Ok(cfg.connect(postgres::NoTls)?)
}

/// The `kind` under which an archive copy's outcome is stored in
/// `verdicts` (SPEC T9): kept with its run, left out of the set's history.
pub const ARCHIVE_OUTCOME: &str = "archive";

impl Store {
    /// Append a verdict to the set's history.
    pub async fn record_verdict(&self, set: String, v: Verdict) -> Result<(), StoreError> {
        let json = serde_json::to_string(&v).expect("verdicts serialize");
        self.call(move |c| {
            c.exec(
                "INSERT INTO verdicts(set_name, kind, verdict, at) VALUES (?1, ?2, ?3, ?4)",
                args![set, v.kind.as_str(), json, v.at.to_string()],
            )
            .map(|_| ())
        })
        .await
    }

    /// A set's archive-copy outcomes (SPEC T9), newest first (all when
    /// `limit` is 0).
    pub async fn archive_outcomes(
        &self,
        set: String,
        limit: u32,
    ) -> Result<Vec<Verdict>, StoreError> {
        self.verdict_rows(set, limit, "kind = 'archive'").await
    }

    /// A set's verdicts, newest first (all when `limit` is 0).
    pub async fn verdicts(&self, set: String, limit: u32) -> Result<Vec<Verdict>, StoreError> {
        self.verdict_rows(set, limit, "kind != 'archive'").await
    }

    async fn verdict_rows(
        &self,
        set: String,
        limit: u32,
        which: &'static str,
    ) -> Result<Vec<Verdict>, StoreError> {
        let limit = limit_arg(limit);
        self.call(move |c| {
            let rows: Vec<String> = c
                .query(
                    &format!(
                        "SELECT verdict FROM verdicts WHERE set_name = ?1 AND {which} ORDER BY id DESC LIMIT ?2"
                    ),
                    args![set, limit],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect::<Result<_, _>>()?;
            Ok(rows
                .iter()
                .filter_map(|r| serde_json::from_str(r).ok())
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrates_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.db");
        let s = Store::open(&path).unwrap();
        s.audit(
            "spiffe://tandem/user/op".into(),
            "Register",
            "{}".into(),
            "ok".into(),
            String::new(),
        )
        .await
        .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        let log = s.audit_log(0).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].action, "Register");
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[tokio::test]
    async fn verdict_history_is_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("c.db")).unwrap();
        for reason in ["first", "second"] {
            s.record_verdict(
                "billing".into(),
                Verdict::failed_to_run("db2", reason.into(), String::new()),
            )
            .await
            .unwrap();
        }
        let h = s.verdicts("billing".into(), 0).await.unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].reason.as_deref(), Some("second"));
        assert_eq!(s.verdicts("billing".into(), 1).await.unwrap().len(), 1);
        assert!(s.verdicts("crm".into(), 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn agents_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("c.db")).unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let row = AgentRow {
            name: "db1".into(),
            set: "billing".into(),
            member: "db1".into(),
            address: "127.0.0.1:7701".into(),
            agent_version: "0.1.0".into(),
            state: AgentState::Online,
            first_seen: now,
            last_seen: now,
            facts: Some("{}".into()),
        };
        s.upsert_agent(row.clone()).await.unwrap();
        s.set_agent_state("db1".into(), AgentState::Offline, now)
            .await
            .unwrap();
        let got = s.agents().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].state, AgentState::Offline);
        assert_eq!(got[0].address, row.address);
    }
}
