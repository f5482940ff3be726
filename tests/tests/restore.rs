//! Restore end to end (SPEC R1-R12): a real primary archiving its WAL with
//! `tandem-agent archive-push`, a backup taken with `tandemctl backup`, then
//! `tandemctl restore` on the primary, which runs as a maintenance window:
//! the standby fenced and stopped first, re-seeded from the restored
//! primary after, and a testdb at the end.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::archiving::{
    enable_archiving, restore_primary, set_archive_command, siblings, spec, switch_and_archive,
    take_backup,
};
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::procs::bin_path;
use tandem_tests::s3::S3Server;
use tandem_tests::wait::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_primary_is_restored_to_a_point_in_time() {
    let fleet = Fleet::start(spec("pitr", "")).await.unwrap();
    enable_archiving(&fleet, "pitr");
    let pair = fleet.set("pitr");
    let p = &pair.primary;
    p.pgbench_init(1).unwrap();
    // A sequence behind its column: rows given explicit ids.
    p.psql(
        "postgres",
        "CREATE TABLE orders (id serial PRIMARY KEY, note text); \
         INSERT INTO orders (id, note) SELECT g, 'old' FROM generate_series(1, 50) g; \
         CREATE TABLE events (note text, at timestamptz DEFAULT clock_timestamp())",
    )
    .unwrap();
    let file = take_backup(&fleet, "pitr").await;

    // Writes after the backup, with the time between them recorded.
    p.psql("postgres", "INSERT INTO events (note) VALUES ('kept')")
        .unwrap();
    let target = p
        .psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .unwrap();
    p.psql("postgres", "INSERT INTO events (note) VALUES ('lost')")
        .unwrap();
    p.psql(
        "postgres",
        "UPDATE pgbench_accounts SET abalance = 7 WHERE aid = 1",
    )
    .unwrap();
    switch_and_archive(&fleet, "pitr").await;

    // The primary crashes and its data directory is damaged.
    p.stop_immediate().unwrap();
    std::fs::remove_file(p.data_dir.join("global/pg_control")).unwrap();

    let (code, json, raw) = restore_primary(
        &fleet,
        "pitr",
        &["--from", file.to_str().unwrap(), "--target-time", &target],
    );
    assert_eq!(code, 0, "{raw}\n{}", fleet.logs());
    assert_eq!(json["state"], "restored", "{json:#}");
    let notes: Vec<String> = json["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let all = notes.join("\n");
    assert!(all.contains("orders_id_seq"), "{all}");
    assert!(all.contains("moved to"), "{all}");

    // Rows up to the target are there, later ones are not.
    let events = p
        .psql(
            "postgres",
            "SELECT string_agg(note, ',' ORDER BY at) FROM events",
        )
        .unwrap();
    assert_eq!(events, "kept");
    assert_eq!(
        p.psql(
            "postgres",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1"
        )
        .unwrap(),
        "0"
    );
    assert_eq!(
        p.psql("postgres", "SELECT count(*) FROM pgbench_accounts")
            .unwrap(),
        "100000"
    );
    // The sequence was moved past its column's maximum.
    assert_eq!(
        p.psql("postgres", "SELECT nextval('orders_id_seq')")
            .unwrap(),
        "51"
    );
    // The damaged data directory is kept aside, never deleted.
    let saved = siblings(&p.data_dir, ".before-restore-");
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].join("PG_VERSION").exists());
    assert!(!saved[0].join("global/pg_control").exists());
    assert!(all.contains(saved[0].to_str().unwrap()), "{all}");
    assert!(!p.data_dir.join("recovery.signal").exists());
    // The restore is in the set's history and the audit log.
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "Restore" && e["outcome"] == "ok"),
        "{audit:#}"
    );
    wait_for(
        "the restore in the set's history",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let h = fleet.ctl(&["history", "pitr", "--output", "json"])?.json();
            Ok(h["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| {
                    e["kind"] == "restore" && e["message"].as_str().unwrap().contains("restored")
                })
                .then_some(()))
        },
    )
    .await
    .unwrap();
    // R12: the window closed with a clean testdb; the standby was
    // re-seeded from the restored primary (its old directory kept aside)
    // and streams the restored data.
    assert_eq!(json["window_state"], "closed", "{json:#}");
    assert_eq!(json["verdict"]["kind"], "clean", "{json:#}");
    let standby = &pair.standbys[0];
    pair.wait_streaming(standby).await.unwrap();
    assert!(standby.is_in_recovery().unwrap());
    corrupt::wait_replayed(p, standby).await.unwrap();
    assert_eq!(
        standby
            .psql(
                "postgres",
                "SELECT string_agg(note, ',' ORDER BY at) FROM events"
            )
            .unwrap(),
        "kept"
    );
    let window = json["window_id"].as_str().unwrap();
    let kept = siblings(&standby.data_dir, &format!(".tandem-reseed-{window}"));
    assert_eq!(kept.len(), 1, "the standby's old directory kept aside");
    // The steps ran in R12's order: standby stopped before the primary was
    // touched, re-seeded after it was restored.
    let steps: Vec<String> = json["window"]["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["action"].as_str().unwrap(),
                s["member"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "restore_prepare pitr-p",
            "fence_stop pitr-s1",
            "restore pitr-p",
            "reseed pitr-s1",
            "unfence_start pitr-s1",
            "wait_streaming pitr-s1",
            "testdb ",
        ],
        "{json:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upgrade_hook_puts_the_original_back_and_names_r6() {
    let hook = tempfile::Builder::new()
        .prefix("tandem-hook-")
        .suffix(".sh")
        .tempfile()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'schema upgrade failed' >&2\nexit 3\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let fleet = Fleet::start(spec(
        "hook",
        &format!("upgrade_hook = \"{}\"", hook.display()),
    ))
    .await
    .unwrap();
    enable_archiving(&fleet, "hook");
    let p = &fleet.set("hook").primary;
    p.psql("postgres", "CREATE TABLE t (note text)").unwrap();
    let file = take_backup(&fleet, "hook").await;
    p.psql("postgres", "INSERT INTO t VALUES ('after the backup')")
        .unwrap();
    switch_and_archive(&fleet, "hook").await;

    let (code, json, raw) = restore_primary(
        &fleet,
        "hook",
        &["--from", file.to_str().unwrap(), "--latest"],
    );
    assert_eq!(code, 1, "{raw}\n{}", fleet.logs());
    assert_eq!(json["state"], "failed", "{json:#}");
    assert_eq!(json["failed_step"], "R6 upgrade_hook", "{json:#}");
    let reason = json["reason"].as_str().unwrap();
    assert!(reason.contains("R6"), "{reason}");
    assert!(reason.contains("schema upgrade failed"), "{reason}");
    assert!(reason.contains("put back"), "{reason}");

    // The original data directory is in place and serving.
    assert!(p.is_running());
    assert_eq!(
        p.psql("postgres", "SELECT note FROM t").unwrap(),
        "after the backup"
    );
    assert!(!p.is_in_recovery().unwrap());
    assert!(siblings(&p.data_dir, ".before-restore-").is_empty());
    assert_eq!(siblings(&p.data_dir, ".failed-restore-").len(), 1);
    // The window put the set back as it was: the standby, stopped before
    // the restore, streams from the original primary again.
    assert_eq!(json["window_state"], "aborted", "{json:#}");
    assert!(
        json["failure"]
            .as_str()
            .unwrap()
            .contains("restore on hook-p"),
        "{json:#}"
    );
    let pair = fleet.set("hook");
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    assert!(pair.standbys[0].is_in_recovery().unwrap());
    let _ = std::fs::remove_file(&hook);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_free_space_is_refused_before_anything_is_written() {
    // A reserve larger than any disk: the check refuses with the numbers.
    let fleet = Fleet::start(spec("space", "free_space_reserve_mib = 1000000000"))
        .await
        .unwrap();
    let p = &fleet.set("space").primary;
    p.psql("postgres", "CREATE TABLE t (note text)").unwrap();
    let file = take_backup(&fleet, "space").await;
    let before: Vec<PathBuf> = std::fs::read_dir(p.data_dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();

    let run = fleet
        .ctl_as(
            "admin",
            &[
                "restore",
                "space",
                "--member",
                "space-p",
                "--from",
                file.to_str().unwrap(),
                "--yes",
            ],
        )
        .unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("safe mode"), "{run:?}");
    assert!(run.stderr.contains("MiB free"), "{run:?}");
    assert!(run.stderr.contains("Nothing was written"), "{run:?}");
    let after: Vec<PathBuf> = std::fs::read_dir(p.data_dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "nothing new beside the data directory");
    assert!(p.is_running());
    // Nothing was stopped either: the standby still streams, and no window
    // holds the set.
    let pair = fleet.set("space");
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    let show = fleet
        .ctl(&["maintenance", "show", "space", "--output", "json"])
        .unwrap();
    assert_eq!(show.code, 0, "{show:?}");
    assert!(show.json().is_null(), "{show:?}");

    // And without --yes nothing is even asked; an operator may not restore.
    let run = fleet
        .ctl_as("admin", &["restore", "space", "--from", "daily"])
        .unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--yes"), "{run:?}");
    let run = fleet
        .ctl(&["restore", "space", "--from", "daily", "--yes"])
        .unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("admin"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_and_wal_in_an_s3_store_restore_a_primary_whose_archives_are_gone() {
    // A real S3-compatible server (moto) on 127.0.0.1.
    let s3 = S3Server::start("tandem-backups").await.unwrap();
    let mut spec = FleetSpec::new(&[("far", 1)]);
    spec.backups = Some(format!(
        "\n[restore]\nhealth_interval = \"300ms\"\n{}",
        s3.remote_toml("fleet-a")
    ));
    let fleet = Fleet::start(spec).await.unwrap();
    // The primary archives each WAL file locally and to the store.
    let agent = bin_path("tandem-agent").unwrap();
    let config = fleet.agent_config("far-p");
    set_archive_command(
        &fleet,
        "far",
        &format!(
            "{} --config {} archive-push --remote %p %f",
            agent.display(),
            config.display()
        ),
    );
    let p = &fleet.set("far").primary;
    p.psql("postgres", "CREATE TABLE t (note text)").unwrap();
    let file = take_backup(&fleet, "far").await;
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    let key = format!("far/backups/{name}");

    // `tandemctl backups` lists it in the store, described and verified.
    let run = fleet.ctl(&["backups", "far", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    let listed = run.json();
    let remote: Vec<&Value> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["member"] == "(remote)")
        .collect();
    assert_eq!(remote.len(), 1, "{listed:#}");
    assert_eq!(remote[0]["file"], format!("remote:{key}"), "{listed:#}");
    assert_eq!(remote[0]["verified"], true, "{listed:#}");
    assert!(
        remote[0]["unpacked_bytes"].as_u64().unwrap() > 0,
        "{listed:#}"
    );
    let start_lsn = remote[0]["start_lsn"].as_str().unwrap().to_owned();

    p.psql("postgres", "INSERT INTO t VALUES ('after the backup')")
        .unwrap();
    switch_and_archive(&fleet, "far").await;
    // The host lost its backups and its WAL archive: only the store has them.
    std::fs::remove_file(&file).unwrap();
    let wal = fleet.wal_archive("far");
    let mut lost: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_owned())
        .collect();
    lost.sort();
    for n in &lost {
        std::fs::remove_file(wal.join(n)).unwrap();
    }
    let segment = lost
        .iter()
        .rfind(|n| n.len() == 24)
        .expect("a segment was archived")
        .clone();

    // archive-get (a restore_command) finds a segment in the store only,
    // and answers 1 for one that no place has.
    let got = tempfile::tempdir().unwrap();
    let get = |name: &str| {
        std::process::Command::new(&agent)
            .arg("--config")
            .arg(&config)
            .args(["archive-get", "--remote", name])
            .arg(got.path().join("seg"))
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(get(&segment), Some(0));
    assert_eq!(
        std::fs::metadata(got.path().join("seg")).unwrap().len(),
        16 << 20
    );
    assert_eq!(get("0000000100000000000000FF"), Some(1));
    // The store's WAL covers a roll-forward from the backup's start.
    let check = std::process::Command::new(&agent)
        .arg("--config")
        .arg(&config)
        .args(["archive-check", "--remote", "--from", &start_lsn])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{said}");
    assert!(said.contains("covered"), "{said}");

    let (code, json, raw) = restore_primary(
        &fleet,
        "far",
        &["--from", &format!("remote:{key}"), "--latest"],
    );
    assert_eq!(code, 0, "{raw}\n{}", fleet.logs());
    assert_eq!(json["state"], "restored", "{json:#}");
    assert_eq!(json["window_state"], "closed", "{json:#}");
    let notes = json["notes"].to_string();
    assert!(notes.contains("fetched from the remote store"), "{json:#}");
    // Fetched into the primary's own backup directory, then restored and
    // rolled forward with the WAL fetched back from the store.
    assert!(fleet.agent_backups("far-p").join(&name).is_file());
    assert!(wal.join(&segment).is_file(), "{segment} not fetched back");
    assert_eq!(
        p.psql("postgres", "SELECT note FROM t").unwrap(),
        "after the backup"
    );
    assert!(!p.is_in_recovery().unwrap());

    // The store gone: the listing still has the members' files, says what
    // is missing, and exits 1.
    drop(s3);
    let run = fleet.ctl(&["backups", "far", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}");
    let listed = run.json();
    assert!(
        listed["problems"][0]
            .as_str()
            .unwrap()
            .contains("the remote store could not be listed"),
        "{listed:#}"
    );
    assert!(
        listed["backups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["member"] == "far-p" && b["file"].as_str().unwrap().ends_with(&name)),
        "{listed:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_restore_would_use_is_said_first_and_an_unreachable_time_is_refused_before_anything_stops()
 {
    let fleet = Fleet::start(spec("early", "")).await.unwrap();
    enable_archiving(&fleet, "early");
    // The standby streams again after the primary's restart for archiving.
    let pair = fleet.set("early");
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    let file = take_backup(&fleet, "early").await;
    let file_str = file.to_str().unwrap();

    // The dry-run (a viewer may ask): the newest verified backup is the one
    // just taken on the standby's host, so a restore of the primary would
    // fetch it from there.
    let dry = fleet
        .ctl_as(
            "viewer",
            &["restore", "early", "--dry-run", "--output", "json"],
        )
        .unwrap();
    assert_eq!(dry.code, 0, "{dry:?}");
    let plan = dry.json();
    assert_eq!(plan["member"], "early-p", "{plan:#}");
    assert_eq!(plan["reachable"], true, "{plan:#}");
    assert_eq!(plan["from"], format!("early-s1:{file_str}"), "{plan:#}");
    assert!(
        plan["location"].as_str().unwrap().contains("early-s1"),
        "{plan:#}"
    );
    assert_eq!(plan["backup"]["verified"], true, "{plan:#}");
    assert_eq!(
        plan["transfer_bytes"],
        std::fs::metadata(&file).unwrap().len(),
        "{plan:#}"
    );
    assert_eq!(plan["space"]["ok"], true, "{plan:#}");
    assert!(
        plan["space"]["needed_bytes"].as_u64().unwrap()
            > plan["backup"]["unpacked_bytes"].as_u64().unwrap(),
        "{plan:#}"
    );
    assert_eq!(
        plan["wal"]["location"],
        fleet.wal_archive("early").display().to_string(),
        "{plan:#}"
    );
    assert!(plan["problems"].as_array().unwrap().is_empty(), "{plan:#}");
    let human = fleet
        .ctl_as("viewer", &["restore", "early", "--dry-run"])
        .unwrap();
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("would go ahead"), "{human:?}");
    assert!(human.stdout.contains(file_str), "{human:?}");
    // A kind the set has none of: the dry-run says so, exit 1.
    let dry = fleet
        .ctl_as(
            "viewer",
            &[
                "restore",
                "early",
                "--dry-run",
                "--from",
                "weekly",
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(dry.code, 1, "{dry:?}");
    assert!(
        dry.json()["problems"][0]
            .as_str()
            .unwrap()
            .contains("no weekly backup"),
        "{dry:?}"
    );
    // Can I get back to a time? One after the backup whose WAL is
    // archived: yes, with that backup; one after the newest archived WAL,
    // or before the backup: no.
    let t = pair
        .primary
        .psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .unwrap();
    switch_and_archive(&fleet, "early").await;
    let can = fleet
        .ctl(&["backups", "early", "--target-time", &t, "--output", "json"])
        .unwrap();
    assert_eq!(can.code, 0, "{can:?}");
    let reach = &can.json()["target_time"];
    assert_eq!(reach["backup"]["file"], file_str, "{reach:#}");
    assert_eq!(
        reach["wal"]["location"],
        fleet.wal_archive("early").display().to_string(),
        "{reach:#}"
    );
    assert!(
        reach["wal"]["from"].as_str().unwrap() <= reach["wal"]["through"].as_str().unwrap(),
        "{reach:#}"
    );
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let cannot = fleet
        .ctl(&["backups", "early", "--target-time", &later])
        .unwrap();
    assert_eq!(cannot.code, 1, "{cannot:?}");
    assert!(
        cannot.stdout.contains("after the newest archived WAL"),
        "{cannot:?}"
    );
    let cannot = fleet
        .ctl(&["backups", "early", "--target-time", "2020-01-01T00:00:00Z"])
        .unwrap();
    assert_eq!(cannot.code, 1, "{cannot:?}");
    assert!(cannot.stdout.contains("would be REFUSED"), "{cannot:?}");
    assert!(
        cannot.stdout.contains("before the oldest verified backup"),
        "{cannot:?}"
    );
    // The same time in a restore from the newest backup: refused by the
    // controller before any agent is ordered.
    let (code, _, raw) =
        restore_primary(&fleet, "early", &["--target-time", "2020-01-01T00:00:00Z"]);
    assert_eq!(code, 2, "{raw}");
    assert!(raw.contains("nothing was stopped"), "{raw}");
    assert!(raw.contains("before the oldest verified backup"), "{raw}");
    let (code, _, raw) = restore_primary(
        &fleet,
        "early",
        &[
            "--from",
            file.to_str().unwrap(),
            "--target-time",
            "2020-01-01T00:00:00Z",
        ],
    );
    assert_eq!(code, 2, "{raw}\n{}", fleet.logs());
    assert!(raw.contains("before the backup"), "{raw}");
    assert!(raw.contains("choose an older backup"), "{raw}");
    // A time that cannot be read is refused by the controller, naming the
    // field, before it asks the agent anything.
    let (code, _, raw) = restore_primary(
        &fleet,
        "early",
        &[
            "--from",
            file.to_str().unwrap(),
            "--target-time",
            "yesterday",
        ],
    );
    assert_eq!(code, 2, "{raw}");
    assert!(raw.contains("field `target_time`: "), "{raw}");
    assert!(raw.contains("yesterday"), "{raw}");
    assert!(raw.contains("is not an RFC 3339 time"), "{raw}");
    // Nothing was stopped or fenced: both servers serve as before.
    assert!(pair.primary.is_running());
    assert!(!pair.primary.is_in_recovery().unwrap());
    pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    assert!(!fleet.agent_home("early-s1").join("fence").exists());
    assert!(siblings(&pair.primary.data_dir, ".before-restore-").is_empty());
}

/// The restore's steps that change the member before the point of no
/// return (R9), each where an agent may be killed. The second half of R7 and
/// R8 are named like the first: the pause comes after the first.
const RESTORE_STEPS: [&str; 5] = [
    "R3 stop",
    "R4 move_aside",
    "R5 swap",
    "R7 roll_forward",
    "R8 sequences",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_in_any_step_of_a_restore_puts_the_old_data_directory_back() {
    let mut fleet = Fleet::start(spec("rkill", "")).await.unwrap();
    enable_archiving(&fleet, "rkill");
    let p = fleet.set("rkill").primary.clone();
    p.psql("postgres", "CREATE TABLE t (note text)").unwrap();
    let file = take_backup(&fleet, "rkill").await;
    p.psql("postgres", "INSERT INTO t VALUES ('after the backup')")
        .unwrap();
    switch_and_archive(&fleet, "rkill").await;
    let agent = "rkill-p";

    for step in RESTORE_STEPS {
        // The primary's agent stops after `step` and is SIGKILLed there.
        fleet.start_agent_paused(agent, step).await.unwrap();
        {
            let pair = fleet.set("rkill");
            pair.wait_streaming(&pair.standbys[0]).await.unwrap();
        }
        fleet.wait_heartbeat_streaming("rkill-s1").await.unwrap();
        let args = [
            "restore",
            "rkill",
            "--member",
            agent,
            "--yes",
            "--replace",
            "--output",
            "json",
            "--from",
            file.to_str().unwrap(),
        ];
        let ctl = fleet.spawn_ctl("admin", &args).unwrap();
        fleet
            .kill_when_paused(agent, step, None)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));

        // The window fails the restore and resumes the set as it was.
        let out = ctl.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "after {step}: {stdout}\n{}",
            fleet.logs()
        );
        let json: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(json["state"], "failed", "after {step}: {json:#}");
        assert_eq!(json["window_state"], "aborted", "after {step}: {json:#}");
        // The restarted agent put the old data directory back and started it.
        assert!(p.is_running(), "after {step}");
        assert!(!p.is_in_recovery().unwrap(), "after {step}");
        assert_eq!(
            p.psql("postgres", "SELECT note FROM t").unwrap(),
            "after the backup",
            "after {step}"
        );
        assert!(
            siblings(&p.data_dir, ".before-restore-").is_empty(),
            "after {step}"
        );
        assert!(!p.data_dir.join("recovery.signal").exists(), "after {step}");
        let pair = fleet.set("rkill");
        pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    }
    // Each restore that swapped left its restored directory aside.
    assert_eq!(siblings(&p.data_dir, ".failed-restore-").len(), 3);
}

/// A restore's steps that may fail with the set put back as it was: the
/// prepare order's unpack (the set still serves) and every step before the
/// point of no return (R9).
/// Not "R3 stop": a stop that reports failure once no postmaster runs on the
/// directory is tolerated by design (a server already down, or too damaged for
/// `pg_ctl`), and the restore carries on with a note.
const FAILING_STEPS: [&str; 5] = [
    "R2 unpack",
    "R4 move_aside",
    "R5 swap",
    "R7 roll_forward",
    "R8 sequences",
];

/// A step that fails (after its work: `TANDEM_TEST_FAIL_AFTER_STEP`) at each
/// position of a restore runs the undos recorded up to there in the running
/// agent: the old data directory is back and serving, nothing is left in
/// recovery, the standby streams, and the window says which step failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_step_failing_at_any_position_puts_the_old_data_directory_back() {
    let mut fleet = Fleet::start(spec("rfail", "")).await.unwrap();
    enable_archiving(&fleet, "rfail");
    let p = fleet.set("rfail").primary.clone();
    p.psql("postgres", "CREATE TABLE t (note text)").unwrap();
    let file = take_backup(&fleet, "rfail").await;
    p.psql("postgres", "INSERT INTO t VALUES ('after the backup')")
        .unwrap();
    switch_and_archive(&fleet, "rfail").await;
    let agent = "rfail-p";

    for step in FAILING_STEPS {
        fleet.kill_agent(agent);
        fleet
            .start_agent_with(agent, &[("TANDEM_TEST_FAIL_AFTER_STEP", step)])
            .unwrap();
        fleet
            .wait_agents_state(&[agent.into()], "online")
            .await
            .unwrap();
        {
            let pair = fleet.set("rfail");
            pair.wait_streaming(&pair.standbys[0]).await.unwrap();
        }
        fleet.wait_heartbeat_streaming("rfail-s1").await.unwrap();
        let (code, json, raw) = restore_primary(
            &fleet,
            "rfail",
            &["--replace", "--from", file.to_str().unwrap()],
        );
        assert_eq!(code, 1, "{step}: {raw}\n{}", fleet.logs());
        assert_eq!(json["state"], "failed", "{step}: {json:#}");
        assert_eq!(json["failed_step"], step, "{step}: {json:#}");
        assert_eq!(json["window_state"], "aborted", "{step}: {json:#}");
        assert!(p.is_running(), "{step}");
        assert!(!p.is_in_recovery().unwrap(), "{step}");
        assert_eq!(
            p.psql("postgres", "SELECT note FROM t").unwrap(),
            "after the backup",
            "{step}"
        );
        assert!(
            siblings(&p.data_dir, ".before-restore-").is_empty(),
            "{step}"
        );
        assert!(!p.data_dir.join("recovery.signal").exists(), "{step}");
        let pair = fleet.set("rfail");
        pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    }
}
