//! What each command does: one controller call, then output.

use serde_json::Value;
use tandem_proto::pb;

use crate::cli::{CertsCommand, Command, Connection, SetCommand};
use crate::output::{self, OutputFormat};

// The pieces every command shares live in `outcome` and `client`; they are
// re-exported here under their old paths.
pub use crate::client::Client;
pub use crate::outcome::{CtlError, Outcome, print, refused};

/// Run one command.
pub async fn run(
    conn: &Connection,
    format: OutputFormat,
    command: Command,
) -> Result<Outcome, CtlError> {
    match command {
        Command::Agents => {
            let agents = conn
                .connect()
                .await?
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(refused("ListAgents"))?
                .into_inner()
                .agents;
            print(
                format,
                output::agents_json(&agents),
                output::agents_human(&agents),
            );
            Ok(if agents.iter().all(output::agent_ok) {
                Outcome::Ok
            } else {
                Outcome::Bad
            })
        }
        Command::Controllers => {
            let answer = conn
                .connect()
                .await?
                .controllers(pb::ControllersRequest {})
                .await
                .map_err(refused("Controllers"))?
                .into_inner();
            print(
                format,
                output::controllers_json(&answer),
                output::controllers_human(&answer),
            );
            Ok(if answer.controllers.iter().any(|c| c.leader) {
                Outcome::Ok
            } else {
                Outcome::Bad
            })
        }
        Command::Show { sets } => {
            let sets = conn
                .connect()
                .await?
                .show_sets(pb::ShowSetsRequest { sets })
                .await
                .map_err(refused("ShowSets"))?
                .into_inner()
                .sets;
            print(format, output::sets_json(&sets), output::sets_human(&sets));
            let bad = sets.iter().any(|s| {
                output::verdict_bad(&s.verdict) || !s.members.iter().all(output::member_ok)
            });
            Ok(if bad { Outcome::Bad } else { Outcome::Ok })
        }
        Command::Maintenance(cmd) => crate::maintenance::run(conn, format, cmd).await,
        Command::Testdb {
            sets,
            all,
            member,
            copy,
        } => crate::testdb::run(conn, format, sets, all, member, copy).await,
        Command::Watch { run } => crate::testdb::watch(conn, format, run).await,
        Command::Cancel { run } => crate::testdb::cancel(conn, format, run).await,
        Command::Set(SetCommand::List { sets }) => crate::inventory::list(conn, format, sets).await,
        Command::Set(SetCommand::Add {
            set,
            members,
            from_config,
            replace,
        }) => {
            crate::inventory::add(
                conn,
                format,
                pb::AddSetRequest {
                    set,
                    members,
                    replace,
                    from_config,
                },
            )
            .await
        }
        Command::Set(SetCommand::Change {
            set,
            add_member,
            change_member,
            remove_member,
        }) => {
            crate::inventory::change(
                conn,
                format,
                pb::ChangeSetRequest {
                    set,
                    add: add_member,
                    change: change_member,
                    remove: remove_member,
                },
            )
            .await
        }
        Command::Set(SetCommand::Remove { set, yes }) => {
            crate::inventory::remove(conn, format, set, yes).await
        }
        Command::Restore {
            set,
            from,
            target_time,
            latest: _,
            replace,
            yes,
            member,
            dry_run,
        } => {
            if dry_run {
                return crate::restore::dry_run(
                    conn,
                    format,
                    pb::RestoreRequest {
                        set,
                        member: member.unwrap_or_default(),
                        from,
                        target_time: target_time.unwrap_or_default(),
                        replace,
                    },
                )
                .await;
            }
            crate::restore::run(
                conn,
                format,
                crate::restore::RestoreArgs {
                    set,
                    member,
                    from,
                    target_time,
                    replace,
                    yes,
                },
            )
            .await
        }
        Command::Backup { set, member, copy } => {
            crate::testdb::backup(conn, format, set, member, None, copy).await
        }
        Command::Copy {
            set,
            member,
            archive_file,
            copy,
        } => crate::testdb::backup(conn, format, set, member, Some(archive_file), copy).await,
        Command::Backups {
            set,
            target_time,
            member,
        } => {
            let mut client = conn.connect().await?;
            let r = client
                .list_backups(pb::ListBackupsRequest { set: set.clone() })
                .await
                .map_err(refused("ListBackups"))?
                .into_inner();
            let Some(target_time) = target_time else {
                print(format, output::backups_json(&r), output::backups_human(&r));
                return Ok(if r.problems.is_empty() {
                    Outcome::Ok
                } else {
                    Outcome::Bad
                });
            };
            let p = client
                .restore_plan(pb::RestoreRequest {
                    set,
                    member: member.unwrap_or_default(),
                    from: "latest".into(),
                    target_time,
                    replace: false,
                })
                .await
                .map_err(refused("RestorePlan"))?
                .into_inner();
            let mut json = output::backups_json(&r);
            json["target_time"] = crate::restore::plan_json(&p);
            let human = format!(
                "{}\n{}",
                output::backups_human(&r),
                crate::restore::plan_human(&p)
            );
            print(format, json, human);
            Ok(if p.reachable {
                Outcome::Ok
            } else {
                Outcome::Bad
            })
        }
        Command::WalPrune { set, dry_run: _ } => {
            let r = conn
                .connect()
                .await?
                .plan_wal_prune(pb::WalPruneRequest { set })
                .await
                .map_err(refused("PlanWalPrune"))?
                .into_inner();
            print(
                format,
                output::wal_prune_json(&r),
                output::wal_prune_human(&r),
            );
            Ok(
                if r.problems.is_empty() && r.plans.iter().all(|p| p.problem.is_empty()) {
                    Outcome::Ok
                } else {
                    Outcome::Bad
                },
            )
        }
        Command::History { set, limit } => {
            let h = conn
                .connect()
                .await?
                .history(pb::HistoryRequest {
                    set: set.clone(),
                    limit,
                })
                .await
                .map_err(refused("History"))?
                .into_inner();
            let events: Vec<Value> = h
                .events
                .iter()
                .map(|e| serde_json::json!({"at": output::ts(e.at), "kind": e.kind, "message": e.message}))
                .collect();
            let json = serde_json::json!({
                "set": set,
                "verdicts": h.verdicts.iter().map(|v| output::verdict_json(&Some(v.clone()))).collect::<Vec<_>>(),
                "events": events,
            });
            let results: Vec<(String, pb::Verdict)> =
                h.verdicts.into_iter().map(|v| (set.clone(), v)).collect();
            let mut human = output::verdicts_human(&results);
            if !h.events.is_empty() {
                let rows: Vec<Vec<String>> = h
                    .events
                    .iter()
                    .map(|e| {
                        vec![
                            output::ts(e.at).unwrap_or_default(),
                            e.kind.clone(),
                            e.message.clone(),
                        ]
                    })
                    .collect();
                human.push_str("\n\n");
                human.push_str(&output::table(&["AT", "EVENT", "WHAT"], &rows));
            }
            print(format, json, human);
            Ok(Outcome::Ok)
        }
        Command::Limits {
            fleet,
            per_host,
            reset,
        } => {
            let l = conn
                .connect()
                .await?
                .limits(pb::LimitsRequest {
                    fleet,
                    per_host,
                    reset,
                })
                .await
                .map_err(refused("Limits"))?
                .into_inner();
            let json = serde_json::json!({
                "fleet": l.fleet,
                "per_host": l.per_host,
                "source": if l.overridden { "tandemctl" } else { "controller.toml" },
                "running": l.running,
                "waiting": l.waiting,
            });
            let human = format!(
                "limits: {} tests at once in the fleet, {} per host (from {})\nnow: {} running, {} waiting",
                l.fleet,
                l.per_host,
                if l.overridden {
                    "tandemctl limits; --reset goes back to controller.toml"
                } else {
                    "controller.toml"
                },
                l.running,
                l.waiting
            );
            print(format, json, human);
            Ok(Outcome::Ok)
        }
        Command::Audit { limit } => {
            let entries = conn
                .connect()
                .await?
                .audit(pb::AuditRequest { limit })
                .await
                .map_err(refused("Audit"))?
                .into_inner()
                .entries;
            print(
                format,
                output::audit_json(&entries),
                output::audit_human(&entries),
            );
            Ok(Outcome::Ok)
        }
        Command::Set(SetCommand::Policy {
            set,
            test,
            archive_copy,
            archive_file,
            mode,
            reset,
        }) => {
            if !reset
                && test.is_none()
                && archive_copy.is_none()
                && archive_file.is_none()
                && mode.is_none()
            {
                return Err(CtlError::Usage(
                    "say what to change: --test, --archive-copy, --archive-file, --mode or --reset (`tandemctl show SET` shows the policies)".into(),
                ));
            }
            let p = conn
                .connect()
                .await?
                .set_policy(pb::SetPolicyRequest {
                    set: set.clone(),
                    test,
                    archive_copy,
                    archive_file,
                    mode: mode.map(|m| m.as_str().to_owned()),
                    reset,
                })
                .await
                .map_err(refused("SetPolicy"))?
                .into_inner()
                .policies;
            let json = serde_json::json!({"set": set, "policies": output::policies_json(&p)});
            let p = p.unwrap_or_default();
            let human = format!(
                "set {set}: test {}, archive copy {}, archive file {} (from {})",
                p.test,
                p.archive_copy,
                if p.archive_file { "on" } else { "off" },
                p.source
            );
            print(format, json, human);
            Ok(Outcome::Ok)
        }
        Command::Certs(CertsCommand::Init {
            dir,
            agents,
            users,
            hosts,
            force,
        }) => {
            let report = crate::certs::init(&crate::certs::CertsPlan {
                dir: dir.clone(),
                agents,
                users,
                hosts,
                force,
            })?;
            let json = serde_json::json!({
                "dir": dir,
                "created": report.created,
                "kept": report.kept,
            });
            let mut human = format!(
                "certificates in {}: {} created, {} kept",
                dir.display(),
                report.created.len(),
                report.kept.len()
            );
            for p in &report.created {
                human.push_str(&format!("\n  created {}", p.display()));
            }
            print(format, json, human);
            Ok(Outcome::Ok)
        }
        Command::Certs(CertsCommand::Renew { dir, holder, name }) => {
            use crate::certs::Holder;
            use crate::cli::HolderKind;
            let holder = match (holder, name) {
                (HolderKind::Controller, None) => Holder::Controller,
                (HolderKind::Agent, Some(name)) => Holder::Agent(name),
                (HolderKind::User, Some(name)) => Holder::User(name),
                (HolderKind::Controller, Some(name)) => {
                    return Err(CtlError::Usage(format!(
                        "the controller has no name (`{name}`): use `tandemctl certs renew --dir DIR controller`"
                    )));
                }
                (HolderKind::Agent | HolderKind::User, None) => {
                    return Err(CtlError::Usage(
                        "say whose certificate: `tandemctl certs renew --dir DIR agent NAME` (or `user NAME`)".to_owned(),
                    ));
                }
            };
            let r = crate::certs::renew(&dir, &holder)?;
            let json = serde_json::json!({
                "dir": dir,
                "identity": r.identity.to_string(),
                "cert": r.cert,
                "key": r.key,
                "old_cert": r.old_cert,
                "old_key": r.old_key,
                "serial": r.serial,
                "not_after": r.not_after,
            });
            let human = format!(
                "renewed {}: {} (serial {}, valid until {}); the old files are {} and {}",
                r.identity,
                r.cert.display(),
                r.serial,
                r.not_after,
                r.old_cert.display(),
                r.old_key.display()
            );
            print(format, json, human);
            Ok(Outcome::Ok)
        }
    }
}
