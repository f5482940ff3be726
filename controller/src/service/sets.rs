//! What people read: agents, sets with their live state, history, the audit log.

use super::*;

impl ControllerService {
    pub(super) async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.require(&caller(&req)?, "ListAgents")?;
        let agents = self.inventory.list().into_iter().map(agent_info).collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    pub(super) async fn show_sets(
        &self,
        req: Request<pb::ShowSetsRequest>,
    ) -> Result<Response<pb::ShowSetsResponse>, Status> {
        self.require(&caller(&req)?, "ShowSets")?;
        let wanted = req.into_inner().sets;
        let cfg = self.inventory.config();
        let declared = self.inventory.declared();
        for name in &wanted {
            if declared.set(name).is_none() {
                return Err(ServiceError::UnknownSet { set: name.clone() }.into());
            }
        }
        let mut sets = Vec::new();
        for set in declared
            .sets
            .iter()
            .filter(|s| wanted.is_empty() || wanted.contains(&s.name))
        {
            let generation = self
                .store
                .generation(set.name.clone())
                .await
                .map_err(ServiceError::from)?
                .unwrap_or(1);
            let last = self
                .store
                .verdicts(set.name.clone(), 1)
                .await
                .map_err(ServiceError::from)?;
            let policies = self
                .scheduler
                .policies(&set.name)
                .await
                .map_err(ServiceError::from)?;
            let next_test = if self.fleet.set_active_since(&set.name).is_some() {
                None
            } else {
                policies.test.next_due(
                    &cfg.tz(),
                    jiff::Timestamp::now(),
                    last.first().map(|v| v.at),
                )
            };
            sets.push(pb::SetView {
                name: set.name.clone(),
                generation,
                members: self.member_views(set).await,
                verdict: Some(last.first().map(pb::Verdict::from).unwrap_or(pb::Verdict {
                    kind: pb::VerdictKind::NeverTested as i32,
                    ..Default::default()
                })),
                policies: Some(policies_pb(&policies)),
                next_test: next_test.map(timestamp_to_wire),
            });
        }
        // Sets needing a repair first (SPEC C3), then in inventory order.
        sets.sort_by_key(|s| {
            s.verdict
                .as_ref()
                .is_none_or(|v| v.kind != pb::VerdictKind::Errors as i32)
        });
        Ok(Response::new(pb::ShowSetsResponse { sets }))
    }

    pub(super) async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.require(&caller(&req)?, "History")?;
        let r = req.into_inner();
        let set = r.set.clone();
        if !self.inventory.ever_known(&set).await? {
            return Err(ServiceError::UnknownSet { set }.into());
        }
        let verdicts = self
            .store
            .verdicts(set.clone(), r.limit)
            .await
            .map_err(ServiceError::from)?;
        let events = self
            .store
            .set_events(set, r.limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::HistoryResponse {
            verdicts: verdicts.iter().map(pb::Verdict::from).collect(),
            events: events
                .into_iter()
                .map(|e| pb::SetEvent {
                    at: Some(timestamp_to_wire(e.at)),
                    kind: e.kind,
                    message: e.message,
                })
                .collect(),
        }))
    }

    pub(super) async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        self.require(&caller(&req)?, "Audit")?;
        let rows = self
            .store
            .audit_log(req.into_inner().limit)
            .await
            .map_err(ServiceError::from)?;
        let entries = rows
            .into_iter()
            .map(|r| pb::AuditEntry {
                id: r.id,
                at: Some(timestamp_to_wire(r.at)),
                identity: r.identity,
                action: r.action,
                arguments: r.arguments,
                outcome: r.outcome,
                trace_id: r.trace_id,
            })
            .collect();
        Ok(Response::new(pb::AuditResponse { entries }))
    }
}
