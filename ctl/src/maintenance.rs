//! `tandemctl maintenance`: plan, open, close, abort and show a set's
//! maintenance window (SPEC T4, C4).
//!
//! `open`, `close` and `abort` follow the window until it stops (closed,
//! failed or aborted), printing each step as it ends on stderr, then the
//! report; `--detach` returns at once (the window goes on in the
//! controller either way: Ctrl-C stops only the display). Exit codes: 0 the
//! window closed clean (or was aborted as asked), 1 it stopped with a failed
//! step or the testdb after the repair was not clean (the set stays
//! halted), 2 the command could not run.

use serde_json::Value;
use tandem_proto::pb;
use tandem_proto::window::{Plan, Window};

use crate::cli::{Connection, MaintenanceCommand};
use crate::outcome::{CtlError, Outcome, print, refused};
use crate::output::OutputFormat;
use crate::window::{follow_window, json, outcome, plan_human, read, window_human};

async fn follow(
    conn: &Connection,
    format: OutputFormat,
    set: &str,
    w: Window,
) -> Result<Outcome, CtlError> {
    let w = follow_window(conn, format, set, w, false).await?;
    print(format, json(&w), window_human(&w));
    Ok(outcome(&w))
}

pub async fn run(
    conn: &Connection,
    format: OutputFormat,
    cmd: MaintenanceCommand,
) -> Result<Outcome, CtlError> {
    let mut client = conn.connect().await?;
    let req = |set: &str, reason: &str| pb::MaintenanceRequest {
        set: set.to_owned(),
        reason: reason.to_owned(),
        repair: String::new(),
    };
    let cmd_is_close = matches!(cmd, MaintenanceCommand::Close { .. });
    match cmd {
        MaintenanceCommand::Plan { set, repair } => {
            let r = client
                .maintenance_plan(pb::MaintenanceRequest {
                    repair,
                    ..req(&set, "")
                })
                .await
                .map_err(refused("MaintenancePlan"))?
                .into_inner();
            let p: Plan = read("plan", r.plan)?;
            print(format, json(&p), plan_human(&p));
            Ok(Outcome::Ok)
        }
        MaintenanceCommand::Open {
            set,
            reason,
            repair,
            detach,
        } => {
            let r = client
                .maintenance_open(pb::MaintenanceRequest {
                    repair,
                    ..req(&set, &reason)
                })
                .await
                .map_err(refused("MaintenanceOpen"))?
                .into_inner();
            let w: Window = read("window", r.window)?;
            if format == OutputFormat::Human {
                eprintln!(
                    "window {} opened on set {set}; {}",
                    w.id,
                    if detach {
                        format!("follow it with `tandemctl maintenance show {set}`")
                    } else {
                        "following it (Ctrl-C stops only this display)".into()
                    }
                );
            }
            if detach {
                print(format, json(&w), window_human(&w));
                return Ok(Outcome::Ok);
            }
            follow(conn, format, &set, w).await
        }
        MaintenanceCommand::Close { set, detach } | MaintenanceCommand::Abort { set, detach } => {
            let close = cmd_is_close;
            let r = if close {
                client
                    .maintenance_close(req(&set, ""))
                    .await
                    .map_err(refused("MaintenanceClose"))?
            } else {
                client
                    .maintenance_abort(req(&set, ""))
                    .await
                    .map_err(refused("MaintenanceAbort"))?
            };
            let w: Window = read("window", r.into_inner().window)?;
            if detach {
                print(format, json(&w), window_human(&w));
                return Ok(Outcome::Ok);
            }
            follow(conn, format, &set, w).await
        }
        MaintenanceCommand::Show { set } => {
            let r = client
                .maintenance_show(req(&set, ""))
                .await
                .map_err(refused("MaintenanceShow"))?
                .into_inner();
            if r.window.is_none() {
                print(
                    format,
                    Value::Null,
                    format!("set {set} never had a maintenance window"),
                );
                return Ok(Outcome::Ok);
            }
            let w: Window = read("window", r.window)?;
            print(format, json(&w), window_human(&w));
            Ok(outcome(&w))
        }
    }
}
