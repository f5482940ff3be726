//! Output for people (aligned tables) and for scripts (`--output json`).
//!
//! The JSON shapes are a stable interface: later versions add fields, never
//! rename or remove them. They are built here from the wire types, in one
//! place, so the table and the JSON always say the same thing.

use serde_json::{Value, json};
use tandem_proto::model::{AgentState, Facts, timestamp_from_wire};
use tandem_proto::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables for people.
    Human,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// An aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn agent_state(v: i32) -> AgentState {
    AgentState::try_from(v).unwrap_or(AgentState::NeverSeen)
}

fn facts(f: &Option<pb::InstanceFacts>) -> Option<Facts> {
    f.clone().and_then(|f| Facts::try_from(f).ok())
}

pub fn ts(t: Option<prost_types::Timestamp>) -> Option<String> {
    timestamp_from_wire("at", t)
        .ok()
        .flatten()
        .map(|t| t.to_string())
}

/// What a member is doing, in one word, from the agent's state and facts.
fn member_state(state: AgentState, f: Option<&Facts>, live: bool) -> String {
    match (state, f) {
        (AgentState::NeverSeen, _) => "agent never seen".into(),
        (AgentState::Offline, _) => "agent offline".into(),
        (AgentState::Online, Some(f)) if live => f.state_word(),
        (AgentState::Online, _) => "agent not answering".into(),
    }
}

/// Is this member healthy (agent online, server running, a standby streaming)?
pub fn member_ok(m: &pb::MemberView) -> bool {
    agent_state(m.agent_state) == AgentState::Online
        && m.live
        && facts(&m.facts).is_some_and(|f| f.healthy())
}

pub fn agent_ok(a: &pb::AgentInfo) -> bool {
    agent_state(a.state) == AgentState::Online
}

fn facts_json(f: Option<&Facts>) -> Value {
    match f {
        None => json!({}),
        Some(f) => json!({
            "server_version": f.server_version,
            "server_state": f.server_state,
            "data_dir": f.data_dir,
            "data_dir_bytes": f.data_dir_bytes,
            "current_lsn": f.current_lsn,
            "received_lsn": f.received_lsn,
            "replayed_lsn": f.replayed_lsn,
            "wal_receiver_status": f.wal_receiver_status,
            "fully_received": f.fully_received,
            "replay_lag_bytes": f.replay_lag_bytes,
            "problem": f.problem,
        }),
    }
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn verdict_kind(v: &Option<pb::Verdict>) -> &'static str {
    match v.as_ref().map(|v| pb::VerdictKind::try_from(v.kind)) {
        Some(Ok(pb::VerdictKind::Clean)) => "clean",
        Some(Ok(pb::VerdictKind::Errors)) => "errors",
        Some(Ok(pb::VerdictKind::FailedToRun)) => "failed_to_run",
        _ => "never_tested",
    }
}

fn verdict_summary(v: &Option<pb::Verdict>) -> String {
    let Some(v) = v else {
        return "never tested".into();
    };
    match verdict_kind(&Some(v.clone())) {
        // A copy without a log position is of a set's only member (an
        // engine without physical replication): the verdict speaks for it.
        "clean" if v.lsn.is_empty() => format!("the database and its copy verified clean (the set's only member) at {}", ts(v.at).unwrap_or_default()),
        "clean" => format!("primary, standby and copy verified clean up to LSN {} at {}", v.lsn, ts(v.at).unwrap_or_default()),
        "errors" if v.lsn.is_empty() => "errors found in the database's copy: they are the database's own errors; repair the database (its copy is left as it was for a look)".into(),
        "errors" => "errors found on the standby's copy: they are the primary's errors too; repair on the primary with the whole set halted".into(),
        "failed_to_run" => format!("test failed to run: {}", v.reason),
        _ => "never tested".into(),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A verdict's JSON shape (in `show`, `testdb` and `history`).
pub fn verdict_json(v: &Option<pb::Verdict>) -> Value {
    let d = pb::Verdict::default();
    let x = v.as_ref().unwrap_or(&d);
    let findings: Vec<Value> = x
        .findings
        .iter()
        .map(|f| json!({"database": f.database, "relation": f.relation, "kind": f.kind, "message": f.message}))
        .collect();
    json!({
        "kind": verdict_kind(v),
        "summary": verdict_summary(v),
        "lsn": non_empty(&x.lsn),
        "at": ts(x.at),
        "member": non_empty(&x.member),
        "findings": findings,
        "reason": non_empty(&x.reason),
        "operation_id": non_empty(&x.operation_id),
        "output_path": non_empty(&x.output_path),
        "warnings": x.warnings,
        "coverage": x.coverage,
        "standby_downtime_seconds": x.standby_downtime_seconds,
        "mode": non_empty(&x.mode),
        "copy_method": non_empty(&x.copy_method),
        "copy_note": non_empty(&x.copy_note),
        "duration_seconds": (x.duration_seconds > 0.0).then_some(x.duration_seconds),
        "started_at": ts(x.started_at),
        "trace_id": non_empty(&x.trace_id),
        "backup_path": non_empty(&x.backup_path),
        "notes": x.notes,
    })
}

/// `tandemctl backups -o json`.
pub fn backups_json(r: &pb::ListBackupsResponse) -> Value {
    json!({
        "set": r.set,
        "backups": r.backups.iter().map(backup_json).collect::<Vec<_>>(),
        "wal_archives": r.wal_archives.iter().map(|w| json!({
            "member": w.member,
            "location": w.location,
            "segment_bytes": w.segment_bytes,
            "newest_modified": ts(w.newest_modified),
            "timelines": w.timelines.iter().map(|t| json!({
                "timeline": t.timeline,
                "first": t.first,
                "last": t.last,
                "segments": t.segments,
                "gaps": t.gaps.iter().map(|g| json!({"from": g.from, "to": g.to})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "problem": non_empty(&w.problem),
        })).collect::<Vec<_>>(),
        "problems": r.problems,
    })
}

/// One backup for scripts (`backups`, a restore's plan).
pub fn backup_json(b: &pb::BackupInfo) -> Value {
    json!({
        "member": b.member,
        "file": b.file,
        "kind": b.kind,
        "taken_at": ts(b.taken_at),
        "bytes": b.bytes,
        "unpacked_bytes": b.unpacked_bytes,
        "start_lsn": non_empty(&b.start_lsn),
        "end_lsn": non_empty(&b.end_lsn),
        "verified": b.verified,
        "problem": non_empty(&b.problem),
    })
}

/// `tandemctl wal-prune -o json`.
pub fn wal_prune_json(r: &pb::WalPruneResponse) -> Value {
    json!({
        "set": r.set,
        "plans": r.plans.iter().map(|p| json!({
            "member": p.member,
            "location": p.location,
            "files": p.files,
            "bytes": p.bytes,
            "boundary_backup": non_empty(&p.boundary_backup),
            "boundary_start_lsn": non_empty(&p.boundary_start_lsn),
            "first_kept_segment": non_empty(&p.first_kept_segment),
            "kept_in_window": p.kept_in_window,
            "why": p.why,
            "problem": non_empty(&p.problem),
        })).collect::<Vec<_>>(),
        "problems": r.problems,
    })
}

/// `tandemctl wal-prune`: per member and place, what would go and why.
pub fn wal_prune_human(r: &pb::WalPruneResponse) -> String {
    let mut out = String::new();
    for p in &r.plans {
        if !p.problem.is_empty() {
            out.push_str(&format!(
                "{} {}: cannot plan: {}\n",
                p.member, p.location, p.problem
            ));
            continue;
        }
        out.push_str(&format!(
            "{} {}: {} file(s), {} would be removed\n  {}\n",
            p.member,
            p.location,
            p.files.len(),
            mib(p.bytes),
            p.why
        ));
        for f in &p.files {
            out.push_str(&format!("  {f}\n"));
        }
    }
    if r.plans.is_empty() {
        out.push_str(&format!("set {}: no WAL archive\n", r.set));
    }
    out.push_str("dry run: nothing was removed");
    for p in &r.problems {
        out.push_str(&format!("\nproblem: {p}"));
    }
    out
}

/// One line per WAL archive and timeline, for `tandemctl backups`.
fn wal_archives_human(r: &pb::ListBackupsResponse) -> String {
    let mut out = String::new();
    for w in &r.wal_archives {
        // The store's location says it is the store.
        let head = if w.member == tandem_proto::model::REMOTE_MEMBER {
            format!("\nWAL archive {}", w.location)
        } else {
            format!("\nWAL archive {} on {}", w.location, w.member)
        };
        if !w.problem.is_empty() {
            out.push_str(&format!("{head}: cannot be read: {}", w.problem));
            continue;
        }
        if w.timelines.is_empty() {
            out.push_str(&format!("{head}: no segment"));
            continue;
        }
        out.push_str(&format!("{head}:"));
        for t in &w.timelines {
            out.push_str(&format!(
                "\n  timeline {}: {} segments, {} .. {}",
                t.timeline, t.segments, t.first, t.last
            ));
            for g in &t.gaps {
                out.push_str(&format!("\n    missing {} .. {}", g.from, g.to));
            }
        }
    }
    out
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// `tandemctl backups`: one row per file, newest first.
pub fn backups_human(r: &pb::ListBackupsResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .backups
        .iter()
        .map(|b| {
            vec![
                b.member.clone(),
                b.kind.clone(),
                ts(b.taken_at).unwrap_or_default(),
                mib(b.bytes),
                mib(b.unpacked_bytes),
                format!("{}..{}", b.start_lsn, b.end_lsn),
                if b.verified { "yes" } else { "no" }.into(),
                if b.problem.is_empty() {
                    b.file.clone()
                } else {
                    format!("{} ({})", b.file, b.problem)
                },
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        format!("set {}: no backups", r.set)
    } else {
        table(
            &[
                "MEMBER",
                "KIND",
                "TAKEN",
                "SIZE",
                "UNPACKED",
                "LSN RANGE",
                "VERIFIED",
                "FILE",
            ],
            &rows,
        )
    };
    out.push_str(&wal_archives_human(r));
    for p in &r.problems {
        out.push_str(&format!("\nproblem: {p}"));
    }
    out
}

pub fn verdict_failed(v: &Option<pb::Verdict>) -> bool {
    verdict_kind(v) == "failed_to_run"
}

/// What `tandemctl copy` ends with: each archive copy made or not, its
/// file, and the test that shared its copy, if one did.
pub fn archive_human(results: &[(String, pb::Verdict)]) -> String {
    let mut out = String::new();
    for (set, v) in results {
        let vv = Some(v.clone());
        let line = if verdict_failed(&vv) {
            format!("{set}: archive copy NOT made: {}", v.reason)
        } else {
            let mut l = format!(
                "{set}: archive copy made on {} (operation {})",
                v.member, v.operation_id
            );
            if !v.backup_path.is_empty() {
                l.push_str(&format!(", archive file {}", v.backup_path));
            }
            if !v.lsn.is_empty() {
                l.push_str(&format!(
                    "; a test shared the copy: {}",
                    verdict_summary(&vv)
                ));
            }
            l
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&line);
    }
    out
}

/// The verdict table `testdb` ends with, and the details of bad verdicts.
pub fn verdicts_human(results: &[(String, pb::Verdict)]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(set, v)| {
            let first = v
                .findings
                .first()
                .map(|f| format!("{} {}: {}", f.kind, f.relation, f.message))
                .or_else(|| non_empty(&v.reason))
                .unwrap_or_default();
            vec![
                set.clone(),
                if v.member.is_empty() {
                    "-".into()
                } else {
                    v.member.clone()
                },
                verdict_kind(&Some(v.clone())).to_owned(),
                if v.lsn.is_empty() {
                    "-".into()
                } else {
                    v.lsn.clone()
                },
                if v.duration_seconds > 0.0 {
                    format!("{:.1}s", v.duration_seconds)
                } else {
                    "-".into()
                },
                first.chars().take(100).collect(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SET",
            "MEMBER",
            "VERDICT",
            "LSN",
            "DURATION",
            "FIRST FINDING / REASON",
        ],
        &rows,
    );
    for (set, v) in results {
        let vv = Some(v.clone());
        out.push_str(&format!("\n\n{set}: {}", verdict_summary(&vv)));
        for f in v.findings.iter().take(5) {
            out.push_str(&format!(
                "\n  {} {} {}: {}",
                f.kind, f.database, f.relation, f.message
            ));
        }
        if v.findings.len() > 5 {
            out.push_str(&format!("\n  ... {} more", v.findings.len() - 5));
        }
        for w in &v.warnings {
            out.push_str(&format!("\n  warning: {w}"));
        }
        for c in &v.coverage {
            out.push_str(&format!("\n  covered: {c}"));
        }
        if let Some(c) = copy_human(v) {
            out.push_str(&format!("\n  {c}"));
        }
        if !v.output_path.is_empty() && verdict_kind(&vv) != "clean" {
            out.push_str(&format!(
                "\n  full output: {} on member {}",
                v.output_path, v.member
            ));
        }
        if !v.backup_path.is_empty() {
            out.push_str(&format!(
                "\n  backup kept: {} on member {}",
                v.backup_path, v.member
            ));
        }
        for n in &v.notes {
            out.push_str(&format!("\n  note: {n}"));
        }
        if !v.trace_id.is_empty() {
            out.push_str(&format!("\n  trace id: {}", v.trace_id));
        }
    }
    out
}

pub fn verdict_bad(v: &Option<pb::Verdict>) -> bool {
    verdict_kind(v) == "errors"
}

pub fn sets_json(sets: &[pb::SetView]) -> Value {
    let sets: Vec<Value> = sets
        .iter()
        .map(|s| {
            let members: Vec<Value> = s
                .members
                .iter()
                .map(|m| {
                    let f = facts(&m.facts);
                    let state = agent_state(m.agent_state);
                    merge(
                        json!({
                            "name": m.name,
                            "agent": m.agent,
                            "agent_state": state,
                            "role": f.as_ref().map(|f| f.role.to_string()).unwrap_or_else(|| "unknown".into()),
                            "state": member_state(state, f.as_ref(), m.live),
                            "live": m.live,
                            "healthy": member_ok(m),
                        }),
                        facts_json(f.as_ref()),
                    )
                })
                .collect();
            json!({
                "name": s.name,
                "generation": s.generation,
                "members": members,
                "verdict": verdict_json(&s.verdict),
                "policies": policies_json(&s.policies),
                "next_test": ts(s.next_test),
            })
        })
        .collect();
    json!({ "sets": sets })
}

pub fn policies_json(p: &Option<pb::Policies>) -> Value {
    let d = pb::Policies::default();
    let p = p.as_ref().unwrap_or(&d);
    json!({
        "test": p.test,
        "archive_copy": p.archive_copy,
        "archive_file": p.archive_file,
        "mode": non_empty(&p.mode),
        "source": p.source,
    })
}

fn policies_human(p: &Option<pb::Policies>, next: Option<prost_types::Timestamp>) -> String {
    let d = pb::Policies::default();
    let p = p.as_ref().unwrap_or(&d);
    format!(
        "  policy: test {}{}, archive copy {}{}, mode {} (from {})",
        p.test,
        ts(next).map(|t| format!(" (next {t})")).unwrap_or_default(),
        p.archive_copy,
        if p.archive_file {
            " packed into a file"
        } else {
            ""
        },
        if p.mode.is_empty() {
            "the agent's default"
        } else {
            &p.mode
        },
        p.source
    )
}

/// How a verdict's copy was made: "copy: cold, bytes, standby down 2.3 s"
/// (and its note); `None` when nothing about it is known.
fn copy_human(v: &pb::Verdict) -> Option<String> {
    let mut parts = Vec::new();
    if !v.mode.is_empty() {
        parts.push(v.mode.clone());
    }
    if !v.copy_method.is_empty() {
        parts.push(v.copy_method.clone());
    }
    if let Some(d) = v.standby_downtime_seconds {
        // A copy without a log position is a one-member set's: the member
        // tested is the database itself, not a standby.
        let who = if v.lsn.is_empty() {
            "database"
        } else {
            "standby"
        };
        parts.push(format!("{who} down {d:.1} s"));
    }
    if parts.is_empty() && v.copy_note.is_empty() {
        return None;
    }
    let mut out = format!("copy: {}", parts.join(", "));
    if !v.copy_note.is_empty() {
        out.push_str(&format!(" ({})", v.copy_note));
    }
    Some(out)
}

pub fn sets_human(sets: &[pb::SetView]) -> String {
    let mut out = String::new();
    for (i, s) in sets.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "set {} (generation {}): {}\n",
            s.name,
            s.generation,
            verdict_summary(&s.verdict)
        ));
        if let Some(c) = s.verdict.as_ref().and_then(copy_human) {
            out.push_str(&format!("  last {c}\n"));
        }
        out.push_str(&policies_human(&s.policies, s.next_test));
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| {
                let f = facts(&m.facts);
                let state = agent_state(m.agent_state);
                let lsn = f
                    .as_ref()
                    .and_then(|f| f.current_lsn.or(f.replayed_lsn))
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into());
                vec![
                    format!("  {}", m.name),
                    m.agent.clone(),
                    f.as_ref()
                        .map(|f| f.role.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    member_state(state, f.as_ref(), m.live),
                    lsn,
                    f.as_ref()
                        .and_then(|f| f.problem.clone())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["  MEMBER", "AGENT", "ROLE", "STATE", "LSN", "PROBLEM"],
            &rows,
        ));
        out.push('\n');
    }
    if sets.is_empty() {
        out.push_str("no sets declared; add [[sets]] to controller.toml\n");
    }
    out
}

/// Under this many days left, `tandemctl agents` warns about an agent's
/// certificate (the exit code stays what the states make it, as with a
/// verdict's warnings).
pub const CERT_WARN_DAYS: i64 = 30;

/// Whole days until the agent's certificate expires (negative once it has),
/// when the agent said.
pub fn cert_days_left(a: &pb::AgentInfo, now: jiff::Timestamp) -> Option<i64> {
    let at = timestamp_from_wire("cert_not_after", a.cert_not_after)
        .ok()
        .flatten()?;
    Some((at.as_second() - now.as_second()).div_euclid(86_400))
}

/// The warning for an agent whose certificate has under [`CERT_WARN_DAYS`] left.
fn cert_warning(a: &pb::AgentInfo, now: jiff::Timestamp) -> Option<String> {
    let days = cert_days_left(a, now)?;
    if days >= CERT_WARN_DAYS {
        return None;
    }
    let at = ts(a.cert_not_after).unwrap_or_default();
    let when = if days < 0 {
        format!("expired at {at}")
    } else {
        format!("expires in {days} days (at {at})")
    };
    Some(format!(
        "the certificate of agent {} {when}; renew it (for a development CA: \
         `tandemctl certs renew --dir DIR agent {}`); the agent reloads it without a restart",
        a.name, a.name
    ))
}

/// `tandemctl controllers -o json`.
pub fn controllers_json(r: &pb::ControllersResponse) -> Value {
    let controllers: Vec<Value> = r
        .controllers
        .iter()
        .map(|c| {
            json!({
                "address": c.address,
                "leader": c.leader,
                "holder": c.holder,
                "started_at": ts(c.started_at),
                "last_seen": ts(c.last_seen),
                "leader_since": ts(c.leader_since),
                "generation": (c.generation > 0).then_some(c.generation),
                "lease_expires": ts(c.lease_expires),
            })
        })
        .collect();
    json!({
        "store": r.store,
        "lease_seconds": (r.lease_seconds > 0).then_some(r.lease_seconds),
        "answered_by": r.answered_by,
        "controllers": controllers,
    })
}

pub fn controllers_human(r: &pb::ControllersResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .controllers
        .iter()
        .map(|c| {
            vec![
                c.address.clone(),
                if c.leader { "leader" } else { "follower" }.into(),
                ts(c.leader_since).unwrap_or_else(|| "-".into()),
                if c.generation > 0 {
                    c.generation.to_string()
                } else {
                    "-".into()
                },
                ts(c.lease_expires).unwrap_or_else(|| "-".into()),
                ts(c.last_seen).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "CONTROLLER",
            "ROLE",
            "LEADS SINCE",
            "GENERATION",
            "LEASE UNTIL",
            "LAST SEEN",
        ],
        &rows,
    );
    if r.store == "sqlite" {
        out.push_str(
            "
store: SQLite (one controller, which always leads)",
        );
    } else {
        out.push_str(&format!(
            "
store: PostgreSQL, lease {}s; answered by {}",
            r.lease_seconds, r.answered_by
        ));
        if !r.controllers.iter().any(|c| c.leader) {
            out.push_str(
                "
no controller leads at the moment: a takeover happens within the lease length",
            );
        }
    }
    out
}

pub fn agents_json(agents: &[pb::AgentInfo]) -> Value {
    agents_json_at(agents, jiff::Timestamp::now())
}

pub fn agents_json_at(agents: &[pb::AgentInfo], now: jiff::Timestamp) -> Value {
    let agents: Vec<Value> = agents
        .iter()
        .map(|a| {
            let f = facts(&a.facts);
            json!({
                "name": a.name,
                "set": a.set,
                "member": a.member,
                "role": f.as_ref().map(|f| f.role.to_string()).unwrap_or_else(|| "unknown".into()),
                "state": agent_state(a.state),
                "address": a.address,
                "last_seen": ts(a.last_seen),
                "version": a.agent_version,
                "server_state": f.as_ref().map(|f| f.state_word()),
                "cert_not_after": ts(a.cert_not_after),
                "cert_days_left": cert_days_left(a, now),
                "warnings": cert_warning(a, now).into_iter().collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "agents": agents })
}

pub fn agents_human(agents: &[pb::AgentInfo]) -> String {
    agents_human_at(agents, jiff::Timestamp::now())
}

pub fn agents_human_at(agents: &[pb::AgentInfo], now: jiff::Timestamp) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let f = facts(&a.facts);
            vec![
                a.name.clone(),
                a.set.clone(),
                a.member.clone(),
                f.as_ref()
                    .map(|f| f.role.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                agent_state(a.state).to_string(),
                if a.address.is_empty() {
                    "-".into()
                } else {
                    a.address.clone()
                },
                ts(a.last_seen).unwrap_or_else(|| "-".into()),
                cert_days_left(a, now)
                    .map(|d| format!("{d}d"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "AGENT",
            "SET",
            "MEMBER",
            "ROLE",
            "STATE",
            "ADDRESS",
            "LAST SEEN",
            "CERT LEFT",
        ],
        &rows,
    );
    for w in agents.iter().filter_map(|a| cert_warning(a, now)) {
        out.push_str(&format!("\nwarning: {w}"));
    }
    out
}

pub fn audit_json(entries: &[pb::AuditEntry]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "at": ts(e.at),
                "identity": e.identity,
                "action": e.action,
                "arguments": serde_json::from_str::<Value>(&e.arguments).unwrap_or(Value::String(e.arguments.clone())),
                "outcome": e.outcome,
                "trace_id": e.trace_id,
            })
        })
        .collect();
    json!({ "entries": entries })
}

pub fn audit_human(entries: &[pb::AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                ts(e.at).unwrap_or_default(),
                e.identity.clone(),
                e.action.clone(),
                e.outcome.clone(),
                e.arguments.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "AT", "IDENTITY", "ACTION", "OUTCOME", "ARGUMENTS"],
        &rows,
    )
}

/// One set of the inventory (`tandemctl set list`, `set add`, ...).
pub fn inventory_set_json(s: &pb::InventorySet) -> Value {
    json!({
        "name": s.name,
        "generation": s.generation,
        "members": s.members.iter().map(|m| json!({
            "name": m.name,
            "agent": m.agent,
            "host": (!m.host.is_empty()).then_some(&m.host),
        })).collect::<Vec<_>>(),
        "source": s.source,
        "changed_at": ts(s.changed_at),
        "changed_by": s.changed_by,
    })
}

pub fn inventory_human(sets: &[pb::InventorySet]) -> String {
    let mut rows = Vec::new();
    for s in sets {
        for m in &s.members {
            rows.push(vec![
                s.name.clone(),
                s.generation.to_string(),
                m.name.clone(),
                m.agent.clone(),
                if m.host.is_empty() {
                    "(its address)".into()
                } else {
                    m.host.clone()
                },
                if s.changed_by.is_empty() {
                    s.source.clone()
                } else {
                    format!("{} by {}", s.source, s.changed_by)
                },
            ]);
        }
    }
    table(&["SET", "GEN", "MEMBER", "AGENT", "HOST", "FROM"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_end_with_what_each_wal_archive_holds() {
        let r = pb::ListBackupsResponse {
            set: "billing".into(),
            wal_archives: vec![
                pb::WalArchive {
                    member: "db2".into(),
                    location: "/var/lib/tandem/wal".into(),
                    segment_bytes: 16 << 20,
                    timelines: vec![pb::WalTimeline {
                        timeline: 1,
                        first: "000000010000000000000003".into(),
                        last: "000000010000000000000009".into(),
                        segments: 6,
                        gaps: vec![pb::WalGap {
                            from: "000000010000000000000005".into(),
                            to: "000000010000000000000005".into(),
                        }],
                    }],
                    ..Default::default()
                },
                pb::WalArchive {
                    member: "(remote)".into(),
                    location: "remote:billing/wal".into(),
                    problem: "timed out".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = backups_human(&r);
        assert!(
            text.contains("WAL archive /var/lib/tandem/wal on db2:\n  timeline 1: 6 segments, 000000010000000000000003 .. 000000010000000000000009\n    missing 000000010000000000000005 .. 000000010000000000000005"),
            "{text}"
        );
        assert!(
            text.contains("WAL archive remote:billing/wal: cannot be read: timed out"),
            "{text}"
        );
        let j = backups_json(&r);
        assert_eq!(
            j["wal_archives"][0]["timelines"][0]["gaps"][0]["from"],
            "000000010000000000000005"
        );
        assert_eq!(j["wal_archives"][1]["problem"], "timed out");
    }

    #[test]
    fn an_agent_certificate_near_its_end_is_warned_about() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let agent = |name: &str, days: Option<i64>| pb::AgentInfo {
            name: name.into(),
            set: "billing".into(),
            member: name.into(),
            state: pb::AgentState::Online as i32,
            cert_not_after: days.map(|d| prost_types::Timestamp {
                seconds: now.as_second() + d * 86_400 + 3_600,
                nanos: 0,
            }),
            ..Default::default()
        };
        let agents = [
            agent("db1", Some(12)),
            agent("db2", Some(200)),
            agent("db3", None),
            agent("db4", Some(-3)),
        ];
        let v = agents_json_at(&agents, now);
        assert_eq!(v["agents"][0]["cert_days_left"], 12);
        assert_eq!(v["agents"][1]["cert_days_left"], 200);
        assert_eq!(v["agents"][2]["cert_days_left"], Value::Null);
        assert_eq!(v["agents"][3]["cert_days_left"], -3);
        let w = v["agents"][0]["warnings"][0].as_str().unwrap();
        assert!(w.contains("agent db1") && w.contains("12 days"), "{w}");
        assert_eq!(v["agents"][1]["warnings"].as_array().unwrap().len(), 0);
        assert_eq!(v["agents"][2]["warnings"].as_array().unwrap().len(), 0);
        assert!(
            v["agents"][3]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("expired")
        );
        let text = agents_human_at(&agents, now);
        assert!(text.contains("12d"), "{text}");
        assert_eq!(text.matches("\nwarning: ").count(), 2, "{text}");
        // Warnings do not make an agent bad: the exit code is its state's.
        assert!(agents.iter().all(agent_ok));
    }

    #[test]
    fn inventory_json_has_the_documented_shape() {
        let s = pb::InventorySet {
            name: "billing".into(),
            generation: 3,
            members: vec![
                pb::MemberDecl {
                    name: "db1".into(),
                    agent: "db1".into(),
                    host: String::new(),
                },
                pb::MemberDecl {
                    name: "db2".into(),
                    agent: "a2".into(),
                    host: "h2".into(),
                },
            ],
            source: "tandemctl".into(),
            changed_at: None,
            changed_by: "spiffe://tandem/user/admin".into(),
        };
        let v = inventory_set_json(&s);
        assert_eq!(v["name"], "billing");
        assert_eq!(v["generation"], 3);
        assert_eq!(v["members"][0]["host"], Value::Null);
        assert_eq!(v["members"][1]["agent"], "a2");
        assert_eq!(v["members"][1]["host"], "h2");
        assert_eq!(v["source"], "tandemctl");
        assert!(inventory_human(&[s]).contains("tandemctl by spiffe://tandem/user/admin"));
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz");
    }

    #[test]
    fn show_json_has_the_documented_shape() {
        let set = pb::SetView {
            name: "billing".into(),
            generation: 1,
            members: vec![pb::MemberView {
                name: "db1".into(),
                agent: "db1".into(),
                agent_state: pb::AgentState::Offline as i32,
                facts: None,
                live: false,
            }],
            verdict: None,
            ..Default::default()
        };
        let v = sets_json(&[set]);
        let m = &v["sets"][0]["members"][0];
        assert_eq!(v["sets"][0]["name"], "billing");
        assert_eq!(m["name"], "db1");
        assert_eq!(m["agent"], "db1");
        assert_eq!(m["role"], "unknown");
        assert_eq!(m["state"], "agent offline");
        assert_eq!(m["agent_state"], "offline");
        assert_eq!(v["sets"][0]["verdict"]["kind"], "never_tested");
    }
}
