//! A maintenance window as tandemctl reads it (the controller's JSON
//! document), shows it to a person, and follows it until it stops: used by
//! `tandemctl maintenance` and by `tandemctl restore`, whose restore is a
//! window too.

use std::time::Duration;

use serde_json::Value;
use tandem_proto::pb;

use crate::cli::Connection;
use crate::client::Client;
use crate::outcome::{CtlError, Outcome, refused};
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
            watch_order(
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

/// Stream one agent restore order's steps (R1 .. R10) to stderr until it
/// ends; a broken stream only ends the display.
pub async fn watch_order(
    client: &mut Client,
    set: &str,
    member: &str,
    operation_id: &str,
    show: bool,
) {
    let Ok(stream) = client
        .watch_operation(pb::WatchOperationRequest {
            set: set.to_owned(),
            member: member.to_owned(),
            operation_id: operation_id.to_owned(),
        })
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    let (mut last_step, mut last_message) = (String::new(), String::new());
    // Bounded by the agent: the stream ends with the result.
    while let Ok(Some(p)) = stream.message().await {
        if show && p.step != last_step && !p.step.is_empty() {
            eprintln!("    {member}: {}", p.step);
            last_step = p.step.clone();
        }
        if show
            && p.message != last_message
            && !p.message.starts_with("step ")
            && p.result.is_none()
        {
            eprintln!("      {}", p.message);
            last_message = p.message.clone();
        }
        if p.result.is_some() {
            break;
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
