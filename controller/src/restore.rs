//! Restores, the controller's side (SPEC R1-R12): pick the member (the
//! set's primary unless named), order the agent's restore operation
//! (`OPERATION_KIND_RESTORE`, which runs R1-R11 itself and puts the old data
//! directory back on any failure before R9), follow it to its end and record
//! the outcome in the set's history (event kind `restore`).
//!
//! R12 (halt the set standbys-first before, re-seed every standby from the
//! restored primary, resume and run testdb after) belongs to maintenance
//! windows (issue 5). The two hooks [`r12_halt_set`] and
//! [`r12_reseed_and_resume`] are where that code plugs in; today they only
//! say in the log and the set's history that it was not done.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use tandem_proto::model::Role;
use tandem_proto::pb;
use tracing::{Instrument, info, info_span, warn};

use crate::agents::AgentClients;
use crate::error::ServiceError;
use crate::inventory::Inventory;
use crate::store::Store;

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

/// R12, before: halt the set, standbys fenced first.
///
/// TODO(issue 5, the lead): wire to the maintenance code (halt standbys
/// first, fence them, then the primary; no schedule starts anything on a
/// halted set). Until then the set is NOT halted: standbys keep running
/// and, after the restore, no longer follow the restored primary.
pub async fn r12_halt_set(store: &Store, set: &str) -> Result<(), ServiceError> {
    warn!(
        set,
        "R12 not wired yet: the set is not halted before the restore"
    );
    let _ = store
        .set_event(
            set.to_owned(),
            "restore",
            "R12: the set was not halted (maintenance windows are not wired to restores yet)"
                .into(),
        )
        .await;
    Ok(())
}

/// R12, after a successful restore: re-seed each standby from the restored
/// primary, resume the set, run testdb.
///
/// TODO(issue 5, the lead): wire to OPERATION_KIND_RESEED on each standby,
/// the resume of the set, and a fleet testdb run.
pub async fn r12_reseed_and_resume(store: &Store, set: &str) {
    warn!(
        set,
        "R12 not wired yet: standbys are not re-seeded after the restore"
    );
    let _ = store
        .set_event(
            set.to_owned(),
            "restore",
            "R12: standbys were not re-seeded; re-seed them from the restored primary".into(),
        )
        .await;
}

/// Order the restore from the target's agent; a task follows it to its end.
pub async fn start(
    inventory: &Arc<Inventory>,
    store: &Store,
    agents: &Arc<AgentClients>,
    r: &pb::RestoreRequest,
) -> Result<pb::RestoreResponse, ServiceError> {
    let member = (!r.member.is_empty()).then_some(r.member.as_str());
    let t = target(inventory, &r.set, member)?;
    if r.from.is_empty() {
        return Err(ServiceError::BadRequest(
            "--from is needed: daily, weekly, monthly, a backup file on the member's host, or remote:KEY".into(),
        ));
    }
    r12_halt_set(store, &r.set).await?;
    let generation = store.generation(r.set.clone()).await?.unwrap_or(1);
    let mut params = HashMap::from([
        ("from".to_owned(), r.from.clone()),
        (
            "request_id".to_owned(),
            format!("restore/{}/{}", r.set, Timestamp::now().as_millisecond()),
        ),
    ]);
    if !r.target_time.is_empty() {
        params.insert("target_time".into(), r.target_time.clone());
    }
    if r.replace {
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
    info!(set = %r.set, member = %t.member, operation = %op, "restore ordered");
    let (store2, set, op2, addr) = (store.clone(), r.set.clone(), op.clone(), t.address.clone());
    let agents2 = agents.clone();
    let member_name = t.member.clone();
    tokio::spawn(
        async move {
            let result = follow(&agents2, &addr, &op2).await;
            let message = match &result {
                Ok(r) if r.state == pb::OperationState::Succeeded as i32 => {
                    format!(
                        "member {member_name} restored ({op2}): {}",
                        r.notes.join("; ")
                    )
                }
                Ok(r) => format!(
                    "restore of member {member_name} failed ({op2}): {}",
                    r.reason
                ),
                Err(e) => format!("restore of member {member_name} ({op2}): {e}"),
            };
            let _ = store2.set_event(set.clone(), "restore", message).await;
            if result.is_ok_and(|r| r.state == pb::OperationState::Succeeded as i32) {
                r12_reseed_and_resume(&store2, &set).await;
            }
        }
        .instrument(info_span!("restore.follow", set = %r.set, operation = %op)),
    );
    Ok(pb::RestoreResponse {
        set: r.set.clone(),
        member: t.member,
        agent: t.agent,
        operation_id: op,
    })
}

/// Follow an operation to its result (bounded retries of a broken stream).
async fn follow(
    agents: &AgentClients,
    address: &str,
    op: &str,
) -> Result<pb::OperationResult, String> {
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
                if let Some(r) = p.result {
                    return Ok(r);
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    Err("lost the agent's progress stream".into())
}
