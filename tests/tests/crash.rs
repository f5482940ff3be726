//! An agent SIGKILLed in any step of a testdb or a backup (a crash, the OOM
//! killer, a power cut: nothing it can catch) puts back, once restarted,
//! exactly what the interrupted operation left changed, from its journal:
//! the standby streams again, no private instance runs on the copy, the
//! copy is marked unusable, no half-written backup file is left, the
//! journal says interrupted, the event hook runs, and the next test is
//! clean.
//!
//! The agent is stopped at the chosen step by the test-only pause point
//! `TANDEM_TEST_PAUSE_AFTER_STEP` (after that step's work, before its
//! result is recorded), then SIGKILLed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::wait::wait_for;

use tandem_tests::{BACKUP_STEPS as STEPS, COLD_TESTDB_STEPS};

fn hook(dir: &Path) -> (PathBuf, PathBuf) {
    let hook = dir.join("hook.sh");
    let events = dir.join("events");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$TANDEM_EVENT $TANDEM_EVENT_CODE $TANDEM_SET $TANDEM_MEMBER $TANDEM_OPERATION_ID\" >> {}\n",
            events.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (hook, events)
}

fn pid_alive(pid_file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    text.lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        // A zombie left for init to reap does not run.
        .is_some_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
}

fn journal_record(home: &Path, op: &str) -> Value {
    let text = std::fs::read_to_string(home.join("journal").join(format!("{op}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_in_any_step_of_a_backup_puts_back_what_it_changed() {
    let hook_dir = tempfile::Builder::new()
        .prefix("tandem-hook-")
        .tempdir()
        .unwrap();
    let (hook, events) = hook(hook_dir.path());
    let mut spec = FleetSpec::new(&[("crash", 1)]);
    spec.agent_top = format!("event_hook = \"{}\"", hook.display());
    spec.backups = Some("daily = 2\nweekly = 1\nmonthly = 1".into());
    let mut fleet = Fleet::start(spec).await.unwrap();
    let (primary, standby) = (
        fleet.set("crash").primary.clone(),
        fleet.set("crash").standbys[0].clone(),
    );
    primary.pgbench_init(1).unwrap();
    corrupt::wait_replayed(&primary, &standby).await.unwrap();
    let agent = "crash-s1";
    let home = fleet.agent_home(agent);
    let archive = fleet.agent_archive(agent);
    let backups = fleet.agent_backups(agent);

    for step in STEPS {
        // The agent, paused after `step` of the next operation.
        fleet.start_agent_paused(agent, step).await.unwrap();
        fleet.wait_heartbeat_streaming(agent).await.unwrap();
        let ctl = fleet
            .spawn_ctl("operator", &["backup", "crash", "--output", "json"])
            .unwrap();
        let marker = home.join(format!("paused-after-{step}"));
        wait_for(
            &format!("the agent to pause after step {step}"),
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async { Ok(marker.exists().then_some(())) },
        )
        .await
        .unwrap();
        // The operation the pause stopped in.
        let op = std::fs::read_dir(home.join("journal"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .map(|t| serde_json::from_str::<Value>(&t).unwrap())
            .find(|r| r["state"] == "running")
            .expect("a running operation in the journal");
        let op = op["id"].as_str().unwrap().to_owned();

        fleet.kill_when_paused(agent, step, None).await.unwrap();

        // The hook ran for the interrupted operation once the undos ran.
        wait_for(
            &format!("the E_TESTDB event of {op} (killed after {step})"),
            Duration::from_secs(120),
            Duration::from_millis(50),
            || async {
                let ev = std::fs::read_to_string(&events).unwrap_or_default();
                Ok(ev
                    .lines()
                    .any(|l| {
                        l.starts_with("E_TESTDB ") && l.ends_with(&format!("crash {agent} {op}"))
                    })
                    .then_some(()))
            },
        )
        .await
        .unwrap();
        let rec = journal_record(&home, &op);
        assert_eq!(rec["state"], "interrupted", "after {step}: {rec:#}");
        assert!(
            rec.get("undo")
                .is_none_or(|u| u.as_array().is_some_and(|a| a.is_empty())),
            "after {step}: every undo ran: {rec:#}"
        );
        // The standby streams and holds no backup slot any more (the
        // backup's session ended with the agent); no private instance runs
        // on the copy; the copy is unusable; no partial backup file is left.
        fleet.set("crash").wait_streaming(&standby).await.unwrap();
        wait_for(
            &format!("the backup's slot to go (killed after {step})"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async {
                Ok(
                    (standby.psql("postgres", "select count(*) from pg_replication_slots")? == "0")
                        .then_some(()),
                )
            },
        )
        .await
        .unwrap();
        let pid_file = archive.join("copy").join("postmaster.pid");
        assert!(
            !pid_alive(&pid_file),
            "after {step}: a private instance still runs on the copy: {:?} {:?}",
            std::fs::read_to_string(&pid_file),
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
                .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        );
        assert!(
            archive.join("copy.UNUSABLE").exists(),
            "after {step}: the copy is not marked unusable"
        );
        let partial: Vec<_> = std::fs::read_dir(&backups)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(partial.is_empty(), "after {step}: {partial:?} left behind");
        // The state file says interrupted.
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(home.join("testdb.state.json")).unwrap())
                .unwrap();
        assert_eq!(state["result"], "interrupted", "after {step}: {state:#}");
        assert_eq!(state["operation_id"], op.as_str());
        // The run did not end clean.
        let out = ctl.wait_with_output().unwrap();
        assert_ne!(
            out.status.code(),
            Some(0),
            "after {step}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // The next operation is clean, and its copy usable.
    fleet
        .wait_agents_state(&[agent.into()], "online")
        .await
        .unwrap();
    fleet.wait_heartbeat_streaming(agent).await.unwrap();
    let run = fleet.ctl(&["backup", "crash", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    assert_eq!(run.json()["sets"][0]["verdict"]["kind"], "clean");
    assert!(!archive.join("copy.UNUSABLE").exists());
}

/// A step that fails (after its work, as a tool that failed half-way:
/// `TANDEM_TEST_FAIL_AFTER_STEP`) at each position of a testdb runs the undos
/// the operation recorded up to there, in the running agent: the standby
/// streams, no private instance is left, a copy once made is marked
/// unusable, the verdict names the step, and the next test is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_testdb_step_failing_at_any_position_puts_back_what_was_changed() {
    let mut fleet = Fleet::start(FleetSpec::new(&[("undo", 1)])).await.unwrap();
    let (primary, standby) = (
        fleet.set("undo").primary.clone(),
        fleet.set("undo").standbys[0].clone(),
    );
    primary.pgbench_init(1).unwrap();
    corrupt::wait_replayed(&primary, &standby).await.unwrap();
    let agent = "undo-s1";
    let home = fleet.agent_home(agent);
    let archive = fleet.agent_archive(agent);

    // Cold mode here (the agent killed in every step of the online mode is
    // the test above).
    for (i, step) in COLD_TESTDB_STEPS.into_iter().enumerate() {
        fleet.kill_agent(agent);
        fleet
            .start_agent_with(agent, &[("TANDEM_TEST_FAIL_AFTER_STEP", step)])
            .unwrap();
        fleet
            .wait_agents_state(&[agent.into()], "online")
            .await
            .unwrap();
        fleet.wait_heartbeat_streaming(agent).await.unwrap();
        let run = fleet
            .ctl(&["testdb", "undo", "--mode", "cold", "--output", "json"])
            .unwrap();
        // The test could not run: exit 2, and the verdict says which step.
        assert_eq!(run.code, 2, "{step}: {run:?}\n{}", fleet.logs());
        let v = &run.json()["sets"][0]["verdict"];
        assert_eq!(v["kind"], "failed_to_run", "{step}: {v:#}");
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with(&format!("step `{step}` failed")),
            "{step}: {reason}"
        );
        let op = v["operation_id"].as_str().unwrap().to_owned();
        let rec = journal_record(&home, &op);
        assert_eq!(rec["state"], "failed", "{step}: {rec:#}");
        assert!(
            rec.get("undo")
                .is_none_or(|u| u.as_array().is_some_and(|a| a.is_empty())),
            "{step}: every undo ran: {rec:#}"
        );
        fleet.set("undo").wait_streaming(&standby).await.unwrap();
        assert!(
            !pid_alive(&archive.join("copy").join("postmaster.pid")),
            "{step}: a private instance still runs on the copy"
        );
        // From the copy on, the copy this test made is marked unusable
        // (before it, no copy was touched: the first step leaves none).
        let copy_touched = i >= 1;
        assert_eq!(
            archive.join("copy.UNUSABLE").exists(),
            copy_touched,
            "{step}: copy.UNUSABLE"
        );
    }

    // The next test, with no failure asked for, is clean.
    fleet.kill_agent(agent);
    fleet.start_agent_with(agent, &[]).unwrap();
    fleet
        .wait_agents_state(&[agent.into()], "online")
        .await
        .unwrap();
    fleet.wait_heartbeat_streaming(agent).await.unwrap();
    let run = fleet.ctl(&["testdb", "undo", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    assert_eq!(run.json()["sets"][0]["verdict"]["kind"], "clean");
    assert!(!archive.join("copy.UNUSABLE").exists());
}
