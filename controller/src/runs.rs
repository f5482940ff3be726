//! Test runs: the controller's side of `tandemctl testdb`.
//!
//! A run is a list of sets tested one after another (the fleet limits of
//! SPEC T7 come with the fleet issue). For each set the controller picks the
//! member to test (the named one, or the set's streaming standby as the
//! agents see it now), orders the test with the set's generation, records
//! the operation, relays the agent's `Watch` stream into the run's event
//! list, and stores the verdict. `WatchRun` replays a run's events from the
//! start and then follows them, so a late watcher misses nothing. A run is a
//! spawned task: a `tandemctl` that goes away does not stop it (STYLE 6).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tandem_proto::model::{Facts, Role};
use tandem_proto::pb;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::agents::AgentClients;
use crate::inventory::Inventory;
use crate::store::{OperationRow, Store};
use crate::verdicts::Verdict;

/// How often and how long to retry a broken Watch stream to an agent.
const WATCH_RETRIES: u32 = 30;
const WATCH_RETRY_EVERY: Duration = Duration::from_secs(1);

/// One run's events, for `WatchRun`.
pub struct Run {
    events: Mutex<Vec<pb::RunProgress>>,
    count: watch::Sender<usize>,
}

impl Run {
    fn push(&self, ev: pb::RunProgress) {
        let n = {
            let mut evs = self.events.lock().unwrap_or_else(|p| p.into_inner());
            evs.push(ev);
            evs.len()
        };
        self.count.send_replace(n);
    }

    /// Events from index `from` on, and whether the run is done.
    pub fn events_from(&self, from: usize) -> (Vec<pb::RunProgress>, bool) {
        let evs = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let done = evs.last().is_some_and(|e| e.done);
        (
            evs.get(from..).map(|s| s.to_vec()).unwrap_or_default(),
            done,
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

pub struct Runs {
    inventory: Arc<Inventory>,
    store: Store,
    agents: Arc<AgentClients>,
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

fn new_run_id() -> String {
    let now = Timestamp::now();
    format!(
        "run-{}-{:04x}",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_nanosecond() as u32 & 0xffff
    )
}

impl Runs {
    pub fn new(inventory: Arc<Inventory>, store: Store, agents: Arc<AgentClients>) -> Runs {
        Runs {
            inventory,
            store,
            agents,
            runs: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Run>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Start a run over `sets` (already validated); returns its id at once.
    pub fn start(
        self: &Arc<Self>,
        sets: Vec<String>,
        member: Option<String>,
        trace_id: String,
    ) -> String {
        let id = new_run_id();
        let run = Arc::new(Run {
            events: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        });
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), run.clone());
        let this = self.clone();
        let run_id = id.clone();
        // The run's span continues the caller's trace.
        let span = info_span!("testdb.run", run.id = %id, sets = ?sets);
        tokio::spawn(
            async move {
                for set in &sets {
                    let span = info_span!("testdb.set", set = %set);
                    let verdict = this
                        .test_set(&run, &run_id, set, member.as_deref(), &trace_id)
                        .instrument(span)
                        .await;
                    if let Err(e) = this.store.record_verdict(set.clone(), verdict.clone()).await {
                        warn!(set = %set, error = %e, "cannot store the verdict");
                    }
                    info!(set = %set, verdict = verdict.kind.as_str(), lsn = ?verdict.lsn, "verdict");
                    run.push(pb::RunProgress {
                        run_id: run_id.clone(),
                        set: set.clone(),
                        member: verdict.member.clone(),
                        verdict: Some(verdict.to_pb()),
                        ..Default::default()
                    });
                }
                run.push(pb::RunProgress {
                    run_id: run_id.clone(),
                    done: true,
                    ..Default::default()
                });
            }
            .instrument(span),
        );
        id
    }

    /// Live facts of each member of `set`, asked now.
    async fn live_members(&self, set: &str) -> Vec<(String, String, String, Option<Facts>)> {
        let cfg = self.inventory.config();
        let Some(set) = cfg.sets.iter().find(|s| s.name == set) else {
            return vec![];
        };
        let mut out = Vec::new();
        for m in &set.members {
            let address = self
                .inventory
                .get(m.agent())
                .map(|v| v.row.address)
                .unwrap_or_default();
            let facts = if address.is_empty() {
                None
            } else {
                match self.agents.client(&address) {
                    Ok(mut c) => match tokio::time::timeout(
                        cfg.status_timeout,
                        c.status(pb::StatusRequest {}),
                    )
                    .await
                    {
                        Ok(Ok(r)) => r.into_inner().facts.and_then(|f| Facts::try_from(f).ok()),
                        _ => None,
                    },
                    Err(_) => None,
                }
            };
            out.push((m.name.clone(), m.agent().to_owned(), address, facts));
        }
        out
    }

    /// Test one set; always ends with a verdict.
    async fn test_set(
        &self,
        run: &Run,
        run_id: &str,
        set: &str,
        member: Option<&str>,
        trace_id: &str,
    ) -> Verdict {
        let members = self.live_members(set).await;
        let chosen = match member {
            Some(name) => members.iter().find(|m| m.0 == name),
            None => members
                .iter()
                .find(|m| {
                    m.3.as_ref()
                        .is_some_and(|f| f.role == Role::Standby && f.fully_received)
                })
                .or_else(|| {
                    members
                        .iter()
                        .find(|m| m.3.as_ref().is_some_and(|f| f.role == Role::Standby))
                }),
        };
        let Some((member, agent, address, _)) = chosen else {
            let seen: Vec<String> = members
                .iter()
                .map(|(m, _, _, f)| {
                    format!(
                        "{m}: {}",
                        f.as_ref()
                            .map_or("agent not answering".to_owned(), |f| format!(
                                "{} {}",
                                f.role,
                                f.state_word()
                            ))
                    )
                })
                .collect();
            return Verdict::failed_to_run(
                member.unwrap_or(""),
                format!(
                    "no standby to test in set `{set}` ({}); a test copies a standby (SPEC T2)",
                    seen.join(", ")
                ),
                trace_id.to_owned(),
            );
        };
        let generation = self
            .store
            .generation(set.to_owned())
            .await
            .ok()
            .flatten()
            .unwrap_or(1);
        let mut client = match self.agents.client(address) {
            Ok(c) => c,
            Err(e) => return Verdict::failed_to_run(member, e.to_string(), trace_id.to_owned()),
        };
        let started = client
            .start_operation(pb::StartOperationRequest {
                kind: pb::OperationKind::Testdb as i32,
                set_generation: generation,
                params: HashMap::new(),
            })
            .await;
        let op_id = match started {
            Ok(r) => r.into_inner().operation_id,
            Err(s) => {
                return Verdict::failed_to_run(
                    member,
                    format!("agent `{agent}` refused: {}", s.message()),
                    trace_id.to_owned(),
                );
            }
        };
        info!(set, member = %member, operation = %op_id, "testdb started");
        let _ = self
            .store
            .record_operation(OperationRow {
                id: op_id.clone(),
                run_id: run_id.to_owned(),
                set: set.to_owned(),
                member: member.clone(),
                agent: agent.clone(),
                kind: "testdb".into(),
                trace_id: trace_id.to_owned(),
            })
            .await;
        let result = self.follow(run, run_id, set, member, address, &op_id).await;
        let verdict = match result {
            Ok(r) => Verdict::from_result(member, &r, trace_id.to_owned()),
            Err(reason) => Verdict::failed_to_run(member, reason, trace_id.to_owned()),
        };
        let _ = self
            .store
            .finish_operation(op_id, verdict.kind.as_str().to_owned())
            .await;
        verdict
    }

    /// Relay the agent's progress until the operation's result arrives.
    async fn follow(
        &self,
        run: &Run,
        run_id: &str,
        set: &str,
        member: &str,
        address: &str,
        op_id: &str,
    ) -> Result<pb::OperationResult, String> {
        let mut failures = 0;
        loop {
            let stream = match self.agents.client(address) {
                Ok(mut c) => {
                    c.watch(pb::WatchRequest {
                        operation_id: op_id.to_owned(),
                    })
                    .await
                }
                Err(e) => return Err(e.to_string()),
            };
            match stream {
                Ok(s) => {
                    let mut s = s.into_inner();
                    loop {
                        match s.message().await {
                            Ok(Some(p)) => {
                                failures = 0;
                                let result = p.result.clone();
                                run.push(pb::RunProgress {
                                    run_id: run_id.to_owned(),
                                    set: set.to_owned(),
                                    member: member.to_owned(),
                                    progress: Some(p),
                                    ..Default::default()
                                });
                                if let Some(r) = result {
                                    return Ok(r);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                warn!(operation = op_id, error = %e.message(), "watch stream broke");
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.code() == tonic::Code::NotFound => {
                    return Err(format!("agent lost operation {op_id}: {}", e.message()));
                }
                Err(e) => {
                    warn!(operation = op_id, error = %e.message(), "cannot watch the operation")
                }
            }
            failures += 1;
            if failures > WATCH_RETRIES {
                return Err(format!(
                    "lost contact with the agent at {address} during operation {op_id}; its journal says what became of it"
                ));
            }
            tokio::time::sleep(WATCH_RETRY_EVERY).await;
        }
    }
}
