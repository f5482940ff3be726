//! Unit tests of the window types: wire round trips and refusals.

use super::*;

fn finding() -> Finding {
    Finding {
        database: "app".into(),
        relation: "public.t_pkey".into(),
        kind: "index".into(),
        message: "block 3 is not a valid btree page".into(),
    }
}

/// A window with every optional part filled, so a field the conversion
/// forgets shows up as a difference.
fn full_window() -> Window {
    let at = Timestamp::from_second(1_800_000_000).unwrap();
    let mut step = Step::new(Action::Reindex, "db1", "REINDEX t_pkey".into(), 1.5, true)
        .with_targets(vec![finding()]);
    step.state = StepState::Done;
    step.message = "reindexed".into();
    step.started_at = Some(at);
    step.finished_at = Some(at);
    let plan = Plan {
        set: "billing".into(),
        repair: Repair::Restore,
        why: "w".into(),
        alternative: "a".into(),
        primary: "db1".into(),
        standbys: vec!["db2".into()],
        tested_member: "db2".into(),
        findings: vec![finding()],
        triage: Triage {
            findings: vec![finding()],
            relations: vec![Relation {
                database: "app".into(),
                relation: "public.t_pkey".into(),
                is_index: true,
                bytes: 8192,
            }],
            unresolved: vec!["x".into()],
        },
        ha: Some(Ha {
            manager: "patroni".into(),
            urls: vec!["http://db1:8008".into()],
            paused_before: Some(false),
            seen: "leader db1".into(),
        }),
        steps: vec![
            step.clone(),
            Step::new(Action::Testdb, "", "t".into(), 60.0, false),
        ],
        expected_downtime_seconds: 3.0,
        restore: Some(RestoreOrder {
            from: "daily".into(),
            target_time: Some("2026-12-01T00:00:00Z".into()),
            replace: true,
            peer: None,
        }),
    };
    let mut w = Window::new(
        "w1".into(),
        "billing",
        "repair",
        "spiffe://tandem/user/ann",
        "t".into(),
        plan,
    );
    w.opened_at = at;
    w.closed_at = Some(at);
    w.state = WindowState::Aborted;
    w.ending = Some(Ending::Abort);
    w.resume = vec![step];
    w.failure = Some("step 3 failed".into());
    w.repair_lsn = Some("0/3000060".into());
    let mut v = crate::verdict::Verdict::failed_to_run("db2", "r".into(), "t".into());
    v.at = at;
    w.verdict = Some(v);
    w.downtime_seconds = Some(2.0);
    w.ha_pause_sent = true;
    w.restore = Some(RestoreProgress {
        member: "db1".into(),
        agent: "db1".into(),
        operation_id: "op".into(),
        state: RestoreState::Failed,
        failed_step: Some("R5".into()),
        reason: Some("why".into()),
        notes: vec!["n".into()],
    });
    w.phase = 2;
    w
}

#[test]
fn a_window_survives_the_wire() {
    let w = full_window();
    assert_eq!(Window::try_from(pb::Window::from(w.clone())).unwrap(), w);
    let mut bare = w;
    bare.ending = None;
    bare.verdict = None;
    bare.restore = None;
    bare.plan.ha = None;
    bare.plan.restore = None;
    assert_eq!(
        Window::try_from(pb::Window::from(bare.clone())).unwrap(),
        bare
    );
}

#[test]
fn a_window_missing_a_part_is_refused_by_field() {
    let refused = |edit: fn(&mut pb::Window)| {
        let mut p = pb::Window::from(full_window());
        edit(&mut p);
        Window::try_from(p).unwrap_err().to_string()
    };
    assert_eq!(
        refused(|p| p.plan = None),
        "field `window.plan` is required"
    );
    assert_eq!(
        refused(|p| p.opened_at = None),
        "field `window.opened_at` is required"
    );
    assert_eq!(refused(|p| p.state = 0), "field `window.state` is required");
    assert_eq!(
        refused(|p| p.plan.as_mut().unwrap().steps[0].action = 99),
        "field `step.action`: unknown enum value 99"
    );
    assert_eq!(
        refused(|p| p.plan.as_mut().unwrap().triage = None),
        "field `plan.triage` is required"
    );
}

#[test]
fn every_plan_action_crosses_the_wire() {
    use Action::*;
    for a in [
        Triage,
        FenceStop,
        Isolate,
        Reindex,
        ExecRepair,
        Check,
        Serve,
        Reseed,
        UnfenceStart,
        WaitStreaming,
        Testdb,
        PauseHa,
        ResumeHa,
        RestorePrepare,
        Restore,
    ] {
        assert_eq!(Action::from_wire(pb::PlanAction::from(a) as i32), Ok(a));
    }
}
