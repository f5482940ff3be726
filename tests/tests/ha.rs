//! Three controllers on one PostgreSQL store: one leads by a fenced
//! lease; the others answer reads and send the rest to the leader. When the
//! leader is killed one of the others takes over within the lease: a
//! `testdb --all` that was running is followed to one verdict per set
//! through the new leader, a maintenance window that was open is carried
//! on from its saved step and closes clean, and a change sent to the
//! survivors while no one leads waits for the new leader. A leader that
//! was paused past its lease wakes up, writes nothing and stops. Real
//! PostgreSQL (the sets and the store), real controllers, agents and
//! tandemctl over mTLS.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{CtlRun, Fleet, FleetSpec, run_ctl_raw};
use tandem_tests::pg::PgPair;
use tandem_tests::procs::{Proc, bin_path};
use tandem_tests::store::PgStore;
use tandem_tests::wait::wait_for;

const LEASE: Duration = Duration::from_secs(3);
/// Controllers on the store: one leads, two follow.
const CONTROLLERS: usize = 3;

/// The controllers' store: a private PostgreSQL server and its URI.
async fn store() -> (PgPair, String) {
    let PgStore { server, uri } = PgStore::create().await.unwrap();
    (server, uri)
}

/// `sets`, one standby each, and [`CONTROLLERS`] controllers on `uri`.
async fn fleet(sets: &[&str], uri: &str) -> Fleet {
    let sets: Vec<(&str, usize)> = sets.iter().map(|s| (*s, 1)).collect();
    let mut spec = FleetSpec::new(&sets);
    spec.store = Some(uri.to_owned());
    spec.more_controllers = CONTROLLERS - 1;
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

/// Who leads and who follows.
struct Roles {
    leader: String,
    generation: i64,
    followers: Vec<String>,
}

/// Wait until every controller takes part, one leading.
async fn roles(f: &Fleet) -> Roles {
    let v = wait_for(
        "every controller to take part, one leading",
        LEASE * 3,
        Duration::from_millis(100),
        || async {
            let v = controllers(f);
            let all = v["controllers"]
                .as_array()
                .is_some_and(|c| c.len() == CONTROLLERS);
            Ok((all && leader(&v).is_some()).then_some(v))
        },
    )
    .await
    .unwrap();
    assert_eq!(v["store"], "postgresql", "{v:#}");
    let (leader, generation) = leader(&v).unwrap();
    let followers = f
        .controller_urls()
        .into_iter()
        .filter(|u| *u != leader)
        .collect();
    Roles {
        leader,
        generation,
        followers,
    }
}

/// Wait until one of the controllers at `urls` leads, as it says itself
/// (the lease plus a renewal or two); its URL and lease generation.
async fn one_leads(f: &Fleet, urls: &[String]) -> (String, i64) {
    wait_for(
        &format!("one of {urls:?} to lead"),
        LEASE * 3,
        Duration::from_millis(100),
        || async {
            Ok(urls.iter().find_map(|url| {
                let run = ctl_at(f, url, "viewer", &["controllers", "-o", "json"]);
                serde_json::from_str::<Value>(&run.stdout)
                    .ok()
                    .and_then(|v| leader(&v))
                    .filter(|(address, _)| address == url)
            }))
        },
    )
    .await
    .unwrap()
}

/// The process of the controller at `url`.
fn proc_of<'a>(f: &'a mut Fleet, url: &str) -> &'a mut Option<Proc> {
    if f.controller_url == url {
        return &mut f.controller;
    }
    let c = f.more_controllers.iter_mut().find(|c| c.url == url);
    &mut c.unwrap_or_else(|| panic!("no controller at {url}")).proc
}

/// tandemctl's environment as `user`, pointed at these controllers only
/// (`urls`: comma-separated, in the order tandemctl tries them).
fn env_at(f: &Fleet, urls: &str, user: &str) -> Vec<(String, String)> {
    let mut env = f.ctl_env(user);
    for (k, v) in &mut env {
        if k == "TANDEM_CONTROLLER" {
            *v = urls.to_owned();
        }
    }
    env
}

/// Run tandemctl pointed at these controllers only.
fn ctl_at(f: &Fleet, urls: &str, user: &str, args: &[&str]) -> CtlRun {
    run_ctl_raw(&env_at(f, urls, user), args).unwrap()
}

/// Start tandemctl pointed at these controllers only, without waiting
/// (stdout and stderr piped; [`finished`] waits).
fn spawn_ctl_at(f: &Fleet, urls: &str, user: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(bin_path("tandemctl").unwrap())
        .args(args)
        .envs(env_at(f, urls, user))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The records of `agent`'s journal of operations of `kind`.
fn journal(f: &Fleet, agent: &str, kind: &str) -> Vec<Value> {
    std::fs::read_dir(f.agent_home(agent).join("journal"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .filter(|r: &Value| r["kind"] == kind)
        .collect()
}

/// Wait (two minutes at most, then SIGKILL it and fail) for a spawned
/// tandemctl; its exit code, stdout and stderr.
async fn finished(ctl: std::process::Child) -> CtlRun {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(ctl.id()).unwrap());
    let waiting = tokio::task::spawn_blocking(move || ctl.wait_with_output());
    let Ok(out) = tokio::time::timeout(Duration::from_secs(120), waiting).await else {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        panic!("tandemctl (pid {pid}) did not exit within two minutes");
    };
    let out = out.unwrap().unwrap();
    CtlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_a_running_testdb_all_ends_with_one_verdict_per_set() {
    let (store_pg, uri) = store().await;
    let mut f = fleet(&["ha", "hb"], &uri).await;
    let r = roles(&f).await;
    let (c1, g1) = (r.leader.clone(), r.generation);

    // A follower answers reads itself, from the store...
    let shown = ctl_at(
        &f,
        &r.followers[0],
        "viewer",
        &["set", "list", "-o", "json"],
    );
    assert_eq!(shown.code, 0, "{shown:?}");
    assert_eq!(shown.json()["sets"][0]["name"], "ha");
    let answered = ctl_at(
        &f,
        &r.followers[1],
        "viewer",
        &["controllers", "-o", "json"],
    )
    .json();
    assert_eq!(answered["answered_by"], r.followers[1].as_str());
    // ...and a change sent to it alone lands on the leader.
    let changed = ctl_at(&f, &r.followers[0], "admin", &["limits", "--fleet", "3"]);
    assert_eq!(changed.code, 0, "{changed:?}");
    let limits = ctl_at(&f, &c1, "viewer", &["limits", "-o", "json"]).json();
    assert_eq!(limits["fleet"], 3, "{limits:#}");

    // `testdb --all` over both sets: `hb` ends under the first leader,
    // `ha` is held in its copy when the leader dies.
    f.start_agent_held("ha-s1", "copy").await.unwrap();
    let ctl = f
        .spawn_ctl("operator", &["testdb", "--all", "--output", "json"])
        .unwrap();
    let held = f.wait_held("ha-s1", "copy").await.unwrap();
    let verdicts_in_store = || {
        store_pg
            .primary
            .psql(
                "tandem",
                "SELECT coalesce(string_agg(set_name || '=' || kind, ',' ORDER BY set_name, id), '') FROM verdicts",
            )
            .unwrap()
    };
    wait_for(
        "hb's verdict under the first leader",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { Ok((verdicts_in_store() == "hb=clean").then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let killed = Instant::now();
    proc_of(&mut f, &c1).take().unwrap().kill();

    // A change sent right away to the survivors alone waits for one of
    // them to lead (they name the dead leader, then none, meanwhile) and
    // is taken once.
    let change = spawn_ctl_at(
        &f,
        &r.followers.join(","),
        "admin",
        &["limits", "--fleet", "2"],
    );

    // A survivor takes over within the lease plus a renewal or two.
    let (c2, g2) = one_leads(&f, &r.followers).await;
    let took = killed.elapsed();
    assert_eq!(g2, g1 + 1, "a takeover is a new lease generation");
    eprintln!("takeover {took:.1?} after the leader was killed (lease {LEASE:?})");
    let changed = finished(change).await;
    assert_eq!(changed.code, 0, "{changed:?}\n{}", f.logs());
    // It was turned away first: the survivors still named the dead leader.
    assert!(
        changed
            .stderr
            .contains(&format!("cannot connect to controller {c1}")),
        "{}",
        changed.stderr
    );
    let audit = ctl_at(&f, &c2, "viewer", &["audit", "-o", "json"]).json();
    let fleet_2: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "Limits" && e["arguments"]["fleet"] == 2)
        .collect();
    assert_eq!(fleet_2.len(), 1, "{audit:#}");
    assert_eq!(fleet_2[0]["outcome"], "ok", "{audit:#}");

    // The third controller, which did not take over, says c2 leads...
    let c3 = r.followers.iter().find(|u| **u != c2).unwrap().clone();
    let told = ctl_at(&f, &c3, "viewer", &["controllers", "-o", "json"]).json();
    assert_eq!(told["answered_by"], c3.as_str(), "{told:#}");
    assert_eq!(leader(&told), Some((c2.clone(), g2)), "{told:#}");
    // ...and tandemctl given it first, then the leader, makes a change.
    let both = format!("{c3},{c2}");
    let changed = ctl_at(&f, &both, "admin", &["limits", "--per-host", "3"]);
    assert_eq!(changed.code, 0, "{changed:?}");
    let limits = ctl_at(&f, &c2, "viewer", &["limits", "-o", "json"]).json();
    assert_eq!(
        (&limits["fleet"], &limits["per_host"]),
        (&2.into(), &3.into()),
        "{limits:#}"
    );

    // The held copy goes on; tandemctl follows the run through c2.
    std::fs::remove_file(&held).unwrap();
    let out = finished(ctl).await;
    assert_eq!(out.code, 0, "{out:?}\n{}", f.logs());
    assert!(
        out.stderr.contains(&format!("through {c2}")),
        "{}",
        out.stderr
    );
    let result = out.json();
    let sets: Vec<(&str, &str)> = result["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["verdict"]["kind"].as_str().unwrap(),
            )
        })
        .collect();
    let mut sorted = sets.clone();
    sorted.sort();
    assert_eq!(sorted, [("ha", "clean"), ("hb", "clean")], "{result:#}");
    assert_eq!(result["skipped"], serde_json::json!([]), "{result:#}");

    // One test per set, one verdict each: nothing ran twice, nothing was
    // forgotten (the store, each set's history, each copy's journal).
    assert_eq!(verdicts_in_store(), "ha=clean,hb=clean");
    for set in ["ha", "hb"] {
        let history = f
            .ctl_as("viewer", &["history", set, "-o", "json"])
            .unwrap()
            .json();
        let verdicts = history["verdicts"].as_array().unwrap();
        assert_eq!(verdicts.len(), 1, "{set}: {history:#}");
        assert_eq!(verdicts[0]["kind"], "clean", "{set}: {history:#}");
        let tests = journal(&f, &format!("{set}-s1"), "testdb");
        assert_eq!(tests.len(), 1, "{set}: {tests:#?}");
        assert_eq!(tests[0]["state"], "succeeded", "{set}: {tests:#?}");
    }
    let run_id = result["run_id"].as_str().unwrap();
    let run_sets = store_pg
        .primary
        .psql(
            "tandem",
            &format!(
                "SELECT string_agg(set_name || '=' || state, ',' ORDER BY set_name) FROM run_sets WHERE run_id = '{run_id}'"
            ),
        )
        .unwrap();
    assert_eq!(run_sets, "ha=done,hb=done");
    // The agents follow the new leader.
    let agents = f.ctl_as("viewer", &["agents", "-o", "json"]).unwrap();
    assert_eq!(agents.code, 0, "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_and_stops() {
    let (store_pg, uri) = store().await;
    let mut f = fleet(&["hp"], &uri).await;
    let r = roles(&f).await;
    let (c1, g1) = (r.leader.clone(), r.generation);

    // The leader freezes (a long pause, a partition) past its lease.
    proc_of(&mut f, &c1)
        .as_ref()
        .unwrap()
        .signal(Signal::SIGSTOP)
        .unwrap();
    let (c2, g2) = one_leads(&f, &r.followers).await;
    assert_eq!(g2, g1 + 1);

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
    for url in &r.followers {
        let v = ctl_at(&f, url, "viewer", &["controllers", "-o", "json"]).json();
        assert_eq!(leader(&v), Some((c2.clone(), g2)), "{v:#}");
    }
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

/// A window on a set with replicated index corruption, opened through the
/// first leader and held in the repair (the whole set halted): the leader
/// is killed, the new one carries the window on from its saved step, and
/// the window closes clean with every step run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_open_across_a_takeover_closes_cleanly() {
    let (_store, uri) = store().await;
    let mut f = fleet(&["hw"], &uri).await;
    let r = roles(&f).await;
    corrupt::replicated_index_corruption(&f.set("hw").primary, "postgres").unwrap();
    f.replicated("hw").await.unwrap();
    let found = f.ctl(&["testdb", "hw", "--output", "json"]).unwrap();
    assert_eq!(found.code, 1, "{found:?}\n{}", f.logs());

    // The window opens through the first leader; its primary's agent holds
    // after the reindex, with the standby fenced and stopped.
    // tandemctl asks the leader first, so the window is followed through
    // it and then through a survivor.
    f.start_agent_held("hw-p", "reindex").await.unwrap();
    let all = std::iter::once(r.leader.clone())
        .chain(r.followers.iter().cloned())
        .collect::<Vec<_>>()
        .join(",");
    let open = spawn_ctl_at(
        &f,
        &all,
        "admin",
        &[
            "maintenance",
            "open",
            "hw",
            "--reason",
            "repair across a takeover",
            "--output",
            "json",
        ],
    );
    let held = f.wait_held("hw-p", "reindex").await.unwrap();
    assert!(
        !f.set("hw").standbys[0].is_running(),
        "the standby runs in the window"
    );
    let before = f
        .ctl_as("viewer", &["maintenance", "show", "hw", "--output", "json"])
        .unwrap()
        .json();
    assert_eq!(before["state"], "running", "{before:#}");
    let steps = before["plan"]["steps"].as_array().unwrap().len();

    proc_of(&mut f, &r.leader).take().unwrap().kill();
    let (c2, _) = one_leads(&f, &r.followers).await;
    // The new leader carries the window on; the step it finds running is
    // the one the agent holds, asked for again by the same request.
    let log = proc_of(&mut f, &c2).as_ref().unwrap().log.clone();
    wait_for(
        "the new leader to carry the window on",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text
                .contains("carrying on a maintenance window")
                .then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    std::fs::remove_file(&held).unwrap();

    // tandemctl followed the window on through a survivor to its close.
    let out = finished(open).await;
    assert_eq!(out.code, 0, "{out:?}\n{}", f.logs());
    let w = out.json();
    let id = w["id"].as_str().unwrap();
    assert!(
        out.stderr.contains(&format!(
            "controller {} went away; following window {id} through",
            r.leader
        )),
        "{}",
        out.stderr
    );
    assert_eq!(w["state"], "closed", "{w:#}");
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    let shown = ctl_at(
        &f,
        &c2,
        "viewer",
        &["maintenance", "show", "hw", "-o", "json"],
    )
    .json();
    assert_eq!(
        (&shown["id"], &shown["state"]),
        (&w["id"], &"closed".into())
    );
    let done: Vec<&Value> = shown["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "done")
        .collect();
    assert_eq!(done.len(), steps, "{shown:#}");

    // Each agent step ran once, under one operation.
    for agent in ["hw-p", "hw-s1"] {
        let ops = journal(&f, agent, "maintenance");
        let mut names: Vec<&str> = ops.iter().map(|o| o["step"].as_str().unwrap()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "{agent} ran a step twice: {ops:#?}");
        assert!(
            ops.iter().all(|o| o["state"] == "succeeded"),
            "{agent}: {ops:#?}"
        );
    }
    let held_step = journal(&f, "hw-p", "maintenance");
    assert!(
        held_step.iter().any(|o| o["step"] == "reindex"),
        "{held_step:#?}"
    );

    // The set is back: the standby streams as a standby, the primary
    // serves clients, no fence is left.
    let pair = f.set("hw");
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    assert!(pair.standbys[0].is_in_recovery().unwrap());
    assert_eq!(pair.primary.psql("postgres", "select 1").unwrap(), "1");
    assert!(!f.agent_home("hw-s1").join("fence").exists());

    // Opened once, closed once, in the history and the audit.
    let events = f.maintenance_events("hw").unwrap();
    let h = f
        .ctl_as("viewer", &["history", "hw", "--output", "json"])
        .unwrap()
        .json();
    let count = |what: &str| events.iter().filter(|m| m.contains(what)).count();
    assert_eq!(
        (count("opened by"), count(" closed:")),
        (1, 1),
        "{events:#?}"
    );
    let verdicts: Vec<&str> = h["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["clean", "errors"], "{h:#}");
    let audit = f
        .ctl_as("viewer", &["audit", "--output", "json"])
        .unwrap()
        .json();
    let opens = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "MaintenanceOpen")
        .count();
    assert_eq!(opens, 1, "{audit:#}");
}
