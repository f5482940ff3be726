//! What agents call: register, heartbeat, events, a signal's test request, and a result an agent got by itself.

use super::*;

impl ControllerService {
    pub(super) async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = caller(&req)?;
        let raw = req.into_inner();
        let args = serde_json::json!({"agent": raw.agent, "address": raw.address, "set": raw.set, "member": raw.member, "version": raw.agent_version});
        let agent = raw.agent.clone();
        let result = async {
            self.require_agent(&who, &raw.agent, "Register")?;
            let reg = Registration::try_from(raw)?;
            self.inventory.register(reg).await
        }
        .await;
        let refusal = result.as_ref().err().map(|e| e.to_string());
        if self.inventory.registration_news(&agent, refusal) {
            self.record_audit(&who, "Register", args, &result).await;
        }
        let generation = result?;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_interval_ms: self.inventory.config().heartbeat_interval.as_millis() as u64,
            set_generation: generation,
        }))
    }

    pub(super) async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let who = caller(&req)?;
        let hb = req.into_inner();
        self.require_agent(&who, &hb.agent, "Heartbeat")?;
        let hb = Heartbeat::try_from(hb).map_err(ServiceError::from)?;
        let known = self
            .inventory
            .heartbeat(&hb.agent, hb.facts, hb.cert_not_after)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            register_again: !known,
        }))
    }

    pub(super) async fn report_event(
        &self,
        req: Request<pb::ReportEventRequest>,
    ) -> Result<Response<pb::ReportEventResponse>, Status> {
        let who = caller(&req)?;
        let ev = req.into_inner();
        let args = serde_json::json!({"agent": ev.agent, "event": ev.event, "code": ev.code, "operation_id": ev.operation_id, "message": ev.message});
        self.audited(&who, "ReportEvent", args, async {
            self.require_agent(&who, &ev.agent, "ReportEvent")?;
            info!(agent = %ev.agent, event = %ev.event, code = %ev.code, operation = %ev.operation_id, message = %ev.message, "agent event");
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::ReportEventResponse {}))
    }

    pub(super) async fn request_test(
        &self,
        req: Request<pb::RequestTestRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"agent": r.agent, "signal": r.signal});
        let result = self
            .audited(&who, "RequestTest", args, async {
                self.require_agent(&who, &r.agent, "RequestTest")?;
                let set = self
                    .inventory
                    .declared()
                    .member_of(&r.agent)
                    .map(|(s, _)| s.name.clone())
                    .ok_or_else(|| ServiceError::NotDeclared {
                        agent: r.agent.clone(),
                    })?;
                let policy = self.scheduler.policies(&set).await?.test;
                if policy.signal().map(|s| s.name()) != Some(r.signal.as_str()) {
                    return Err(ServiceError::NotSignalPolicy {
                        set,
                        policy: policy.to_string(),
                        signal: r.signal.clone(),
                    });
                }
                Ok(self
                    .fleet
                    .start_run(
                        vec![set],
                        None,
                        Default::default(),
                        "signal",
                        current_trace_id().unwrap_or_default(),
                    )
                    .await?)
            })
            .await;
        Ok(Response::new(pb::StartRunResponse {
            run_id: result?,
            skipped: vec![],
        }))
    }

    pub(super) async fn report_local_result(
        &self,
        req: Request<pb::ReportLocalResultRequest>,
    ) -> Result<Response<pb::ReportLocalResultResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let op = r
            .result
            .as_ref()
            .map(|x| x.operation_id.clone())
            .unwrap_or_default();
        let args = serde_json::json!({"agent": r.agent, "operation_id": op});
        let result = self
            .audited(&who, "ReportLocalResult", args, async {
            self.require_agent(&who, &r.agent, "ReportLocalResult")?;
            let declared = self.inventory.declared();
            let (set, member) =
                declared
                    .member_of(&r.agent)
                    .ok_or_else(|| ServiceError::NotDeclared {
                        agent: r.agent.clone(),
                    })?;
            let result = r
                .result
                .as_ref()
                .ok_or(tandem_proto::model::ModelError::Missing { field: "result" })?;
            let cx = self.local_context(&set.name, &member.agent).await?;
            crate::verdicts::check_local_result(&set.name, &member.name, result, &cx)?;
            let v = crate::verdicts::Verdict::from_result(&member.name, result, String::new());
            let message = format!(
                "agent {} tested member {} by itself while the controller was unreachable (operation {}): {}",
                r.agent,
                member.name,
                result.operation_id,
                v.kind.as_str()
            );
            crate::metrics::verdict(&set.name, &v);
            self.store.record_verdict(set.name.clone(), v).await?;
            self.store
                .set_event(set.name.clone(), "signal", message)
                .await?;
            Ok(())
            })
            .await;
        result?;
        Ok(Response::new(pb::ReportLocalResultResponse {}))
    }
}
