//! The controller's store: one embedded SQLite file.
//!
//! It holds what cannot be re-learned from agents (STYLE 7): the inventory
//! (sets, members and generations: `sets.rs`), the agents that registered
//! (address, last facts), and the audit log. SQLite calls are blocking; [`Store::call`] runs
//! them on tokio's blocking pool behind one mutex-guarded connection (WAL
//! journal, so readers of the file, e.g. `sqlite3` by hand, are not blocked).
//! A second backend (etcd/PostgreSQL for an HA controller) would turn the
//! methods below into a trait; with one backend the trait would only be noise.

mod migrations;
mod runs;
mod schedules;
mod windows;
pub use windows::FINISHED_STATES;
mod sets;

pub use runs::{RunRow, RunSetRow, RunSetState, SetEvent};
pub use schedules::{PolicyRow, ScheduleRow};
pub use sets::SetRow;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use tandem_proto::model::AgentState;

use crate::verdicts::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path} (field `store`): {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the store {path} has schema version {found}, newer than this controller knows ({known}); run the newer controller"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("store task failed")]
    Join(#[from] tokio::task::JoinError),
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
    conn: Arc<Mutex<Connection>>,
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

impl Store {
    /// Open (creating if needed) and migrate the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot create {}: {e}", dir.display())),
                ))
            })?;
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` on the connection, on the blocking pool.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await??;
        Ok(out)
    }

    pub async fn generation(&self, set: String) -> Result<Option<u64>, StoreError> {
        self.call(move |c| {
            c.query_row("SELECT generation FROM sets WHERE name = ?1", [set], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|g| g.map(|g| g as u64))
        })
        .await
    }

    /// A new generation for `set` (its roles changed); returns it.
    pub async fn bump_generation(&self, set: String) -> Result<u64, StoreError> {
        self.call(move |c| {
            c.query_row(
                "UPDATE sets SET generation = generation + 1 WHERE name = ?1 RETURNING generation",
                [set],
                |r| r.get::<_, i64>(0),
            )
            .map(|g| g as u64)
        })
        .await
    }

    pub async fn upsert_agent(&self, a: AgentRow) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO agents(name, set_name, member, address, agent_version, state, first_seen, last_seen, facts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(name) DO UPDATE SET set_name = ?2, member = ?3, address = ?4,
                   agent_version = ?5, state = ?6, last_seen = ?8, facts = ?9",
                params![
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
            c.execute(
                "UPDATE agents SET state = ?2, last_seen = ?3 WHERE name = ?1",
                params![name, state_str(state), last_seen.to_string()],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        self.call(|c| {
            c.prepare(
                "SELECT name, set_name, member, address, agent_version, state, first_seen, last_seen, facts
                 FROM agents ORDER BY name",
            )?
            .query_map([], |r| {
                Ok(AgentRow {
                    name: r.get(0)?,
                    set: r.get(1)?,
                    member: r.get(2)?,
                    address: r.get(3)?,
                    agent_version: r.get(4)?,
                    state: state_parse(&r.get::<_, String>(5)?),
                    first_seen: ts(r.get(6)?),
                    last_seen: ts(r.get(7)?),
                    facts: r.get(8)?,
                })
            })?
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
            c.execute(
                "INSERT INTO audit(at, identity, action, arguments, outcome, trace_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![Timestamp::now().to_string(), identity, action, arguments, outcome, trace_id],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// The newest `limit` audit records (all when 0), newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let limit = if limit == 0 { -1 } else { i64::from(limit) };
        self.call(move |c| {
            c.prepare(
                "SELECT id, at, identity, action, arguments, outcome, trace_id FROM audit ORDER BY id DESC LIMIT ?1",
            )?
            .query_map([limit], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: ts(r.get(1)?),
                    identity: r.get(2)?,
                    action: r.get(3)?,
                    arguments: r.get(4)?,
                    outcome: r.get(5)?,
                    trace_id: r.get(6)?,
                })
            })?
            .collect()
        })
        .await
    }
}

/// The `kind` under which an archive copy's outcome is stored in
/// `verdicts` (SPEC T9): kept with its run, left out of the set's history.
pub const ARCHIVE_OUTCOME: &str = "archive";

impl Store {
    /// Append a verdict to the set's history.
    pub async fn record_verdict(&self, set: String, v: Verdict) -> Result<(), StoreError> {
        let json = serde_json::to_string(&v).expect("verdicts serialize");
        self.call(move |c| {
            c.execute(
                "INSERT INTO verdicts(set_name, kind, verdict, at) VALUES (?1, ?2, ?3, ?4)",
                params![set, v.kind.as_str(), json, v.at.to_string()],
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
        let limit = if limit == 0 { -1 } else { i64::from(limit) };
        self.call(move |c| {
            let rows: Vec<String> = c
                .prepare(&format!(
                    "SELECT verdict FROM verdicts WHERE set_name = ?1 AND {which} ORDER BY id DESC LIMIT ?2"
                ))?
                .query_map(params![set, limit], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(rows
                .iter()
                .filter_map(|r| serde_json::from_str(r).ok())
                .collect())
        })
        .await
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    let known = migrations::MIGRATIONS.len();
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    for (i, sql) in migrations::MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store migrated");
    }
    Ok(())
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
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[tokio::test]
    async fn verdict_history_is_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("c.db")).unwrap();
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
        let s = Store::open(&dir.path().join("c.db")).unwrap();
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
