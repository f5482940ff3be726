//! A primary that archives its WAL, and backups of its set: what the
//! restore and WAL retention tests share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::corrupt;
use crate::fleet::{Fleet, FleetSpec};
use crate::procs::bin_path;
use crate::wait::wait_for;

/// A fleet of `set` with one standby, backups on, and `restore` as extra
/// `[restore]` lines.
pub fn spec(set: &str, restore: &str) -> FleetSpec {
    let mut spec = FleetSpec::new(&[(set, 1)]);
    spec.backups = Some(format!(
        "\n[restore]\nhealth_interval = \"300ms\"\n{restore}"
    ));
    spec
}

/// Archive the primary's WAL into the set's archive with archive-push.
pub fn enable_archiving(fleet: &Fleet, set: &str) {
    let agent = bin_path("tandem-agent").unwrap();
    let cmd = format!(
        "{} archive-push --dir {} %p %f",
        agent.display(),
        fleet.wal_archive(set).display()
    );
    set_archive_command(fleet, set, &cmd);
}

pub fn set_archive_command(fleet: &Fleet, set: &str, cmd: &str) {
    let p = &fleet.set(set).primary;
    p.psql("postgres", "ALTER SYSTEM SET archive_mode = on")
        .unwrap();
    p.psql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_command = '{cmd}'"),
    )
    .unwrap();
    p.stop().unwrap();
    p.start().unwrap();
}

/// Switch to a new WAL segment and wait until the finished one is archived:
/// archive_command answered 0 for it (so it is in every place it pushes to).
pub async fn switch_and_archive(fleet: &Fleet, set: &str) {
    let p = &fleet.set(set).primary;
    let seg = p
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .unwrap();
    wait_for(
        &format!("{seg} archived"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let done = p.psql(
                "postgres",
                &format!(
                    "SELECT coalesce(last_archived_wal >= '{seg}', false) FROM pg_stat_archiver"
                ),
            );
            async move { Ok((done? == "t").then_some(())) }
        },
    )
    .await
    .unwrap();
    assert!(
        fleet.wal_archive(set).join(&seg).is_file(),
        "{seg} not in the WAL archive"
    );
}

/// Take a backup of the set's standby; its file.
pub async fn take_backup(fleet: &Fleet, set: &str) -> PathBuf {
    let verdict = take_backup_verdict(fleet, set).await;
    PathBuf::from(verdict["backup_path"].as_str().unwrap())
}

/// Take a backup of the set's standby; the run's verdict (`backup_path`,
/// `member`, `notes`, as `tandemctl backup --output json` prints it).
pub async fn take_backup_verdict(fleet: &Fleet, set: &str) -> serde_json::Value {
    let pair = fleet.set(set);
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();
    let run = fleet.ctl(&["backup", set, "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    run.json()["sets"][0]["verdict"].clone()
}

/// `tandemctl restore SET --member <set>-p --yes --output json ARGS` as
/// admin: the exit code, the JSON (null on exit 2) and the whole run.
pub fn restore_primary(fleet: &Fleet, set: &str, args: &[&str]) -> (i32, Value, String) {
    let member = format!("{set}-p");
    let mut all = vec![
        "restore", set, "--member", &member, "--yes", "--output", "json",
    ];
    all.extend_from_slice(args);
    let run = fleet.ctl_as("admin", &all).unwrap();
    let json = if run.code == 2 {
        Value::Null
    } else {
        run.json()
    };
    (run.code, json, format!("{run:?}"))
}

/// The entries beside `data_dir` named `<its name><infix>...`.
pub fn siblings(data_dir: &Path, infix: &str) -> Vec<PathBuf> {
    let name = data_dir.file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::read_dir(data_dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{name}{infix}"))
        })
        .collect()
}
