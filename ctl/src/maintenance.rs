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

use crate::cli::{Connection, MaintenanceCommand};
use crate::outcome::{CtlError, Outcome, print, refused};
use crate::output::OutputFormat;
use crate::window::{follow_window, outcome, parse, plan_human, s, window_human};

async fn follow(
    conn: &Connection,
    format: OutputFormat,
    set: &str,
    w: Value,
) -> Result<Outcome, CtlError> {
    let w = follow_window(conn, format, set, w, false).await?;
    let human = window_human(&w);
    let out = outcome(&w);
    print(format, w, human);
    Ok(out)
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
            let json = client
                .maintenance_plan(pb::MaintenanceRequest {
                    repair,
                    ..req(&set, "")
                })
                .await
                .map_err(refused("MaintenancePlan"))?
                .into_inner()
                .json;
            let p = parse(&json)?;
            let human = plan_human(&p);
            print(format, p, human);
            Ok(Outcome::Ok)
        }
        MaintenanceCommand::Open {
            set,
            reason,
            repair,
            detach,
        } => {
            let json = client
                .maintenance_open(pb::MaintenanceRequest {
                    repair,
                    ..req(&set, &reason)
                })
                .await
                .map_err(refused("MaintenanceOpen"))?
                .into_inner()
                .json;
            let w = parse(&json)?;
            if format == OutputFormat::Human {
                eprintln!(
                    "window {} opened on set {set}; {}",
                    s(&w, "id"),
                    if detach {
                        format!("follow it with `tandemctl maintenance show {set}`")
                    } else {
                        "following it (Ctrl-C stops only this display)".into()
                    }
                );
            }
            if detach {
                let human = window_human(&w);
                print(format, w, human);
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
            let w = parse(&r.into_inner().json)?;
            if detach {
                let human = window_human(&w);
                print(format, w, human);
                return Ok(Outcome::Ok);
            }
            follow(conn, format, &set, w).await
        }
        MaintenanceCommand::Show { set } => {
            let json = client
                .maintenance_show(req(&set, ""))
                .await
                .map_err(refused("MaintenanceShow"))?
                .into_inner()
                .json;
            if json.is_empty() {
                print(
                    format,
                    Value::Null,
                    format!("set {set} never had a maintenance window"),
                );
                return Ok(Outcome::Ok);
            }
            let w = parse(&json)?;
            let human = window_human(&w);
            let out = outcome(&w);
            print(format, w, human);
            Ok(out)
        }
    }
}
