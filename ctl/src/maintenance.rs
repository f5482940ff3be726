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

use std::time::Duration;

use serde_json::Value;
use tandem_proto::pb;

use crate::cli::{Connection, MaintenanceCommand};
use crate::commands::{CtlError, Outcome, print, refused};
use crate::output::{self, OutputFormat};

const FOLLOW_EVERY: Duration = Duration::from_millis(500);

pub fn parse(json: &str) -> Result<Value, CtlError> {
    serde_json::from_str(json).map_err(|e| {
        CtlError::Usage(format!(
            "the controller sent a window this tandemctl cannot read: {e}"
        ))
    })
}

pub fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn secs(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1} s"))
}

/// The plan as a person reads it.
pub fn plan_human(p: &Value) -> String {
    let mut out = format!(
        "plan for set {}: {} repair\n  why: {}\n  otherwise: {}\n",
        s(p, "set"),
        s(p, "repair"),
        s(p, "why"),
        s(p, "alternative")
    );
    if let Some(ha) = p.get("ha").filter(|h| h.is_object()) {
        let urls: Vec<&str> = ha["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "  HA manager: {} ({}): {}\n",
            s(ha, "manager"),
            urls.join(", "),
            s(ha, "seen")
        ));
    }
    let rows: Vec<Vec<String>> = p["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, st)| {
            vec![
                (i + 1).to_string(),
                s(st, "action").to_owned(),
                s(st, "member").to_owned(),
                s(st, "state").to_owned(),
                secs(&st["estimate_seconds"]),
                if s(st, "message").is_empty() {
                    s(st, "touches").to_owned()
                } else {
                    s(st, "message").to_owned()
                },
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["#", "STEP", "MEMBER", "STATE", "ESTIMATE", "WHAT"],
        &rows,
    ));
    out.push_str(&format!(
        "\nexpected downtime (first member stopped to last streaming): {}",
        secs(&p["expected_downtime_seconds"])
    ));
    out
}

/// A window as a person reads it.
pub fn window_human(w: &Value) -> String {
    let mut out = format!(
        "window {} on set {}: {}\n  opened {} by {}: {}\n",
        s(w, "id"),
        s(w, "set"),
        s(w, "state"),
        s(w, "opened_at"),
        s(w, "opened_by"),
        s(w, "reason")
    );
    if let Some(f) = w["failure"].as_str() {
        out.push_str(&format!("  FAILED: {f}\n"));
    }
    out.push_str(&plan_human(&w["plan"]));
    if let Some(resume) = w["resume"].as_array().filter(|r| !r.is_empty()) {
        let rows: Vec<Vec<String>> = resume
            .iter()
            .enumerate()
            .map(|(i, st)| {
                vec![
                    (i + 1).to_string(),
                    s(st, "action").to_owned(),
                    s(st, "member").to_owned(),
                    s(st, "state").to_owned(),
                    s(st, "message").to_owned(),
                ]
            })
            .collect();
        out.push_str(&format!("\n{} steps:\n", s(w, "ending")));
        out.push_str(&output::table(
            &["#", "STEP", "MEMBER", "STATE", "WHAT"],
            &rows,
        ));
    }
    if !w["downtime_seconds"].is_null() {
        out.push_str(&format!(
            "\nmeasured downtime: {}",
            secs(&w["downtime_seconds"])
        ));
    }
    if let Some(v) = w["verdict"].as_object() {
        out.push_str(&format!(
            "\nverdict: {} (member {}, lsn {})",
            v.get("kind").and_then(Value::as_str).unwrap_or(""),
            v.get("member").and_then(Value::as_str).unwrap_or(""),
            v.get("lsn").and_then(Value::as_str).unwrap_or("-"),
        ));
    }
    out
}

/// Bad when the window stopped on a failed step, or was aborted because
/// of one (a restore that put the old data directory back).
pub fn outcome(w: &Value) -> Outcome {
    match s(w, "state") {
        "failed" => Outcome::Bad,
        "aborted" if w["failure"].is_string() => Outcome::Bad,
        _ => Outcome::Ok,
    }
}

/// Steps that ended, as "step N ACTION on MEMBER: STATE: message" lines.
fn ended_steps(w: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for (phase, key) in [("", "plan"), ("resume ", "resume")] {
        let steps = if key == "plan" {
            &w["plan"]["steps"]
        } else {
            &w["resume"]
        };
        for (i, st) in steps.as_array().into_iter().flatten().enumerate() {
            let state = s(st, "state");
            if state == "done" || state == "failed" {
                lines.push(format!(
                    "{phase}step {} {} {}: {state}: {}",
                    i + 1,
                    s(st, "action"),
                    s(st, "member"),
                    s(st, "message")
                ));
            }
        }
    }
    lines
}

/// Follow a window until it stops, printing each step as it ends (human
/// output); the window as it ended. With `watch_restore`, the agent's
/// restore orders are followed too, step by step (R1 .. R10).
pub async fn follow_window(
    conn: &Connection,
    format: OutputFormat,
    set: &str,
    mut w: Value,
    watch_restore: bool,
) -> Result<Value, CtlError> {
    let mut client = conn.connect().await?;
    let mut shown = 0;
    let mut watched: Vec<String> = Vec::new();
    loop {
        let lines = ended_steps(&w);
        if format == OutputFormat::Human {
            for l in lines.iter().skip(shown) {
                eprintln!("  {l}");
            }
        }
        shown = lines.len();
        if !matches!(s(&w, "state"), "running" | "resuming") {
            break;
        }
        let restore = &w["restore"];
        let op = s(restore, "operation_id").to_owned();
        if watch_restore && s(restore, "state") == "running" && !watched.contains(&op) {
            watched.push(op.clone());
            crate::restore::watch_order(
                &mut client,
                set,
                s(restore, "member"),
                &op,
                format == OutputFormat::Human,
            )
            .await;
        } else {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        let json = client
            .maintenance_show(pb::MaintenanceRequest {
                set: set.to_owned(),
                reason: String::new(),
                repair: String::new(),
            })
            .await
            .map_err(refused("MaintenanceShow"))?
            .into_inner()
            .json;
        w = parse(&json)?;
    }
    Ok(w)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_names_its_ha_manager() {
        let p = serde_json::json!({
            "set": "billing", "repair": "primary", "why": "w", "alternative": "a",
            "ha": {"manager": "patroni", "urls": ["http://db1:8008"], "paused_before": false, "seen": "leader db1, not paused"},
            "steps": [{"action": "pause_ha", "member": "", "state": "pending", "estimate_seconds": 1.0, "touches": "pauses patroni"}],
            "expected_downtime_seconds": 0.0
        });
        let text = plan_human(&p);
        assert!(
            text.contains("HA manager: patroni (http://db1:8008): leader db1, not paused"),
            "{text}"
        );
        assert!(text.contains("pause_ha"), "{text}");
        let mut p = p;
        p.as_object_mut().unwrap().remove("ha");
        assert!(!plan_human(&p).contains("HA manager"));
    }
}
