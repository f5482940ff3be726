//! Restores, the controller's side (SPEC R1-R12): the member to restore
//! (the set's primary unless named), the agent's restore orders
//! (a restore order with stage prepare, then swap; the
//! agent runs R1-R11 and puts the old data directory back on any failure
//! before R9), and following one to its end.
//!
//! A backup on another member's host (`--from MEMBER:/path`,
//! [`tandem_proto::order::BackupSource`]) is fetched by the restored
//! member's agent from the holder's agent under a grant: [`holder`] finds
//! the holding member, [`grant`] asks its agent for one (audited), and the
//! prepare order carries it ([`tandem_proto::order::PeerSource`]).
//!
//! The restore itself runs as a maintenance window (R12,
//! [`crate::maintenance::Maintenance::open_restore`]): prepared while the
//! set serves, standbys fenced and stopped first, the member restored, each
//! standby re-seeded from it, the set resumed and tested.

use std::time::Duration;

use tandem_proto::model::{AgentState, Role};
use tandem_proto::order::{BackupSource, Order, PeerSource, RestoreStage};
use tandem_proto::pb;
use tracing::info;

pub mod choose;
mod plan;

pub use plan::{WalReach, has_log_position, list_backups, plan, space_check, wal_check};

use crate::error::ServiceError;
use crate::inventory::Inventory;
use crate::maintenance::plan::RestoreOrder;
use crate::orders::{AgentRef, OrderError, Orders};
pub use tandem_proto::window::{RestoreProgress as Outcome, RestoreState};

/// The member to restore and how to reach its agent.
#[derive(Debug, Clone)]
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
        peer: o.peer.clone(),
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

/// The member whose host holds the backup `from` names, and the file
/// there, when it is not the restored member `t`. `from` naming `t`'s own
/// host becomes the plain file. Refused, naming the member and what to do,
/// when the holder is not a member of the set or its agent is not online.
pub fn holder(
    inv: &Inventory,
    set: &str,
    t: &Target,
    order: &mut RestoreOrder,
) -> Result<Option<(Target, String)>, ServiceError> {
    let (member, file) = match BackupSource::parse(&order.from)
        .map_err(|e| ServiceError::BadRequest(e.to_string()))?
    {
        BackupSource::Member { member, file } => (member.to_owned(), file.to_owned()),
        BackupSource::Local(_) | BackupSource::Remote(_) => return Ok(None),
    };
    if member == t.member {
        order.from = file;
        return Ok(None);
    }
    let h = target(inv, set, Some(&member))?;
    let view = inv.get(&h.agent);
    if view.as_ref().map(|v| v.row.state) != Some(AgentState::Online) {
        return Err(ServiceError::Maintenance(format!(
            "the backup {file} is on member {member}'s host, and its agent `{}` is {}: start it (or restore from a backup on {}'s host or in the remote store); nothing was written",
            h.agent,
            view.map_or("never seen", |_| "offline"),
            t.member,
        )));
    }
    Ok(Some((h, file)))
}

/// How long a grant lets the restored member's agent fetch the file.
pub const GRANT_TTL: Duration = Duration::from_secs(30 * 60);

/// Ask the holder's agent to let `t`'s agent fetch `file` for
/// [`GRANT_TTL`]; recorded in the audit log (who asked, the file, the
/// peer, the grant id and its end, or why it was refused).
pub async fn grant(
    orders: &Orders<'_>,
    timeout: Duration,
    holder: &Target,
    t: &Target,
    file: &str,
    who: &str,
    trace_id: &str,
) -> Result<PeerSource, ServiceError> {
    let asked = async {
        let mut c =
            orders
                .agents
                .client(&holder.address)
                .map_err(|e| ServiceError::AgentUnreachable {
                    agent: holder.agent.clone(),
                    why: e.to_string(),
                })?;
        let unreachable = |m: String| {
            ServiceError::Maintenance(format!(
                "cannot reach member {}'s agent `{}` to fetch {file} from its host ({m}): start it, or restore from a backup on {}'s host or in the remote store; nothing was written",
                holder.member, holder.agent, t.member
            ))
        };
        let asked = c.grant_backup(pb::GrantBackupRequest {
            peer_agent: t.agent.clone(),
            file: file.to_owned(),
            ttl_seconds: GRANT_TTL.as_secs() as u32,
        });
        match tokio::time::timeout(timeout, asked).await {
            Err(_) => Err(unreachable(format!("it did not answer within {timeout:?}"))),
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ) =>
            {
                Err(unreachable(s.message().to_owned()))
            }
            Ok(Err(s)) => Err(ServiceError::AgentRefused {
                agent: holder.agent.clone(),
                message: format!(
                    "member {}'s agent will not grant {file}: {}",
                    holder.member,
                    s.message()
                ),
            }),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }
    .await;
    let mut args = serde_json::json!({
        "holder": holder.member, "holder_agent": holder.agent, "file": file,
        "peer_agent": t.agent, "ttl_seconds": GRANT_TTL.as_secs(),
    });
    let outcome = match &asked {
        Ok(g) => {
            args["grant_id"] = g.grant_id.clone().into();
            args["expires_at"] =
                tandem_proto::model::timestamp_from_wire("expires_at", g.expires_at)
                    .ok()
                    .flatten()
                    .map(|t| t.to_string())
                    .unwrap_or_default()
                    .into();
            "ok".to_owned()
        }
        Err(e) => e.to_string(),
    };
    if let Err(e) = orders
        .store
        .audit(
            who.to_owned(),
            "GrantBackup",
            args.to_string(),
            outcome,
            trace_id.to_owned(),
        )
        .await
    {
        tracing::warn!(error = %e, "cannot write the audit record");
    }
    let g = asked?;
    info!(holder = %holder.member, peer = %t.agent, %file, grant = %g.grant_id, "backup granted for a restore");
    Ok(PeerSource {
        member: holder.member.clone(),
        agent: holder.agent.clone(),
        address: holder.address.clone(),
        file: file.to_owned(),
        grant_id: g.grant_id,
        bytes: g.bytes,
        unpacked_bytes: g.unpacked_bytes,
    })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tandem_proto::model::{Facts, Registration, ServerState};

    use super::*;
    use crate::config::ControllerConfig;
    use crate::store::Store;

    async fn inventory(dir: &std::path::Path) -> Inventory {
        let text = format!(
            "listen = \"127.0.0.1:1\"\nstore = \"{}\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n\
             [[sets]]\nname = \"billing\"\nmembers = [{{ name = \"db1\" }}, {{ name = \"db2\" }}, {{ name = \"db3\" }}]\n",
            dir.join("c.db").display()
        );
        let cfg = Arc::new(ControllerConfig::parse(std::path::Path::new("c.toml"), &text).unwrap());
        let store = Store::open(&cfg.store).unwrap();
        let inv = Inventory::load(cfg, store).await.unwrap();
        for (m, port) in [("db1", 1), ("db2", 2)] {
            inv.register(Registration {
                agent: m.into(),
                address: format!("127.0.0.1:{port}"),
                set: "billing".into(),
                member: m.into(),
                agent_version: "test".into(),
                facts: Facts::unreachable("postgres", "/d", ServerState::Running, "x".into()),
                cert_not_after: None,
            })
            .await
            .unwrap();
        }
        inv
    }

    fn order(from: &str) -> RestoreOrder {
        RestoreOrder {
            from: from.into(),
            target_time: None,
            replace: false,
            peer: None,
        }
    }

    #[tokio::test]
    async fn a_file_on_another_members_host_names_its_holder_and_one_on_its_own_is_plain() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path()).await;
        let t = target(&inv, "billing", Some("db1")).unwrap();
        let file = "/var/b/daily-20261121T043007Z-0_1-0_2.tar.zst";

        let mut o = order(&format!("db2:{file}"));
        let (h, f) = holder(&inv, "billing", &t, &mut o).unwrap().unwrap();
        assert_eq!(
            (h.member.as_str(), h.address.as_str()),
            ("db2", "127.0.0.1:2")
        );
        assert_eq!(f, file);
        assert_eq!(o.from, format!("db2:{file}"));

        // The restored member's own host: the plain file, no grant.
        let mut o = order(&format!("db1:{file}"));
        assert!(holder(&inv, "billing", &t, &mut o).unwrap().is_none());
        assert_eq!(o.from, file);
        // The other forms are left alone.
        for from in ["daily", file, "remote:billing/backups/x"] {
            let mut o = order(from);
            assert!(holder(&inv, "billing", &t, &mut o).unwrap().is_none());
            assert_eq!(o.from, from);
        }
        // Not a member, never seen, a relative path: refused, saying which.
        let e = holder(&inv, "billing", &t, &mut order(&format!("db9:{file}"))).unwrap_err();
        assert!(matches!(e, ServiceError::UnknownMember { .. }), "{e}");
        let e = holder(&inv, "billing", &t, &mut order(&format!("db3:{file}"))).unwrap_err();
        assert!(e.to_string().contains("db3"), "{e}");
        let e = holder(&inv, "billing", &t, &mut order("db2:daily.tar.zst")).unwrap_err();
        assert!(e.to_string().contains("MEMBER:/absolute/path"), "{e}");
    }
}
