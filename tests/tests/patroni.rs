//! A maintenance window on a set Patroni manages (issue 5): real Patroni
//! (Debian's) with a private etcd, two nodes, the real controller, agents
//! and tandemctl. The window pauses Patroni before anything stops, no
//! failover happens while the primary is out of service, and Patroni is
//! resumed last.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::patroni::{PatroniCluster, cluster_at, leader_of, paused};
use tandem_tests::pg::PgServer;

/// What a look from the outside saw while the window ran.
#[derive(Debug, Clone)]
struct Look {
    at: Timestamp,
    /// `/cluster`'s pause and leader (None: no node answered).
    paused: Option<bool>,
    leader: Option<String>,
    replica_up: bool,
    /// `pg_is_in_recovery()` on the replica when it answered.
    replica_in_recovery: Option<bool>,
}

/// Looks at Patroni and the replica every 100 ms until stopped (bounded).
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Look>>,
}

impl Watch {
    fn start(urls: Vec<String>, replica: PgServer) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut looks = Vec::new();
            // Bounded: at most 10 minutes of 100 ms looks.
            for _ in 0..6000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let cluster = urls.iter().find_map(|u| cluster_at(u).ok());
                let replica_up = replica.is_running();
                let replica_in_recovery = if replica_up {
                    replica.is_in_recovery().ok()
                } else {
                    None
                };
                looks.push(Look {
                    at: Timestamp::now(),
                    paused: cluster.as_ref().map(paused),
                    leader: cluster.as_ref().and_then(leader_of),
                    replica_up,
                    replica_in_recovery,
                });
                std::thread::sleep(Duration::from_millis(100));
            }
            looks
        });
        Watch { stop, thread }
    }

    fn finish(self) -> Vec<Look> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn step<'a>(w: &'a Value, action: &str) -> &'a Value {
    w["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == action)
        .unwrap_or_else(|| panic!("no {action} step: {w:#}"))
}

fn time(s: &Value, field: &str) -> Timestamp {
    s[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {s:#}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_pauses_patroni_first_sees_no_failover_and_resumes_it_last() {
    let mut cluster = PatroniCluster::start("pha", 2).await.unwrap();
    let primary = cluster.pair.primary.clone();
    let replica = cluster.pair.standbys[0].clone();
    let urls = cluster.rest_urls();
    // The first URL answers nothing: the controller tries the next one.
    let dead = format!("http://127.0.0.1:{}", tandem_tests::wait::free_port());
    let listed: Vec<String> = std::iter::once(dead)
        .chain(urls.iter().cloned())
        .map(|u| format!("\"{u}\""))
        .collect();
    let mut spec =
        FleetSpec::new(&[]).existing_set("pha", &[("pha-n1", &primary), ("pha-n2", &replica)]);
    spec.controller_tables = format!(
        "\n[ha.pha]\npatroni = [{}]\ntimeout = \"5s\"\n",
        listed.join(", ")
    );
    let fleet = Fleet::start(spec).await.unwrap();

    corrupt::replicated_index_corruption(&primary, "postgres").unwrap();
    corrupt::wait_replayed(&primary, &replica).await.unwrap();
    // A testdb stops the standby it tests; an unpaused Patroni starts it
    // again within its loop_wait (2 s here) and spoils the copy. Outside a
    // window Tandem does not pause Patroni, so the test does, through its
    // REST API, around this testdb.
    cluster.set_pause(true).await.unwrap();
    let run = fleet.ctl(&["testdb", "pha", "--output", "json"]).unwrap();
    cluster.set_pause(false).await.unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());

    // The plan pauses Patroni right after the triage and resumes it last.
    let plan = fleet
        .ctl(&["maintenance", "plan", "pha", "--output", "json"])
        .unwrap();
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
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
            "pause_ha",
            "fence_stop",
            "isolate",
            "reindex",
            "check",
            "serve",
            "unfence_start",
            "wait_streaming",
            "testdb",
            "resume_ha"
        ],
        "{plan:#}"
    );
    assert_eq!(plan["ha"]["manager"], "patroni", "{plan:#}");
    assert_eq!(plan["ha"]["paused_before"], false, "{plan:#}");
    assert!(
        plan["ha"]["seen"]
            .as_str()
            .unwrap()
            .contains("leader pha-n1"),
        "{plan:#}"
    );

    let watch = Watch::start(urls.clone(), replica.clone());
    let open = fleet
        .ctl_as(
            "admin",
            &[
                "maintenance",
                "open",
                "pha",
                "--reason",
                "repair the replicated index corruption under Patroni",
                "--output",
                "json",
            ],
        )
        .unwrap();
    let looks = watch.finish();
    if open.code != 0 {
        cluster.keep();
    }
    assert_eq!(open.code, 0, "{open:?}\n{}", fleet.logs());
    let w = open.json();
    assert_eq!(w["state"], "closed", "{w:#}");
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    assert!(
        w["plan"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "done"),
        "{w:#}"
    );

    // Recorded: Patroni paused (and confirmed) before the first member
    // stopped, resumed after the testdb, each with what /cluster said.
    let pause = step(&w, "pause_ha");
    let resume = step(&w, "resume_ha");
    let first_stop = step(&w, "fence_stop");
    let testdb = step(&w, "testdb");
    assert!(
        time(pause, "finished_at") <= time(first_stop, "started_at"),
        "{w:#}"
    );
    assert!(
        time(resume, "started_at") >= time(testdb, "finished_at"),
        "{w:#}"
    );
    let msg = pause["message"].as_str().unwrap();
    assert!(
        msg.contains("pause=true") && msg.contains("leader pha-n1"),
        "{msg}"
    );
    let msg = resume["message"].as_str().unwrap();
    assert!(
        msg.contains("pause=false") && msg.contains("leader pha-n1"),
        "{msg}"
    );

    // Seen from outside: whenever the replica was down, Patroni was paused;
    // the leader never changed; the replica never left recovery.
    let down: Vec<&Look> = looks.iter().filter(|l| !l.replica_up).collect();
    assert!(!down.is_empty(), "the replica was never seen halted");
    let unpaused_down: Vec<&Look> = down
        .iter()
        .copied()
        .filter(|l| l.paused == Some(false))
        .collect();
    assert!(
        unpaused_down.is_empty(),
        "the replica was down while Patroni was not paused: {unpaused_down:#?}"
    );
    let paused_at = time(pause, "finished_at");
    assert!(
        down.iter().all(|l| l.at >= paused_at),
        "the replica was down before the pause was confirmed at {paused_at}: {down:#?}"
    );
    let other_leader: Vec<&Look> = looks
        .iter()
        .filter(|l| l.leader.as_deref().is_some_and(|n| n != "pha-n1"))
        .collect();
    assert!(other_leader.is_empty(), "failover: {other_leader:#?}");
    assert!(
        looks.iter().all(|l| l.replica_in_recovery != Some(false)),
        "the replica was promoted: {looks:#?}"
    );
    let paused_looks = looks.iter().filter(|l| l.paused == Some(true)).count();
    eprintln!(
        "FIGURE patroni window: {} looks, {} with Patroni paused, {} with the replica down, set downtime {:.2} s",
        looks.len(),
        paused_looks,
        down.len(),
        w["downtime_seconds"].as_f64().unwrap_or(-1.0)
    );

    // After: Patroni manages the set again with the same leader, and the
    // replica streams from it.
    let after = cluster
        .wait_cluster("resumed, pha-n1 leading, pha-n2 running", |c| {
            !paused(c)
                && leader_of(c).as_deref() == Some("pha-n1")
                && c["members"].as_array().is_some_and(|m| {
                    m.iter()
                        .any(|m| m["name"] == "pha-n2" && m["state"] == "running")
                })
        })
        .await
        .unwrap();
    assert!(after.get("pause").is_none(), "{after:#}");
    cluster.pair.wait_streaming(&replica).await.unwrap();
    assert!(replica.is_in_recovery().unwrap());
    assert!(!primary.is_in_recovery().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_patroni_fails_the_window_before_anything_stops() {
    // A plain set (no Patroni runs) whose [ha] names a port nothing
    // listens on.
    let dead = format!("http://127.0.0.1:{}", tandem_tests::wait::free_port());
    let mut spec = FleetSpec::new(&[("phx", 1)]);
    spec.controller_tables = format!("\n[ha.phx]\npatroni = [\"{dead}\"]\ntimeout = \"2s\"\n");
    let fleet = Fleet::start(spec).await.unwrap();
    let pair = fleet.set("phx");
    corrupt::replicated_index_corruption(&pair.primary, "postgres").unwrap();
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();
    let run = fleet.ctl(&["testdb", "phx", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());

    let plan = fleet
        .ctl(&["maintenance", "plan", "phx", "--output", "json"])
        .unwrap()
        .json();
    assert_eq!(plan["ha"]["paused_before"], Value::Null, "{plan:#}");
    assert!(
        plan["ha"]["seen"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{plan:#}"
    );

    let open = fleet
        .ctl_as(
            "admin",
            &[
                "maintenance",
                "open",
                "phx",
                "--reason",
                "Patroni is down",
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
        failure.contains("pause_ha")
            && failure.contains("cannot pause Patroni")
            && failure.contains(&dead)
            && failure.contains("nothing was stopped"),
        "{failure}"
    );
    assert_eq!(w["ha_pause_sent"], false, "{w:#}");
    assert_eq!(step(&w, "fence_stop")["state"], "pending", "{w:#}");
    // Nothing stopped: the standby still streams, the primary serves.
    assert!(pair.standbys[0].is_in_recovery().unwrap());
    assert_eq!(pair.primary.psql("postgres", "select 1").unwrap(), "1");

    // Close pauses Patroni first (its testdb needs it): still unreachable,
    // so close fails at once, again with nothing stopped.
    let close = fleet
        .ctl_as(
            "admin",
            &["maintenance", "close", "phx", "--output", "json"],
        )
        .unwrap();
    assert_eq!(close.code, 1, "{close:?}\n{}", fleet.logs());
    let w = close.json();
    assert_eq!(w["state"], "failed", "{w:#}");
    let resume: Vec<&str> = w["resume"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        resume,
        [
            "pause_ha",
            "serve",
            "unfence_start",
            "wait_streaming",
            "testdb",
            "resume_ha"
        ],
        "{w:#}"
    );
    let failure = w["failure"].as_str().unwrap();
    assert!(
        failure.starts_with("resuming: step 1 pause_ha failed"),
        "{failure}"
    );
    assert!(pair.standbys[0].is_in_recovery().unwrap());

    // Abort puts back what never changed, and resumes no Patroni it never
    // paused.
    let abort = fleet
        .ctl_as(
            "admin",
            &["maintenance", "abort", "phx", "--output", "json"],
        )
        .unwrap();
    assert_eq!(abort.code, 0, "{abort:?}\n{}", fleet.logs());
    let w = abort.json();
    assert_eq!(w["state"], "aborted", "{w:#}");
    let resume: Vec<&str> = w["resume"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert!(!resume.contains(&"resume_ha"), "{w:#}");
}
