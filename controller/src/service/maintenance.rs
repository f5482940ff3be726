//! Maintenance windows: plan, open, close, abort, show.

use super::*;

impl ControllerService {
    pub(super) async fn maintenance_plan(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        self.require(&who, "MaintenancePlan")?;
        let c = WindowCall::try_from(r).map_err(ServiceError::from)?;
        let plan = self.maintenance.plan(&c.set, exec_only(&c)).await?;
        Ok(Response::new(pb::MaintenanceResponse {
            plan: Some(plan.into()),
            window: None,
        }))
    }

    pub(super) async fn maintenance_open(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "reason": r.reason, "repair": r.repair});
        let result = self
            .audited(&who, "MaintenanceOpen", args, async {
                self.require(&who, "MaintenanceOpen")?;
                let c = WindowCall::try_from(r.clone())?;
                self.maintenance
                    .open(
                        &c.set,
                        &c.reason,
                        exec_only(&c),
                        &who.uri(),
                        current_trace_id().unwrap_or_default(),
                    )
                    .await
            })
            .await;
        Ok(Response::new(pb::MaintenanceResponse {
            plan: None,
            window: Some(result?.into()),
        }))
    }

    pub(super) async fn maintenance_close(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        self.end_window(req, crate::maintenance::Ending::Close, "MaintenanceClose")
            .await
    }

    pub(super) async fn maintenance_abort(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        self.end_window(req, crate::maintenance::Ending::Abort, "MaintenanceAbort")
            .await
    }

    pub(super) async fn maintenance_show(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        self.require(&who, "MaintenanceShow")?;
        if self.inventory.set(&r.set).is_none() {
            return Err(ServiceError::UnknownSet { set: r.set }.into());
        }
        let w = self.maintenance.latest(&r.set).await?;
        Ok(Response::new(pb::MaintenanceResponse {
            plan: None,
            window: w.map(Into::into),
        }))
    }
}
