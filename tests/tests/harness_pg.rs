//! The PostgreSQL harness itself: a primary and a streaming standby replicate
//! a row, the standby is read-only, survives a restart and streams again, and
//! dropping the pair leaves no server and no directory behind.

use std::path::Path;
use std::time::{Duration, Instant};

use tandem_tests::pg::{PgPair, PgServer};
use tandem_tests::wait::wait_for;

const TIMEOUT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(20);

/// Wait until `select v from t where id = <id>` on `server` returns `want`.
async fn wait_row(server: &PgServer, id: i32, want: &str) {
    let sql = format!("select v from t where id = {id}");
    wait_for(
        &format!("row {id} = {want:?} on {}", server.name),
        TIMEOUT,
        EVERY,
        || async {
            let got = server.psql("postgres", &sql)?;
            anyhow::ensure!(got == want, "row {id} is {got:?}");
            Ok(Some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Processes whose command line mentions `dir` (the postmasters have `-D <dir>/...`).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_standby_replicate_and_restart() {
    let started = Instant::now();
    let pair = PgPair::create("hpg", 1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("PgPair::create(1 standby) took {:.2?}", started.elapsed());
    let primary = &pair.primary;
    let standby = &pair.standbys[0];
    assert_ne!(primary.port, standby.port);
    assert_ne!(primary.socket_dir, standby.socket_dir);

    primary
        .psql(
            "postgres",
            "create table t (id int primary key, v text); insert into t values (1, 'one')",
        )
        .unwrap();
    wait_row(standby, 1, "one").await;

    assert!(standby.is_in_recovery().unwrap(), "standby is in recovery");
    assert!(
        !primary.is_in_recovery().unwrap(),
        "primary is not in recovery"
    );
    let refused = standby
        .psql("postgres", "insert into t values (9, 'nine')")
        .expect_err("a standby refuses writes");
    assert!(
        format!("{refused:#}").contains("read-only transaction"),
        "{refused:#}"
    );

    standby.stop().unwrap();
    assert!(!standby.is_running());
    standby.stop().expect("stopping a stopped server is fine");
    primary
        .psql("postgres", "insert into t values (2, 'two')")
        .unwrap();
    standby.start().unwrap();
    pair.wait_streaming(standby).await.unwrap();
    wait_row(standby, 2, "two").await;
    assert!(standby.is_in_recovery().unwrap());

    let dir = pair.dir.clone();
    let started = Instant::now();
    drop(pair);
    eprintln!("dropping the pair took {:.2?}", started.elapsed());
    assert_eq!(processes_under(&dir), Vec::<String>::new());
    if std::env::var("TANDEM_KEEP_TEST_DIRS").as_deref() != Ok("1") {
        assert!(!dir.exists(), "{} was removed", dir.display());
    }
}
