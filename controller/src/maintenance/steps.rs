//! Running one step of a window: agent steps as maintenance orders
//! (followed like any agent operation, under the one retry policy), the HA manager's pause
//! and resume, the wait for a standby to stream, and the window's testdb.

use std::time::Duration;

use tandem_proto::model::{Facts, Lsn, Role};
use tandem_proto::pb;

use tandem_proto::order::{MaintenanceOrder, MaintenanceStep, Order, RestoreStage};

use super::plan::{Action, Plan, Step};
use super::{Maintenance, Member, Window, ha};
use crate::error::ServiceError;
use crate::fleet::MAINTENANCE_ORIGIN;
use crate::orders::{AgentRef, OrderError, Orders};
use crate::restore::RestoreState;
use crate::store::StoreError;

/// How long a restarted standby may take to stream again.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(180);
const POLL_EVERY: Duration = Duration::from_millis(300);
/// How many times a step whose agent crashed under it is ordered again.
const AGENT_CRASHES: u32 = 5;

/// Why a step of a window failed (its text goes into the window's report).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("agent `{0}` was never seen")]
    NeverSeen(String),
    /// The agent refused the order (its own words).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The agent's operation ended without success (its reason).
    #[error("{0}")]
    Failed(String),
    #[error("the primary's check still finds {count} finding(s) after the repair: {first}")]
    StillFinds { count: usize, first: String },
    #[error("agent `{0}` did not keep its fence")]
    NoFence(String),
    #[error(
        "controller.toml has no [ha.{set}] any more (the plan had one); put it back, or {verb} Patroni by hand (`patronictl {verb}`) and abort the window"
    )]
    NoHaConfig { set: String, verb: &'static str },
    #[error(
        "cannot pause Patroni of set `{set}`: {why}; nothing was stopped. Check that Patroni runs and that [ha.{set}] in controller.toml lists its REST URLs, then `tandemctl maintenance abort {set}` and open the window again"
    )]
    HaPause {
        set: String,
        why: super::ha::HaError,
    },
    #[error(
        "cannot resume Patroni of set `{set}`: {why}; the set is back in service but Patroni is still paused: run `patronictl resume`, or `tandemctl maintenance abort {set}` to try again"
    )]
    HaResume {
        set: String,
        why: super::ha::HaError,
    },
    #[error("member `{0}` runs as a primary: it was promoted during the window")]
    Promoted(String),
    #[error("member `{member}` did not stream within {within:?}: {last}")]
    NotStreaming {
        member: String,
        within: Duration,
        last: String,
    },
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {0} vanished")]
    RunVanished(String),
    #[error("run {0} left no verdict")]
    NoVerdict(String),
    #[error("a restore step in a window that restores nothing")]
    NothingToRestore,
}

impl Maintenance {
    /// One maintenance step on a member's agent, ordered like any agent
    /// work and followed to its end. `request` makes it idempotent: asked
    /// again (the controller restarted), the agent answers with the step
    /// running or done; one that failed or was interrupted runs again.
    pub(super) async fn agent_step(
        &self,
        set: &str,
        window: &str,
        member: &Member,
        step: MaintenanceStep,
        targets: &[tandem_proto::model::Finding],
        request: String,
    ) -> Result<pb::MaintenanceOutcome, StepError> {
        let Some(view) = self.inventory.get(&member.agent) else {
            return Err(StepError::NeverSeen(member.agent.clone()));
        };
        let to = AgentRef {
            agent: member.agent.clone(),
            address: view.row.address,
        };
        let orders = Orders {
            agents: &self.agents,
            store: &self.store,
        };
        let order = Order::Maintenance(MaintenanceOrder {
            window_id: window.to_owned(),
            step,
            targets: targets.to_vec(),
        });
        // A step its agent's crash interrupted is ordered again: the agent
        // runs an interrupted step anew (every step is idempotent).
        let mut crashes = 0;
        loop {
            let op = orders
                .send_patiently(&to, set, request.clone(), order.clone())
                .await
                .map_err(|e| match e {
                    OrderError::Refused { message, .. } => StepError::Refused(message),
                    e => StepError::Order(e),
                })?;
            let r = orders.follow(&to, &op, |_| {}).await?;
            if r.state == pb::OperationState::Interrupted as i32 && crashes < AGENT_CRASHES {
                crashes += 1;
                tracing::warn!(agent = %to.agent, operation = %op, %step, "the agent stopped during the step; ordering it again");
                continue;
            }
            if r.state != pb::OperationState::Succeeded as i32 {
                return Err(StepError::Failed(r.reason));
            }
            return Ok(r.maintenance.unwrap_or_default());
        }
    }

    /// Run one step; Ok is the message for the report.
    pub(super) async fn execute(&self, w: &mut Window, step: &Step) -> Result<String, StepError> {
        let (primary, standbys) = self.members_by_name(&w.plan);
        let member = if step.member == primary.name {
            primary.clone()
        } else {
            standbys
                .iter()
                .find(|m| m.name == step.member)
                .cloned()
                .unwrap_or(Member {
                    name: step.member.clone(),
                    agent: step.member.clone(),
                })
        };
        match step.action {
            Action::WaitStreaming => self.wait_streaming(w, &member).await,
            Action::PauseHa | Action::ResumeHa => self.ha_step(w, step.action).await,
            Action::Testdb => self.testdb(w, step).await,
            Action::RestorePrepare | Action::Restore => self.restore_step(w, step.action).await,
            action => {
                let name = action.agent_step().expect("agent steps have names");
                let index = w
                    .phase_steps()
                    .iter()
                    .position(|s| s == step)
                    .unwrap_or_default();
                let phase = if w.state == super::WindowState::Resuming {
                    format!("resume{}", w.phase)
                } else {
                    "plan".to_owned()
                };
                let request = format!("{}/{phase}/{index}/{name}/{}", w.id, member.name);
                let r = self
                    .agent_step(&w.set, &w.id, &member, name, &step.targets, request)
                    .await?;
                let facts: Option<Facts> = r.facts.clone().and_then(|f| Facts::try_from(f).ok());
                match action {
                    Action::Check if !r.findings.is_empty() => {
                        let first = r.findings[0]
                            .message
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        return Err(StepError::StillFinds {
                            count: r.findings.len(),
                            first,
                        });
                    }
                    Action::Serve => {
                        w.repair_lsn = facts
                            .as_ref()
                            .and_then(|f| f.current_lsn)
                            .map(|l| l.to_string());
                    }
                    Action::FenceStop | Action::Reseed if !r.fenced => {
                        return Err(StepError::NoFence(member.agent.clone()));
                    }
                    _ => {}
                }
                Ok(r.message)
            }
        }
    }

    /// Pause or resume the set's HA manager (the controller itself, over
    /// its REST API).
    pub(super) async fn ha_step(
        &self,
        w: &mut Window,
        action: Action,
    ) -> Result<String, StepError> {
        let pause = action == Action::PauseHa;
        let Some(cfg) = self.inventory.config().ha.get(&w.set).cloned() else {
            return Err(StepError::NoHaConfig {
                set: w.set.clone(),
                verb: if pause { "pause" } else { "resume" },
            });
        };
        if !pause && w.plan.ha.as_ref().and_then(|h| h.paused_before) == Some(true) {
            return Ok(
                "Patroni was already paused when the window was planned: left paused (`patronictl resume` when it should manage the set again)".into(),
            );
        }
        let mut sent = w.ha_pause_sent;
        let outcome = ha::set_pause(&cfg, pause, &mut sent).await;
        if pause {
            w.ha_pause_sent = sent;
        }
        outcome.map_err(|why| {
            let set = w.set.clone();
            if pause {
                StepError::HaPause { set, why }
            } else {
                StepError::HaResume { set, why }
            }
        })
    }

    /// Members as the plan names them, with their agents from the inventory.
    pub(super) fn members_by_name(&self, p: &Plan) -> (Member, Vec<Member>) {
        let decl = self.inventory.set(&p.set);
        let agent_of = |name: &str| {
            decl.as_ref()
                .and_then(|s| s.member(name))
                .map_or(name.to_owned(), |m| m.agent.clone())
        };
        let m = |name: &String| Member {
            name: name.clone(),
            agent: agent_of(name),
        };
        (m(&p.primary), p.standbys.iter().map(m).collect())
    }

    /// Wait until `member` runs as a standby, streams, and has replayed
    /// past the repair's log position. A standby seen as primary fails the
    /// step at once: nothing in a window may promote one.
    pub(super) async fn wait_streaming(
        &self,
        w: &Window,
        member: &Member,
    ) -> Result<String, StepError> {
        let want: Option<Lsn> = w.repair_lsn.as_deref().and_then(|l| l.parse().ok());
        let deadline = tokio::time::Instant::now() + STREAMING_TIMEOUT;
        let mut last = String::from("no answer yet");
        while tokio::time::Instant::now() < deadline {
            if let Some(view) = self.inventory.get(&member.agent)
                && let Ok(mut client) = self.agents.client(&view.row.address)
                && let Ok(r) = client.status(pb::StatusRequest {}).await
                && let Some(f) = r.into_inner().facts.and_then(|f| Facts::try_from(f).ok())
            {
                if f.role == Role::Primary {
                    return Err(StepError::Promoted(member.name.clone()));
                }
                let replayed_enough = match (want, f.replayed_lsn) {
                    (Some(w), Some(r)) => r >= w,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                if f.role == Role::Standby && f.fully_received && replayed_enough {
                    // What the fleet picks the testdb's member from: make
                    // it as fresh as what was just seen.
                    let _ = self
                        .inventory
                        .heartbeat(&member.agent, f.clone(), None)
                        .await;
                    return Ok(format!(
                        "{} streams, replayed to {}",
                        member.name,
                        f.replayed_lsn.map(|l| l.to_string()).unwrap_or_default()
                    ));
                }
                last = format!(
                    "{} {}, replayed {}{}",
                    f.role,
                    f.state_word(),
                    f.replayed_lsn.map(|l| l.to_string()).unwrap_or_default(),
                    want.map(|w| format!(", waiting for {w}"))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        Err(StepError::NotStreaming {
            member: member.name.clone(),
            within: STREAMING_TIMEOUT,
            last,
        })
    }

    /// The window's own testdb, through the fleet (under its limits).
    pub(super) async fn testdb(&self, w: &mut Window, step: &Step) -> Result<String, StepError> {
        let member = (!step.member.is_empty()).then(|| step.member.clone());
        let run_id = self
            .fleet
            .start_run(
                vec![w.set.clone()],
                member,
                Default::default(),
                MAINTENANCE_ORIGIN,
                w.trace_id.clone(),
            )
            .await?;
        let run = self
            .fleet
            .get(&run_id)
            .await?
            .ok_or_else(|| StepError::RunVanished(run_id.clone()))?;
        let mut rx = run.subscribe();
        loop {
            if run.events_from(0).1 {
                break;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        let v = self
            .store
            .verdicts(w.set.clone(), 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StepError::NoVerdict(run_id.clone()))?;
        let msg = format!(
            "testdb of {} ({run_id}): {}{}",
            v.member,
            v.kind.as_str(),
            v.lsn
                .as_deref()
                .map(|l| format!(" up to {l}"))
                .unwrap_or_default()
        );
        w.verdict = Some(v);
        Ok(msg)
    }

    /// One of a restore window's agent orders, followed to its end. Asked
    /// again (a controller restarted), the agent returns the same
    /// operation, so it is followed, not started twice.
    pub(super) async fn restore_step(
        &self,
        w: &mut Window,
        action: Action,
    ) -> Result<String, StepError> {
        let order = w.plan.restore.clone().ok_or(StepError::NothingToRestore)?;
        let t = crate::restore::target(&self.inventory, &w.set, Some(&w.plan.primary))?;
        let stage = if action == Action::Restore {
            RestoreStage::Swap
        } else {
            RestoreStage::Prepare
        };
        let orders = Orders {
            agents: &self.agents,
            store: &self.store,
        };
        let op = crate::restore::order(
            &orders,
            &t,
            &w.set,
            &order,
            stage,
            super::restore_request(&w.id, action),
        )
        .await?;
        let outcome = w.restore.get_or_insert_with(Default::default);
        outcome.member = t.member.clone();
        outcome.agent = t.agent.clone();
        outcome.operation_id = op.clone();
        outcome.state = RestoreState::Running;
        let (r, step) = crate::restore::follow(&orders, &t, &op).await?;
        let outcome = w.restore.get_or_insert_with(Default::default);
        outcome.notes.extend(r.notes.iter().cloned());
        if r.state != pb::OperationState::Succeeded as i32 {
            outcome.state = RestoreState::Failed;
            outcome.failed_step = Some(step);
            outcome.reason = Some(r.reason.clone());
            let _ = self
                .store
                .set_event(
                    w.set.clone(),
                    "restore",
                    format!("restore of member {} failed ({op}): {}", t.member, r.reason),
                )
                .await;
            return Err(StepError::Failed(r.reason));
        }
        if action == Action::RestorePrepare {
            outcome.state = RestoreState::Prepared;
            return Ok(format!("prepared ({op}): {}", r.notes.join("; ")));
        }
        outcome.state = RestoreState::Restored;
        // Standbys re-seeded from it must replay past where it stands now.
        if let Ok(mut c) = self.agents.client(&t.address)
            && let Ok(s) = c.status(pb::StatusRequest {}).await
            && let Some(f) = s.into_inner().facts.and_then(|f| Facts::try_from(f).ok())
        {
            w.repair_lsn = f.current_lsn.map(|l| l.to_string());
        }
        let message = format!(
            "member {} restored ({op}): {}",
            t.member,
            r.notes.join("; ")
        );
        let _ = self
            .store
            .set_event(w.set.clone(), "restore", message.clone())
            .await;
        Ok(message)
    }
}
