//! Fleet runs in the store (SPEC C5): every set of a run has a row whose
//! state moves `queued` -> `starting` (the order is on its way to the agent,
//! with a request id the agent remembers) -> `running` (the agent's operation
//! id is known) -> `done` (the verdict is stored). A restarted controller
//! reads the runs not finished and carries each set on from its state.
//! Also here: settings changed at run time, and each set's event history.

use jiff::Timestamp;

use super::sql::args;
use super::{Store, StoreError, limit_arg, ts};
use crate::verdicts::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSetState {
    Queued,
    Starting,
    Running,
    Done,
}

impl RunSetState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunSetState::Queued => "queued",
            RunSetState::Starting => "starting",
            RunSetState::Running => "running",
            RunSetState::Done => "done",
        }
    }
    fn parse(s: &str) -> RunSetState {
        match s {
            "starting" => RunSetState::Starting,
            "running" => RunSetState::Running,
            "done" => RunSetState::Done,
            _ => RunSetState::Queued,
        }
    }
}

/// One set of a run, as stored.
#[derive(Debug, Clone)]
pub struct RunSetRow {
    pub set: String,
    /// The member asked for (empty: the set's streaming standby).
    pub member: String,
    pub state: RunSetState,
    pub agent: String,
    pub operation_id: String,
    pub verdict: Option<Verdict>,
}

/// A run, as stored.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: String,
    pub origin: String,
    pub trace_id: String,
    pub created_at: Timestamp,
    pub sets: Vec<RunSetRow>,
}

/// One entry of a set's history besides verdicts.
#[derive(Debug, Clone, PartialEq)]
pub struct SetEvent {
    pub at: Timestamp,
    pub kind: String,
    pub message: String,
}

impl Store {
    /// Record a new run and its sets, all queued.
    pub async fn create_run(
        &self,
        id: String,
        origin: String,
        trace_id: String,
        sets: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "INSERT INTO runs(id, created_at, origin, trace_id) VALUES (?1, ?2, ?3, ?4)",
                args![id, Timestamp::now().to_string(), origin, trace_id],
            )?;
            for (i, (set, member)) in sets.iter().enumerate() {
                c.exec(
                    "INSERT INTO run_sets(run_id, position, set_name, member, state) VALUES (?1, ?2, ?3, ?4, 'queued')",
                    args![id, i as i64, set, member],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Move a run's set to `state` (not `Done`: see [`Store::finish_run_set`]).
    pub async fn run_set_state(
        &self,
        run_id: String,
        set: String,
        state: RunSetState,
        agent: String,
        operation_id: String,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "UPDATE run_sets SET state = ?3, agent = ?4, operation_id = ?5 WHERE run_id = ?1 AND set_name = ?2",
                args![run_id, set, state.as_str(), agent, operation_id],
            )
            .map(|_| ())
        })
        .await
    }

    /// Store a set's verdict in its history and mark the run's set done, in
    /// one transaction; the run is finished when its last set is.
    ///
    /// `tested` false: an archive copy's outcome (SPEC T9), stored with the
    /// run under the kind `archive`, which the set's verdict history leaves
    /// out (it tested nothing).
    pub async fn finish_run_set(
        &self,
        run_id: String,
        set: String,
        v: Verdict,
        tested: bool,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&v).expect("verdicts serialize");
        let kind = if tested {
            v.kind.as_str()
        } else {
            super::ARCHIVE_OUTCOME
        };
        self.call(move |c| {
            let vid: i64 = c
                .query_one(
                    "INSERT INTO verdicts(set_name, kind, verdict, at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                    args![set, kind, json, v.at.to_string()],
                )?
                .get(0)?;
            c.exec(
                "UPDATE run_sets SET state = 'done', verdict_id = ?3 WHERE run_id = ?1 AND set_name = ?2",
                args![run_id, set, vid],
            )?;
            let left: i64 = c
                .query_one(
                    "SELECT count(*) FROM run_sets WHERE run_id = ?1 AND state != 'done'",
                    args![run_id],
                )?
                .get(0)?;
            if left == 0 {
                c.exec(
                    "UPDATE runs SET finished_at = ?2 WHERE id = ?1",
                    args![run_id, Timestamp::now().to_string()],
                )?;
            }
            Ok(left == 0)
        })
        .await
    }

    /// Runs not finished yet (after a restart: the work to carry on).
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        self.runs_where("finished_at IS NULL", None).await
    }

    /// One run, finished or not.
    pub async fn run(&self, id: String) -> Result<Option<RunRow>, StoreError> {
        Ok(self.runs_where("id = ?1", Some(id)).await?.pop())
    }

    async fn runs_where(
        &self,
        cond: &'static str,
        arg: Option<String>,
    ) -> Result<Vec<RunRow>, StoreError> {
        self.call(move |c| {
            let params: Vec<&dyn super::sql::Param> =
                arg.iter().map(|a| a as &dyn super::sql::Param).collect();
            let mut runs: Vec<RunRow> = c
                .query(
                    &format!(
                        "SELECT id, origin, trace_id, created_at FROM runs WHERE {cond} ORDER BY created_at"
                    ),
                    &params,
                )?
                .iter()
                .map(|r| {
                    Ok(RunRow {
                        id: r.get(0)?,
                        origin: r.get(1)?,
                        trace_id: r.get(2)?,
                        created_at: ts(r.get(3)?),
                        sets: vec![],
                    })
                })
                .collect::<Result<_, super::sql::DbError>>()?;
            for run in &mut runs {
                run.sets = c
                    .query(
                        "SELECT s.set_name, s.member, s.state, s.agent, s.operation_id, v.verdict
                         FROM run_sets s LEFT JOIN verdicts v ON v.id = s.verdict_id
                         WHERE s.run_id = ?1 ORDER BY s.position",
                        args![run.id],
                    )?
                    .iter()
                    .map(|r| {
                        Ok(RunSetRow {
                            set: r.get(0)?,
                            member: r.get(1)?,
                            state: RunSetState::parse(&r.get::<String>(2)?),
                            agent: r.get(3)?,
                            operation_id: r.get(4)?,
                            verdict: r
                                .get::<Option<String>>(5)?
                                .and_then(|j| serde_json::from_str(&j).ok()),
                        })
                    })
                    .collect::<Result<_, super::sql::DbError>>()?;
            }
            Ok(runs)
        })
        .await
    }

    pub async fn setting(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.call(move |c| {
            c.query_opt("SELECT value FROM settings WHERE key = ?1", args![key])?
                .map(|r| r.get(0))
                .transpose()
        })
        .await
    }

    pub async fn put_setting(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                args![key, value],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn delete_setting(&self, key: &'static str) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec("DELETE FROM settings WHERE key = ?1", args![key])
                .map(|_| ())
        })
        .await
    }

    /// Add an entry to a set's history (a role change, a skipped occurrence).
    pub async fn set_event(
        &self,
        set: String,
        kind: &'static str,
        message: String,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "INSERT INTO set_events(set_name, at, kind, message) VALUES (?1, ?2, ?3, ?4)",
                args![set, Timestamp::now().to_string(), kind, message],
            )
            .map(|_| ())
        })
        .await
    }

    /// A set's history entries, newest first (all when `limit` is 0).
    pub async fn set_events(&self, set: String, limit: u32) -> Result<Vec<SetEvent>, StoreError> {
        let limit = limit_arg(limit);
        self.call(move |c| {
            c.query(
                "SELECT at, kind, message FROM set_events WHERE set_name = ?1 ORDER BY id DESC LIMIT ?2",
                args![set, limit],
            )?
            .iter()
            .map(|r| {
                Ok(SetEvent {
                    at: ts(r.get(0)?),
                    kind: r.get(1)?,
                    message: r.get(2)?,
                })
            })
            .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_is_finished_by_its_last_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("c.db")).unwrap();
        s.create_run(
            "r1".into(),
            "manual".into(),
            String::new(),
            vec![("a".into(), String::new()), ("b".into(), "db2".into())],
        )
        .await
        .unwrap();
        s.run_set_state(
            "r1".into(),
            "a".into(),
            RunSetState::Running,
            "a-db2".into(),
            "op-1".into(),
        )
        .await
        .unwrap();
        let v = Verdict::failed_to_run("db2", "x".into(), String::new());
        assert!(
            !s.finish_run_set("r1".into(), "a".into(), v.clone(), true)
                .await
                .unwrap()
        );
        let open = s.unfinished_runs().await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].sets[0].state, RunSetState::Done);
        assert_eq!(open[0].sets[0].verdict.as_ref(), Some(&v));
        assert_eq!(open[0].sets[1].state, RunSetState::Queued);
        assert_eq!(open[0].sets[1].member, "db2");
        assert!(
            s.finish_run_set("r1".into(), "b".into(), v, true)
                .await
                .unwrap()
        );
        assert!(s.unfinished_runs().await.unwrap().is_empty());
        assert_eq!(s.run("r1".into()).await.unwrap().unwrap().sets.len(), 2);
        assert_eq!(s.verdicts("a".into(), 0).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn settings_and_set_events_persist() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("c.db")).unwrap();
        assert_eq!(s.setting("limits").await.unwrap(), None);
        s.put_setting("limits", "a".into()).await.unwrap();
        s.put_setting("limits", "b".into()).await.unwrap();
        assert_eq!(s.setting("limits").await.unwrap().as_deref(), Some("b"));
        s.set_event("billing".into(), "role", "db2 is now the primary".into())
            .await
            .unwrap();
        let h = s.set_events("billing".into(), 0).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].kind, "role");
    }
}
