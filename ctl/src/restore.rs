//! `tandemctl restore`: order a restore (admin), follow its steps on
//! stderr, and end with what was done (exit 0), or the step that failed and
//! what was put back (exit 1), or why it could not start (exit 2).

use serde_json::json;
use tandem_proto::pb;

use crate::cli::Connection;
use crate::commands::{CtlError, Outcome, print, refused};
use crate::output::{self, OutputFormat};

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
    eprintln!(
        "restoring member {} of set {} (agent {}, operation {})",
        started.member, started.set, started.agent, started.operation_id
    );
    let mut stream = client
        .watch_operation(pb::WatchOperationRequest {
            set: started.set.clone(),
            member: started.member.clone(),
            operation_id: started.operation_id.clone(),
        })
        .await
        .map_err(refused("WatchOperation"))?
        .into_inner();
    let (mut last_step, mut last_message) = (String::new(), String::new());
    let mut result: Option<(pb::OperationResult, String)> = None;
    // Bounded by the agent: the stream ends with the result.
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if p.step != last_step {
                    eprintln!("{}: step {}", started.member, p.step);
                    last_step = p.step.clone();
                }
                if p.message != last_message
                    && !p.message.starts_with("step ")
                    && p.result.is_none()
                {
                    eprintln!("  {}", p.message);
                    last_message = p.message.clone();
                }
                if let Some(r) = p.result {
                    result = Some((r, p.step));
                    break;
                }
            }
            Ok(None) => break,
            Err(s) => {
                return Err(CtlError::Refused {
                    call: "WatchOperation",
                    message: format!(
                        "the progress stream broke ({}); `tandemctl history {}` will show the outcome",
                        s.message(),
                        started.set
                    ),
                });
            }
        }
    }
    let Some((r, step)) = result else {
        return Err(CtlError::Refused {
            call: "WatchOperation",
            message: "the stream ended without a result".into(),
        });
    };
    let ok = r.state == pb::OperationState::Succeeded as i32;
    let state = if ok { "restored" } else { "failed" };
    let json = json!({
        "set": started.set,
        "member": started.member,
        "agent": started.agent,
        "operation_id": started.operation_id,
        "state": state,
        "failed_step": (!ok).then_some(step.clone()),
        "reason": (!r.reason.is_empty()).then_some(r.reason.clone()),
        "notes": r.notes,
        "started_at": output::ts(r.started_at),
        "finished_at": output::ts(r.finished_at),
    });
    let mut human = if ok {
        format!("set {} member {}: restored", started.set, started.member)
    } else {
        format!(
            "set {} member {}: restore FAILED at {step}\n  {}",
            started.set, started.member, r.reason
        )
    };
    for n in &r.notes {
        human.push_str(&format!("\n  - {n}"));
    }
    print(format, json, human);
    Ok(if ok { Outcome::Ok } else { Outcome::Bad })
}
