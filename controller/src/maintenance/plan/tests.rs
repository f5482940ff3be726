//! Unit tests of the plan: paths, step order, estimates, resume and close.

use super::*;
use crate::verdicts::VerdictKind;
use jiff::Timestamp;

fn finding(kind: &str, db: &str, rel: &str) -> Finding {
    Finding {
        database: db.into(),
        relation: rel.into(),
        kind: kind.into(),
        message: "m".into(),
    }
}

fn verdict(findings: Vec<Finding>) -> Verdict {
    let mut v = Verdict::failed_to_run("s1", String::new(), String::new());
    v.kind = VerdictKind::Errors;
    v.findings = findings;
    v.duration_seconds = Some(10.0);
    v
}

fn actions(p: &Plan) -> Vec<(Action, &str)> {
    p.steps
        .iter()
        .map(|s| (s.action, s.member.as_str()))
        .collect()
}

#[test]
fn a_confirmed_index_finding_halts_the_whole_set_standbys_first() {
    let f = finding("index", "postgres", "public.t_idx");
    let standbys = vec!["s1".to_owned(), "s2".to_owned()];
    let v = verdict(vec![f.clone()]);
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage {
            findings: vec![f.clone()],
            relations: vec![Relation {
                database: "postgres".into(),
                relation: "public.t_idx".into(),
                is_index: true,
                bytes: 100_000_000,
            }],
            unresolved: vec![],
        },
        data_bytes: 0,
        exec_only: false,
        ha: None,
    });
    assert_eq!(p.repair, Repair::Primary);
    assert_eq!(
        actions(&p),
        vec![
            (Action::Triage, "p"),
            (Action::FenceStop, "s1"),
            (Action::FenceStop, "s2"),
            (Action::Isolate, "p"),
            (Action::Reindex, "p"),
            (Action::Check, "p"),
            (Action::Serve, "p"),
            (Action::UnfenceStart, "s1"),
            (Action::UnfenceStart, "s2"),
            (Action::WaitStreaming, "s1"),
            (Action::WaitStreaming, "s2"),
            (Action::Testdb, ""),
        ]
    );
    assert_eq!(p.steps[4].targets, vec![f]);
    // 2 stops + isolate 2 + reindex 1+2 + check 1+1 + serve 2 + 2 starts + 2 waits
    assert!(
        (p.expected_downtime_seconds - (2.0 + 2.0 + 3.0 + 2.0 + 2.0 + 2.0 + 2.0)).abs() < 1e-9,
        "{}",
        p.expected_downtime_seconds
    );
    assert!(p.why.contains("replicated"), "{}", p.why);
}

#[test]
fn a_clean_primary_means_standby_local_damage_and_a_reseed() {
    let f = finding("checksum", "5", "base/5/16384");
    let standbys = vec!["s1".to_owned()];
    let v = verdict(vec![f]);
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage::default(),
        data_bytes: 1_000_000_000,
        exec_only: false,
        ha: None,
    });
    assert_eq!(p.repair, Repair::Reseed);
    assert_eq!(
        actions(&p),
        vec![
            (Action::Triage, "p"),
            (Action::Reseed, "s1"),
            (Action::UnfenceStart, "s1"),
            (Action::WaitStreaming, "s1"),
            (Action::Testdb, "s1"),
        ]
    );
    assert!(p.alternative.contains("whole set halted"));
    assert!(!p.steps.iter().any(|s| s.member == "p" && s.downtime));
}

#[test]
fn a_verdict_on_the_primarys_own_copy_is_never_a_reseed_of_the_primary_from_itself() {
    let standbys = vec!["s1".to_owned()];
    let mut v = verdict(vec![finding("checksum", "5", "base/5/16384")]);
    v.member = "p".into();
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage::default(),
        data_bytes: 1_000_000_000,
        exec_only: false,
        ha: None,
    });
    assert_eq!(p.repair, Repair::Primary);
    assert!(!p.why.contains("same damage"), "{}", p.why);
    assert!(p.why.contains("the primary p's own"), "{}", p.why);
    assert!(
        !p.alternative.contains("re-seed p from p"),
        "{}",
        p.alternative
    );
    assert!(p.alternative.starts_with("none: "), "{}", p.alternative);
    assert!(!actions(&p).contains(&(Action::Reseed, "p")));
}

#[test]
fn heap_findings_and_unresolved_ones_go_to_the_exec_repair() {
    let heap = finding("heap", "postgres", "public.t");
    let standbys = vec!["s1".to_owned()];
    let v = verdict(vec![heap.clone()]);
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage {
            findings: vec![heap.clone()],
            relations: vec![],
            unresolved: vec!["a check_failed finding names no relation".into()],
        },
        data_bytes: 0,
        exec_only: false,
        ha: None,
    });
    assert_eq!(p.repair, Repair::Primary);
    let exec = p
        .steps
        .iter()
        .find(|s| s.action == Action::ExecRepair)
        .unwrap();
    assert_eq!(exec.targets.len(), 2);
    assert!(!p.steps.iter().any(|s| s.action == Action::Reindex));
}

#[test]
fn resume_undoes_the_path_and_downtime_is_measured_over_downtime_steps() {
    let standbys = vec!["s1".to_owned()];
    let f = finding("index", "postgres", "public.t_idx");
    let v = verdict(vec![f.clone()]);
    let mut p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage {
            findings: vec![f],
            ..Default::default()
        },
        data_bytes: 0,
        exec_only: false,
        ha: None,
    });
    let r: Vec<Action> = resume_steps(&p, true).iter().map(|s| s.action).collect();
    assert_eq!(
        r,
        vec![Action::Serve, Action::UnfenceStart, Action::WaitStreaming]
    );
    let t0: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
    for (i, s) in p.steps.iter_mut().enumerate() {
        s.started_at = Some(t0 + jiff::SignedDuration::from_secs(i as i64 * 10));
        s.finished_at = Some(t0 + jiff::SignedDuration::from_secs(i as i64 * 10 + 5));
    }
    // Downtime steps are 1..=7 (fence_stop .. wait_streaming): 10 s to 75 s.
    assert_eq!(measured_downtime(&p.steps), Some(65.0));
}

fn patroni() -> Option<Ha> {
    Some(Ha {
        manager: "patroni".into(),
        urls: vec!["http://127.0.0.1:8008".into()],
        paused_before: Some(false),
        seen: "leader n1".into(),
    })
}

#[test]
fn an_ha_manager_is_paused_before_anything_stops_and_resumed_after_the_testdb() {
    let f = finding("index", "postgres", "public.t_idx");
    let standbys = vec!["s1".to_owned()];
    let v = verdict(vec![f.clone()]);
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage {
            findings: vec![f],
            ..Default::default()
        },
        data_bytes: 0,
        exec_only: false,
        ha: patroni(),
    });
    assert_eq!(
        actions(&p),
        vec![
            (Action::Triage, "p"),
            (Action::PauseHa, ""),
            (Action::FenceStop, "s1"),
            (Action::Isolate, "p"),
            (Action::Reindex, "p"),
            (Action::Check, "p"),
            (Action::Serve, "p"),
            (Action::UnfenceStart, "s1"),
            (Action::WaitStreaming, "s1"),
            (Action::Testdb, ""),
            (Action::ResumeHa, ""),
        ]
    );
    assert!(
        p.steps[1].touches.contains("patroni"),
        "{}",
        p.steps[1].touches
    );
    // Pausing and resuming are not downtime; the estimate is unchanged.
    assert!(!p.steps[1].downtime && !p.steps[10].downtime);
    assert!(
        (p.expected_downtime_seconds - 9.0).abs() < 1e-9,
        "{}",
        p.expected_downtime_seconds
    );
    assert_eq!(p.steps[1].action.agent_step(), None);

    // Abort and close end with resume_ha once the pause was sent, and
    // without it when it never was.
    let r: Vec<Action> = resume_steps(&p, true).iter().map(|s| s.action).collect();
    assert_eq!(
        r,
        vec![
            Action::Serve,
            Action::UnfenceStart,
            Action::WaitStreaming,
            Action::ResumeHa
        ]
    );
    let r: Vec<Action> = resume_steps(&p, false).iter().map(|s| s.action).collect();
    assert_eq!(
        r,
        vec![Action::Serve, Action::UnfenceStart, Action::WaitStreaming]
    );
    // Close pauses first whatever happened before (its testdb needs
    // it), tests, and resumes last.
    let c: Vec<(Action, StepState)> = close_steps(&p)
        .iter()
        .map(|s| (s.action, s.state))
        .collect();
    assert_eq!(
        c,
        vec![
            (Action::PauseHa, StepState::Pending),
            (Action::Serve, StepState::Pending),
            (Action::UnfenceStart, StepState::Pending),
            (Action::WaitStreaming, StepState::Pending),
            (Action::Testdb, StepState::Pending),
            (Action::ResumeHa, StepState::Pending),
        ]
    );
}

#[test]
fn a_reseed_pauses_the_ha_manager_too() {
    let f = finding("checksum", "5", "base/5/16384");
    let standbys = vec!["s1".to_owned()];
    let v = verdict(vec![f]);
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage::default(),
        data_bytes: 0,
        exec_only: false,
        ha: patroni(),
    });
    assert_eq!(
        actions(&p),
        vec![
            (Action::Triage, "p"),
            (Action::PauseHa, ""),
            (Action::Reseed, "s1"),
            (Action::UnfenceStart, "s1"),
            (Action::WaitStreaming, "s1"),
            (Action::Testdb, "s1"),
            (Action::ResumeHa, ""),
        ]
    );
    let r: Vec<Action> = resume_steps(&p, true).iter().map(|s| s.action).collect();
    assert_eq!(
        r,
        vec![
            Action::UnfenceStart,
            Action::WaitStreaming,
            Action::ResumeHa
        ]
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["ha"]["manager"], "patroni");
    assert_eq!(json["steps"][1]["action"], "pause_ha");
}

#[test]
fn a_restore_prepares_first_halts_standbys_before_the_member_and_reseeds_them_after() {
    let standbys = vec!["s1".to_owned(), "s2".to_owned()];
    let order = RestoreOrder {
        from: "daily".into(),
        target_time: Some("2026-11-21T12:00:00Z".into()),
        replace: false,
        peer: None,
    };
    let p = build_restore(
        "zeta",
        "p",
        &standbys,
        order.clone(),
        1_000_000_000,
        patroni(),
        RestoreShape::default(),
    );
    assert_eq!(p.repair, Repair::Restore);
    assert_eq!(p.restore, Some(order));
    assert_eq!(
        actions(&p),
        vec![
            (Action::RestorePrepare, "p"),
            (Action::PauseHa, ""),
            (Action::FenceStop, "s1"),
            (Action::FenceStop, "s2"),
            (Action::Restore, "p"),
            (Action::Reseed, "s1"),
            (Action::Reseed, "s2"),
            (Action::UnfenceStart, "s1"),
            (Action::UnfenceStart, "s2"),
            (Action::WaitStreaming, "s1"),
            (Action::WaitStreaming, "s2"),
            (Action::Testdb, ""),
            (Action::ResumeHa, ""),
        ]
    );
    // The prepare runs while the set serves; the restore and re-seeds are
    // downtime, and the estimate grows with the data (two 10 s re-seeds).
    assert!(!p.steps[0].downtime);
    assert!(p.steps[4].downtime);
    assert!(p.expected_downtime_seconds > 2.0 * 10.0, "{p:?}");
    assert!(p.why.contains("2026-11-21T12:00:00Z"), "{}", p.why);
    // Abort (a failure before R9 put the member back) restarts the
    // standbys as they were; the restored member was never fenced.
    let back: Vec<(Action, String)> = resume_steps(&p, true)
        .into_iter()
        .map(|s| (s.action, s.member))
        .collect();
    assert_eq!(
        back,
        vec![
            (Action::UnfenceStart, "s1".to_owned()),
            (Action::UnfenceStart, "s2".to_owned()),
            (Action::WaitStreaming, "s1".to_owned()),
            (Action::WaitStreaming, "s2".to_owned()),
            (Action::ResumeHa, String::new()),
        ]
    );
}

#[test]
fn lost_rows_on_a_standby_with_a_clean_primary_are_a_reseed_judged_by_the_closing_test() {
    let standbys = vec!["s1".to_owned()];
    let v = verdict(vec![finding("lost_rows", "postgres", "public.t")]);
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage::default(),
        data_bytes: 1_000_000_000,
        exec_only: false,
        ha: None,
    });
    assert_eq!(p.repair, Repair::Reseed);
    assert!(actions(&p).contains(&(Action::Reseed, "s1")));
    assert!(
        p.why
            .contains("cannot be re-checked on the running primary"),
        "{}",
        p.why
    );
    assert!(
        p.why.contains("restore from a verified backup"),
        "{}",
        p.why
    );
    assert!(!actions(&p).contains(&(Action::ExecRepair, "p")));
}

#[test]
fn lost_rows_on_the_primary_path_are_not_reindexed_and_point_to_a_restore() {
    let standbys = vec!["s1".to_owned()];
    let idx = finding("index", "postgres", "public.t_idx");
    let lost = finding("lost_rows", "postgres", "public.t");
    let v = verdict(vec![idx.clone(), lost]);
    let p = build(Input {
        set: "zeta",
        primary: "p",
        standbys: &standbys,
        verdict: &v,
        triage: Triage {
            findings: vec![idx.clone()],
            relations: vec![],
            unresolved: vec![],
        },
        data_bytes: 0,
        exec_only: false,
        ha: None,
    });
    assert_eq!(p.repair, Repair::Primary);
    let reindex = p
        .steps
        .iter()
        .find(|s| s.action == Action::Reindex)
        .unwrap();
    assert_eq!(reindex.targets, vec![idx]);
    assert!(
        !actions(&p).contains(&(Action::ExecRepair, "p")),
        "{:?}",
        actions(&p)
    );
    assert!(
        p.why.contains("REINDEX cannot bring them back"),
        "{}",
        p.why
    );
    assert!(p.why.contains("postgres.public.t (lost_rows)"), "{}", p.why);
    assert!(p.why.contains("`tandemctl restore zeta`"), "{}", p.why);
}

#[test]
fn a_one_member_restore_from_a_logical_backup_speaks_of_its_database() {
    let order = RestoreOrder {
        from: "latest".into(),
        target_time: None,
        replace: false,
        peer: None,
    };
    let shape = RestoreShape {
        single_member: true,
        has_log: false,
    };
    let p = build_restore(
        "carbon",
        "carbon-db",
        &[],
        order.clone(),
        1 << 30,
        None,
        shape,
    );
    assert_eq!(
        actions(&p),
        vec![
            (Action::RestorePrepare, "carbon-db"),
            (Action::Restore, "carbon-db"),
            (Action::Testdb, ""),
        ]
    );
    let text = format!(
        "{} {} {}",
        p.why,
        p.alternative,
        p.steps
            .iter()
            .map(|s| s.touches.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    // None of a streaming set's words: no WAL, no socket, no standby.
    for pg in ["WAL", "socket", "standby", "re-seed", "data directory"] {
        let said = text.replace("no standby to halt or re-seed", "");
        assert!(!said.contains(pg), "{pg:?} in {text}");
    }
    assert!(p.why.contains("the set's only member"), "{}", p.why);
    assert!(
        p.steps[1].touches.contains("nothing to roll forward"),
        "{:?}",
        p.steps[1]
    );
    assert!(
        p.steps[2].touches.contains("carbon-db and its copy"),
        "{:?}",
        p.steps[2]
    );
    assert!(
        p.alternative.contains("old database back"),
        "{}",
        p.alternative
    );

    // The same member with a base backup and a target: rolled forward.
    let mut o = order;
    o.target_time = Some("2026-11-21T12:00:00Z".into());
    let p = build_restore("zeta", "p", &[], o, 1 << 30, None, RestoreShape::default());
    assert!(
        p.steps[1]
            .touches
            .contains("roll forward to 2026-11-21T12:00:00Z on a private socket"),
        "{:?}",
        p.steps[1]
    );
    assert!(p.why.contains("to 2026-11-21T12:00:00Z"), "{}", p.why);
}
