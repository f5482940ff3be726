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
            "a restore replaces the database of {} of set `{}` (the current one is kept aside, never deleted); run again with --yes (or with --dry-run to see what it would use)",
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
            "restoring member {} of set {} (agent {}) in window {}: prepared while the set serves, then {}, a testdb (Ctrl-C stops only this display; `tandemctl maintenance show {}`)",
            started.member,
            started.set,
            started.agent,
            w.id,
            if w.plan.standbys.is_empty() {
                "the member stopped, restored and started (it has no standby)"
            } else {
                "the set halted standbys first, the member restored, each standby re-seeded from it"
            },
            started.set
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

/// `tandemctl restore --dry-run`: what the restore would use, nothing
/// ordered. Exit 0 when it would go ahead, 1 when it would be refused.
pub async fn dry_run(
    conn: &Connection,
    format: OutputFormat,
    req: pb::RestoreRequest,
) -> Result<Outcome, CtlError> {
    let p = conn
        .connect()
        .await?
        .restore_plan(req)
        .await
        .map_err(refused("RestorePlan"))?
        .into_inner();
    print(format, plan_json(&p), plan_human(&p));
    Ok(if p.reachable {
        Outcome::Ok
    } else {
        Outcome::Bad
    })
}

/// A restore's plan for scripts.
pub fn plan_json(p: &pb::RestorePlanResponse) -> serde_json::Value {
    json!({
        "set": p.set,
        "member": p.member,
        "agent": p.agent,
        "target_time": (!p.target_time.is_empty()).then_some(&p.target_time),
        "reachable": p.reachable,
        "from": p.from,
        "location": p.location,
        "backup": p.backup.as_ref().map(crate::output::backup_json),
        "transfer_bytes": p.transfer_bytes,
        "space": {
            "needed_bytes": p.space_needed_bytes,
            "free_bytes": p.space_free_bytes,
            "ok": p.space_ok,
        },
        "wal": {
            "from": p.wal_from_segment,
            "through": (!p.wal_through_segment.is_empty()).then_some(&p.wal_through_segment),
            "location": p.wal_location,
        },
        "problems": p.problems,
        "notes": p.notes,
        "unreachable_members": p.unreachable,
    })
}

/// A restore's plan for people.
pub fn plan_human(p: &pb::RestorePlanResponse) -> String {
    let mib = crate::output::mib;
    // A logical backup (LSNs 0/0, a Firebird gbak file) has no log to
    // roll forward: the plan's notes say so, and no WAL line is printed.
    let zero = |l: &str| l.is_empty() || l == "0/0";
    let logical = p
        .backup
        .as_ref()
        .is_some_and(|b| zero(&b.start_lsn) && zero(&b.end_lsn));
    let to = if !p.target_time.is_empty() {
        format!(" to {}", p.target_time)
    } else if logical {
        String::new()
    } else {
        " to the end of the WAL archive".to_owned()
    };
    let mut s = format!(
        "restore of member {} of set {}{}: {}\n",
        p.member,
        p.set,
        to,
        if p.reachable {
            "would go ahead"
        } else {
            "would be REFUSED"
        }
    );
    if let Some(b) = &p.backup {
        s.push_str(&format!(
            "  backup:   {} ({}, taken {}, {}verified) {}\n",
            b.file,
            b.kind,
            crate::output::ts(b.taken_at).unwrap_or_default(),
            if b.verified { "" } else { "NOT " },
            p.location
        ));
        s.push_str(&format!(
            "  moved:    {}\n",
            if p.transfer_bytes == 0 {
                "nothing (the backup is on the member's host)".to_owned()
            } else {
                format!("{} to member {}'s host", mib(p.transfer_bytes), p.member)
            }
        ));
        s.push_str(&format!(
            "  space:    {} needed, {} free: {}\n",
            mib(p.space_needed_bytes),
            mib(p.space_free_bytes),
            if p.space_ok { "enough" } else { "NOT enough" }
        ));
        if !logical {
            s.push_str(&format!(
                "  WAL:      from {}{} in {}\n",
                p.wal_from_segment,
                if p.wal_through_segment.is_empty() {
                    String::new()
                } else {
                    format!(" through {}", p.wal_through_segment)
                },
                p.wal_location
            ));
        }
    }
    for x in &p.problems {
        s.push_str(&format!("  problem:  {x}\n"));
    }
    for x in &p.notes {
        s.push_str(&format!("  note:     {x}\n"));
    }
    for x in &p.unreachable {
        s.push_str(&format!("  not asked: {x}\n"));
    }
    s
}
