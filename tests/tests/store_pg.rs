//! The controller's store on PostgreSQL: the same calls give the same
//! answers as on SQLite; a controller whose lease was taken over can never
//! write again (fencing); `import-sqlite` moves a fleet's SQLite store
//! over with nothing lost. A real PostgreSQL server, the real store code.

use std::time::Duration;

use tandem_controller::sets::{MemberDecl, SetDecl};
use tandem_controller::store::{
    Leadership, PolicyRow, RunSetState, ScheduleRow, Store, StoreLocation, import_sqlite,
};
use tandem_controller::verdicts::Verdict;
use tandem_proto::model::AgentState;
use tandem_tests::pg::{PgPair, PgServer};
use tandem_tests::wait::wait_for;

fn uri(server: &PgServer, db: &str) -> StoreLocation {
    StoreLocation::Postgres(format!(
        "postgresql://postgres@localhost/{db}?host={}&port={}",
        server.socket_dir.display(),
        server.port
    ))
}

fn set(name: &str, members: &[&str]) -> SetDecl {
    SetDecl {
        name: name.into(),
        members: members
            .iter()
            .map(|m| MemberDecl {
                name: (*m).into(),
                agent: format!("{name}-{m}"),
                host: (*m == "db2").then(|| "10.0.0.2".to_owned()),
            })
            .collect(),
    }
}

/// Every kind of call the controller makes, in an order it could make
/// them; returns what reading it all back gives, as text to compare.
async fn exercise(s: &Store) -> String {
    let admin = "spiffe://tandem/user/admin".to_owned();
    s.import_sets(vec![set("zeta", &["db1", "db2"]), set("alpha", &["db1"])])
        .await
        .unwrap();
    s.put_set(
        set("zeta", &["db1", "db3"]),
        admin.clone(),
        "changed".into(),
    )
    .await
    .unwrap();
    s.put_set(set("beta", &["db1"]), admin.clone(), "added".into())
        .await
        .unwrap();
    s.remove_set("beta".into(), admin.clone(), "removed".into())
        .await
        .unwrap();
    let g = s.bump_generation("alpha".into()).await.unwrap();
    assert_eq!(g, 2);
    let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    s.upsert_agent(tandem_controller::store::AgentRow {
        name: "zeta-db1".into(),
        set: "zeta".into(),
        member: "db1".into(),
        address: "127.0.0.1:7701".into(),
        agent_version: "0.1.0".into(),
        state: AgentState::Online,
        first_seen: t,
        last_seen: t,
        facts: Some("{\"role\":\"primary\"}".into()),
    })
    .await
    .unwrap();
    s.set_agent_state("zeta-db1".into(), AgentState::Offline, t)
        .await
        .unwrap();
    for i in 0..3 {
        let id = s
            .audit(
                admin.clone(),
                "StartTestdb",
                format!("{{\"n\":{i}}}"),
                "ok".into(),
                "trace".into(),
            )
            .await
            .unwrap();
        assert_eq!(id, i + 1, "audit ids count from 1 on both stores");
    }
    s.create_run(
        "run-1".into(),
        "manual".into(),
        String::new(),
        vec![
            ("zeta".into(), String::new()),
            ("alpha".into(), "db1".into()),
        ],
    )
    .await
    .unwrap();
    s.run_set_state(
        "run-1".into(),
        "zeta".into(),
        RunSetState::Running,
        "zeta-db2".into(),
        "op-1".into(),
    )
    .await
    .unwrap();
    let v = Verdict::failed_to_run("db2", "not streaming".into(), String::new());
    assert!(
        !s.finish_run_set("run-1".into(), "zeta".into(), v.clone(), true)
            .await
            .unwrap()
    );
    assert!(
        s.finish_run_set("run-1".into(), "alpha".into(), v.clone(), false)
            .await
            .unwrap()
    );
    s.record_verdict("zeta".into(), v).await.unwrap();
    s.put_setting("limits", "{\"fleet\":2}".into())
        .await
        .unwrap();
    s.put_setting("other", "x".into()).await.unwrap();
    s.delete_setting("other").await.unwrap();
    s.set_event("zeta".into(), "role", "db2 is now the primary".into())
        .await
        .unwrap();
    s.put_policy(
        "zeta".into(),
        Some(PolicyRow {
            test: "interval=600".into(),
            archive_copy: "off".into(),
            archive_file: true,
            mode: "online".into(),
        }),
    )
    .await
    .unwrap();
    s.put_schedule(
        "zeta".into(),
        "test",
        ScheduleRow {
            policy: "interval=600".into(),
            since: t,
            last_due: None,
        },
    )
    .await
    .unwrap();
    for (id, state, at) in [
        ("w1", "closed", "2026-11-21T10:00:00Z"),
        ("w2", "running", "2026-11-21T11:00:00Z"),
    ] {
        s.put_window(
            id.into(),
            "zeta".into(),
            state.into(),
            format!("{{\"id\":\"{id}\"}}"),
            at.into(),
            None,
        )
        .await
        .unwrap();
    }
    read_back(s).await
}

/// Everything the store says, with the times it stamped itself left out.
async fn read_back(s: &Store) -> String {
    let mut out = String::new();
    for r in s.sets().await.unwrap() {
        out += &format!(
            "set {} g{} {:?} {} {:?}\n",
            r.stored.decl.name,
            r.generation,
            r.stored.decl.members,
            r.source,
            r.stored.state.clone().label()
        );
    }
    for a in s.agents().await.unwrap() {
        out += &format!("{a:?}\n");
    }
    for a in s.audit_log(0).await.unwrap() {
        out += &format!(
            "audit {} {} {} {}\n",
            a.id, a.identity, a.action, a.arguments
        );
    }
    out += &format!("audit newest 2: {}\n", s.audit_log(2).await.unwrap().len());
    let run = s.run("run-1".into()).await.unwrap().unwrap();
    for rs in &run.sets {
        out += &format!(
            "run-set {} {} {:?} {} {} {:?}\n",
            rs.set,
            rs.member,
            rs.state,
            rs.agent,
            rs.operation_id,
            rs.verdict.as_ref().map(|v| v.reason.clone())
        );
    }
    out += &format!("unfinished {}\n", s.unfinished_runs().await.unwrap().len());
    for set in ["zeta", "alpha"] {
        out += &format!(
            "verdicts {set} {} archive {}\n",
            s.verdicts(set.into(), 0).await.unwrap().len(),
            s.archive_outcomes(set.into(), 0).await.unwrap().len()
        );
        for e in s.set_events(set.into(), 0).await.unwrap() {
            out += &format!("event {set} {} {}\n", e.kind, e.message);
        }
    }
    out += &format!(
        "settings {:?} {:?}\n",
        s.setting("limits").await.unwrap(),
        s.setting("other").await.unwrap()
    );
    out += &format!("policy {:?}\n", s.policy("zeta".into()).await.unwrap());
    out += &format!(
        "schedule {:?}\n",
        s.schedule("zeta".into(), "test").await.unwrap()
    );
    out += &format!(
        "windows {:?} open {:?}\n",
        s.window_docs("zeta".into(), 0).await.unwrap(),
        s.unfinished_window_docs().await.unwrap()
    );
    out += &format!(
        "generation {:?}\n",
        s.generation("zeta".into()).await.unwrap()
    );
    out
}

trait Label {
    fn label(self) -> &'static str;
}
impl Label for tandem_controller::sets::StoredState {
    fn label(self) -> &'static str {
        match self {
            tandem_controller::sets::StoredState::Active => "active",
            tandem_controller::sets::StoredState::Removed { .. } => "removed",
            tandem_controller::sets::StoredState::Legacy => "legacy",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgresql_store_answers_as_sqlite_and_takes_an_sqlite_fleet_over() {
    let pg = PgPair::create("store", 0).await.unwrap();
    let server = &pg.primary;
    for db in ["same", "imported"] {
        server
            .psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("controller.db");

    let sqlite = Store::open(&file).unwrap();
    let on_sqlite = exercise(&sqlite).await;
    let shared = Store::open_async(uri(server, "same")).await.unwrap();
    assert!(shared.shared() && !sqlite.shared());
    let on_pg = exercise(&shared).await;
    assert_eq!(on_pg, on_sqlite, "the same calls, the same answers");
    assert!(on_pg.contains("set zeta g2"), "{on_pg}");
    assert!(on_pg.contains("\"removed\""), "{on_pg}");

    // A second open migrates nothing and keeps everything.
    drop(shared);
    let again = Store::open_async(uri(server, "same")).await.unwrap();
    assert_eq!(read_back(&again).await, on_sqlite);

    // import-sqlite: every row, and the ids go on after the imported ones.
    drop(sqlite);
    let counts = import_sqlite(&file, &uri(server, "imported"))
        .await
        .unwrap();
    assert!(counts.contains(&("audit", 3)), "{counts:?}");
    assert!(counts.contains(&("sets", 3)), "{counts:?}");
    let imported = Store::open_async(uri(server, "imported")).await.unwrap();
    assert_eq!(read_back(&imported).await, on_sqlite);
    let next = imported
        .audit(
            "x".into(),
            "Register",
            "{}".into(),
            "ok".into(),
            String::new(),
        )
        .await
        .unwrap();
    assert_eq!(next, 4, "the audit ids go on after the imported ones");
    // Into a store that holds a fleet: refused, nothing written.
    let err = import_sqlite(&file, &uri(server, "imported"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds a fleet"), "{err}");
    assert_eq!(imported.audit_log(0).await.unwrap().len(), 4);
    // Into an SQLite path: refused.
    let err = import_sqlite(&file, &StoreLocation::Sqlite(dir.path().join("x.db")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be a PostgreSQL store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_whose_lease_was_taken_over_writes_nothing() {
    let pg = PgPair::create("lease", 0).await.unwrap();
    let at = uri(&pg.primary, "postgres");
    // Two controllers: two stores on one database.
    let c1 = Store::open_async(at.clone()).await.unwrap();
    let c2 = Store::open_async(at.clone()).await.unwrap();
    let lease = Duration::from_millis(1500);
    let taken = c1
        .take_lease("c1".into(), "https://c1:7700".into(), 0, lease)
        .await
        .unwrap();
    let Leadership::Leading { generation: g1 } = taken else {
        panic!("c1 takes the free lease: {taken:?}");
    };
    // c2 follows, and learns who leads.
    match c2
        .take_lease("c2".into(), "https://c2:7700".into(), 0, lease)
        .await
        .unwrap()
    {
        Leadership::Following { leader: Some(l) } => {
            assert_eq!((l.address.as_str(), l.generation), ("https://c1:7700", g1));
        }
        other => panic!("c2 must follow c1: {other:?}"),
    }
    // The leader writes; the follower cannot.
    c1.set_event("zeta".into(), "role", "by c1".into())
        .await
        .unwrap();
    let err = c2
        .set_event("zeta".into(), "role", "by c2".into())
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    // c1 renews under its generation and keeps it.
    assert_eq!(
        c1.take_lease("c1".into(), "https://c1:7700".into(), g1, lease)
            .await
            .unwrap(),
        Leadership::Leading { generation: g1 }
    );
    // c1 stops renewing (paused, partitioned); c2 takes over once the
    // lease has run out, under a new generation.
    let g2 = wait_for(
        "c2 to take the lease over",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            match c2
                .take_lease("c2".into(), "https://c2:7700".into(), 0, lease)
                .await?
            {
                Leadership::Leading { generation } => Ok(Some(generation)),
                Leadership::Following { .. } => Ok(None),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(g2, g1 + 1);
    // c1 wakes up still believing it leads: every write is refused, and
    // nothing of it lands.
    let err = c1
        .set_event("zeta".into(), "role", "late write by c1".into())
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(err.to_string().contains("no longer leads"), "{err}");
    let err = c1
        .put_set(set("zeta", &["db9"]), "c1".into(), "late".into())
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    // Its renewal is refused too: it follows c2.
    match c1
        .take_lease("c1".into(), "https://c1:7700".into(), g1, lease)
        .await
        .unwrap()
    {
        Leadership::Following { leader: Some(l) } => assert_eq!(l.address, "https://c2:7700"),
        other => panic!("c1 must follow c2 now: {other:?}"),
    }
    c2.set_event("zeta".into(), "role", "by c2".into())
        .await
        .unwrap();
    let events: Vec<String> = c2
        .set_events("zeta".into(), 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(events, ["by c2", "by c1"], "no write of a deposed leader");
    assert!(c2.sets().await.unwrap().is_empty());
    // Reads stay open to followers.
    assert_eq!(c1.set_events("zeta".into(), 0).await.unwrap().len(), 2);
    // A clean stop gives the lease up at once.
    c2.release_lease(c2_holder(), g2).await.unwrap();
    assert!(matches!(
        c1.take_lease("c1".into(), "https://c1:7700".into(), 0, lease)
            .await
            .unwrap(),
        Leadership::Leading { generation } if generation == g2 + 1
    ));
    let controllers = c1.controllers().await.unwrap();
    assert_eq!(
        controllers
            .iter()
            .map(|c| c.holder.as_str())
            .collect::<Vec<_>>(),
        ["c1"],
        "c2 left the election when it gave the lease up"
    );
}

fn c2_holder() -> String {
    "c2".into()
}
