//! Maintenance windows (SPEC T4, C4, O1): repair on the primary with the
//! whole set halted, or re-seed a standby with standby-local damage, then
//! prove the set clean with a fresh testdb.
//!
//! A window is one JSON document in the store ([`Window`]): the plan
//! ([`plan::Plan`], built before any action from the set's last errors
//! verdict and a read-only triage on the primary), each step's state and
//! message, and the report. It is written before and after every step, so a
//! controller that restarts in the middle carries on from the recorded step
//! ([`Maintenance::recover`]); agents make every step idempotent.
//!
//! While a window is not over, the fleet holds its set ([`Fleet::hold`]):
//! no schedule, signal or `testdb --all` starts anything there except the
//! window's own testdb. A failed step stops the plan and leaves the set as
//! it is (halted, standbys fenced); `abort` puts it back as it was before
//! the window (primary serving, standbys unfenced, started and streaming),
//! `close` does the same and then runs the testdb that closes the window.
//!
//! A set with an HA manager (`[ha.<set>]`, Patroni) has it paused right
//! after the triage and resumed as the very last step, by the controller
//! itself ([`ha`]); abort ends with the resume once a pause was sent, and
//! close pauses it first and resumes it last ([`plan::close_steps`]).

pub mod ha;
pub mod plan;
mod recurring;
mod steps;
mod window;

pub use window::{Ending, Window, WindowState};
use window::{restore_request, restore_undone};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tandem_proto::model::Role;
use tandem_proto::order::MaintenanceStep;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::agents::AgentClients;
use crate::error::ServiceError;
use crate::fleet::Fleet;
use crate::inventory::Inventory;
use crate::store::{Store, StoreError};
use crate::verdicts::VerdictKind;
use plan::{Action, Plan, Repair, StepState};

struct Active {
    cancel: CancellationToken,
    drive: Arc<tokio::sync::Mutex<()>>,
}

pub struct Maintenance {
    inventory: Arc<Inventory>,
    store: Store,
    agents: Arc<AgentClients>,
    fleet: Arc<Fleet>,
    active: Mutex<HashMap<String, Active>>,
}

/// A member and its agent.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    agent: String,
}

fn new_window_id() -> String {
    let now = Timestamp::now();
    format!(
        "mw-{}-{:04x}",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_nanosecond() as u32 & 0xffff
    )
}

fn err(msg: impl Into<String>) -> ServiceError {
    ServiceError::Maintenance(msg.into())
}

impl Maintenance {
    pub fn new(
        inventory: Arc<Inventory>,
        store: Store,
        agents: Arc<AgentClients>,
        fleet: Arc<Fleet>,
    ) -> Arc<Maintenance> {
        Arc::new(Maintenance {
            inventory,
            store,
            agents,
            fleet,
            active: Mutex::new(HashMap::new()),
        })
    }

    async fn save(&self, w: &Window) -> Result<(), StoreError> {
        self.store
            .put_window(
                w.id.clone(),
                w.set.clone(),
                w.state.as_str().to_owned(),
                serde_json::to_string(w).expect("windows serialize"),
                w.opened_at.to_string(),
                w.closed_at.map(|t| t.to_string()),
            )
            .await
    }

    /// The set's newest window, if any.
    pub async fn latest(&self, set: &str) -> Result<Option<Window>, ServiceError> {
        let docs = self.store.window_docs(set.to_owned(), 1).await?;
        Ok(docs.first().and_then(|d| serde_json::from_str(d).ok()))
    }

    async fn open_window(&self, set: &str) -> Result<Option<Window>, ServiceError> {
        Ok(self.latest(set).await?.filter(|w| !w.state.is_over()))
    }

    /// Every member of `set` with its agent's view; refused when an agent
    /// is offline or was never seen (`what` halts the set: "a window").
    fn online_members(
        &self,
        set: &str,
        what: &str,
    ) -> Result<Vec<(Member, crate::inventory::AgentView)>, ServiceError> {
        let set_cfg = self
            .inventory
            .set(set)
            .ok_or_else(|| ServiceError::UnknownSet {
                set: set.to_owned(),
            })?;
        set_cfg
            .members
            .iter()
            .map(|m| {
                let view = self
                    .inventory
                    .get(&m.agent)
                    .filter(|v| v.row.state == tandem_proto::model::AgentState::Online)
                    .ok_or_else(|| {
                        err(format!(
                            "the agent `{}` of member `{}` is offline or was never seen; every member's agent must answer before {what} halts the set",
                            m.agent, m.name
                        ))
                    })?;
                let member = Member {
                    name: m.name.clone(),
                    agent: m.agent.clone(),
                };
                Ok((member, view))
            })
            .collect()
    }

    /// Every member's agent, and which member is the primary now (from
    /// the agents' facts, SPEC C1).
    fn members(&self, set: &str) -> Result<(Member, Vec<Member>), ServiceError> {
        let mut primaries = Vec::new();
        let mut standbys = Vec::new();
        for (member, view) in self.online_members(set, "a window")? {
            match view.facts.map(|f| f.role) {
                Some(Role::Primary) => primaries.push(member),
                _ => standbys.push(member),
            }
        }
        match primaries.len() {
            1 => Ok((primaries.remove(0), standbys)),
            0 => Err(err(format!(
                "no member of set `{set}` runs as primary now; a window repairs on the primary (start it, or repair by hand)"
            ))),
            _ => Err(err(format!(
                "more than one member of set `{set}` runs as primary ({}): split brain; resolve it by hand first",
                primaries
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The set's HA manager (`[ha.<set>]`) as it answers now, for a plan.
    async fn ha_of(&self, set: &str) -> Option<plan::Ha> {
        match self.inventory.config().ha.get(set).cloned() {
            None => None,
            Some(cfg) => {
                let seen = ha::look(&cfg).await;
                Some(plan::Ha {
                    manager: "patroni".into(),
                    urls: cfg.patroni.clone(),
                    paused_before: seen.as_ref().ok().map(|s| s.paused),
                    seen: match seen {
                        Ok(s) => format!(
                            "leader {}, {}",
                            s.leader.as_deref().unwrap_or("none"),
                            if s.paused {
                                "already paused (the window leaves it paused)"
                            } else {
                                "not paused"
                            }
                        ),
                        Err(e) => format!("did not answer: {e}"),
                    },
                })
            }
        }
    }

    /// The plan for a repair of `set`, built now (runs the read-only triage
    /// on the primary).
    pub async fn plan(&self, set: &str, exec_only: bool) -> Result<Plan, ServiceError> {
        let (primary, standbys) = self.members(set)?;
        let verdicts = self.store.verdicts(set.to_owned(), 1).await?;
        let verdict = match verdicts.first() {
            Some(v) if v.kind == VerdictKind::Errors => v.clone(),
            Some(v) => {
                return Err(err(format!(
                    "set `{set}`'s last verdict is {} ({}): there is nothing to repair; a window repairs what a testdb found",
                    v.kind.as_str(),
                    v.at
                )));
            }
            None => {
                return Err(err(format!(
                    "set `{set}` was never tested: there is nothing to repair; run `tandemctl testdb {set}` first"
                )));
            }
        };
        let request = format!("plan/{}/triage", new_window_id());
        let triage = self
            .agent_step(
                set,
                "plan",
                &primary,
                MaintenanceStep::Triage,
                &verdict.findings,
                request,
            )
            .await
            .map_err(|e| {
                err(format!(
                    "the triage on primary `{}` failed: {e}",
                    primary.name
                ))
            })?;
        let data_bytes = triage.facts.as_ref().map_or(0, |f| f.data_dir_bytes);
        let ha = self.ha_of(set).await;
        let standby_names: Vec<String> = standbys.iter().map(|m| m.name.clone()).collect();
        let mut p = plan::build(plan::Input {
            set,
            primary: &primary.name,
            standbys: &standby_names,
            verdict: &verdict,
            triage: plan::Triage {
                findings: triage.findings.into_iter().map(Into::into).collect(),
                relations: triage
                    .relations
                    .into_iter()
                    .map(|r| plan::Relation {
                        database: r.database,
                        relation: r.relation,
                        is_index: r.is_index,
                        bytes: r.bytes,
                    })
                    .collect(),
                unresolved: triage.unresolved,
            },
            data_bytes,
            exec_only,
            ha,
        });
        let now = Timestamp::now();
        if let Some(t) = p.steps.first_mut() {
            t.state = StepState::Done;
            t.message = triage.message;
            t.started_at = Some(now);
            t.finished_at = Some(now);
        }
        Ok(p)
    }

    /// Open a window on `set` now and run its plan in the background.
    pub async fn open(
        self: &Arc<Self>,
        set: &str,
        reason: &str,
        exec_only: bool,
        who: &str,
        trace_id: String,
    ) -> Result<Window, ServiceError> {
        self.open_within(set, reason, exec_only, who, trace_id, None)
            .await
    }

    /// [`Maintenance::open`], refused when the plan expects more downtime
    /// than `seconds_left` (a recurring window's remaining time).
    pub async fn open_within(
        self: &Arc<Self>,
        set: &str,
        reason: &str,
        exec_only: bool,
        who: &str,
        trace_id: String,
        seconds_left: Option<f64>,
    ) -> Result<Window, ServiceError> {
        if reason.trim().is_empty() {
            return Err(err(
                "say why the window opens: --reason TEXT (it goes into the set's history and the audit log)",
            ));
        }
        self.quiet(set).await?;
        let plan = self.plan(set, exec_only).await?;
        if let Some(left) = seconds_left
            && plan.expected_downtime_seconds > left
        {
            return Err(err(format!(
                "the plan expects {:.0} s of downtime and the window has {left:.0} s left",
                plan.expected_downtime_seconds
            )));
        }
        self.start(Window::new(
            new_window_id(),
            set,
            reason,
            who,
            trace_id,
            plan,
        ))
        .await
    }

    /// Refuse when the set has a window not over or a test queued or
    /// running: a window starts on a quiet set.
    async fn quiet(&self, set: &str) -> Result<(), ServiceError> {
        if let Some(w) = self.open_window(set).await? {
            return Err(err(format!(
                "set `{set}` is already in window {} ({}); `tandemctl maintenance show {set}`, then close or abort it",
                w.id,
                w.state.as_str()
            )));
        }
        if let Some(since) = self.fleet.set_active_since(set) {
            return Err(err(format!(
                "a test or backup of set `{set}` is queued or running (since {since}); wait for it to end, then try again"
            )));
        }
        Ok(())
    }

    /// Record a new window, hold its set and run its plan in the background.
    async fn start(self: &Arc<Self>, w: Window) -> Result<Window, ServiceError> {
        self.save(&w).await?;
        self.fleet.hold(&w.set, w.hold_reason());
        self.event(
            &w.set,
            format!(
                "window {} opened by {}: {}; {} repair, {} steps, expected downtime {:.0} s",
                w.id,
                w.opened_by,
                w.reason,
                match w.plan.repair {
                    Repair::Primary => "primary (whole set halted)",
                    Repair::Reseed => "re-seed",
                    Repair::Restore if w.plan.standbys.is_empty() =>
                        "restore (the set's only member)",
                    Repair::Restore => "restore (whole set halted, standbys re-seeded)",
                },
                w.plan.steps.len(),
                w.plan.expected_downtime_seconds
            ),
        )
        .await;
        self.spawn_drive(w.clone());
        Ok(w)
    }

    /// Restore a member of `set` from a backup as a window (SPEC R1-R12).
    /// The prepare order (R1, R11, R2) is given before the window is
    /// recorded: what the agent refuses (no such backup, too little free
    /// space, a prepare directory left over) comes back as the refusal,
    /// with nothing written and nothing stopped.
    pub async fn open_restore(
        self: &Arc<Self>,
        set: &str,
        member: Option<&str>,
        order: plan::RestoreOrder,
        who: &str,
        trace_id: String,
    ) -> Result<Window, ServiceError> {
        self.quiet(set).await?;
        // The backup, where it is, and whether it reaches the target time:
        // refused here, before anything is ordered, when it cannot.
        let (checked, _) = crate::restore::plan(
            &self.inventory,
            &self.agents,
            set,
            member,
            &order.from,
            order.target_time.as_deref(),
        )
        .await?;
        if !checked.reachable {
            return Err(ServiceError::BadRequest(format!(
                "restore of member {} of set `{set}` refused, nothing was stopped: {}",
                checked.member,
                checked.problems.join("; ")
            )));
        }
        let mut order = order;
        order.from = checked.from.clone();
        let t = crate::restore::target(&self.inventory, set, member)?;
        // A file on another member's host: that member's agent must be
        // there to grant it (said before the generic check of every member).
        let holder = crate::restore::holder(&self.inventory, set, &t, &mut order)?;
        let members = self.online_members(set, "a restore")?;
        let standbys: Vec<String> = members
            .iter()
            .filter(|(m, _)| m.name != t.member)
            .map(|(m, _)| m.name.clone())
            .collect();
        let data_bytes = members
            .iter()
            .find(|(m, _)| m.name == t.member)
            .and_then(|(_, v)| v.facts.as_ref())
            .map_or(0, |f| f.data_dir_bytes);
        let ha = self.ha_of(set).await;
        let id = new_window_id();
        let orders = crate::orders::Orders {
            agents: &self.agents,
            store: &self.store,
        };
        if let Some((h, file)) = &holder {
            order.peer = Some(
                crate::restore::grant(
                    &orders,
                    self.inventory.config().status_timeout,
                    h,
                    &t,
                    file,
                    who,
                    &trace_id,
                )
                .await?,
            );
        }
        let op = crate::restore::order(
            &orders,
            &t,
            set,
            &order,
            tandem_proto::order::RestoreStage::Prepare,
            restore_request(&id, Action::RestorePrepare),
        )
        .await?;
        let reason = format!(
            "restore of {} from {}{}",
            t.member,
            order.from,
            order
                .target_time
                .as_deref()
                .map(|t| format!(" to {t}"))
                .unwrap_or_default()
        );
        // The plan's words follow what the member and its backup are: a
        // one-member set (its facts), a backup without a log position.
        let shape = plan::RestoreShape {
            single_member: members
                .iter()
                .find(|(m, _)| m.name == t.member)
                .and_then(|(_, v)| v.facts.as_ref())
                .is_some_and(|f| f.single_member),
            has_log: checked
                .backup
                .as_ref()
                .is_none_or(crate::restore::has_log_position),
        };
        let plan = plan::build_restore(set, &t.member, &standbys, order, data_bytes, ha, shape);
        let mut w = Window::new(id, set, &reason, who, trace_id, plan);
        w.restore = Some(crate::restore::Outcome {
            member: t.member.clone(),
            agent: t.agent.clone(),
            operation_id: op,
            state: crate::restore::RestoreState::Running,
            ..Default::default()
        });
        self.start(w).await
    }

    /// Put the set back as it was before the window (`Abort`), or back and
    /// then tested (`Close`).
    pub async fn end(
        self: &Arc<Self>,
        set: &str,
        ending: Ending,
        who: &str,
    ) -> Result<Window, ServiceError> {
        let Some(w) = self.open_window(set).await? else {
            return Err(err(format!(
                "set `{set}` has no open maintenance window; `tandemctl maintenance show {set}` shows the last one"
            )));
        };
        // Stop a running plan after its current step, and wait for it.
        let (cancel, drive) = self.active_for(&w.id);
        cancel.cancel();
        let guard = drive.clone().lock_owned().await;
        // Re-read: the drive may have moved on before it stopped.
        let mut w = self.open_window(set).await?.unwrap_or(w);
        w.ending = Some(ending);
        w.state = WindowState::Resuming;
        w.failure = None;
        w.phase += 1;
        w.resume = match ending {
            Ending::Abort => plan::resume_steps(&w.plan, w.ha_pause_sent),
            Ending::Close => plan::close_steps(&w.plan),
        };
        self.save(&w).await?;
        self.event(
            set,
            format!(
                "window {}: {} asked by {who}",
                w.id,
                match ending {
                    Ending::Close => "close (resume the set, then testdb)",
                    Ending::Abort => "abort (resume the set as it was)",
                }
            ),
        )
        .await;
        drop(guard);
        self.forget(&w.id);
        self.spawn_drive(w.clone());
        Ok(w)
    }

    /// Hold every set whose window is not over, and carry on the windows a
    /// previous controller left running (SPEC C5).
    pub async fn recover(self: &Arc<Self>) -> Result<(), ServiceError> {
        for doc in self.store.unfinished_window_docs().await? {
            let Ok(w) = serde_json::from_str::<Window>(&doc) else {
                warn!("a stored maintenance window cannot be read; skipped");
                continue;
            };
            self.fleet.hold(&w.set, w.hold_reason());
            if matches!(w.state, WindowState::Running | WindowState::Resuming) {
                info!(window = %w.id, set = %w.set, "carrying on a maintenance window left by a restart");
                self.spawn_drive(w);
            }
        }
        Ok(())
    }

    fn active_for(&self, id: &str) -> (CancellationToken, Arc<tokio::sync::Mutex<()>>) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let e = a.entry(id.to_owned()).or_insert_with(|| Active {
            cancel: CancellationToken::new(),
            drive: Arc::new(tokio::sync::Mutex::new(())),
        });
        (e.cancel.clone(), e.drive.clone())
    }

    fn forget(&self, id: &str) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn spawn_drive(self: &Arc<Self>, w: Window) {
        let this = self.clone();
        let span = info_span!("maintenance.window", window = %w.id, set = %w.set);
        tokio::spawn(
            async move {
                if let Err(e) = this.drive(w).await {
                    warn!(error = %e, "the maintenance window could not be recorded");
                }
            }
            .instrument(span),
        );
    }

    async fn event(&self, set: &str, message: String) {
        info!(set, "{message}");
        if let Err(e) = self
            .store
            .set_event(set.to_owned(), "maintenance", message)
            .await
        {
            warn!(error = %e, "cannot record the set event");
        }
    }

    /// A crash test's pause point: with
    /// `TANDEM_TEST_PAUSE_AFTER_WINDOW_STEP=<action>` in the controller's
    /// environment, a window stops after that step's work, before it is
    /// recorded done, writes `paused-after-<action>` beside the store and
    /// waits to be killed. Only the end-to-end tests set it.
    async fn pause_point(&self, action: Action) {
        if std::env::var("TANDEM_TEST_PAUSE_AFTER_WINDOW_STEP").is_ok_and(|s| s == action.name()) {
            let dir = match &self.inventory.config().store {
                crate::store::StoreLocation::Sqlite(path) => path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .to_owned(),
                crate::store::StoreLocation::Postgres(_) => std::path::PathBuf::from("."),
            };
            let marker = dir.join(format!("paused-after-{}", action.name()));
            if std::fs::write(&marker, b"").is_ok() {
                warn!(
                    step = action.name(),
                    "paused for a crash test (TANDEM_TEST_PAUSE_AFTER_WINDOW_STEP)"
                );
                std::future::pending::<()>().await;
            }
        }
    }

    /// Run the window's steps from the first one not done.
    async fn drive(self: &Arc<Self>, mut w: Window) -> Result<(), StoreError> {
        let (cancel, drive) = self.active_for(&w.id);
        let _guard = drive.lock().await;
        loop {
            let next = w
                .phase_steps()
                .iter()
                .position(|s| s.state != StepState::Done);
            let Some(i) = next else { break };
            if cancel.is_cancelled() {
                return Ok(());
            }
            {
                let s = &mut w.phase_steps()[i];
                s.state = StepState::Running;
                s.started_at = Some(Timestamp::now());
            }
            self.save(&w).await?;
            let step = w.phase_steps()[i].clone();
            let span =
                info_span!("maintenance.step", step = step.action.name(), member = %step.member);
            let outcome = self.execute(&mut w, &step).instrument(span).await;
            if outcome.is_ok() {
                self.pause_point(step.action).await;
            }
            let label = step.label(i);
            let s = &mut w.phase_steps()[i];
            s.finished_at = Some(Timestamp::now());
            match outcome {
                Ok(message) => {
                    s.state = StepState::Done;
                    s.message = message;
                }
                Err(e) => {
                    let e = e.to_string();
                    s.state = StepState::Failed;
                    s.message = e.clone();
                    if w.state == WindowState::Running && restore_undone(&w, &step) {
                        // The agent put the member's old data directory back
                        // and started it: resume the rest of the set as it was.
                        w.failure = Some(format!("{label} failed: {e}"));
                        w.ending = Some(Ending::Abort);
                        w.state = WindowState::Resuming;
                        w.phase += 1;
                        w.resume = plan::resume_steps(&w.plan, w.ha_pause_sent);
                        self.save(&w).await?;
                        self.event(
                            &w.set,
                            format!(
                                "window {}: {}; the member has its old data directory back, resuming the set as it was",
                                w.id,
                                w.failure.as_deref().unwrap_or("")
                            ),
                        )
                        .await;
                        continue;
                    }
                    let phase = if w.state == WindowState::Resuming {
                        "resuming: "
                    } else {
                        ""
                    };
                    w.failure = Some(format!("{phase}{label} failed: {e}"));
                    w.state = WindowState::Failed;
                    w.downtime_seconds = plan::measured_downtime(w.phase_steps());
                    self.save(&w).await?;
                    self.fleet.hold(&w.set, w.hold_reason());
                    self.event(
                        &w.set,
                        format!(
                            "window {}: {}; the set stays as it is (halted members stay fenced); `tandemctl maintenance abort {}` puts it back",
                            w.id,
                            w.failure.as_deref().unwrap_or(""),
                            w.set
                        ),
                    )
                    .await;
                    self.forget(&w.id);
                    return Ok(());
                }
            }
            self.save(&w).await?;
        }
        // Every step is done.
        let tested = w.phase_steps().iter().any(|s| s.action == Action::Testdb);
        if w.state == WindowState::Running || w.ending == Some(Ending::Close) {
            w.downtime_seconds = plan::measured_downtime(&w.plan.steps);
        }
        if tested {
            let clean = w
                .verdict
                .as_ref()
                .is_some_and(|v| v.kind == VerdictKind::Clean);
            if clean {
                w.state = WindowState::Closed;
                w.closed_at = Some(Timestamp::now());
            } else {
                w.state = WindowState::Failed;
                w.failure = Some(match &w.verdict {
                    Some(v) if v.kind == VerdictKind::Errors => format!(
                        "the testdb after the repair still found {} finding(s); the window stays open with the report",
                        v.findings.len()
                    ),
                    Some(v) => format!(
                        "the testdb after the repair could not run: {}",
                        v.reason.as_deref().unwrap_or("")
                    ),
                    None => "the testdb after the repair gave no verdict".into(),
                });
            }
        } else {
            w.state = WindowState::Aborted;
            w.closed_at = Some(Timestamp::now());
        }
        self.save(&w).await?;
        if let (WindowState::Closed, Some(d)) = (w.state, w.downtime_seconds) {
            crate::metrics::window_downtime(d);
        }
        if w.state.is_over() {
            self.fleet.release(&w.set);
        } else {
            self.fleet.hold(&w.set, w.hold_reason());
        }
        self.event(
            &w.set,
            match w.state {
                WindowState::Closed => format!(
                    "window {} closed: the set tested clean after the repair{}",
                    w.id,
                    w.downtime_seconds
                        .map(|d| format!(" (set downtime {d:.1} s)"))
                        .unwrap_or_default()
                ),
                WindowState::Aborted => format!(
                    "window {} aborted: the set is back as it was before the window{}",
                    w.id,
                    w.failure
                        .as_deref()
                        .map(|f| format!(" ({f})"))
                        .unwrap_or_default()
                ),
                _ => format!("window {}: {}", w.id, w.failure.as_deref().unwrap_or("")),
            },
        )
        .await;
        self.forget(&w.id);
        Ok(())
    }
}
