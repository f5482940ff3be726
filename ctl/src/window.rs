//! A maintenance window as tandemctl reads it (typed, from the
//! controller), shows it to a person, and follows it until it stops: used by
//! `tandemctl maintenance` and by `tandemctl restore`, whose restore is a
//! window too. `--output json` is the window's own serialized form, the
//! same document the controller keeps.

use std::time::Duration;

use serde_json::Value;
use tandem_proto::pb;
use tandem_proto::window::{Plan, RestoreState, Step, StepState, Window, WindowState};

use crate::cli::Connection;
use crate::client::{Client, went_away};
use crate::outcome::{CtlError, Outcome, refused};
use crate::output::{self, OutputFormat};

const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// A window or plan the controller sent, or why this tandemctl cannot read it.
pub fn read<W, T>(what: &str, wire: Option<W>) -> Result<T, CtlError>
where
    T: TryFrom<W, Error = tandem_proto::model::ModelError>,
{
    let wire = wire.ok_or_else(|| {
        CtlError::Usage(format!(
            "the controller sent no {what}; is it this tandemctl's version?"
        ))
    })?;
    T::try_from(wire).map_err(|e| {
        CtlError::Usage(format!(
            "the controller sent a {what} this tandemctl cannot read: {e}"
        ))
    })
}

/// The document `--output json` prints.
pub fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("windows serialize")
}

fn secs(x: f64) -> String {
    format!("{x:.1} s")
}

fn state_word(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Running => "running",
        StepState::Done => "done",
        StepState::Failed => "failed",
    }
}

fn repair_word(p: &Plan) -> &'static str {
    match p.repair {
        tandem_proto::window::Repair::Primary => "primary",
        tandem_proto::window::Repair::Reseed => "reseed",
        tandem_proto::window::Repair::Restore => "restore",
    }
}

/// The plan as a person reads it.
pub fn plan_human(p: &Plan) -> String {
    let mut out = format!(
        "plan for set {}: {} repair\n  why: {}\n  otherwise: {}\n",
        p.set,
        repair_word(p),
        p.why,
        p.alternative
    );
    if let Some(ha) = &p.ha {
        out.push_str(&format!(
            "  HA manager: {} ({}): {}\n",
            ha.manager,
            ha.urls.join(", "),
            ha.seen
        ));
    }
    let rows: Vec<Vec<String>> = p
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            vec![
                (i + 1).to_string(),
                st.action.name().to_owned(),
                st.member.clone(),
                state_word(st.state).to_owned(),
                secs(st.estimate_seconds),
                if st.message.is_empty() {
                    st.touches.clone()
                } else {
                    st.message.clone()
                },
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["#", "STEP", "MEMBER", "STATE", "ESTIMATE", "WHAT"],
        &rows,
    ));
    out.push_str(&format!(
        "\nexpected downtime ({}): {}",
        if p.standbys.is_empty() {
            "the member stopped to started for clients"
        } else {
            "first member stopped to last streaming"
        },
        secs(p.expected_downtime_seconds)
    ));
    out
}

/// A window as a person reads it.
pub fn window_human(w: &Window) -> String {
    let mut out = format!(
        "window {} on set {}: {}\n  opened {} by {}: {}\n",
        w.id,
        w.set,
        w.state.as_str(),
        w.opened_at,
        w.opened_by,
        w.reason
    );
    if let Some(f) = &w.failure {
        out.push_str(&format!("  FAILED: {f}\n"));
    }
    out.push_str(&plan_human(&w.plan));
    if !w.resume.is_empty() {
        let rows: Vec<Vec<String>> = w
            .resume
            .iter()
            .enumerate()
            .map(|(i, st)| {
                vec![
                    (i + 1).to_string(),
                    st.action.name().to_owned(),
                    st.member.clone(),
                    state_word(st.state).to_owned(),
                    st.message.clone(),
                ]
            })
            .collect();
        let ending = match w.ending {
            Some(tandem_proto::window::Ending::Close) => "close",
            Some(tandem_proto::window::Ending::Abort) => "abort",
            None => "resume",
        };
        out.push_str(&format!("\n{ending} steps:\n"));
        out.push_str(&output::table(
            &["#", "STEP", "MEMBER", "STATE", "WHAT"],
            &rows,
        ));
    }
    if let Some(d) = w.downtime_seconds {
        out.push_str(&format!("\nmeasured downtime: {}", secs(d)));
    }
    if let Some(v) = &w.verdict {
        out.push_str(&format!(
            "\nverdict: {} (member {}, lsn {})",
            v.kind.as_str(),
            v.member,
            v.lsn.as_deref().unwrap_or("-"),
        ));
    }
    out
}

/// Bad when the window stopped on a failed step, or was aborted because
/// of one (a restore that put the old data directory back).
pub fn outcome(w: &Window) -> Outcome {
    match w.state {
        WindowState::Failed => Outcome::Bad,
        WindowState::Aborted if w.failure.is_some() => Outcome::Bad,
        _ => Outcome::Ok,
    }
}

/// Steps that ended, as "step N ACTION on MEMBER: STATE: message" lines.
fn ended_steps(w: &Window) -> Vec<String> {
    let phases: [(&str, &[Step]); 2] = [("", &w.plan.steps), ("resume ", &w.resume)];
    let mut lines = Vec::new();
    for (phase, steps) in phases {
        for (i, st) in steps.iter().enumerate() {
            if matches!(st.state, StepState::Done | StepState::Failed) {
                lines.push(format!(
                    "{phase}step {} {} {}: {}: {}",
                    i + 1,
                    st.action.name(),
                    st.member,
                    state_word(st.state),
                    st.message
                ));
            }
        }
    }
    lines
}

/// Follow a window until it stops, printing each step as it ends (human
/// output); the window as it ended. With `watch_restore`, the agent's
/// restore orders are followed too, step by step (R1 .. R10). When the
/// controller goes away, the window is followed on through the controller
/// that leads next ([`Connection::reopen`]).
pub async fn follow_window(
    conn: &Connection,
    format: OutputFormat,
    set: &str,
    mut w: Window,
    watch_restore: bool,
) -> Result<Window, CtlError> {
    let mut leader = conn.leader().await?;
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
        if !matches!(w.state, WindowState::Running | WindowState::Resuming) {
            break;
        }
        let running = w
            .restore
            .as_ref()
            .filter(|r| r.state == RestoreState::Running && !watched.contains(&r.operation_id));
        if let (true, Some(r)) = (watch_restore, running) {
            watched.push(r.operation_id.clone());
            watch_order(
                &mut leader.client,
                set,
                &r.member,
                &r.operation_id,
                format == OutputFormat::Human,
            )
            .await;
        } else {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        let request = || pb::MaintenanceRequest {
            set: set.to_owned(),
            reason: String::new(),
            repair: String::new(),
        };
        // Where the call goes: a call that finds no controller moves the
        // channel on before it returns.
        let from = leader.url();
        let shown_now = match leader.client.maintenance_show(request()).await {
            Ok(r) => r.into_inner(),
            Err(s) if went_away(&s) => {
                let (new, r) = conn
                    .reopen("MaintenanceShow", |mut c| {
                        let r = request();
                        async move { c.maintenance_show(r).await }
                    })
                    .await?;
                eprintln!(
                    "controller {from} went away; following window {} through {}",
                    w.id,
                    new.url()
                );
                leader = new;
                r.into_inner()
            }
            Err(s) => return Err(refused("MaintenanceShow")(s)),
        };
        w = read("window", shown_now.window)?;
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
    use tandem_proto::window::{Action, Ha, Repair, Triage};

    fn plan(ha: Option<Ha>) -> Plan {
        Plan {
            set: "billing".into(),
            repair: Repair::Primary,
            why: "w".into(),
            alternative: "a".into(),
            primary: "db1".into(),
            standbys: vec!["db2".into()],
            tested_member: "db2".into(),
            findings: vec![],
            triage: Triage::default(),
            ha,
            steps: vec![Step::new(
                Action::PauseHa,
                "",
                "pauses patroni".into(),
                1.0,
                false,
            )],
            expected_downtime_seconds: 0.0,
            restore: None,
        }
    }

    #[test]
    fn a_plan_names_its_ha_manager() {
        let p = plan(Some(Ha {
            manager: "patroni".into(),
            urls: vec!["http://db1:8008".into()],
            paused_before: Some(false),
            seen: "leader db1, not paused".into(),
        }));
        let text = plan_human(&p);
        assert!(
            text.contains("HA manager: patroni (http://db1:8008): leader db1, not paused"),
            "{text}"
        );
        assert!(text.contains("pause_ha"), "{text}");
        assert!(!plan_human(&plan(None)).contains("HA manager"));
    }

    #[test]
    fn the_json_of_a_plan_is_the_controllers_document() {
        let j = json(&plan(None));
        assert_eq!(j["repair"], "primary");
        assert_eq!(j["steps"][0]["action"], "pause_ha");
        assert_eq!(j["steps"][0]["state"], "pending");
        assert!(j.get("ha").is_none(), "{j}");
    }
}
