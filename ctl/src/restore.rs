//! `tandemctl restore`: order a restore (admin) and follow it on stderr.
//! The restore runs as a maintenance window (SPEC R12): the backup is
//! prepared while the set serves, the standbys are fenced and stopped, the
//! member restored (its agent's R3 .. R10, streamed step by step), each
//! standby re-seeded from it, the set resumed and tested. Exit 0 when the
//! window closed clean, 1 when a step failed (the report names it and says
//! what was put back), 2 when it could not start (nothing was written).

use serde_json::json;
use tandem_proto::pb;

use crate::cli::Connection;
use crate::commands::{CtlError, Outcome, print, refused};
use crate::maintenance;
use crate::output::OutputFormat;

pub struct RestoreArgs {
    pub set: String,
    pub member: Option<String>,
    pub from: String,
    pub target_time: Option<String>,
    pub replace: bool,
    pub yes: bool,
}

pub async fn run(
    conn: &Connection,
    format: OutputFormat,
    a: RestoreArgs,
) -> Result<Outcome, CtlError> {
    if !a.yes {
        return Err(CtlError::Usage(format!(
            "a restore replaces the database of {} of set `{}` (the current one is kept aside, never deleted); run again with --yes",
            a.member
                .as_deref()
                .map_or("the primary".to_owned(), |m| format!("member `{m}`")),
            a.set
        )));
    }
    let mut client = conn.connect().await?;
    let started = client
        .restore(pb::RestoreRequest {
            set: a.set.clone(),
            member: a.member.clone().unwrap_or_default(),
            from: a.from.clone(),
            target_time: a.target_time.clone().unwrap_or_default(),
            replace: a.replace,
        })
        .await
        .map_err(refused("Restore"))?
        .into_inner();
    let w = maintenance::parse(&started.window)?;
    if format == OutputFormat::Human {
        eprintln!(
            "restoring member {} of set {} (agent {}) in window {}: prepared while the set serves, then the set halted standbys first, the member restored, each standby re-seeded from it, a testdb (Ctrl-C stops only this display; `tandemctl maintenance show {}`)",
            started.member,
            started.set,
            started.agent,
            maintenance::s(&w, "id"),
            started.set
        );
    }
    let w = maintenance::follow_window(conn, format, &started.set, w, true).await?;
    let r = &w["restore"];
    let restored = maintenance::s(r, "state") == "restored";
    let outcome = maintenance::outcome(&w);
    let json = json!({
        "set": started.set,
        "member": started.member,
        "agent": started.agent,
        "window_id": w["id"],
        "window_state": w["state"],
        "state": if restored { "restored" } else { "failed" },
        "failed_step": r["failed_step"],
        "reason": r["reason"],
        "notes": r["notes"],
        "failure": w["failure"],
        "verdict": w["verdict"],
        "window": w,
    });
    let mut human = if restored {
        format!(
            "set {} member {}: restored; window {} {}",
            started.set,
            started.member,
            maintenance::s(&w, "id"),
            maintenance::s(&w, "state")
        )
    } else {
        format!(
            "set {} member {}: restore FAILED at {}\n  {}",
            started.set,
            started.member,
            maintenance::s(r, "failed_step"),
            maintenance::s(r, "reason")
        )
    };
    for n in r["notes"].as_array().into_iter().flatten() {
        human.push_str(&format!("\n  - {}", n.as_str().unwrap_or("")));
    }
    human.push_str("\n\n");
    human.push_str(&maintenance::window_human(&w));
    print(format, json, human);
    Ok(outcome)
}

/// Stream one agent restore order's steps (R1 .. R10) to stderr until it
/// ends; a broken stream only ends the display.
pub async fn watch_order(
    client: &mut crate::commands::Client,
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
