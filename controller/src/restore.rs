//! Restores, the controller's side (SPEC R1-R12): the member to restore
//! (the set's primary unless named), the agent's restore orders
//! (`OPERATION_KIND_RESTORE` with `stage=prepare`, then `stage=swap`; the
//! agent runs R1-R11 and puts the old data directory back on any failure
//! before R9), and following one to its end.
//!
//! The restore itself runs as a maintenance window (R12,
//! [`crate::maintenance::Maintenance::open_restore`]): prepared while the
//! set serves, standbys fenced and stopped first, the member restored, each
//! standby re-seeded from it, the set resumed and tested.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tandem_proto::model::Role;
use tandem_proto::pb;
use tracing::info;

use crate::agents::AgentClients;
use crate::error::ServiceError;
use crate::inventory::Inventory;
use crate::maintenance::plan::RestoreOrder;

/// The member to restore and how to reach its agent.
pub struct Target {
    pub member: String,
    pub agent: String,
    pub address: String,
}

/// The named member, or the member whose agent last said it is primary.
pub fn target(inv: &Inventory, set: &str, member: Option<&str>) -> Result<Target, ServiceError> {
    let set_cfg = inv.set(set).ok_or_else(|| ServiceError::UnknownSet {
        set: set.to_owned(),
    })?;
    let chosen = match member {
        Some(m) => set_cfg
            .members
            .iter()
            .find(|x| x.name == m)
            .ok_or_else(|| ServiceError::UnknownMember {
                set: set.to_owned(),
                member: m.to_owned(),
            })?,
        None => set_cfg
            .members
            .iter()
            .find(|m| {
                inv.get(&m.agent)
                    .and_then(|v| v.facts)
                    .is_some_and(|f| f.role == Role::Primary)
            })
            .ok_or_else(|| ServiceError::NoPrimary {
                set: set.to_owned(),
            })?,
    };
    let address = inv
        .get(&chosen.agent)
        .map(|v| v.row.address)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ServiceError::AgentUnreachable {
            agent: chosen.agent.clone(),
            why: "it never registered".into(),
        })?;
    Ok(Target {
        member: chosen.name.clone(),
        agent: chosen.agent.clone(),
        address,
    })
}

/// What became of a restore window's agent orders, for the report and
/// `tandemctl restore`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub member: String,
    pub agent: String,
    /// The agent's operation of the order running or last run.
    pub operation_id: String,
    /// `running`, `prepared`, `restored` or `failed`.
    pub state: String,
    /// The agent's step (R1 .. R10) that failed.
    #[serde(default)]
    pub failed_step: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// What each order did (where the old directory went, sequences fixed).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Order one stage (`prepare` or `swap`) of a restore from the member's
/// agent. `request_id` makes the order idempotent: asked again (a
/// controller restarted), the agent returns the operation it started.
pub async fn order(
    agents: &AgentClients,
    t: &Target,
    generation: u64,
    o: &RestoreOrder,
    stage: &str,
    request_id: String,
) -> Result<String, ServiceError> {
    let mut params = HashMap::from([
        ("from".to_owned(), o.from.clone()),
        ("request_id".to_owned(), request_id),
        ("stage".to_owned(), stage.to_owned()),
    ]);
    if let Some(t) = &o.target_time {
        params.insert("target_time".into(), t.clone());
    }
    if o.replace {
        params.insert("replace".into(), "true".into());
    }
    let mut client = agents
        .client(&t.address)
        .map_err(|e| ServiceError::AgentUnreachable {
            agent: t.agent.clone(),
            why: e.to_string(),
        })?;
    let op = client
        .start_operation(pb::StartOperationRequest {
            kind: pb::OperationKind::Restore as i32,
            set_generation: generation,
            params,
        })
        .await
        .map_err(|s| ServiceError::AgentRefused {
            agent: t.agent.clone(),
            message: s.message().to_owned(),
        })?
        .into_inner()
        .operation_id;
    info!(member = %t.member, operation = %op, stage, "restore ordered");
    Ok(op)
}

/// Follow an operation to its result and the step it was in (bounded
/// retries of a broken stream).
pub async fn follow(
    agents: &AgentClients,
    address: &str,
    op: &str,
) -> Result<(pb::OperationResult, String), String> {
    let mut step = String::new();
    for _ in 0..60 {
        let stream = match agents.client(address) {
            Ok(mut c) => {
                c.watch(pb::WatchRequest {
                    operation_id: op.to_owned(),
                })
                .await
            }
            Err(e) => return Err(e.to_string()),
        };
        if let Ok(s) = stream {
            let mut s = s.into_inner();
            while let Ok(Some(p)) = s.message().await {
                if !p.step.is_empty() {
                    step = p.step.clone();
                }
                if let Some(r) = p.result {
                    return Ok((r, step));
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    Err("lost the agent's progress stream".into())
}
