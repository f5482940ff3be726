//! The inventory changed at run time: list, add, change, remove sets.

use super::*;

impl ControllerService {
    pub(super) async fn list_inventory(
        &self,
        req: Request<pb::ListInventoryRequest>,
    ) -> Result<Response<pb::ListInventoryResponse>, Status> {
        self.require(&caller(&req)?, "ListInventory")?;
        let rows = self.inventory.set_rows(&req.into_inner().sets).await?;
        Ok(Response::new(pb::ListInventoryResponse {
            sets: rows.into_iter().map(inventory_set).collect(),
        }))
    }

    pub(super) async fn add_set(
        &self,
        req: Request<pb::AddSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "members": members_json(&r.members), "replace": r.replace, "from_config": r.from_config});
        let result = self
            .audited(&who, "AddSet", args, async {
                self.require(&who, "AddSet")?;
                let set = if r.from_config {
                    let cfg = self.inventory.config();
                    let declared = cfg
                        .sets
                        .iter()
                        .find(|s| s.name == r.set)
                        .ok_or_else(|| ServiceError::NotInConfig { set: r.set.clone() })?;
                    SetDecl::from(declared)
                } else {
                    if r.members.is_empty() {
                        return Err(ServiceError::NoMembersGiven);
                    }
                    SetDecl {
                        name: r.set.clone(),
                        members: r.members.iter().cloned().map(member_decl).collect(),
                    }
                };
                let row = self.inventory.add_set(set, r.replace, &who).await?;
                // A set added again starts with the policies of controller.toml.
                self.scheduler.forget(&r.set);
                Ok(row)
            })
            .await;
        Ok(Response::new(pb::InventorySetResponse {
            set: Some(inventory_set(result?)),
        }))
    }

    pub(super) async fn change_set(
        &self,
        req: Request<pb::ChangeSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "add": members_json(&r.add), "change": members_json(&r.change), "remove": r.remove});
        let result = self
            .audited(&who, "ChangeSet", args, async {
                self.require(&who, "ChangeSet")?;
                let changes = crate::inventory::MemberChanges {
                    add: r.add.iter().cloned().map(member_decl).collect(),
                    change: r
                        .change
                        .iter()
                        .map(|m| crate::inventory::MemberEdit {
                            name: m.name.clone(),
                            agent: (!m.agent.is_empty()).then(|| m.agent.clone()),
                            host: (!m.host.is_empty()).then(|| m.host.clone()),
                        })
                        .collect(),
                    remove: r.remove.clone(),
                };
                if changes.add.is_empty() && changes.change.is_empty() && changes.remove.is_empty()
                {
                    return Err(ServiceError::NothingChanges { set: r.set.clone() });
                }
                self.inventory.change_set(&r.set, changes, &who).await
            })
            .await;
        Ok(Response::new(pb::InventorySetResponse {
            set: Some(inventory_set(result?)),
        }))
    }

    pub(super) async fn remove_set(
        &self,
        req: Request<pb::RemoveSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set});
        let result = self
            .audited(&who, "RemoveSet", args, async {
                self.require(&who, "RemoveSet")?;
                if let Some(why) = self.fleet.held(&r.set) {
                    return Err(ServiceError::Maintenance(format!(
                        "cannot remove it: {why}; close or abort the window first"
                    )));
                }
                let row = self
                    .inventory
                    .remove_set(&r.set, &who, |set| self.fleet.active_run(set))
                    .await?;
                // Its policies set with tandemctl go with it.
                self.scheduler.set_policies(&r.set, None).await?;
                Ok(row)
            })
            .await;
        Ok(Response::new(pb::InventorySetResponse {
            set: Some(inventory_set(result?)),
        }))
    }
}
