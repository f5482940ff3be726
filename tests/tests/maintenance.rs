//! Maintenance windows end to end (SPEC T4, C4, O1): real PostgreSQL sets,
//! the real controller, agents and tandemctl.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::on_both_stores;
use tandem_tests::pg::PgServer;
use tandem_tests::store::StoreKind;
use tandem_tests::wait::wait_for;

/// Replicated index corruption in `set`, and a testdb that finds it.
async fn corrupt_and_test(fleet: &Fleet, set: &str) {
    let pair = fleet.set(set);
    corrupt::replicated_index_corruption(&pair.primary, "postgres").unwrap();
    fleet.replicated(set).await.unwrap();
    let run = fleet.ctl(&["testdb", set, "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());
}

/// Watches the standbys of a set from the outside while a window runs:
/// every time one is up it must be in recovery (never promoted).
struct PromotionWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl PromotionWatch {
    fn start(standbys: Vec<PgServer>) -> PromotionWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut promoted = Vec::new();
            let mut seen_down = 0;
            // Bounded: at most 10 minutes of 100 ms looks.
            for _ in 0..6000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                for s in &standbys {
                    if !s.is_running() {
                        seen_down += 1;
                        // A stopped standby must still be a standby on disk.
                        if !s.data_dir.join("standby.signal").exists() {
                            promoted.push(format!("{}: standby.signal is gone", s.name));
                        }
                    } else if let Ok(false) = s.is_in_recovery() {
                        promoted.push(format!("{}: pg_is_in_recovery() is false", s.name));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (promoted, seen_down)
        });
        PromotionWatch { stop, thread }
    }

    /// (what looked promoted, how many looks saw a standby down)
    fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn step_states(w: &Value) -> Vec<(String, String)> {
    w["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_corruption_is_reindexed_on_the_halted_primary_and_proven_clean() {
    let fleet = Fleet::start(FleetSpec::new(&[("mrep", 1)])).await.unwrap();
    corrupt_and_test(&fleet, "mrep").await;

    // The plan, before any action: triage confirms the damage on the
    // primary, so the whole set is halted and the index rebuilt there.
    let plan = fleet
        .ctl(&["maintenance", "plan", "mrep", "--output", "json"])
        .unwrap();
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
    assert_eq!(plan["repair"], "primary", "{plan:#}");
    let actions: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "triage",
            "fence_stop",
            "isolate",
            "reindex",
            "check",
            "serve",
            "unfence_start",
            "wait_streaming",
            "testdb"
        ]
    );
    assert!(
        plan["steps"][3]["touches"]
            .as_str()
            .unwrap()
            .contains(corrupt::CORRUPT_INDEX),
        "{plan:#}"
    );
    let expected = plan["expected_downtime_seconds"].as_f64().unwrap();

    // Windows are for admins; the refusal names the role.
    let refused = fleet
        .ctl(&["maintenance", "open", "mrep", "--reason", "x"])
        .unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("needs the admin role"),
        "{}",
        refused.stderr
    );

    let pair = fleet.set("mrep");
    let watch = PromotionWatch::start(pair.standbys.clone());
    let open = fleet
        .ctl_as(
            "admin",
            &[
                "maintenance",
                "open",
                "mrep",
                "--reason",
                "repair the replicated index corruption",
                "--output",
                "json",
            ],
        )
        .unwrap();
    let (promoted, seen_down) = watch.finish();
    assert_eq!(open.code, 0, "{open:?}\n{}", fleet.logs());
    let w = open.json();
    assert_eq!(w["state"], "closed", "{w:#}");
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    assert!(step_states(&w).iter().all(|(_, s)| s == "done"), "{w:#}");
    assert!(
        promoted.is_empty(),
        "a standby looked promoted: {promoted:?}"
    );
    assert!(seen_down > 0, "the standby was never seen halted");
    let downtime = w["downtime_seconds"].as_f64().unwrap();
    eprintln!(
        "FIGURE maintenance REINDEX path: set downtime {downtime:.2} s, plan said {expected:.1} s"
    );

    // After: the standby streams as a standby, the primary serves clients
    // (TCP again), and the index matches its table on the primary.
    for s in &pair.standbys {
        pair.wait_streaming(s).await.unwrap();
        assert!(s.is_in_recovery().unwrap());
    }
    assert_eq!(pair.primary.psql("postgres", "select 1").unwrap(), "1");
    let fence = fleet.agent_home("mrep-s1").join("fence");
    assert!(!fence.exists(), "the fence was not released");
    let events = fleet.maintenance_events("mrep").unwrap();
    assert!(events.iter().any(|m| m.contains("closed")), "{events:#?}");
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "MaintenanceOpen" && e["outcome"] == "ok"),
        "{audit:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_local_damage_is_repaired_by_a_reseed_without_stopping_the_primary() {
    let fleet = Fleet::start(FleetSpec::new(&[("mloc", 1)])).await.unwrap();
    let pair = fleet.set("mloc");
    pair.primary
        .psql(
            "postgres",
            "create table t as select g as i, md5(g::text) as v from generate_series(1, 20000) g",
        )
        .unwrap();
    let standby = &pair.standbys[0];
    corrupt::flush_and_stop_standby(&pair.primary, standby)
        .await
        .unwrap();
    corrupt::standby_local_page_damage(&pair.primary, standby, "postgres", "t").unwrap();
    standby.start().unwrap();
    pair.wait_streaming(standby).await.unwrap();
    fleet.wait_heartbeat_streaming("mloc-s1").await.unwrap();
    let run = fleet.ctl(&["testdb", "mloc", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());

    let plan = fleet
        .ctl(&["maintenance", "plan", "mloc", "--output", "json"])
        .unwrap()
        .json();
    assert_eq!(plan["repair"], "reseed", "{plan:#}");
    let postmaster = |s: &PgServer| {
        std::fs::read_to_string(s.data_dir.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    let primary_pid = postmaster(&pair.primary);
    let open = fleet
        .ctl_as(
            "admin",
            &[
                "maintenance",
                "open",
                "mloc",
                "--reason",
                "standby page damage",
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(open.code, 0, "{open:?}\n{}", fleet.logs());
    let w = open.json();
    assert_eq!(w["state"], "closed", "{w:#}");
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    assert_eq!(
        postmaster(&pair.primary),
        primary_pid,
        "the primary was restarted"
    );
    pair.wait_streaming(standby).await.unwrap();
    assert!(standby.is_in_recovery().unwrap());
    // The damaged directory is kept aside, never deleted.
    let name = standby.data_dir.file_name().unwrap().to_string_lossy();
    let aside = standby.data_dir.with_file_name(format!(
        "{name}.tandem-reseed-{}",
        w["id"].as_str().unwrap()
    ));
    assert!(
        aside.join("PG_VERSION").exists(),
        "{} missing",
        aside.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_repair_keeps_the_set_halted_is_skipped_by_testdb_all_and_abort_resumes_it() {
    let mut spec = FleetSpec::new(&[("mexe", 1), ("mok", 1)]);
    spec.agent_top = r#"maintenance = { repair_command = ["/bin/sh", "-c", "echo cannot repair this >&2; exit 3"] }"#.into();
    let fleet = Fleet::start(spec).await.unwrap();
    fleet.replicated("mok").await.unwrap();
    corrupt_and_test(&fleet, "mexe").await;

    let open = fleet
        .ctl_as(
            "admin",
            &[
                "maintenance",
                "open",
                "mexe",
                "--reason",
                "own repair script",
                "--repair",
                "exec",
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(open.code, 1, "{open:?}\n{}", fleet.logs());
    let w = open.json();
    assert_eq!(w["state"], "failed", "{w:#}");
    let failure = w["failure"].as_str().unwrap();
    assert!(
        failure.contains("exec_repair") && failure.contains("exited with 3"),
        "{failure}"
    );
    // Halted and fenced: the standby is down with its fence, the primary
    // runs but no client reaches it (its usual socket is gone).
    let pair = fleet.set("mexe");
    assert!(!pair.standbys[0].is_running());
    assert!(fleet.agent_home("mexe-s1").join("fence").exists());
    assert!(pair.primary.is_running());
    assert!(
        pair.primary.psql("postgres", "select 1").is_err(),
        "a client reached the primary during the window"
    );

    // testdb --all tests the other set and skips this one, with the reason.
    let all = fleet.ctl(&["testdb", "--all", "--output", "json"]).unwrap();
    assert_eq!(all.code, 0, "{all:?}");
    let all = all.json();
    let skipped = all["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{all:#}");
    assert_eq!(skipped[0]["name"], "mexe");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains(w["id"].as_str().unwrap()),
        "{all:#}"
    );
    assert_eq!(all["sets"][0]["name"], "mok");
    assert_eq!(all["sets"][0]["verdict"]["kind"], "clean");
    let named = fleet.ctl(&["testdb", "mexe"]).unwrap();
    assert_eq!(named.code, 2, "{named:?}");
    assert!(
        named.stderr.contains("maintenance window"),
        "{}",
        named.stderr
    );

    // Abort puts the set back as it was: primary serving, standby
    // unfenced and streaming.
    let abort = fleet
        .ctl_as(
            "admin",
            &["maintenance", "abort", "mexe", "--output", "json"],
        )
        .unwrap();
    assert_eq!(abort.code, 0, "{abort:?}\n{}", fleet.logs());
    assert_eq!(abort.json()["state"], "aborted");
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    assert!(pair.standbys[0].is_in_recovery().unwrap());
    assert!(!fleet.agent_home("mexe-s1").join("fence").exists());
    assert_eq!(pair.primary.psql("postgres", "select 1").unwrap(), "1");
}

on_both_stores!(a_window_carries_on_after_the_controller_is_killed);
/// The controller SIGKILLed while a window's first steps run: started
/// again, it carries the window on from its store to a clean close.
async fn a_window_carries_on_after_the_controller_is_killed(store: StoreKind) {
    let mut fleet = Fleet::start(FleetSpec::new(&[("mcr", 1)]).on(store))
        .await
        .unwrap();
    corrupt_and_test(&fleet, "mcr").await;
    let id = open_detached(&fleet, "mcr");
    // Killed while the first halting steps run.
    fleet.kill_controller();
    fleet.start_controller().unwrap();
    let w = window_ended(&fleet, "mcr").await;
    assert_eq!(w["id"], id.as_str());
    assert_eq!(w["state"], "closed", "{w:#}\n{}", fleet.logs());
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    let pair = fleet.set("mcr");
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    assert!(pair.standbys[0].is_in_recovery().unwrap());
}

on_both_stores!(a_controller_killed_after_each_window_step_carries_the_window_to_a_clean_close);
/// The controller SIGKILLed after each step of a window (its work done, not
/// yet recorded), one kill per step: each restart carries the window on
/// from the step it was in (an agent's step ordered again is found by its
/// request id, not run twice), and the window closes clean.
async fn a_controller_killed_after_each_window_step_carries_the_window_to_a_clean_close(
    store: StoreKind,
) {
    let mut fleet = Fleet::start(FleetSpec::new(&[("mck", 1)]).on(store))
        .await
        .unwrap();
    corrupt_and_test(&fleet, "mck").await;
    let plan = fleet
        .ctl_as("admin", &["maintenance", "plan", "mck", "--output", "json"])
        .unwrap();
    assert_eq!(plan.code, 0, "{plan:?}");
    let actions: Vec<String> = plan.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap().to_owned())
        .collect();
    // The replicated path: halted standbys first, the primary repaired.
    assert_eq!(
        actions,
        [
            "triage",
            "fence_stop",
            "isolate",
            "reindex",
            "check",
            "serve",
            "unfence_start",
            "wait_streaming",
            "testdb"
        ],
        "{plan:?}"
    );
    // Triage runs while the window opens (the plan is made from it); the
    // controller drives the steps after it.
    let driven = &actions[1..];
    fleet.kill_controller();
    fleet
        .start_controller_with(&[("TANDEM_TEST_PAUSE_AFTER_WINDOW_STEP", &driven[0])])
        .unwrap();
    fleet
        .wait_agents_state(&["mck-p".into(), "mck-s1".into()], "online")
        .await
        .unwrap();
    let id = open_detached(&fleet, "mck");
    for (i, step) in driven.iter().enumerate() {
        let next = driven.get(i + 1).map(String::as_str);
        fleet
            .kill_controller_when_paused(step, next)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    }
    let w = window_ended(&fleet, "mck").await;
    assert_eq!(w["id"], id.as_str());
    assert_eq!(w["state"], "closed", "{w:#}\n{}", fleet.logs());
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    let pair = fleet.set("mck");
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    assert!(!pair.primary.is_in_recovery().unwrap());
    assert!(!fleet.agent_home("mck-s1").join("fence").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_window_repairs_a_set_that_needs_it_at_its_next_occurrence() {
    let mut spec = FleetSpec::new(&[("mrec", 1)]);
    // Every minute, for an hour: the next minute boundary opens it.
    spec.controller_top = "time_zone = \"UTC\"\nwindows = { mrec = { schedule = \"cron=* * * * *\", duration = \"1h\" } }".into();
    let fleet = Fleet::start(spec).await.unwrap();
    corrupt_and_test(&fleet, "mrec").await;
    let w = wait_for(
        "the recurring window to open and close",
        Duration::from_secs(200),
        Duration::from_millis(500),
        || {
            let w = fleet
                .ctl(&["maintenance", "show", "mrec", "--output", "json"])
                .ok()
                .and_then(|r| serde_json::from_str::<Value>(&r.stdout).ok());
            async move {
                Ok(w.filter(|w| {
                    w.is_object() && !matches!(w["state"].as_str(), Some("running" | "resuming"))
                }))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    assert_eq!(w["state"], "closed", "{w:#}");
    assert_eq!(w["opened_by"], "schedule");
    assert!(
        w["reason"].as_str().unwrap().contains("recurring window"),
        "{w:#}"
    );
    assert_eq!(w["verdict"]["kind"], "clean");
}

/// The primary's agent is SIGKILLed after each of its steps in one window
/// (isolate, reindex, check, serve): each time the controller orders the
/// interrupted step again once the agent is back, and the window closes
/// clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_in_each_of_its_window_steps_is_ordered_again_and_the_window_closes() {
    let mut fleet = Fleet::start(FleetSpec::new(&[("mkill", 1)])).await.unwrap();
    corrupt_and_test(&fleet, "mkill").await;
    let agent = "mkill-p";
    let steps = ["isolate", "reindex", "check", "serve"];
    fleet.start_agent_paused(agent, steps[0]).await.unwrap();
    let args = [
        "maintenance",
        "open",
        "mkill",
        "--reason",
        "crash test",
        "--output",
        "json",
    ];
    let open = fleet.spawn_ctl("admin", &args).unwrap();
    let home = fleet.agent_home(agent);
    for (i, step) in steps.iter().enumerate() {
        fleet
            .kill_when_paused(agent, step, steps.get(i + 1).copied())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    }
    let out = open.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", fleet.logs());
    let w: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(w["state"], "closed", "{w:#}");
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    // Each killed step is in the journal twice: interrupted, then done.
    let records: Vec<Value> = std::fs::read_dir(home.join("journal"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .filter(|r: &Value| r["kind"] == "maintenance")
        .collect();
    for step in steps {
        let of_step: Vec<&Value> = records.iter().filter(|r| r["step"] == step).collect();
        let states: Vec<&str> = of_step
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        assert!(
            states.contains(&"interrupted") && states.contains(&"succeeded"),
            "{step}: {states:?}"
        );
    }
}

/// Open a window on `set` for a crash test without following it; its id.
fn open_detached(fleet: &Fleet, set: &str) -> String {
    let open = fleet
        .ctl_as(
            "admin",
            &[
                "maintenance",
                "open",
                set,
                "--reason",
                "crash test",
                "--detach",
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(open.code, 0, "{open:?}");
    open.json()["id"].as_str().unwrap().to_owned()
}

/// Wait until `set`'s window is no longer running or resuming; the window.
async fn window_ended(fleet: &Fleet, set: &str) -> Value {
    wait_for(
        "the window to end",
        Duration::from_secs(180),
        Duration::from_millis(300),
        || {
            let w = fleet
                .ctl(&["maintenance", "show", set, "--output", "json"])
                .ok()
                .and_then(|r| serde_json::from_str::<Value>(&r.stdout).ok());
            async move {
                Ok(w.filter(|w| !matches!(w["state"].as_str(), Some("running" | "resuming"))))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()))
}
