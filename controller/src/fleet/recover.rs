//! After a restart: the runs a previous controller left unfinished, carried
//! on (queued sets queued again, started ones found on their agents).

use std::sync::Arc;

use tandem_proto::propagation::TraceParent;

use tracing::{Instrument, info};

use crate::store::RunSetState;

use super::job::job_span;
use super::limits::host_of;
use super::run::verdict_event;
use super::{Fleet, Job, Refresh, Run, RunKind, Running, Target};
use crate::store::StoreError;
use tandem_proto::order::CopyOptions;

impl Fleet {
    /// Carry on the runs a previous controller left unfinished (SPEC C5).
    pub async fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        for row in self.store.unfinished_runs().await? {
            let run = Run::new();
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(row.id.clone(), run.clone());
            info!(run = %row.id, sets = row.sets.len(), "carrying on a run left unfinished by a restart");
            for s in row.sets {
                let job = Job {
                    kind: RunKind::of_origin(&row.origin),
                    run_id: row.id.clone(),
                    run: run.clone(),
                    set: s.set.clone(),
                    member: (!s.member.is_empty()).then_some(s.member.clone()),
                    origin: row.origin.clone(),
                    trace_id: row.trace_id.clone(),
                    parent: TraceParent::from_trace_id(&row.trace_id),
                    waiting: None,
                    since: row.created_at,
                    // Not stored with the run: a job carried on after a
                    // restart follows the set's policy and the agent's
                    // default, and a cold one is checked again.
                    copy: CopyOptions::default(),
                    refresh: Refresh::NotYet,
                };
                match s.state {
                    RunSetState::Done => {
                        if let Some(v) = &s.verdict {
                            run.push(verdict_event(&row.id, &s.set, v));
                        }
                    }
                    RunSetState::Queued => self.lock_queue().waiting.push_back(job),
                    RunSetState::Starting | RunSetState::Running => {
                        let view = self.inventory.get(&s.agent);
                        let address = view.map(|v| v.row.address).unwrap_or_default();
                        let declared = self.declared(&s.set, &s.agent);
                        let target = Target {
                            member: declared
                                .as_ref()
                                .map(|m| m.name.clone())
                                .unwrap_or_default(),
                            // The host a member runs on: declared, or its agent's address.
                            host: declared
                                .and_then(|m| m.host)
                                .unwrap_or_else(|| host_of(&address).to_owned()),
                            agent: s.agent.clone(),
                            address,
                        };
                        self.lock_queue().running.push(Running {
                            // Carried on after a restart: not offered to joins.
                            joined: true,
                            ..Running::of(
                                &job,
                                target.host.clone(),
                                Some(target.clone()),
                                row.created_at,
                            )
                        });
                        let this = self.clone();
                        let span = job_span(&job, true);
                        let op = s.operation_id.clone();
                        tokio::spawn(
                            async move { this.resume(job, target, op).await }.instrument(span),
                        );
                    }
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }
}
