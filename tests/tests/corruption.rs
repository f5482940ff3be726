//! The corruption makers (`tandem_tests::corrupt`) against the real check
//! tools, run the way Tandem runs them (SPEC T2), and the agent's findings
//! parsers (`agent/src/engine/findings.rs`) on what the tools really print.
//!
//! Replicated corruption: the standby replays a broken expression index; its
//! stopped data directory is copied, a private instance in normal mode is
//! started on the copy (it replays the log and leaves recovery, which
//! `--parent-check` needs), and `pg_amcheck --all --heapallindexed
//! --parent-check --install-missing` there reports the index (exit 2).
//! Standby-local damage: a page of the stopped standby is damaged and
//! `pg_checksums --check` reports it (exit 1); started again, the standby
//! fails a `pg_dumpall` on that page.
//!
//! The parsers are compiled in here from their source file (`#[path]`), so
//! this test needs no dependency on the agent crate. The tools' raw outputs
//! are printed (`--nocapture`) to refresh `agent/src/engine/fixtures/`.

#[path = "../../agent/src/engine/findings.rs"]
#[allow(dead_code)]
mod findings;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{Context, ensure};
use tandem_tests::corrupt;
use tandem_tests::pg::{OsUser, PgPair, PgServer};
use tandem_tests::wait::free_port;

/// A private instance on a copy of a data directory: socket only, archiving
/// off, normal mode. Dropping it stops it at once if it still runs.
struct Private<'a> {
    /// The server whose binaries and OS user run it.
    like: &'a PgServer,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
}

impl<'a> Private<'a> {
    /// `cp -a` the stopped `standby`'s data directory to `<dir>/copy`, drop
    /// its `standby.signal` and start a private instance on it (`pg_ctl -w`
    /// returns once the log is replayed and connections are accepted).
    fn start_on_copy(standby: &'a PgServer, dir: &Path) -> anyhow::Result<Private<'a>> {
        ensure!(!standby.is_running(), "{} must be stopped", standby.name);
        let p = Private {
            like: standby,
            data_dir: dir.join("copy"),
            socket_dir: dir.join("copy.sock"),
            log_file: dir.join("copy.log"),
            port: free_port(),
        };
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&standby.data_dir)
            .arg(&p.data_dir)
            .output()
            .context("run cp")?;
        ensure!(cp.status.success(), "cp -a: {}", text(&cp.stderr));
        fs::remove_file(p.data_dir.join("standby.signal")).context("remove standby.signal")?;
        fs::create_dir(&p.socket_dir)?;
        fs::set_permissions(&p.socket_dir, fs::Permissions::from_mode(0o755))?;
        fs::write(&p.log_file, "")?;
        if let Some(u) = OsUser::for_server() {
            for path in [&p.data_dir, &p.socket_dir, &p.log_file] {
                std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))?;
            }
        }
        let options = format!(
            "-c port={} -c unix_socket_directories='{}' -c listen_addresses='' \
             -c archive_mode=off -c cluster_name=tandem-private",
            p.port,
            p.socket_dir.display()
        );
        let start = p
            .pg_ctl("start")
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(&p.log_file)
            .output()?;
        ensure!(
            start.status.success(),
            "start the private instance: {}{}\nlog:\n{}",
            text(&start.stdout),
            text(&start.stderr),
            fs::read_to_string(&p.log_file).unwrap_or_default()
        );
        Ok(p)
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.like.command("pg_ctl");
        cmd.arg(action).arg("-D").arg(&self.data_dir);
        cmd
    }

    /// `pg_amcheck <args> -h <socket> -p <port> -U postgres`.
    fn amcheck(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self
            .like
            .command("pg_amcheck")
            .args(args)
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .output()?)
    }

    fn stop(&self) -> anyhow::Result<()> {
        let out = self.pg_ctl("stop").args(["-m", "fast", "-w"]).output()?;
        ensure!(out.status.success(), "stop: {}", text(&out.stderr));
        Ok(())
    }
}

impl Drop for Private<'_> {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self.pg_ctl("stop").args(["-m", "immediate", "-w"]).output();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// stdout followed by stderr, as `testdb.out` holds them; printed for the
/// fixtures.
fn combined(what: &str, out: &Output) -> String {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!(
        "----- {what}: {} -----\n[stdout]\n{}[stderr]\n{}----- end {what} -----",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_find_replicated_and_standby_local_corruption() {
    let started = Instant::now();
    let pair = PgPair::create("corrupt", 1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (primary, standby) = (&pair.primary, &pair.standbys[0]);

    // Replicated: the standby replays the broken index; flush and stop it.
    let index = corrupt::replicated_index_corruption(primary, "postgres").unwrap();
    assert_eq!(index, "tandem_corrupt_f_idx");
    corrupt::flush_and_stop_standby(primary, standby)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!standby.is_running());

    // T2: copy, private instance in normal mode, checks there.
    let private = Private::start_on_copy(standby, &pair.dir).unwrap_or_else(|e| panic!("{e:#}"));
    let out = private
        .amcheck(&[
            "--all",
            "--heapallindexed",
            "--parent-check",
            "--install-missing",
        ])
        .unwrap();
    let amcheck = combined("pg_amcheck --all", &out);
    // A database without corruption (amcheck is installed there by now).
    let clean_out = private
        .amcheck(&[
            "-d",
            "template1",
            "--heapallindexed",
            "--parent-check",
            "--install-missing",
        ])
        .unwrap();
    let clean = combined("pg_amcheck -d template1", &clean_out);
    private.stop().unwrap();
    drop(private);

    assert_eq!(
        out.status.code(),
        Some(2),
        "pg_amcheck on corruption:\n{amcheck}"
    );
    assert!(amcheck.contains("lacks matching index tuple"), "{amcheck}");
    let found = findings::parse_amcheck(&amcheck);
    assert!(
        found.iter().any(|f| f.kind == "index"
            && f.database == "postgres"
            && f.relation.ends_with("tandem_corrupt_f_idx")
            && f.message.contains("lacks matching index tuple")),
        "{found:#?}\n{amcheck}"
    );
    assert!(found.iter().all(|f| f.kind != "check_failed"), "{found:#?}");
    assert_eq!(
        clean_out.status.code(),
        Some(0),
        "clean pg_amcheck:\n{clean}"
    );
    assert!(clean_out.stdout.is_empty(), "{clean}");
    assert_eq!(findings::parse_amcheck(&clean), vec![]);

    // Standby-local: damage a page of the stopped standby, check its files.
    let relation =
        corrupt::standby_local_page_damage(primary, standby, "postgres", "tandem_corrupt")
            .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(relation.starts_with("base/"), "{relation}");
    let db_oid = primary
        .psql(
            "postgres",
            "select oid from pg_database where datname = 'postgres'",
        )
        .unwrap();
    let out = standby
        .command("pg_checksums")
        .args(["--check", "-D"])
        .arg(&standby.data_dir)
        .output()
        .unwrap();
    let checksums = combined("pg_checksums --check", &out);
    assert_eq!(out.status.code(), Some(1), "pg_checksums:\n{checksums}");
    let found = findings::parse_checksums(&checksums, &standby.data_dir);
    assert_eq!(found.len(), 1, "{found:#?}\n{checksums}");
    assert_eq!(found[0].kind, "checksum");
    assert_eq!(found[0].relation, relation);
    assert_eq!(found[0].database, db_oid);
    assert!(
        found[0]
            .message
            .starts_with("checksum verification failed in file"),
        "{found:#?}"
    );

    // The standby keeps the damage once it runs again: a full read fails.
    standby.start().unwrap_or_else(|e| panic!("{e:#}"));
    let out = standby
        .command("pg_dumpall")
        .arg("-h")
        .arg(&standby.socket_dir)
        .args([
            "-p",
            &standby.port.to_string(),
            "-U",
            "postgres",
            "-f",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let dump = combined("pg_dumpall", &out);
    assert_eq!(out.status.code(), Some(1), "pg_dumpall:\n{dump}");
    let found = findings::parse_dump_errors(&text(&out.stderr));
    assert_eq!(found.len(), 1, "{found:#?}\n{dump}");
    assert_eq!(found[0].kind, "logical_read");
    assert_eq!(found[0].database, "postgres");
    assert_eq!(found[0].relation, "public.tandem_corrupt");
    assert!(
        found[0]
            .message
            .contains(&format!("invalid page in block 0 of relation {relation}")),
        "{found:#?}"
    );
    eprintln!("corruption test took {:.2?}", started.elapsed());
}
