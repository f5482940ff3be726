//! One job's life, from the moment it is admitted to its stored verdict:
//! record `starting`, order the test from the agent (or join the running
//! operation of the other purpose), follow it, relay its progress into the
//! run, store the verdict. A job carried on after a controller restart is
//! found on its agent by request id and followed the same way.

use std::sync::Arc;

use jiff::Timestamp;
use tandem_proto::pb;
use tracing::{info, info_span, warn};

use crate::orders::Orders;
use crate::store::RunSetState;
use crate::verdicts::Verdict;

use super::run::{done_event, verdict_event};
use super::{Fleet, Job, NoTarget, Target};
use crate::orders::OrderError;
use crate::store::StoreError;

/// Why a job's order could not be sent.
#[derive(Debug, thiserror::Error)]
pub(super) enum JobError {
    #[error("cannot record the order in the store: {0}")]
    Record(StoreError),
    #[error(transparent)]
    Order(OrderError),
}

impl Fleet {
    /// Run one admitted job to its verdict.
    pub(super) async fn run_job(self: Arc<Self>, job: Job, target: Result<Target, NoTarget>) {
        if let Some(who) = self.cancelled_by(&job.run_id) {
            let v = Verdict::failed_to_run(
                job.member.as_deref().unwrap_or(""),
                format!("cancelled by {who} before it started"),
                job.trace_id.clone(),
            );
            return self.finish(job, v).await;
        }
        let target = match target {
            Ok(t) => t,
            Err(reason) => {
                let v = Verdict::failed_to_run(
                    job.member.as_deref().unwrap_or(""),
                    reason.to_string(),
                    job.trace_id.clone(),
                );
                return self.finish(job, v).await;
            }
        };
        let verdict = self.order(&job, &target).await;
        self.finish(job, verdict).await;
    }

    /// Order the test from the target's agent and follow it to its verdict.
    pub(super) async fn order(&self, job: &Job, t: &Target) -> Verdict {
        let span = tracing::Span::current();
        span.record("member", t.member.as_str());
        span.record("agent", t.agent.as_str());
        let failed =
            |reason: String| Verdict::failed_to_run(&t.member, reason, job.trace_id.clone());
        let copy = match self.copy_options(job, t).await {
            Ok(c) => c,
            Err(why) => return failed(why),
        };
        let op_id = match self.send(job, t, false, copy).await {
            Ok(id) => id,
            Err(e) => return failed(e.to_string()),
        };
        // A job of the other purpose waiting for the set may join it now.
        if let Some(r) = self
            .lock_queue()
            .running
            .iter_mut()
            .find(|r| r.busy.set == job.set && r.run_id == job.run_id)
        {
            r.op = Some(op_id.clone());
        }
        self.wake.notify_one();
        if self.cancelled_by(&job.run_id).is_some()
            && let Err(e) = self.cancel_on_agent(&t.agent, &op_id).await
        {
            warn!(set = %job.set, error = %e, "cannot ask the agent to cancel");
        }
        self.follow_to_verdict(job, t, op_id).await
    }

    /// A job that joins the running operation of the other purpose on
    /// `t` (SPEC T9). The agent says whether it still can; when it cannot
    /// (the copy is already packed or opened for its test), the job waits
    /// for the set like any other and makes its own copy after.
    pub(super) async fn ride(self: Arc<Self>, job: Job, t: Target) {
        if self.cancelled_by(&job.run_id).is_some() {
            return self.run_job(job, Ok(t)).await;
        }
        // A rider copies nothing: the running operation's copy serves it.
        match self.send(&job, &t, true, job.copy).await {
            Ok(op_id) => {
                info!(set = %job.set, member = %t.member, operation = %op_id, "joined the running operation: one copy serves both");
                let v = self.follow_to_verdict(&job, &t, op_id).await;
                self.finish(job, v).await;
            }
            Err(why) => {
                info!(set = %job.set, "could not join the running operation ({why}); waiting for the set");
                if let Err(e) = self
                    .store
                    .run_set_state(
                        job.run_id.clone(),
                        job.set.clone(),
                        RunSetState::Queued,
                        String::new(),
                        String::new(),
                    )
                    .await
                {
                    warn!(set = %job.set, error = %e, "cannot record the job queued again");
                }
                let mut q = self.lock_queue();
                q.running
                    .retain(|r| !(r.rides && r.busy.set == job.set && r.run_id == job.run_id));
                q.waiting.push_front(job);
                drop(q);
                self.wake.notify_one();
            }
        }
    }

    /// Record the job `starting`, then send its order (`join`: join the
    /// running operation of the other purpose); the operation's id, or why
    /// it could not be ordered.
    pub(super) async fn send(
        &self,
        job: &Job,
        t: &Target,
        join: bool,
        copy: tandem_proto::order::CopyOptions,
    ) -> Result<String, JobError> {
        self.store
            .run_set_state(
                job.run_id.clone(),
                job.set.clone(),
                RunSetState::Starting,
                t.agent.clone(),
                String::new(),
            )
            .await
            .map_err(JobError::Record)?;
        self.orders()
            .send(
                &t.agent_ref(),
                &job.set,
                request_id(job),
                join,
                job.kind.order(copy),
            )
            .await
            .map_err(JobError::Order)
    }

    pub(super) fn orders(&self) -> Orders<'_> {
        Orders {
            agents: &self.agents,
            store: &self.store,
        }
    }

    pub(super) async fn follow_to_verdict(&self, job: &Job, t: &Target, op_id: String) -> Verdict {
        info!(set = %job.set, member = %t.member, operation = %op_id, "testdb running");
        tracing::Span::current().record("operation.id", op_id.as_str());
        if let Err(e) = self
            .store
            .run_set_state(
                job.run_id.clone(),
                job.set.clone(),
                RunSetState::Running,
                t.agent.clone(),
                op_id.clone(),
            )
            .await
        {
            warn!(error = %e, "cannot record the running operation");
        }
        let mut v = match self.follow(job, t, &op_id).await {
            Ok(r) => Verdict::from_result(&t.member, &r, job.trace_id.clone()),
            Err(reason) => {
                Verdict::failed_to_run(&t.member, reason.to_string(), job.trace_id.clone())
            }
        };
        if let Some(who) = self.cancelled_by(&job.run_id)
            && v.kind == crate::verdicts::VerdictKind::FailedToRun
        {
            v.reason = Some(format!(
                "cancelled by {who}: {}",
                v.reason.as_deref().unwrap_or("")
            ));
        }
        v
    }

    /// A job a previous controller started: find its operation on the
    /// agent and follow it; if the order never reached the agent, queue the
    /// job again.
    pub(super) async fn resume(self: Arc<Self>, job: Job, t: Target, op_id: String) {
        let op_id = if op_id.is_empty() {
            match self.find_request(&t, &request_id(&job)).await {
                Ok(Some(id)) => id,
                Ok(None) => {
                    info!(set = %job.set, "the order never reached the agent; queued again");
                    let mut q = self.lock_queue();
                    q.running
                        .retain(|r| !(r.busy.set == job.set && r.run_id == job.run_id));
                    q.waiting.push_front(job);
                    drop(q);
                    self.wake.notify_one();
                    return;
                }
                Err(reason) => {
                    let v =
                        Verdict::failed_to_run(&t.member, reason.to_string(), job.trace_id.clone());
                    return self.finish(job, v).await;
                }
            }
        } else {
            op_id
        };
        let v = self.follow_to_verdict(&job, &t, op_id).await;
        self.finish(job, v).await;
    }

    /// The operation the agent started for `request`, if any.
    pub(super) async fn find_request(
        &self,
        t: &Target,
        request: &str,
    ) -> Result<Option<String>, OrderError> {
        self.orders().find(&t.agent_ref(), request).await
    }

    /// Store the verdict, tell the run, free the job's place.
    pub(super) async fn finish(&self, job: Job, verdict: Verdict) {
        let (run_id, set) = (job.run_id.clone(), job.set.clone());
        self.record(job, verdict).await;
        self.lock_queue()
            .running
            .retain(|r| !(r.busy.set == set && r.run_id == run_id));
        self.wake.notify_one();
        self.finished.notify_one();
    }

    /// Store a job's verdict and tell its run (and, when it was the run's
    /// last, that the run is done).
    pub(super) async fn record(&self, job: Job, verdict: Verdict) {
        info!(set = %job.set, verdict = verdict.kind.as_str(), lsn = ?verdict.lsn, "verdict");
        let span = tracing::Span::current();
        span.record("verdict", verdict.kind.as_str());
        span.record("findings", verdict.findings.len() as u64);
        if let Some(lsn) = &verdict.lsn {
            span.record("lsn", lsn.as_str());
        }
        // The verdict goes to the run before the store decides whether it was
        // the run's last: whoever's write lands last pushes `done`, after
        // every set's verdict was pushed.
        job.run.push(verdict_event(&job.run_id, &job.set, &verdict));
        let tested = job.kind.tests();
        if tested {
            crate::metrics::verdict(&job.set, &verdict);
        } else {
            let what = match verdict.kind {
                crate::verdicts::VerdictKind::FailedToRun => format!(
                    "archive copy (run {}) could not be made: {}",
                    job.run_id,
                    verdict.reason.as_deref().unwrap_or("")
                ),
                _ => format!(
                    "archive copy (run {}) made on {} by operation {}{}",
                    job.run_id,
                    verdict.member,
                    verdict.operation_id,
                    verdict
                        .backup_path
                        .as_deref()
                        .map(|p| format!(", archive file {p}"))
                        .unwrap_or_default()
                ),
            };
            if let Err(e) = self.store.set_event(job.set.clone(), "archive", what).await {
                warn!(error = %e, "cannot record the set event");
            }
        }
        let run_done = match self
            .store
            .finish_run_set(job.run_id.clone(), job.set.clone(), verdict.clone(), tested)
            .await
        {
            Ok(done) => done,
            Err(e) => {
                warn!(set = %job.set, error = %e, "cannot store the verdict");
                false
            }
        };
        if run_done {
            info!(run = %job.run_id, "run finished");
            job.run.push(done_event(&job.run_id));
            // Watchers keep their Arc; a later WatchRun rebuilds the run
            // from the store, so finished runs do not pile up in memory.
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.run_id);
            self.cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.run_id);
        }
    }

    /// Relay the agent's progress until the operation's result arrives.
    pub(super) async fn follow(
        &self,
        job: &Job,
        t: &Target,
        op_id: &str,
    ) -> Result<pb::OperationResult, OrderError> {
        self.orders()
            .follow(&t.agent_ref(), op_id, |p| {
                job.run.push(pb::RunProgress {
                    run_id: job.run_id.clone(),
                    set: job.set.clone(),
                    member: t.member.clone(),
                    progress: Some(p.clone()),
                    ..Default::default()
                })
            })
            .await
    }
}

/// The span of one set's test on the controller, in the trace of the call
/// that queued it; the agent's operation and steps are its descendants.
/// Fields left empty are recorded as they become known; `resumed`: carried
/// on after a controller restart.
pub(super) fn job_span(job: &Job, resumed: bool) -> tracing::Span {
    let span = info_span!(
        parent: None,
        "testdb.set",
        resumed,
        run.id = %job.run_id,
        set = %job.set,
        member = tracing::field::Empty,
        agent = tracing::field::Empty,
        operation.id = tracing::field::Empty,
        verdict = tracing::field::Empty,
        findings = tracing::field::Empty,
        lsn = tracing::field::Empty,
        db.system = "postgresql",
    );
    job.parent.adopt(&span);
    span
}

/// Seconds from `t` until now.
pub(super) fn seconds_since(t: Timestamp) -> f64 {
    (Timestamp::now() - t)
        .total(jiff::Unit::Second)
        .unwrap_or(0.0)
}

pub(super) fn request_id(job: &Job) -> String {
    format!("{}/{}", job.run_id, job.set)
}
