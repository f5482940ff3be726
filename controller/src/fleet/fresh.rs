//! Live facts from agents, for the choices the last heartbeats may be too
//! old for: the standby to test (right after a standby restarted, its last
//! heartbeat may still say stopped) and the primary's synchronous standbys
//! before a cold copy.
//!
//! The dispatcher holds the queue's lock and never waits on the network:
//! [`Fleet::refresh_facts`] asks in a task of its own, puts the answers
//! into the inventory, marks the job asked and wakes the dispatcher, which
//! chooses once more.

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::model::{Facts, TestMode};
use tandem_proto::pb;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use super::{Fleet, Refresh};
use crate::agents::AgentClients;

/// One agent's live answer.
pub(super) struct Live {
    pub member: String,
    pub facts: Facts,
    pub default_mode: Option<TestMode>,
}

/// Ask the agent at `address` for its status now, within `timeout`.
pub(super) async fn status_of(
    agents: &AgentClients,
    timeout: Duration,
    agent: &str,
    address: &str,
) -> Result<Live, String> {
    let mut c = agents
        .client(address)
        .map_err(|e| format!("cannot make a channel to agent `{agent}`: {e}"))?;
    let r = match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return Err(format!("agent `{agent}` did not answer: {}", s.message())),
        Err(_) => return Err(format!("agent `{agent}` did not answer within {timeout:?}")),
    };
    let facts = r
        .facts
        .ok_or_else(|| format!("agent `{agent}` sent no facts"))
        .and_then(|f| {
            Facts::try_from(f).map_err(|e| format!("agent `{agent}` sent bad facts: {e}"))
        })?;
    Ok(Live {
        member: r.member,
        facts,
        default_mode: TestMode::from_wire("default_mode", r.default_mode)
            .ok()
            .flatten(),
    })
}

impl Fleet {
    /// Ask every registered agent of `set` for its status now, in parallel;
    /// each answer also goes into the inventory. Returns (agent, answer).
    pub(super) async fn ask_set(&self, set: &str) -> Vec<(String, Result<Live, String>)> {
        let Some(decl) = self.inventory.declared().set(set).cloned() else {
            return vec![];
        };
        let mut tasks = JoinSet::new();
        for m in decl.members {
            let Some(view) = self.inventory.get(&m.agent) else {
                continue;
            };
            if view.row.address.is_empty() {
                continue;
            }
            let span = info_span!("agent.status", agent = %m.agent, member = %m.name);
            let (agents, timeout) = (self.agents.clone(), self.inventory.config().status_timeout);
            tasks.spawn(
                async move {
                    let r = status_of(&agents, timeout, &m.agent, &view.row.address).await;
                    (m.agent, r)
                }
                .instrument(span),
            );
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((agent, r)) = joined else { continue };
            match &r {
                Ok(live) => self.inventory.observe(&agent, live.facts.clone()),
                Err(why) => warn!(agent = %agent, "{why}"),
            }
            out.push((agent, r));
        }
        out
    }

    /// Ask `set`'s agents for fresh facts, then let the dispatcher choose
    /// the standby of the job `run_id` once more.
    pub(super) fn refresh_facts(self: &Arc<Self>, set: String, run_id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            info!(set = %set, "no standby to test as the last heartbeats say; asking the set's agents");
            this.ask_set(&set).await;
            if let Some(job) = this
                .lock_queue()
                .waiting
                .iter_mut()
                .find(|j| j.set == set && j.run_id == run_id)
            {
                job.refresh = Refresh::Done;
            }
            this.wake.notify_one();
        });
    }
}
