//! Restores, and following an agent's operation for tandemctl.

use super::*;

impl ControllerService {
    pub(super) async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "member": r.member, "from": r.from,
            "target_time": r.target_time, "replace": r.replace});
        let result = self
            .audited(&who, "Restore", args, async {
                self.require(&who, "Restore")?;
                let c = RestoreCall::try_from(r.clone())?;
                let w = self
                    .maintenance
                    .open_restore(
                        &c.set,
                        c.member.as_deref(),
                        crate::maintenance::plan::RestoreOrder {
                            from: c.from,
                            target_time: c.target_time,
                            replace: c.replace,
                            peer: None,
                        },
                        &who.uri(),
                        current_trace_id().unwrap_or_default(),
                    )
                    .await?;
                let o = w.restore.clone().unwrap_or_default();
                Ok::<_, ServiceError>(pb::RestoreResponse {
                    set: w.set.clone(),
                    member: o.member,
                    agent: o.agent,
                    operation_id: o.operation_id,
                    window: Some(w.into()),
                })
            })
            .await;
        Ok(Response::new(result?))
    }

    pub(super) async fn restore_plan(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestorePlanResponse>, Status> {
        self.require(&caller(&req)?, "RestorePlan")?;
        let c = RestoreCall::try_from(req.into_inner()).map_err(ServiceError::from)?;
        let (plan, _) = crate::restore::plan(
            &self.inventory,
            &self.agents,
            &c.set,
            c.member.as_deref(),
            &c.from,
            c.target_time.as_deref(),
        )
        .await?;
        Ok(Response::new(plan))
    }

    pub(super) async fn watch_operation(
        &self,
        req: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Stream<pb::Progress>>, Status> {
        self.require(&caller(&req)?, "WatchOperation")?;
        let r = WatchOperationCall::try_from(req.into_inner()).map_err(ServiceError::from)?;
        let t = crate::restore::target(&self.inventory, &r.set, Some(&r.member))?;
        let mut client =
            self.agents
                .client(&t.address)
                .map_err(|e| ServiceError::AgentUnreachable {
                    agent: t.agent.clone(),
                    why: e.to_string(),
                })?;
        let stream = client
            .watch(pb::WatchRequest {
                operation_id: r.operation_id,
            })
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
