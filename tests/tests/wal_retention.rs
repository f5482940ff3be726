//! WAL retention end to end: a primary archiving every WAL file into the
//! set's WAL archive and an S3 store (moto), backups rotated so that fewer
//! are kept than were made, then `tandem-agent wal-prune`: the dry run
//! lists exactly the WAL older than the oldest kept backup's start and
//! removes nothing, the removal removes that from both places, and a
//! roll-forward from the oldest kept backup still finds every segment. A
//! later backup then prunes by itself and says so in its verdict, and a
//! restore from the oldest backup still kept rolls forward to the end.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tandem_agent::backup::{BackupName, wal};
use tandem_proto::model::Lsn;
use tandem_tests::archiving::{
    restore_primary, set_archive_command, switch_and_archive, take_backup_verdict,
};
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::procs::bin_path;
use tandem_tests::s3::S3Server;

const SET: &str = "ret";
const SEG: u64 = 16 << 20;
/// Rows each write adds.
const ROWS: u64 = 20_000;

/// `tandem-agent --config <config> <args>`: exit code, stdout, stderr.
fn agent(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_path("tandem-agent").unwrap())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The names in the WAL archive, sorted.
fn archived(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Those of `names` that belong to a segment before the one holding `lsn`.
fn before(names: &[String], lsn: Lsn) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            let seg = n.split('.').next().unwrap();
            wal::segment_number(seg, SEG).is_some_and(|(_, s)| s < lsn.0 / SEG)
        })
        .cloned()
        .collect()
}

fn start_lsn(verdict: &Value) -> Lsn {
    let path = Path::new(verdict["backup_path"].as_str().unwrap());
    BackupName::parse(path.file_name().unwrap().to_str().unwrap())
        .unwrap()
        .start_lsn
}

/// Writes, a checkpoint (so the standby's next restart point, where a
/// backup starts, moves on), and the segment switched and archived.
async fn write_and_archive(fleet: &Fleet) {
    let p = &fleet.set(SET).primary;
    p.psql(
        "postgres",
        &format!("INSERT INTO t SELECT generate_series(1, {ROWS}); CHECKPOINT"),
    )
    .unwrap();
    switch_and_archive(fleet, SET).await;
}

fn names_in(plan: &Value) -> Vec<String> {
    let mut v: Vec<String> = plan["delete"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan: {plan:#}"))
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// A roll-forward from `lsn` is covered by the local archive and the store.
fn covered(config: &Path, lsn: Lsn) {
    let lsn = lsn.to_string();
    for remote in [false, true] {
        let mut args = vec!["archive-check", "--from", &lsn];
        if remote {
            args.insert(1, "--remote");
        }
        let (code, out, err) = agent(config, &args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains("covered"), "{args:?}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_older_than_the_oldest_kept_backup_is_listed_then_removed_from_the_archive_and_the_store()
 {
    let s3 = S3Server::start("tandem-wal").await.unwrap();
    let mut spec = FleetSpec::new(&[(SET, 1)]);
    // Every backup is a daily one and two are kept.
    spec.backups = Some(format!(
        "daily = 2\nweekly = 0\nmonthly = 0\nwal_keep_days = 7\n{}\n[restore]\nhealth_interval = \"300ms\"\n",
        s3.remote_toml("fleet")
    ));
    let mut fleet = Fleet::start(spec).await.unwrap();
    let primary_config = fleet.agent_config(&format!("{SET}-p"));
    set_archive_command(
        &fleet,
        SET,
        &format!(
            "{} --config {} archive-push --remote %p %f",
            bin_path("tandem-agent").unwrap().display(),
            primary_config.display()
        ),
    );
    let dir = fleet.wal_archive(SET);
    fleet
        .set(SET)
        .primary
        .psql("postgres", "CREATE TABLE t (n int)")
        .unwrap();

    // Three backups with WAL before, between and after them.
    let mut verdicts = vec![];
    for _ in 0..3 {
        write_and_archive(&fleet).await;
        verdicts.push(take_backup_verdict(&fleet, SET).await);
    }
    write_and_archive(&fleet).await;
    let starts: Vec<Lsn> = verdicts.iter().map(start_lsn).collect();
    assert!(
        starts.windows(2).all(|w| w[0].0 / SEG < w[1].0 / SEG),
        "each backup starts in a later segment: {starts:?}"
    );
    // Rotation kept the newest two; the oldest file is gone.
    let member = verdicts[0]["member"].as_str().unwrap().to_owned();
    let file = |v: &Value| v["backup_path"].as_str().unwrap().to_owned();
    assert!(!Path::new(&file(&verdicts[0])).exists());
    assert!(Path::new(&file(&verdicts[1])).is_file());
    // Each backup ran retention: within the 7-day window nothing went.
    let notes = verdicts[2]["notes"].to_string();
    assert!(notes.contains("WAL retention"), "{:#}", verdicts[2]);
    assert!(
        notes.contains("kept as written within the last 7 day(s)"),
        "{:#}",
        verdicts[2]
    );
    let all = archived(&dir);
    let doomed = before(&all, starts[1]);
    assert!(
        !doomed.is_empty(),
        "WAL before the oldest kept backup: {all:?}"
    );
    assert!(before(&all, starts[0]).len() < doomed.len());

    // Without the window, the dry run lists exactly the WAL older than the
    // oldest kept backup's start, in both places, and removes nothing.
    let config = fleet.agent_config(&member);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("wal_keep_days = 7", "wal_keep_days = 0"),
    )
    .unwrap();
    let (code, out, err) = agent(&config, &["wal-prune", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dry_run"], true, "{report:#}");
    let places = report["places"].as_array().unwrap();
    assert_eq!(places.len(), 2, "{report:#}");
    assert_eq!(places[0]["location"], dir.display().to_string());
    assert_eq!(places[1]["location"], format!("remote:{SET}/wal"));
    for p in places {
        assert_eq!(names_in(&p["plan"]), doomed, "{report:#}");
        assert_eq!(p["removed"], 0);
        assert_eq!(
            p["plan"]["boundary"]["start_lsn"],
            starts[1].to_string(),
            "{report:#}"
        );
    }
    assert_eq!(archived(&dir), all, "a dry run removed something");
    // Through the controller, the same plan for the member that took the
    // backups (its agent still runs with the window, so the files are kept
    // as recent there), and still nothing removed.
    let run = fleet
        .ctl(&["wal-prune", SET, "--dry-run", "--output", "json"])
        .unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    let plans = run.json();
    let mine: Vec<&Value> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["member"] == member.as_str())
        .collect();
    assert_eq!(mine.len(), 2, "{plans:#}");
    for p in mine {
        assert_eq!(p["files"], Value::Array(vec![]), "{plans:#}");
        assert_eq!(p["kept_in_window"], doomed.len(), "{plans:#}");
        assert_eq!(p["boundary_start_lsn"], starts[1].to_string(), "{plans:#}");
    }
    assert_eq!(archived(&dir), all, "a dry run removed something");
    let (code, out, _) = agent(&config, &["wal-prune"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would be removed"), "{out}");
    assert!(out.contains("dry run: nothing was removed"), "{out}");

    // The removal: those files go, from both places, and a roll-forward
    // from the oldest kept backup still finds every segment it needs.
    let (code, out, err) = agent(&config, &["wal-prune", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("old WAL removed from the archive"), "{err}");
    assert!(
        err.contains("old WAL removed from the remote store"),
        "{err}"
    );
    let left: Vec<String> = all
        .iter()
        .filter(|n| !doomed.contains(n))
        .cloned()
        .collect();
    assert_eq!(archived(&dir), left);
    covered(&config, starts[1]);
    // The rotated backup's roll-forward is what went.
    let (code, out, _) = agent(
        &config,
        &["archive-check", "--from", &starts[0].to_string()],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("archiving began after the backup"), "{out}");
    // Up to a segment: covered from the oldest kept backup's start.
    let last = left.iter().rfind(|n| n.len() == 24).unwrap();
    let (code, out, _) = agent(
        &config,
        &[
            "archive-check",
            "--from",
            &starts[1].to_string(),
            "--through",
            last,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("through {last}: covered")), "{out}");
    let (code, out, _) = agent(&config, &["wal-prune", "--json"]);
    assert_eq!(code, 0);
    let again: Value = serde_json::from_str(&out).unwrap();
    for p in again["places"].as_array().unwrap() {
        assert_eq!(names_in(&p["plan"]), Vec::<String>::new(), "{again:#}");
    }

    // `tandemctl backups` says what the archives hold: from the segment of
    // the oldest kept backup's start on, in the directory and the store.
    let run = fleet.ctl(&["backups", SET, "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    let listed = run.json();
    let archives = listed["wal_archives"].as_array().unwrap();
    let first = wal::segment_of(1, starts[1], SEG);
    let of = |member: &str| {
        archives
            .iter()
            .find(|a| a["member"] == member)
            .unwrap_or_else(|| panic!("no WAL archive of {member}: {listed:#}"))
    };
    for m in [member.as_str(), "(remote)"] {
        let a = of(m);
        assert_eq!(a["timelines"][0]["first"], first, "{listed:#}");
        assert_eq!(a["segment_bytes"], SEG, "{listed:#}");
        assert_eq!(
            a["timelines"][0]["gaps"],
            Value::Array(vec![]),
            "{listed:#}"
        );
    }

    // Without the window, the next backup prunes by itself: rotation drops
    // the second backup, and the WAL only it needed goes.
    fleet.kill_agent(&member);
    fleet.start_agent(&member).unwrap();
    fleet.wait_heartbeat_streaming(&member).await.unwrap();
    write_and_archive(&fleet).await;
    let v = take_backup_verdict(&fleet, SET).await;
    assert!(!Path::new(&file(&verdicts[1])).exists());
    let before_third = before(&archived(&dir), starts[2]);
    assert_eq!(before_third, Vec::<String>::new());
    let notes = v["notes"].to_string();
    let gone = before(&left, starts[2]).len();
    assert!(gone > 0);
    assert!(
        notes.contains(&format!("{}: {gone} old file(s)", dir.display())),
        "{v:#}"
    );
    assert!(notes.contains("removed"), "{v:#}");
    covered(&config, starts[2]);

    // A restore of the primary from the oldest kept backup rolls forward
    // through the pruned archive to its end: every row written is there.
    let (code, json, raw) =
        restore_primary(&fleet, SET, &["--from", &file(&verdicts[2]), "--latest"]);
    assert_eq!(code, 0, "{raw}\n{}", fleet.logs());
    assert_eq!(json["state"], "restored", "{json:#}");
    assert_eq!(
        fleet
            .set(SET)
            .primary
            .psql("postgres", "SELECT count(*) FROM t")
            .unwrap(),
        (5 * ROWS).to_string()
    );
}
