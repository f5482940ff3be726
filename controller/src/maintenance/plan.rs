//! A maintenance window's plan (SPEC T4, C4), built before any action from
//! the set's findings and the triage on its primary. Pure: no I/O.
//!
//! Triage re-checks, on the primary, exactly the relations the findings
//! name. What it confirms is a *replicated* error: every member has it, so
//! it is repaired on the primary with the whole set halted (standbys fenced
//! and stopped first, the primary out of client service, `REINDEX` of the
//! named indexes, the `exec` repair for the rest, the primary's own check,
//! then primary back, standbys started and streaming past the repair, a
//! fresh testdb). What the primary does not have is *standby-local* damage:
//! the tested standby is re-seeded from the primary, which never stops.

use tandem_proto::model::Finding;

use crate::verdicts::Verdict;

/// Rough costs used for the estimate (a fast shutdown and a start of a
/// small, idle server take about a second each; a busy one's checkpoint
/// takes longer, so these are floors more than predictions).
const STOP_SECS: f64 = 1.0;
const START_SECS: f64 = 1.0;
const STREAM_SECS: f64 = 1.0;
const EXEC_SECS: f64 = 60.0;
const TESTDB_SECS: f64 = 60.0;
/// Bytes a second REINDEX, the amcheck re-check and a base backup manage,
/// for the estimate.
const REINDEX_RATE: f64 = 50e6;
const CHECK_RATE: f64 = 100e6;
const BASEBACKUP_RATE: f64 = 100e6;
/// A restore's unpack rate, and a floor for its roll-forward.
const UNPACK_RATE: f64 = 200e6;
const ROLL_FORWARD_SECS: f64 = 5.0;

pub use tandem_proto::window::{
    Action, Ha, Plan, Relation, Repair, RestoreOrder, Step, StepState, Triage,
};

/// What a plan is built from.
pub struct Input<'a> {
    pub set: &'a str,
    pub primary: &'a str,
    pub standbys: &'a [String],
    /// The errors verdict the repair is for.
    pub verdict: &'a Verdict,
    pub triage: Triage,
    /// The primary's data directory size, for a re-seed's estimate.
    pub data_bytes: u64,
    /// Send every finding to the configured `exec` repair, indexes too
    /// (`tandemctl maintenance open --repair exec`).
    pub exec_only: bool,
    /// The set's HA manager, when one is configured.
    pub ha: Option<Ha>,
}

fn same_relation(a: &Finding, b: &Finding) -> bool {
    a.database == b.database && a.relation == b.relation
}

/// Whether the triage found the finding's relation damaged on the primary.
fn confirmed(f: &Finding, t: &Triage) -> bool {
    t.findings.iter().any(|p| same_relation(p, f))
}

/// Findings read from the copy's files (lost rows, cut or missing
/// segments) cannot be re-checked on the running primary: a re-seed
/// replaces the standby's files from the primary, and the window's closing
/// testdb reads them again.
fn lost_rows_judged_by_the_closing_test(findings: &[Finding]) -> String {
    let n = findings.iter().filter(|f| f.is_from_files()).count();
    if n == 0 {
        return String::new();
    }
    format!(
        "; {n} finding(s) read from the copy's files (lost rows, cut or missing segments) cannot be re-checked on the running primary: the closing testdb reads the re-seeded copy again, and if they come back the primary lost those rows too and only a restore from a verified backup returns them"
    )
}

/// On the primary path, lost rows are named as what REINDEX cannot repair.
fn restore_for_lost_rows(set: &str, findings: &[Finding], repair: Repair) -> Option<String> {
    let lost: Vec<String> = findings
        .iter()
        .filter(|f| f.is_from_files())
        .map(|f| format!("{}.{} ({})", f.database, f.relation, f.kind))
        .collect();
    (repair == Repair::Primary && !lost.is_empty()).then(|| {
        format!(
            "{} finding(s) are rows or pages lost from the files ({}): REINDEX cannot bring them back and this window does not try; restore from a verified backup (`tandemctl restore {set}`)",
            lost.len(),
            lost.join(", ")
        )
    })
}

pub fn build(input: Input<'_>) -> Plan {
    let Input {
        set,
        primary,
        standbys,
        verdict,
        triage,
        data_bytes,
        exec_only,
        ha,
    } = input;
    let findings = verdict.findings.clone();
    let tested = verdict.member.clone();
    let replicated = !triage.findings.is_empty() || !triage.unresolved.is_empty();
    let bytes_of = |f: &Finding| {
        triage
            .relations
            .iter()
            .find(|r| r.database == f.database && r.relation == f.relation)
            .map_or(0, |r| r.bytes)
    };
    let mut steps = vec![
        Step::new(
            Action::Triage,
            primary,
            format!(
                "re-checks {} relation(s) on {primary}, read-only and online",
                triage.relations.len()
            ),
            1.0 + findings.iter().map(bytes_of).sum::<u64>() as f64 / CHECK_RATE,
            false,
        )
        .with_targets(findings.clone()),
    ];
    if let Some(h) = &ha {
        steps.push(pause_ha_step(h));
    }
    let (repair, why, alternative);
    let tested_is_standby = standbys.contains(&tested);
    if replicated || !tested_is_standby {
        repair = Repair::Primary;
        why = if !tested_is_standby {
            format!(
                "the damaged copy was {}, not a standby's: there is no standby to re-seed, so it is repaired on the primary with the whole set halted ({} finding(s) confirmed there)",
                if tested == primary {
                    format!("the primary {primary}'s own")
                } else {
                    format!("of {tested}")
                },
                triage.findings.len()
            )
        } else if triage.unresolved.is_empty() {
            format!(
                "the primary {primary} has the same damage ({} finding(s) confirmed): a replicated error, repaired on the primary with the whole set halted",
                triage.findings.len()
            )
        } else {
            format!(
                "{} finding(s) name nothing the primary can re-check ({}): treated as replicated, repaired on the primary with the whole set halted",
                triage.unresolved.len(),
                triage.unresolved.join("; ")
            )
        };
        alternative = if tested_is_standby {
            format!(
                "re-seed {tested} from {primary}, primary never stopped (taken when the primary's re-check is clean)"
            )
        } else {
            format!(
                "none: a re-seed replaces a standby's copy from the primary, and {tested} is not a standby of set {set}"
            )
        };
        // Findings on the primary's relations; index ones are REINDEXed,
        // the others go to the exec repair.
        // When the primary's findings name the relations differently (or
        // only unresolved ones exist), every finding is repaired.
        let matched: Vec<Finding> = findings
            .iter()
            .filter(|f| confirmed(f, &triage))
            .cloned()
            .collect();
        let on_primary = if matched.is_empty() {
            findings.clone()
        } else {
            matched
        };
        // Lost rows come back from a backup only: no step of this window
        // repairs them, the plan says so.
        let on_primary: Vec<Finding> = on_primary
            .into_iter()
            .filter(|f| !f.is_from_files())
            .collect();
        let by_reindex = |f: &Finding| f.kind == "index" && !exec_only;
        let indexes: Vec<Finding> = on_primary
            .iter()
            .filter(|f| by_reindex(f))
            .cloned()
            .collect();
        let mut others: Vec<Finding> = on_primary
            .iter()
            .filter(|f| !by_reindex(f))
            .cloned()
            .collect();
        others.extend(triage.unresolved.iter().map(|u| Finding {
            database: String::new(),
            relation: String::new(),
            kind: "unresolved".into(),
            message: u.clone(),
        }));
        for s in standbys {
            steps.push(Step::new(
                Action::FenceStop,
                s,
                format!("stops standby {s}; its agent holds a fence (no start, no promotion)"),
                STOP_SECS,
                true,
            ));
        }
        steps.push(Step::new(
            Action::Isolate,
            primary,
            format!("restarts primary {primary} on its socket only: clients are out"),
            STOP_SECS + START_SECS,
            true,
        ));
        if !indexes.is_empty() {
            let names: Vec<String> = indexes
                .iter()
                .map(|f| format!("{}.{}", f.database, f.relation))
                .collect();
            let bytes: u64 = indexes.iter().map(bytes_of).sum();
            steps.push(
                Step::new(
                    Action::Reindex,
                    primary,
                    format!("REINDEX INDEX {} on {primary}", names.join(", ")),
                    1.0 + bytes as f64 / REINDEX_RATE,
                    true,
                )
                .with_targets(indexes),
            );
        }
        if !others.is_empty() {
            steps.push(
                Step::new(
                    Action::ExecRepair,
                    primary,
                    format!(
                        "runs the configured repair command on {primary} for {} finding(s) REINDEX cannot repair",
                        others.len()
                    ),
                    EXEC_SECS,
                    true,
                )
                .with_targets(others),
            );
        }
        steps.push(
            Step::new(
                Action::Check,
                primary,
                format!("re-checks the repaired relations on {primary}"),
                1.0 + findings.iter().map(bytes_of).sum::<u64>() as f64 / CHECK_RATE,
                true,
            )
            .with_targets(findings.clone()),
        );
        steps.push(Step::new(
            Action::Serve,
            primary,
            format!("restarts primary {primary} for clients"),
            STOP_SECS + START_SECS,
            true,
        ));
        steps.extend(standbys.iter().map(|s| unfence_start_step(s)));
        steps.extend(standbys.iter().map(|s| wait_streaming_step(s, true)));
    } else {
        repair = Repair::Reseed;
        why = format!(
            "the primary {primary} is clean where {tested}'s copy was damaged: standby-local damage, repaired by re-seeding {tested}; the primary never stops{}",
            lost_rows_judged_by_the_closing_test(&findings)
        );
        alternative = format!(
            "repair on {primary} with the whole set halted (taken when the primary's re-check confirms the findings)"
        );
        steps.push(Step::new(
            Action::Reseed,
            &tested,
            format!(
                "stops {tested} (fenced), moves its data directory aside (kept), pg_basebackup from {primary}"
            ),
            STOP_SECS + 5.0 + data_bytes as f64 / BASEBACKUP_RATE,
            true,
        ));
        steps.push(unfence_start_step(&tested));
        steps.push(wait_streaming_step(&tested, false));
    }
    let why = match restore_for_lost_rows(set, &findings, repair) {
        Some(more) => format!("{why}; {more}"),
        None => why,
    };
    let test_secs = verdict.duration_seconds.unwrap_or(TESTDB_SECS);
    let member = if repair == Repair::Reseed {
        tested.clone()
    } else {
        String::new()
    };
    steps.push(Step::new(
        Action::Testdb,
        &member,
        "a fresh testdb of a standby's copy; a clean verdict closes the window".into(),
        test_secs,
        false,
    ));
    if let Some(h) = &ha {
        steps.push(resume_ha_step(h));
    }
    let expected_downtime_seconds = steps
        .iter()
        .filter(|s| s.downtime)
        .map(|s| s.estimate_seconds)
        .sum();
    Plan {
        set: set.to_owned(),
        repair,
        why,
        alternative,
        primary: primary.to_owned(),
        standbys: standbys.to_vec(),
        tested_member: tested,
        findings,
        triage,
        ha,
        steps,
        expected_downtime_seconds,
        restore: None,
    }
}

/// What the controller knows of the restored member and its backup that
/// changes a restore plan's words (never its steps: those follow the
/// standbys): from the member's facts and the chosen backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreShape {
    /// The set's only member by nature (its facts' `single_member`: an
    /// engine without physical replication): its data is one database, no
    /// standby is halted or re-seeded, and the closing testdb tests the
    /// member itself.
    pub single_member: bool,
    /// The backup names a log position, so a log can be rolled forward
    /// after it; a backup without one (a logical dump) ends where it was
    /// taken.
    pub has_log: bool,
}

impl Default for RestoreShape {
    /// A streaming set's member restored from a base backup.
    fn default() -> Self {
        RestoreShape {
            single_member: false,
            has_log: true,
        }
    }
}

impl RestoreShape {
    /// What the member's data is called.
    fn data(self) -> &'static str {
        if self.single_member {
            "database"
        } else {
            "data directory"
        }
    }

    /// Where the roll-forward goes, for the plan's why (" to ...").
    fn to(self, order: &RestoreOrder) -> String {
        match (&order.target_time, self.has_log) {
            (Some(t), _) => format!(" to {t}"),
            (None, true) => " to the end of the WAL archive".to_owned(),
            (None, false) => String::new(),
        }
    }
}

/// The plan of a restore window (SPEC R1-R12): the backup prepared while
/// the set still serves, the set halted standbys first, the member
/// restored, each standby re-seeded from it and streaming past it, a
/// testdb. `data_bytes` is the member's data size, for the estimates;
/// `shape` chooses the words for a one-member set or a backup without a
/// log.
pub fn build_restore(
    set: &str,
    member: &str,
    standbys: &[String],
    order: RestoreOrder,
    data_bytes: u64,
    ha: Option<Ha>,
    shape: RestoreShape,
) -> Plan {
    let data = shape.data();
    let to = shape.to(&order);
    let roll = match (&order.target_time, shape.has_log) {
        (Some(t), _) => format!("roll forward to {t} on a private socket"),
        (None, true) => "roll forward to the end of the WAL archive on a private socket".to_owned(),
        (None, false) => {
            "nothing to roll forward (the backup has no log after it; a roll-forward hook replays what the application kept)".to_owned()
        }
    };
    let mut steps = vec![Step::new(
        Action::RestorePrepare,
        member,
        format!(
            "R1 R11 R2 on {member}: picks the backup {}{}, checks free space, unpacks and verifies it beside the {data}; the set still serves",
            order.from,
            order
                .peer
                .as_ref()
                .map(|p| format!(
                    " (fetched from {}'s agent under a time-limited grant, resuming a cut transfer)",
                    p.member
                ))
                .unwrap_or_default()
        ),
        1.0 + data_bytes as f64 / UNPACK_RATE,
        false,
    )];
    if let Some(h) = &ha {
        steps.push(pause_ha_step(h));
    }
    for s in standbys {
        steps.push(Step::new(
            Action::FenceStop,
            s,
            format!("stops standby {s}; its agent holds a fence (no start, no promotion)"),
            STOP_SECS,
            true,
        ));
    }
    steps.push(Step::new(
        Action::Restore,
        member,
        format!(
            "R3-R10 on {member}: stop, {data} moved aside (kept), the prepared one in place, {roll}, upgrade hook, sequences, start, health twice; a failure before R9 puts the old {data} back"
        ),
        STOP_SECS + 2.0 * START_SECS + ROLL_FORWARD_SECS,
        true,
    ));
    for s in standbys {
        steps.push(Step::new(
            Action::Reseed,
            s,
            format!(
                "moves {s}'s data directory aside (kept), pg_basebackup from the restored {member}"
            ),
            5.0 + data_bytes as f64 / BASEBACKUP_RATE,
            true,
        ));
    }
    steps.extend(standbys.iter().map(|s| unfence_start_step(s)));
    steps.extend(standbys.iter().map(|s| wait_streaming_step(s, true)));
    steps.push(Step::new(
        Action::Testdb,
        "",
        if shape.single_member {
            format!("a testdb of the restored {member} and its copy (the set's only member)")
        } else {
            "a testdb of a standby's copy of the restored set".into()
        },
        TESTDB_SECS,
        false,
    ));
    if let Some(h) = &ha {
        steps.push(resume_ha_step(h));
    }
    let expected_downtime_seconds = steps
        .iter()
        .filter(|s| s.downtime)
        .map(|s| s.estimate_seconds)
        .sum();
    Plan {
        set: set.to_owned(),
        repair: Repair::Restore,
        why: if shape.single_member {
            format!(
                "restore of {member} from {}{to}: the set's only member, so there is no standby to halt or re-seed; it serves no client from its stop to its start",
                order.from
            )
        } else {
            format!(
                "restore of {member} from {}{to}: the set is halted standbys first (a standby must not take over), and every standby is re-seeded from the restored member",
                order.from
            )
        },
        alternative: format!(
            "a failure before the restored {} starts for clients (R9) puts the old {data} back; the window then resumes the set as it was",
            if shape.single_member {
                "database"
            } else {
                "server"
            }
        ),
        primary: member.to_owned(),
        standbys: standbys.to_vec(),
        tested_member: String::new(),
        findings: vec![],
        triage: Triage::default(),
        ha,
        steps,
        expected_downtime_seconds,
        restore: Some(order),
    }
}

fn unfence_start_step(member: &str) -> Step {
    Step::new(
        Action::UnfenceStart,
        member,
        format!("releases {member}'s fence and starts it"),
        START_SECS,
        true,
    )
}

/// Waits for `member` to stream (and, after a repair on the primary, to
/// have replayed past it).
fn wait_streaming_step(member: &str, past_repair: bool) -> Step {
    Step::new(
        Action::WaitStreaming,
        member,
        if past_repair {
            format!("waits until {member} streams and has replayed past the repair")
        } else {
            format!("waits until {member} streams")
        },
        STREAM_SECS,
        true,
    )
}

fn pause_ha_step(h: &Ha) -> Step {
    Step::new(
        Action::PauseHa,
        "",
        format!(
            "pauses {} (PATCH /config pause=true, confirmed by GET /cluster) before anything stops: no failover, no restart of a stopped member",
            h.manager
        ),
        1.0,
        false,
    )
}

fn resume_ha_step(h: &Ha) -> Step {
    Step::new(
        Action::ResumeHa,
        "",
        format!(
            "resumes {} (PATCH /config pause=false, confirmed by GET /cluster), last: it manages the set again",
            h.manager
        ),
        1.0,
        false,
    )
}

/// The steps that put the set back as it was before the window (abort, and
/// the resume part of close), from the plan's path. They end with
/// `resume_ha` when the window asked the HA manager to pause
/// (`ha_pause_sent`); `close` puts its testdb before that.
pub fn resume_steps(plan: &Plan, ha_pause_sent: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    match plan.repair {
        Repair::Primary => {
            steps.push(Step::new(
                Action::Serve,
                &plan.primary,
                format!("puts primary {} back in client service", plan.primary),
                STOP_SECS + START_SECS,
                true,
            ));
            steps.extend(plan.standbys.iter().map(|s| unfence_start_step(s)));
            steps.extend(plan.standbys.iter().map(|s| wait_streaming_step(s, false)));
        }
        Repair::Reseed => {
            steps.push(unfence_start_step(&plan.tested_member));
            steps.push(wait_streaming_step(&plan.tested_member, false));
        }
        // The restored member is never fenced: its agent's restore puts the
        // old directory back itself on a failure before R9.
        Repair::Restore => {
            steps.extend(plan.standbys.iter().map(|s| unfence_start_step(s)));
            steps.extend(plan.standbys.iter().map(|s| wait_streaming_step(s, false)));
        }
    }
    if let Some(h) = &plan.ha
        && ha_pause_sent
    {
        steps.push(resume_ha_step(h));
    }
    steps
}

/// The steps of `close`: the HA manager paused first (the testdb needs it
/// paused, and a window whose testdb was not clean has already resumed
/// it), the set put back, the testdb that closes the window, the HA
/// manager resumed last.
pub fn close_steps(plan: &Plan) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(h) = &plan.ha {
        steps.push(pause_ha_step(h));
    }
    steps.extend(resume_steps(plan, false));
    steps.extend(
        plan.steps
            .iter()
            .filter(|s| s.action == Action::Testdb)
            .map(|s| {
                let mut s = s.clone();
                s.state = StepState::Pending;
                s.message.clear();
                s.started_at = None;
                s.finished_at = None;
                s
            }),
    );
    if let Some(h) = &plan.ha {
        steps.push(resume_ha_step(h));
    }
    steps
}

/// Seconds from the first downtime step's start to the last one's end.
pub fn measured_downtime(steps: &[Step]) -> Option<f64> {
    let down: Vec<&Step> = steps.iter().filter(|s| s.downtime).collect();
    let first = down.first()?.started_at?;
    let last = down.last()?.finished_at?;
    Some(last.duration_since(first).as_secs_f64())
}

#[cfg(test)]
mod tests;
