//! Several controllers on one PostgreSQL store: one leads by a fenced
//! lease; the other answers reads and sends the rest to the leader; when
//! the leader is killed the other takes over within the lease, and a test
//! that was running is followed to its verdict through the new leader; a
//! leader that was paused past its lease wakes up, writes nothing and
//! stops. Real PostgreSQL (the sets and the store), real controllers,
//! agents and tandemctl over mTLS.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_tests::fleet::{Fleet, FleetSpec, run_ctl_raw};
use tandem_tests::pg::PgPair;
use tandem_tests::wait::wait_for;

const LEASE: Duration = Duration::from_secs(3);

async fn store() -> (PgPair, String) {
    let pg = PgPair::create("ctlstore", 0).await.unwrap();
    pg.primary
        .psql("postgres", "CREATE DATABASE tandem")
        .unwrap();
    let uri = format!(
        "postgresql://postgres@localhost/tandem?host={}&port={}",
        pg.primary.socket_dir.display(),
        pg.primary.port
    );
    (pg, uri)
}

async fn fleet(set: &str, uri: &str) -> Fleet {
    let mut spec = FleetSpec::new(&[(set, 1)]);
    spec.store = Some(uri.to_owned());
    spec.more_controllers = 1;
    spec.lease = LEASE;
    Fleet::start(spec).await.unwrap()
}

/// `tandemctl controllers -o json` through every address.
fn controllers(f: &Fleet) -> Value {
    let run = f.ctl_as("viewer", &["controllers", "-o", "json"]).unwrap();
    run.json()
}

fn leader(v: &Value) -> Option<(String, i64)> {
    let leaders: Vec<&Value> = v["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["leader"] == true)
        .collect();
    assert!(leaders.len() <= 1, "two leaders: {v:#}");
    leaders.first().map(|c| {
        (
            c["address"].as_str().unwrap().to_owned(),
            c["generation"].as_i64().unwrap(),
        )
    })
}

/// Wait until both controllers take part; returns (leader URL, its
/// generation, the follower's URL).
async fn roles(f: &Fleet) -> (String, i64, String) {
    let v = wait_for(
        "both controllers to take part, one leading",
        LEASE * 3,
        Duration::from_millis(100),
        || async {
            let v = controllers(f);
            let both = v["controllers"].as_array().is_some_and(|c| c.len() == 2);
            Ok((both && leader(&v).is_some()).then_some(v))
        },
    )
    .await
    .unwrap();
    assert_eq!(v["store"], "postgresql", "{v:#}");
    let (l, g) = leader(&v).unwrap();
    let other = f.controller_urls().into_iter().find(|u| *u != l).unwrap();
    (l, g, other)
}

/// Wait until the controller at `url` leads, as it says itself (the
/// lease plus a renewal or two); its lease generation.
async fn leads(f: &Fleet, url: &str) -> (String, i64) {
    wait_for(
        &format!("{url} to lead"),
        LEASE * 3,
        Duration::from_millis(100),
        || async {
            let run = ctl_at(f, url, "viewer", &["controllers", "-o", "json"]);
            Ok(serde_json::from_str::<Value>(&run.stdout)
                .ok()
                .and_then(|v| leader(&v))
                .filter(|(address, _)| address == url))
        },
    )
    .await
    .unwrap()
}

/// The process of the controller at `url`.
fn proc_of<'a>(f: &'a mut Fleet, url: &str) -> &'a mut Option<tandem_tests::procs::Proc> {
    if f.controller_url == url {
        &mut f.controller
    } else {
        &mut f.more_controllers[0].proc
    }
}

/// tandemctl pointed at one controller only.
fn ctl_at(f: &Fleet, url: &str, user: &str, args: &[&str]) -> tandem_tests::fleet::CtlRun {
    let mut env = f.ctl_env(user);
    for (k, v) in &mut env {
        if k == "TANDEM_CONTROLLER" {
            *v = url.to_owned();
        }
    }
    run_ctl_raw(&env, args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_a_running_test_is_followed_to_its_verdict() {
    let (_store, uri) = store().await;
    let mut f = fleet("ha", &uri).await;
    // One leads (c1), the other follows (c2).
    let (c1, g1, c2) = roles(&f).await;

    // The follower answers reads itself, from the store...
    let shown = ctl_at(&f, &c2, "viewer", &["set", "list", "-o", "json"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert_eq!(shown.json()["sets"][0]["name"], "ha");
    let answered = ctl_at(&f, &c2, "viewer", &["controllers", "-o", "json"]).json();
    assert_eq!(answered["answered_by"], c2.as_str());
    // ...and a change sent to it alone lands on the leader.
    let changed = ctl_at(&f, &c2, "admin", &["limits", "--fleet", "3"]);
    assert_eq!(changed.code, 0, "{changed:?}");
    let limits = ctl_at(&f, &c1, "viewer", &["limits", "-o", "json"]).json();
    assert_eq!(limits["fleet"], 3, "{limits:#}");

    // A test is running when the leader dies.
    f.start_agent_held("ha-s1", "copy").await.unwrap();
    let ctl = f
        .spawn_ctl("operator", &["testdb", "ha", "--output", "json"])
        .unwrap();
    let held = f.wait_held("ha-s1", "copy").await.unwrap();
    let killed = Instant::now();
    proc_of(&mut f, &c1).take().unwrap().kill();

    // The follower takes over within the lease plus a renewal or two.
    let (now, g2) = leads(&f, &c2).await;
    let took = killed.elapsed();
    assert_eq!(now, c2);
    assert_eq!(g2, g1 + 1, "a takeover is a new lease generation");
    eprintln!("takeover {took:.1?} after the leader was killed (lease {LEASE:?})");

    // The held copy goes on; tandemctl follows the run through c2.
    std::fs::remove_file(&held).unwrap();
    let out = tokio::task::spawn_blocking(move || ctl.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", f.logs());
    assert!(stderr.contains(&format!("through {c2}")), "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["sets"][0]["verdict"]["kind"], "clean", "{result:#}");

    // One test, one verdict: nothing ran twice, nothing was forgotten.
    let history = f
        .ctl_as("viewer", &["history", "ha", "-o", "json"])
        .unwrap()
        .json();
    let verdicts = history["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 1, "{history:#}");
    assert_eq!(verdicts[0]["kind"], "clean", "{history:#}");
    // The limits changed through the old leader are the new leader's too.
    let limits = f
        .ctl_as("viewer", &["limits", "-o", "json"])
        .unwrap()
        .json();
    assert_eq!(limits["fleet"], 3, "{limits:#}");
    // The agents follow the new leader.
    let agents = f.ctl_as("viewer", &["agents", "-o", "json"]).unwrap();
    assert_eq!(agents.code, 0, "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_and_stops() {
    let (store_pg, uri) = store().await;
    let mut f = fleet("hp", &uri).await;
    let (c1, g1, c2) = roles(&f).await;

    // The leader freezes (a long pause, a partition) past its lease.
    proc_of(&mut f, &c1)
        .as_ref()
        .unwrap()
        .signal(Signal::SIGSTOP)
        .unwrap();
    let (now, g2) = leads(&f, &c2).await;
    assert_eq!((now.as_str(), g2), (c2.as_str(), g1 + 1));

    // It wakes up: its next renewal finds the new generation, and it stops
    // rather than drive the fleet beside the new leader.
    let old = proc_of(&mut f, &c1).as_mut().unwrap();
    old.signal(Signal::SIGCONT).unwrap();
    let status = old.wait_exit(LEASE * 3).await.unwrap();
    let log = old.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("lost the leadership"), "{log}");

    // The fleet goes on under c2, and nothing of c1 landed after it lost:
    // woken after seconds of silence, its liveness sweep found every agent
    // silent and tried to store them offline; the store refused it.
    let v = controllers(&f);
    assert_eq!(leader(&v), Some((c2.clone(), g2)), "{v:#}");
    let states = store_pg
        .primary
        .psql(
            "tandem",
            "SELECT string_agg(name || '=' || state, ',' ORDER BY name) FROM agents",
        )
        .unwrap();
    assert_eq!(states, "hp-p=online,hp-s1=online", "{}", log);
    let shown = f.ctl_as("viewer", &["show", "hp", "-o", "json"]).unwrap();
    assert_eq!(shown.json()["sets"][0]["name"], "hp", "{shown:?}");
}
