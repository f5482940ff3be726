//! Cancelling a run (`tandemctl cancel`): its queued sets end at once as
//! could-not-run, "cancelled by <who> before it started"; the agents running
//! its tests get `Cancel` (they put the standby back and end `cancelled`,
//! which the run's verdict says was "cancelled by <who>"). A test still
//! starting is cancelled by `Fleet::order` as soon as its operation id comes
//! back, and a job admitted after the cancel ends before it starts.

use std::collections::VecDeque;

use tandem_proto::pb;
use tandem_proto::tls::TlsError;
use tracing::{info, warn};

use super::{Fleet, Job};
use crate::store::RunSetState;
use crate::verdicts::Verdict;

/// Why an agent could not be asked to cancel its operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error("agent `{agent}` has no known address")]
    NoAddress { agent: String },
    #[error(transparent)]
    Channel(#[from] TlsError),
    /// The agent refused, in its own words.
    #[error("{message}")]
    Refused { message: String },
}

/// What cancelling a run did.
#[derive(Debug, Clone, Default)]
pub struct Cancelled {
    /// Sets that were queued: they end as could-not-run.
    pub queued: Vec<String>,
    /// Sets whose test was running or starting: their agents are asked to
    /// cancel it (the verdict follows when the agent has put things back).
    pub stopping: Vec<String>,
}

impl Fleet {
    /// Who cancelled `run`, if it is being cancelled.
    pub(super) fn cancelled_by(&self, run: &str) -> Option<String> {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run)
            .cloned()
    }

    /// Cancel a run not finished (`who` is said in its verdicts): queued
    /// sets end now as could-not-run; the agents running its tests are asked
    /// to cancel them. `None` when no such run is going on here.
    pub async fn cancel_run(&self, run_id: &str, who: &str) -> Option<Cancelled> {
        let live = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(run_id);
        if !live {
            return None;
        }
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.to_owned(), who.to_owned());
        let (queued, running): (Vec<Job>, Vec<String>) = {
            let mut q = self.lock_queue();
            let (mine, others): (VecDeque<Job>, VecDeque<Job>) =
                q.waiting.drain(..).partition(|j| j.run_id == run_id);
            q.waiting = others;
            let running = q
                .running
                .iter()
                .filter(|r| r.run_id == run_id)
                .map(|r| r.busy.set.clone())
                .collect();
            (mine.into(), running)
        };
        info!(
            run = run_id,
            by = who,
            queued = queued.len(),
            running = running.len(),
            "run cancelled"
        );
        let mut out = Cancelled {
            queued: queued.iter().map(|j| j.set.clone()).collect(),
            stopping: running,
        };
        for job in queued {
            let v = Verdict::failed_to_run(
                job.member.as_deref().unwrap_or(""),
                format!("cancelled by {who} before it started"),
                job.trace_id.clone(),
            );
            self.record(job, v).await;
        }
        // Tests already ordered: ask their agents. One still starting is
        // cancelled by `order` as soon as its operation id is known.
        if let Ok(Some(row)) = self.store.run(run_id.to_owned()).await {
            let ordered: Vec<_> = row
                .sets
                .into_iter()
                .filter(|s| s.state == RunSetState::Running && out.stopping.contains(&s.set))
                .collect();
            for s in ordered {
                if let Err(e) = self.cancel_on_agent(&s.agent, &s.operation_id).await {
                    warn!(run = run_id, set = %s.set, error = %e, "cannot ask the agent to cancel");
                    out.stopping.retain(|x| x != &s.set);
                }
            }
        }
        self.wake.notify_one();
        self.finished.notify_one();
        Some(out)
    }

    /// Ask `agent` to cancel its operation `op_id`.
    pub(super) async fn cancel_on_agent(
        &self,
        agent: &str,
        op_id: &str,
    ) -> Result<(), CancelError> {
        let address = self
            .inventory
            .get(agent)
            .map(|v| v.row.address)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| CancelError::NoAddress {
                agent: agent.to_owned(),
            })?;
        let mut c = self.agents.client(&address)?;
        c.cancel(pb::CancelRequest {
            operation_id: op_id.to_owned(),
        })
        .await
        .map_err(|s| CancelError::Refused {
            message: s.message().to_owned(),
        })?;
        info!(
            agent,
            operation = op_id,
            "asked the agent to cancel its operation"
        );
        Ok(())
    }
}
