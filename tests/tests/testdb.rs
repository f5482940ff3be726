//! testdb end to end (SPEC T2, T3, T5, T6, T8, R11): real PostgreSQL, the real
//! agent, controller and tandemctl, real corruption.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{CtlRun, Fleet, FleetSpec};
use tandem_tests::pg::PgServer;
use tandem_tests::wait::wait_for;

fn pgbench_init(server: &PgServer, scale: u32) {
    server.pgbench_init(scale).unwrap();
}

fn verdict(run: &CtlRun) -> Value {
    let v = run.json();
    v["sets"][0]["verdict"].clone()
}

fn set_verdict(fleet: &Fleet, set: &str) -> Value {
    let show = fleet
        .ctl(&["show", set, "--output", "json"])
        .unwrap()
        .json();
    show["sets"][0]["verdict"].clone()
}

fn archive_copy_exists(fleet: &Fleet, member: &str) -> bool {
    fleet.agent_archive(member).join("copy").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_set_gets_a_clean_verdict_and_the_standby_streams_again() {
    let fleet = Fleet::start(FleetSpec::new(&[("clean", 1)])).await.unwrap();
    let pair = fleet.set("clean");
    pgbench_init(&pair.primary, 1);
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();

    let run = fleet.ctl(&["testdb", "clean", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let v = verdict(&run);
    assert_eq!(v["kind"], "clean", "{v:#}");
    assert_eq!(v["member"], "clean-s1");
    let lsn = v["lsn"].as_str().unwrap();
    assert!(lsn.contains('/'), "{lsn}");
    // Online by default: the standby never stopped, measured as 0.
    assert_eq!(v["mode"], "online", "{v:#}");
    assert_eq!(v["standby_downtime_seconds"].as_f64(), Some(0.0), "{v:#}");

    // The state file and testdb.out on the standby's agent (SPEC T5, T2.6).
    let home = fleet.agent_home("clean-s1");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("testdb.state.json")).unwrap())
            .unwrap();
    assert_eq!(state["result"], "clean");
    assert_eq!(state["tested_lsn"], lsn);
    let steps: Vec<&str> = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, tandem_tests::TESTDB_STEPS);
    let out = std::fs::read_to_string(home.join("testdb.out")).unwrap();
    assert!(
        out.contains("pg_amcheck") && out.contains("Bad checksums:  0"),
        "{out}"
    );
    assert!(
        fleet
            .agent_archive("clean-s1")
            .join("copy.manifest")
            .exists()
    );

    // The standby streams again, and the whole set is vouched for (SPEC T6).
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    let show = fleet.ctl(&["show", "clean"]).unwrap();
    assert_eq!(show.code, 0, "{show:?}");
    assert!(
        show.stdout.contains(&format!(
            "primary, standby and copy verified clean up to LSN {lsn}"
        )),
        "{}",
        show.stdout
    );

    // The agent shows the same without the controller.
    let local = std::process::Command::new(tandem_tests::procs::bin_path("tandem-agent").unwrap())
        .args(["show", "--config"])
        .arg(&fleet.agents["clean-s1"].config)
        .output()
        .unwrap();
    assert!(local.status.success());
    assert!(
        String::from_utf8_lossy(&local.stdout)
            .contains("clean: primary, standby and copy verified clean")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_corruption_is_found_and_named() {
    let fleet = Fleet::start(FleetSpec::new(&[("repl", 1)])).await.unwrap();
    let pair = fleet.set("repl");
    let index = corrupt::replicated_index_corruption(&pair.primary, "postgres").unwrap();
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();

    let run = fleet.ctl(&["testdb", "repl", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());
    let v = verdict(&run);
    assert_eq!(v["kind"], "errors");
    let named = v["findings"].as_array().unwrap().iter().any(|f| {
        f["kind"] == "index"
            && f["relation"].as_str().unwrap().ends_with(&index)
            && f["message"]
                .as_str()
                .unwrap()
                .contains("lacks matching index tuple")
    });
    assert!(named, "no finding names {index}: {v:#}");
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .contains("repair on the primary with the whole set halted")
    );

    // The human verdict names the index and where the full output is.
    assert_eq!(set_verdict(&fleet, "repl")["kind"], "errors");
    let show = fleet.ctl(&["show", "repl"]).unwrap();
    assert_eq!(show.code, 1);
    assert!(
        show.stdout.contains("errors found on the standby's copy"),
        "{}",
        show.stdout
    );
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(fleet.agent_home("repl-s1").join("testdb.state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["result"], "errors_found");
    assert!(state["finding_counts"]["index"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_local_page_damage_is_found_by_the_checksum_step() {
    let fleet = Fleet::start(FleetSpec::new(&[("local", 1)])).await.unwrap();
    let pair = fleet.set("local");
    pgbench_init(&pair.primary, 1);
    let standby = &pair.standbys[0];
    corrupt::flush_and_stop_standby(&pair.primary, standby)
        .await
        .unwrap();
    let file =
        corrupt::standby_local_page_damage(&pair.primary, standby, "postgres", "pgbench_accounts")
            .unwrap();
    standby.start().unwrap();
    pair.wait_streaming(standby).await.unwrap();
    // The dispatcher picks the member from the agents' last heartbeats, so
    // wait for the heartbeat (`agents`) to say streaming, not only `show`.
    wait_for(
        "show to report the standby streaming",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let show = fleet.ctl(&["show", "local", "--output", "json"])?.json();
            Ok(show["sets"][0]["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["state"] == "streaming")
                .then_some(()))
        },
    )
    .await
    .unwrap();
    fleet.wait_heartbeat_streaming("local-s1").await.unwrap();

    let run = fleet.ctl(&["testdb", "local", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());
    let v = verdict(&run);
    let checksum = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "checksum" && f["relation"] == file.as_str());
    assert!(checksum, "no checksum finding for {file}: {v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_copy_interrupts_cleanly_and_the_next_test_succeeds() {
    let hook_dir = tempfile::Builder::new()
        .prefix("tandem-hook-")
        .tempdir()
        .unwrap();
    let hook = hook_dir.path().join("hook.sh");
    let events = hook_dir.path().join("events");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$TANDEM_EVENT $TANDEM_EVENT_CODE $TANDEM_SET $TANDEM_MEMBER $TANDEM_OPERATION_ID\" >> {}\n", events.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut spec = FleetSpec::new(&[("term", 1)]);
    spec.agent_top = format!("event_hook = \"{}\"", hook.display());
    // One worker makes the copy long enough to be caught in the middle.
    spec.agent_testdb = "copy_workers = 1".into();
    let mut fleet = Fleet::start(spec).await.unwrap();
    let (primary, standby) = (
        fleet.set("term").primary.clone(),
        fleet.set("term").standbys[0].clone(),
    );
    pgbench_init(&primary, 15);
    corrupt::wait_replayed(&primary, &standby).await.unwrap();

    let ctl = fleet
        .spawn_ctl("operator", &["testdb", "term", "--output", "json"])
        .unwrap();
    // Wait until the journal says the copy runs, then stop the agent.
    let journal = fleet.agent_home("term-s1").join("journal");
    let op_file = wait_for(
        "the copy step to start",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || async {
            // Only records: `*.tandem-tmp` files are renamed into place.
            let records = std::fs::read_dir(&journal)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"));
            for e in records {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if text.contains("\"step\": \"copy\"") {
                    return Ok(Some(e.path()));
                }
            }
            Ok(None)
        },
    )
    .await
    .unwrap();
    let agent = fleet
        .agents
        .get_mut("term-s1")
        .unwrap()
        .proc
        .as_mut()
        .unwrap();
    agent.signal(Signal::SIGTERM).unwrap();
    let status = agent.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "agent exit: {status:?}");

    // The journal says interrupted; the hook got E_TESTDB COPY_INTERRUPTED.
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(&op_file).unwrap()).unwrap();
    assert_eq!(rec["state"], "interrupted", "{rec:#}");
    let op = rec["id"].as_str().unwrap();
    let ev = std::fs::read_to_string(&events).unwrap();
    assert!(
        ev.contains(&format!("E_TESTDB COPY_INTERRUPTED term term-s1 {op}")),
        "{ev}"
    );
    assert!(
        fleet
            .agent_archive("term-s1")
            .join("copy.UNUSABLE")
            .exists()
    );
    // The standby is back and streaming.
    fleet.set("term").wait_streaming(&standby).await.unwrap();
    let out = ctl.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The controller heard of it.
    fleet.start_agent("term-s1").unwrap();
    fleet
        .wait_agents_state(&["term-s1".into()], "online")
        .await
        .unwrap();
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "ReportEvent" && e["arguments"]["code"] == "COPY_INTERRUPTED"),
        "{audit:#}"
    );
    // And the next test succeeds (the dispatcher picks the member from the
    // agents' heartbeats: wait until the restarted agent's says streaming).
    fleet.wait_heartbeat_streaming("term-s1").await.unwrap();
    let run = fleet.ctl(&["testdb", "term", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    assert_eq!(verdict(&run)["kind"], "clean");
    assert!(
        !fleet
            .agent_archive("term-s1")
            .join("copy.UNUSABLE")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_not_streaming_and_a_full_archive_are_refused_without_writing() {
    let mut spec = FleetSpec::new(&[("refuse", 1)]);
    // A reserve no filesystem here has: the archive is "full" (SPEC R11).
    spec.agent_testdb = "free_space_reserve_mib = 1000000000".into();
    let fleet = Fleet::start(spec).await.unwrap();
    let run = fleet
        .ctl(&["testdb", "refuse", "--output", "json"])
        .unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    let v = verdict(&run);
    assert_eq!(v["kind"], "failed_to_run");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("safe mode") && reason.contains("MiB free"),
        "{reason}"
    );
    assert!(!archive_copy_exists(&fleet, "refuse-s1"));
    assert!(
        !fleet
            .agent_home("refuse-s1")
            .join("testdb.state.json")
            .exists()
    );

    // Stop the primary: the standby runs but no longer streams (SPEC T8).
    let fleet2 = Fleet::start(FleetSpec::new(&[("lonely", 1)]))
        .await
        .unwrap();
    let pair = fleet2.set("lonely");
    pair.primary.stop().unwrap();
    wait_for(
        "the standby to stop streaming",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let show = fleet2.ctl(&["show", "lonely", "--output", "json"])?.json();
            let s = &show["sets"][0]["members"][1];
            Ok((s["role"] == "standby" && s["state"] != "streaming").then_some(()))
        },
    )
    .await
    .unwrap();
    let run = fleet2.ctl(&["testdb", "lonely"]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("is not streaming"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("a test needs the whole database from the primary"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("SPEC"), "{}", run.stdout);
    assert!(!archive_copy_exists(&fleet2, "lonely-s1"));
    // The standby was never stopped.
    assert!(pair.standbys[0].is_in_recovery().unwrap());
}
