//! Fleet runs: testdb, backup and copy runs, watching and cancelling them, policies, limits, backups listed, WAL retention planned on every member.

use super::*;

impl ControllerService {
    pub(super) async fn start_testdb(
        &self,
        req: Request<pb::StartTestdbRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"sets": r.sets, "all": r.all, "member": r.member,
            "mode": r.mode, "allow_commit_stall": r.allow_commit_stall});
        let result = self
            .audited(&who, "StartTestdb", args, async {
                self.require(&who, "StartTestdb")?;
                let call = TestdbCall::try_from(r.clone())?;
                let all = call.sets == Sets::All;
                let declared = self.inventory.declared();
                let sets: Vec<String> = match call.sets {
                    Sets::All => declared.sets.iter().map(|s| s.name.clone()).collect(),
                    Sets::Named(sets) => sets,
                };
                if sets.is_empty() {
                    return Err(ServiceError::NoSetsDeclared);
                }
                for name in &sets {
                    if declared.set(name).is_none() {
                        return Err(ServiceError::UnknownSet { set: name.clone() });
                    }
                }
                // A set held by a maintenance window: refused when named, left
                // out of --all with the reason.
                let mut skipped = Vec::new();
                let mut runnable = Vec::new();
                for name in sets {
                    match self.fleet.held(&name) {
                        Some(why) if !all => return Err(ServiceError::Maintenance(why)),
                        Some(why) => skipped.push(pb::SkippedSet {
                            set: name,
                            reason: why,
                        }),
                        None => runnable.push(name),
                    }
                }
                let sets = runnable;
                if sets.is_empty() {
                    return Ok((String::new(), skipped));
                }
                let member = call.member;
                let copy = call.copy;
                if let Some(m) = &member
                    && let [set] = &sets[..]
                    && declared.set(set).and_then(|s| s.member(m)).is_none()
                {
                    return Err(ServiceError::UnknownMember {
                        set: set.clone(),
                        member: m.clone(),
                    });
                }
                let run_id = self
                    .fleet
                    .start_run(
                        sets,
                        member,
                        copy,
                        "manual",
                        current_trace_id().unwrap_or_default(),
                    )
                    .await?;
                Ok((run_id, skipped))
            })
            .await;
        let (run_id, skipped) = result?;
        Ok(Response::new(pb::StartRunResponse { run_id, skipped }))
    }

    pub(super) async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Stream<pb::RunProgress>>, Status> {
        self.require(&caller(&req)?, "WatchRun")?;
        let id = request::run_id(req.into_inner().run_id)?;
        let run = self
            .fleet
            .get(&id)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::UnknownRun { run: id })?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut seen = 0;
            let mut changes = run.subscribe();
            loop {
                let (events, done) = run.events_from(seen);
                seen += events.len();
                for ev in events {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
                // Cancel-safe: changed() only waits for the next event count.
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    pub(super) async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"run_id": r.run_id});
        let result = self
            .audited(&who, "CancelRun", args, async {
                self.require(&who, "CancelRun")?;
                request::run_id(r.run_id.clone())?;
                let by = match &who {
                    tandem_proto::identity::Identity::User(name) => name.clone(),
                    other => other.uri(),
                };
                match self.fleet.cancel_run(&r.run_id, &by).await {
                    Some(c) => Ok(c),
                    None => match self.store.run(r.run_id.clone()).await? {
                        Some(_) => Err(ServiceError::RunFinished {
                            run: r.run_id.clone(),
                        }),
                        None => Err(ServiceError::UnknownRun {
                            run: r.run_id.clone(),
                        }),
                    },
                }
            })
            .await;
        let c = result?;
        Ok(Response::new(pb::CancelRunResponse {
            queued: c.queued,
            stopping: c.stopping,
        }))
    }

    pub(super) async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "test": r.test, "archive_copy": r.archive_copy, "archive_file": r.archive_file, "mode": r.mode, "reset": r.reset});
        let result = self
            .audited(&who, "SetPolicy", args, async {
            self.require(&who, "SetPolicy")?;
            let cfg = self.inventory.config();
            if self.inventory.set(&r.set).is_none() {
                return Err(ServiceError::UnknownSet { set: r.set.clone() });
            }
            let parse = |what: &str, text: &Option<String>| -> Result<Option<crate::schedule::Policy>, ServiceError> {
                let Some(text) = text else { return Ok(None) };
                let p: crate::schedule::Policy = text
                    .parse()
                    .map_err(|e: crate::schedule::PolicyError| ServiceError::BadPolicy(format!("{what}: {e}")))?;
                if p.is_calendar() && cfg.time_zone.is_none() {
                    return Err(ServiceError::BadPolicy(format!(
                        "{what}: `{p}` is a calendar policy and controller.toml has no `time_zone`; set one (e.g. \"UTC\") and restart the controller, or use interval=SECONDS"
                    )));
                }
                Ok(Some(p))
            };
            let test = parse("test policy", &r.test)?;
            let archive_copy = parse("archive-copy policy", &r.archive_copy)?;
            // `agent`: back to each agent's default.
            let mode = match r.mode.as_deref() {
                None => None,
                Some("agent") => Some(None),
                Some(m) => Some(Some(m.parse::<tandem_proto::model::TestMode>().map_err(
                    |e| ServiceError::BadPolicy(format!("{e}, or agent (each agent's default)")),
                )?)),
            };
            if r.reset {
                return Ok(self.scheduler.set_policies(&r.set, None).await?);
            }
            let mut p = self.scheduler.policies(&r.set).await?;
            if let Some(t) = test {
                p.test = t;
            }
            if let Some(a) = archive_copy {
                p.archive_copy = a;
            }
            if let Some(f) = r.archive_file {
                p.archive_file = f;
            }
            if let Some(m) = mode {
                p.mode = m;
            }
            Ok(self.scheduler.set_policies(&r.set, Some(&p)).await?)
            })
            .await;
        Ok(Response::new(pb::SetPolicyResponse {
            policies: Some(policies_pb(&result?)),
        }))
    }

    pub(super) async fn limits(
        &self,
        req: Request<pb::LimitsRequest>,
    ) -> Result<Response<pb::LimitsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let changing = r.reset || r.fleet.is_some() || r.per_host.is_some();
        if changing {
            let args =
                serde_json::json!({"fleet": r.fleet, "per_host": r.per_host, "reset": r.reset});
            self.audited(&who, "Limits", args, async {
                self.require(&who, "Limits.change")?;
                let new = match LimitsCall::try_from(r)? {
                    LimitsCall::Reset => None,
                    LimitsCall::Change { fleet, per_host } => {
                        let cur = self.fleet.limits();
                        Some(crate::config::Limits {
                            fleet: fleet.unwrap_or(cur.fleet),
                            per_host: per_host.unwrap_or(cur.per_host),
                        })
                    }
                    LimitsCall::Show => return Ok(self.fleet.limits()),
                };
                Ok(self.fleet.set_limits(new).await?)
            })
            .await?;
        } else {
            self.require(&who, "Limits")?;
        }
        let l = self.fleet.limits();
        let (waiting, running) = self.fleet.queue_lengths();
        Ok(Response::new(pb::LimitsResponse {
            fleet: l.fleet,
            per_host: l.per_host,
            overridden: self
                .fleet
                .limits_overridden()
                .await
                .map_err(ServiceError::from)?,
            running: running as u32,
            waiting: waiting as u32,
        }))
    }

    pub(super) async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "member": r.member,
            "archive_copy": r.archive_copy, "archive_file": r.archive_file,
            "mode": r.mode, "allow_commit_stall": r.allow_commit_stall});
        let result = self
            .audited(&who, "Backup", args, async {
                self.require(&who, "Backup")?;
                let call = BackupCall::try_from(r.clone())?;
                check_member(&self.inventory, &call.set, call.member.as_deref())?;
                if let Some(why) = self.fleet.held(&call.set) {
                    return Err(ServiceError::BadRequest(why));
                }
                let origin = match call.kind {
                    BackupKind::Tested => crate::fleet::BACKUP_ORIGIN,
                    BackupKind::ArchiveCopy => crate::fleet::ARCHIVE_ORIGIN,
                    BackupKind::ArchiveFile => crate::fleet::ARCHIVE_FILE_ORIGIN,
                };
                Ok(self
                    .fleet
                    .start_run(
                        vec![call.set],
                        call.member,
                        call.copy,
                        origin,
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

    pub(super) async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.require(&caller(&req)?, "ListBackups")?;
        let set = req.into_inner().set;
        Ok(Response::new(
            crate::restore::list_backups(&self.inventory, &self.agents, &set).await?,
        ))
    }

    pub(super) async fn plan_wal_prune(
        &self,
        req: Request<pb::WalPruneRequest>,
    ) -> Result<Response<pb::WalPruneResponse>, Status> {
        self.require(&caller(&req)?, "PlanWalPrune")?;
        let set_name = req.into_inner().set;
        let Some(set) = self.inventory.set(&set_name) else {
            return Err(ServiceError::UnknownSet { set: set_name }.into());
        };
        let answers =
            crate::agents::ask_members(&self.inventory, &self.agents, &set, |mut c| async move {
                c.plan_wal_prune(pb::WalPruneRequest::default()).await
            })
            .await;
        let mut out = pb::WalPruneResponse {
            set: set.name.clone(),
            ..Default::default()
        };
        for (member, answer) in answers {
            match answer {
                Ok(r) => {
                    out.plans.extend(r.plans.into_iter().map(|mut p| {
                        p.member = member.clone();
                        p
                    }));
                    out.problems
                        .extend(r.problems.into_iter().map(|p| format!("{member}: {p}")));
                }
                Err(p) => out.problems.push(p),
            }
        }
        out.plans
            .sort_by(|a, b| (&a.member, &a.location).cmp(&(&b.member, &b.location)));
        out.problems.sort();
        Ok(Response::new(out))
    }
}
