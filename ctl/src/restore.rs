//! `tandemctl restore`: order a restore (admin) and follow it on stderr.
//! The restore runs as a maintenance window (SPEC R12): the backup is
//! prepared while the set serves, the standbys are fenced and stopped, the
//! member restored (its agent's R3 .. R10, streamed step by step), each
//! standby re-seeded from it, the set resumed and tested. Exit 0 when the
//! window closed clean, 1 when a step failed (the report names it and says
//! what was put back), 2 when it could not start (nothing was written).

use serde_json::json;
use tandem_proto::pb;
use tandem_proto::window::{RestoreState, Window};

use crate::cli::Connection;
use crate::outcome::{CtlError, Outcome, print, refused};
use crate::output::OutputFormat;
use crate::window;

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
    let w: Window = window::read("window", started.window)?;
    if format == OutputFormat::Human {
        eprintln!(
            "restoring member {} of set {} (agent {}) in window {}: prepared while the set serves, then the set halted standbys first, the member restored, each standby re-seeded from it, a testdb (Ctrl-C stops only this display; `tandemctl maintenance show {}`)",
            started.member, started.set, started.agent, w.id, started.set
        );
    }
    let w = window::follow_window(conn, format, &started.set, w, true).await?;
    let r = w.restore.clone().unwrap_or_default();
    let restored = r.state == RestoreState::Restored;
    let json = json!({
        "set": started.set,
        "member": started.member,
        "agent": started.agent,
        "window_id": w.id,
        "window_state": w.state,
        "state": if restored { "restored" } else { "failed" },
        "failed_step": r.failed_step,
        "reason": r.reason,
        "notes": r.notes,
        "failure": w.failure,
        "verdict": w.verdict,
        "window": window::json(&w),
    });
    let mut human = if restored {
        format!(
            "set {} member {}: restored; window {} {}",
            started.set,
            started.member,
            w.id,
            w.state.as_str()
        )
    } else {
        format!(
            "set {} member {}: restore FAILED at {}\n  {}",
            started.set,
            started.member,
            r.failed_step.as_deref().unwrap_or("-"),
            r.reason.as_deref().unwrap_or("")
        )
    };
    for n in &r.notes {
        human.push_str(&format!("\n  - {n}"));
    }
    human.push_str("\n\n");
    human.push_str(&window::window_human(&w));
    print(format, json, human);
    Ok(window::outcome(&w))
}
