//! Lost rows end to end: damage that `pg_amcheck`, `pg_checksums` and
//! `pg_dumpall` all miss (a zeroed heap page, a table file cut by whole
//! pages, a zeroed TOAST page), made in a stopped standby's data directory,
//! found by testdb and named by relation; and a healthy set under writes,
//! vacuum, drops and truncates that stays clean (no false alarm).

use std::time::Duration;

use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};

fn findings(v: &Value) -> Vec<Value> {
    v["sets"][0]["verdict"]["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn standby_back(fleet: &Fleet, set: &str) {
    let pair = fleet.set(set);
    let standby = &pair.standbys[0];
    standby.start().unwrap();
    pair.wait_streaming(standby).await.unwrap();
    fleet
        .wait_heartbeat_streaming(&format!("{set}-s1"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_page_a_cut_file_and_a_zeroed_toast_page_are_lost_rows_named_by_relation() {
    let fleet = Fleet::start(FleetSpec::new(&[("lost", 1)])).await.unwrap();
    let pair = fleet.set("lost");
    let p = &pair.primary;
    p.psql(
        "postgres",
        "create table lr_zero (id int primary key, v text); \
         insert into lr_zero select i, 'row ' || i from generate_series(1, 3000) i; \
         create table lr_cut (id int primary key, v text); \
         insert into lr_cut select i, 'row ' || i from generate_series(1, 3000) i; \
         create table lr_toast (id int primary key, doc text); \
         alter table lr_toast alter column doc set storage external; \
         insert into lr_toast select i, repeat(md5(i::text), 300) from generate_series(1, 40) i",
    )
    .unwrap();
    // Frozen and analysed: nothing writes these pages again, so no later
    // full-page image repairs the damage on the standby.
    p.psql(
        "postgres",
        "vacuum (freeze, analyze) lr_zero, lr_cut, lr_toast",
    )
    .unwrap();
    let toast = p
        .psql(
            "postgres",
            "select reltoastrelid::regclass from pg_class where relname = 'lr_toast'",
        )
        .unwrap();
    let standby = &pair.standbys[0];
    corrupt::flush_and_stop_standby(p, standby).await.unwrap();
    corrupt::zero_page(p, standby, "postgres", "lr_zero", 1).unwrap();
    let (_, pages) = corrupt::cut_relation(p, standby, "postgres", "lr_cut", 3).unwrap();
    assert!(pages > 3);
    corrupt::zero_page(p, standby, "postgres", &toast, 0).unwrap();
    standby_back(&fleet, "lost").await;

    // The standby serves fewer rows and says nothing.
    let rows = standby_rows(&fleet, "lost").await;
    assert_ne!(rows, "3000|3000", "the damage did not take");
    let run = fleet.ctl(&["testdb", "lost", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());
    let v = run.json();
    let found = findings(&v);
    let lost = |relation: &str| {
        found
            .iter()
            .find(|f| f["kind"] == "lost_rows" && f["relation"] == relation)
            .unwrap_or_else(|| panic!("no lost_rows finding for {relation}: {found:#?}"))
            .clone()
    };
    let zero = lost("public.lr_zero");
    let msg = zero["message"].as_str().unwrap();
    assert!(msg.contains("index public.lr_zero_pkey"), "{msg}");
    assert!(
        msg.contains("all-zero (new) pages") && msg.contains("blocks 1"),
        "{msg}"
    );
    let cut = lost("public.lr_cut");
    let msg = cut["message"].as_str().unwrap();
    assert!(msg.contains("past the table's end"), "{msg}");
    assert!(msg.contains("the table has 3 pages"), "{msg}");
    let t = lost(&toast);
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .contains("TOAST table of public.lr_toast"),
        "{t}"
    );
    // The zeroed page is lost rows and nothing else: the other checks
    // passed it.
    let others: Vec<_> = found
        .iter()
        .filter(|f| {
            f["relation"].as_str().unwrap_or("").contains("lr_zero") && f["kind"] != "lost_rows"
        })
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    let coverage = v["sets"][0]["verdict"]["coverage"].as_array().unwrap();
    assert!(
        coverage
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("lost rows: ")),
        "{coverage:?}"
    );

    // The agent's own files say the same.
    let home = fleet.agent_home("lost-s1");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("testdb.state.json")).unwrap())
            .unwrap();
    assert!(
        state["finding_counts"]["lost_rows"].as_u64().unwrap() >= 3,
        "{state:#}"
    );
    let out = std::fs::read_to_string(state["output"].as_str().unwrap()).unwrap();
    assert!(out.contains("lost_rows postgres public.lr_cut"), "{out}");

    // `show` keeps the verdict, exit 1.
    let show = fleet.ctl(&["show", "lost", "--output", "json"]).unwrap();
    assert_eq!(show.code, 1, "{show:?}");
    assert!(
        findings(&show.json())
            .iter()
            .any(|f| f["kind"] == "lost_rows"),
        "{}",
        show.stdout
    );

    // The repair: lost rows cannot be re-checked on the running primary,
    // which is clean where amcheck can look; the plan re-seeds the standby
    // and the window's closing testdb reads the fresh copy: clean, the
    // primary never lost those rows.
    let plan = fleet
        .ctl(&["maintenance", "plan", "lost", "--output", "json"])
        .unwrap()
        .json();
    assert_eq!(plan["repair"], "reseed", "{plan:#}");
    assert!(
        plan["why"]
            .as_str()
            .unwrap()
            .contains("cannot be re-checked on the running primary"),
        "{plan:#}"
    );
    let open = fleet
        .ctl_as(
            "admin",
            &[
                "maintenance",
                "open",
                "lost",
                "--reason",
                "lost rows",
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(open.code, 0, "{open:?}\n{}", fleet.logs());
    let w = open.json();
    assert_eq!(w["state"], "closed", "{w:#}");
    assert_eq!(w["verdict"]["kind"], "clean", "{w:#}");
    let rows = standby_rows(&fleet, "lost").await;
    assert_eq!(
        rows, "3000|3000",
        "the re-seeded standby has every row again"
    );
}

/// Rows of lr_zero and lr_cut as the standby serves them.
async fn standby_rows(fleet: &Fleet, set: &str) -> String {
    let pair = fleet.set(set);
    let s = &pair.standbys[0];
    pair.wait_streaming(s).await.unwrap();
    s.psql(
        "postgres",
        "select (select count(*) from lr_zero) || '|' || (select count(*) from lr_cut)",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_set_under_writes_vacuum_drops_and_truncates_stays_clean() {
    let fleet = Fleet::start(FleetSpec::new(&[("lrok", 1)])).await.unwrap();
    let pair = fleet.set("lrok");
    let p = pair.primary.clone();
    p.pgbench_init(2).unwrap();
    p.psql(
        "postgres",
        // Posting lists (few distinct keys), HOT chains and redirects, dead
        // rows not vacuumed, dead line pointers kept by a vacuum without
        // index cleanup, TOAST, unlogged, partitioned, a materialized view,
        // and index kinds the check does not read (named, not skipped).
        "create table lr_dup (id int primary key, k int, v text) with (fillfactor = 60); \
         insert into lr_dup select i, i % 10, 'row ' || i from generate_series(1, 20000) i; \
         create index lr_dup_k on lr_dup (k); \
         create index lr_dup_hash on lr_dup using hash (id); \
         create table lr_pts (p point); insert into lr_pts select point(i, i) from generate_series(1, 100) i; \
         create index lr_pts_gist on lr_pts using gist (p); \
         create index lr_pts_spgist on lr_pts using spgist (p); \
         create table lr_arr (a int[]); insert into lr_arr select array[i, i + 1] from generate_series(1, 500) i; \
         create index lr_arr_gin on lr_arr using gin (a); \
         create table lr_big (id int primary key, doc text); \
         alter table lr_big alter column doc set storage external; \
         insert into lr_big select i, repeat(md5(i::text), 200) from generate_series(1, 60) i; \
         create unlogged table lr_unlogged (id int primary key); \
         insert into lr_unlogged select generate_series(1, 1000); \
         create table lr_part (id int, k int) partition by range (id); \
         create table lr_part_1 partition of lr_part for values from (0) to (5000); \
         create table lr_part_2 partition of lr_part for values from (5000) to (10000); \
         create index on lr_part (k); \
         insert into lr_part select i, i % 7 from generate_series(0, 9999) i; \
         create materialized view lr_mat as select k, count(*) from lr_dup group by k; \
         create index on lr_mat (k); \
         create table lr_trunc (id int primary key); insert into lr_trunc select generate_series(1, 500)",
    )
    .unwrap();
    p.psql(
        "postgres",
        "update lr_dup set v = v || ' hot' where id % 3 = 0",
    )
    .unwrap();
    p.psql("postgres", "delete from lr_dup where id % 7 = 0")
        .unwrap();
    p.psql("postgres", "vacuum (index_cleanup off) lr_dup")
        .unwrap();
    p.psql("postgres", "delete from lr_dup where id % 11 = 0")
        .unwrap();
    p.psql("postgres", "delete from lr_big where id % 4 = 0")
        .unwrap();
    corrupt::wait_replayed(&p, &pair.standbys[0]).await.unwrap();
    fleet.wait_heartbeat_streaming("lrok-s1").await.unwrap();

    // Writes, vacuums, drops and truncates while the copy is made.
    let mut load = p.pgbench_load(120);
    let churn = {
        let p = p.clone();
        std::thread::spawn(move || {
            for i in 0..40 {
                let sqls = [
                    format!(
                        "create table lr_tmp_{i} (id int primary key); insert into lr_tmp_{i} select generate_series(1, 200)"
                    ),
                    "truncate lr_trunc; insert into lr_trunc select generate_series(1, 500)"
                        .to_string(),
                    "update lr_dup set v = v || '.' where id % 13 = 1".to_string(),
                    format!("drop table if exists lr_tmp_{}", i.max(1) - 1),
                    "vacuum pgbench_accounts, lr_dup".to_string(),
                ];
                for s in &sqls {
                    p.psql("postgres", s).unwrap();
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let run = fleet.ctl(&["testdb", "lrok", "--output", "json"]).unwrap();
    churn.join().unwrap();
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let v = &run.json()["sets"][0]["verdict"];
    assert_eq!(v["kind"], "clean", "{v:#}");
    let coverage: Vec<&str> = v["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let lost = coverage
        .iter()
        .find(|c| c.starts_with("lost rows: "))
        .unwrap_or_else(|| panic!("{coverage:?}"));
    let checked: u64 = lost["lost rows: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // pgbench's three keys, lr_dup's two, lr_big's and its TOAST index,
    // the partitions', the view's, lr_trunc's, and the catalogs'.
    assert!(checked > 20, "{lost}");
    assert!(
        coverage.iter().any(|c| c.contains("unlogged relations")),
        "{coverage:?}"
    );
    let warnings = v["warnings"].as_array().unwrap();
    let not_covered: Vec<&str> = warnings
        .iter()
        .map(|w| w.as_str().unwrap())
        .filter(|w| w.contains("not checked for lost rows"))
        .collect();
    // Hash and GiST are read; SP-GiST and GIN are named.
    for (kind, index) in [("spgist", "lr_pts_spgist"), ("gin", "lr_arr_gin")] {
        assert!(
            not_covered
                .iter()
                .any(|w| w.contains(kind) && w.contains(index)),
            "{kind}: {warnings:?}"
        );
    }
    for index in ["lr_dup_hash", "lr_pts_gist"] {
        assert!(
            !not_covered.iter().any(|w| w.contains(index)),
            "{warnings:?}"
        );
    }
}
