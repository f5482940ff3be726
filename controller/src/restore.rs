//! Restores, the controller's side (SPEC R1-R12): the member to restore
//! (the set's primary unless named), the agent's restore orders
//! (a restore order with stage prepare, then swap; the
//! agent runs R1-R11 and puts the old data directory back on any failure
//! before R9), and following one to its end.
//!
//! The restore itself runs as a maintenance window (R12,
//! [`crate::maintenance::Maintenance::open_restore`]): prepared while the
//! set serves, standbys fenced and stopped first, the member restored, each
//! standby re-seeded from it, the set resumed and tested.

use tandem_proto::model::Role;
use tandem_proto::order::{Order, RestoreStage};
use tandem_proto::pb;
use tracing::info;

use crate::error::ServiceError;
use crate::inventory::Inventory;
use crate::maintenance::plan::RestoreOrder;
use crate::orders::{AgentRef, OrderError, Orders};
pub use tandem_proto::window::{RestoreProgress as Outcome, RestoreState};

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

impl Target {
    pub fn agent_ref(&self) -> AgentRef {
        AgentRef {
            agent: self.agent.clone(),
            address: self.address.clone(),
        }
    }
}

/// Order one stage (prepare or swap) of a restore from the member's
/// agent. `request_id` makes the order idempotent: asked again (a
/// controller restarted), the agent returns the operation it started.
pub async fn order(
    orders: &Orders<'_>,
    t: &Target,
    set: &str,
    o: &RestoreOrder,
    stage: RestoreStage,
    request_id: String,
) -> Result<String, ServiceError> {
    let order = Order::Restore(tandem_proto::order::RestoreOrder {
        from: o.from.clone(),
        target_time: o.target_time.clone(),
        replace: o.replace,
        stage,
    });
    let op = orders
        .send(&t.agent_ref(), set, request_id, false, order)
        .await
        .map_err(|e| match e {
            OrderError::Refused { agent, message, .. } => {
                ServiceError::AgentRefused { agent, message }
            }
            e => ServiceError::AgentUnreachable {
                agent: t.agent.clone(),
                why: e.to_string(),
            },
        })?;
    info!(member = %t.member, operation = %op, ?stage, "restore ordered");
    Ok(op)
}

/// Follow an operation to its result and the last step it was in.
pub async fn follow(
    orders: &Orders<'_>,
    t: &Target,
    op: &str,
) -> Result<(pb::OperationResult, String), OrderError> {
    let mut step = String::new();
    let r = orders
        .follow(&t.agent_ref(), op, |p| {
            if !p.step.is_empty() {
                step = p.step.clone();
            }
        })
        .await?;
    Ok((r, step))
}
