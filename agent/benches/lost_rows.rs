//! Benchmark of the lost-rows check (`tandem_agent::engine::lost_rows`)
//! against `pg_amcheck --all --heapallindexed --parent-check` on the same
//! copy, in the same run.
//!
//! ```text
//! cargo bench -p tandem-agent --bench lost_rows -- DATADIR [--rounds N] [--workers N]
//! ```
//!
//! DATADIR is a stopped PostgreSQL 15 data directory that may be changed
//! (a copy: `cargo bench -p tandem-agent --bench copy -- --make DIR --scale 50`
//! makes one). Each round starts a server on it on a private socket (as the
//! `postgres` OS user when run as root), reads the relation map from its
//! catalogs (not timed), times `pg_amcheck`, stops the server, and times the
//! lost-rows check on the stopped files: the same split as in testdb.
//! The page cache is warm for both (the data is read before the first
//! round).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tandem_agent::engine::lost_rows::{self, DatabaseRelations, RelationMap};

mod common;
use common::postgres_tool;

type Res<T> = Result<T, String>;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo bench -p tandem-agent --bench lost_rows -- DATADIR [--rounds N] [--workers N]\n\
         DATADIR is a stopped PostgreSQL 15 data directory this may change (a copy)."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut dir, mut rounds, mut workers) = (None, 3usize, 2usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => rounds = n,
                _ => return usage(),
            },
            "--workers" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => workers = n,
                _ => return usage(),
            },
            _ if dir.is_none() && !a.starts_with('-') => dir = Some(PathBuf::from(a)),
            _ => return usage(),
        }
    }
    let Some(dir) = dir else { return usage() };
    match run(&dir, rounds, workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn as_postgres(program: &str, args: &[&str]) -> Res<Output> {
    let (mut cmd, path) = postgres_tool(program);
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{program} {args:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

struct Server<'a> {
    dir: &'a str,
    sock: String,
}

impl<'a> Server<'a> {
    fn start(dir: &'a str, sock: &Path) -> Res<Server<'a>> {
        let sock = sock.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(Path::new(dir).join("standby.signal"));
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{sock}' -c port=5432 \
             -c archive_mode=off -c primary_conninfo='' -c max_wal_senders=0 -c autovacuum=off"
        );
        as_postgres(
            "pg_ctl",
            &["start", "-w", "-D", dir, "-l", "/dev/null", "-o", &opts],
        )?;
        Ok(Server { dir, sock })
    }

    fn psql(&self, db: &str, sql: &str) -> Res<String> {
        let o = as_postgres(
            "psql",
            &[
                "-XAtq", "-F", "|", "-h", &self.sock, "-p", "5432", "-U", "postgres", "-d", db,
                "-c", sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    /// The relation map, the way the agent's private instance makes it.
    fn map(&self) -> Res<RelationMap> {
        let sizes = self.psql("postgres", lost_rows::LAYOUT_SQL)?;
        let (bs, seg) = sizes.split_once('|').ok_or(sizes.clone())?;
        let mut map = RelationMap {
            block_size: bs.parse().map_err(|_| sizes.clone())?,
            segment_blocks: seg.parse().map_err(|_| sizes.clone())?,
            ..Default::default()
        };
        for line in self.psql("postgres", lost_rows::DATABASES_SQL)?.lines() {
            let (allow, name) = line.split_once('|').ok_or(line.to_owned())?;
            if allow != "t" {
                map.not_connectable.push(name.into());
                continue;
            }
            let json = self.psql(name, lost_rows::RELATIONS_SQL)?;
            map.databases.push(DatabaseRelations {
                database: name.into(),
                relations: serde_json::from_str(&json).map_err(|e| e.to_string())?,
            });
        }
        Ok(map)
    }

    fn stop(self) -> Res<()> {
        as_postgres("pg_ctl", &["stop", "-w", "-m", "fast", "-D", self.dir]).map(|_| ())
    }
}

fn run(dir: &Path, rounds: usize, workers: usize) -> Res<()> {
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let d = dir.to_string_lossy().into_owned();
    let sock = tempfile::Builder::new()
        .prefix("tandem-bench-sock")
        .tempdir()
        .map_err(|e| e.to_string())?;
    if nix::unistd::geteuid().is_root() {
        Command::new("chown")
            .arg("postgres")
            .arg(sock.path())
            .status()
            .map_err(|e| e.to_string())?;
    }
    let size = dir_size(&dir);
    println!(
        "copy {}: {:.1} MB; {rounds} rounds, {workers} workers for the lost-rows check",
        dir.display(),
        size as f64 / 1e6
    );
    let (mut amcheck, mut ours) = (vec![], vec![]);
    for round in 0..=rounds {
        let server = Server::start(&d, sock.path())?;
        let map = server.map()?;
        let t0 = Instant::now();
        let s = sock.path().to_string_lossy().into_owned();
        as_postgres(
            "pg_amcheck",
            &[
                "--all",
                "--heapallindexed",
                "--parent-check",
                "--install-missing",
                "-h",
                &s,
                "-p",
                "5432",
                "-U",
                "postgres",
            ],
        )?;
        let a = t0.elapsed();
        server.stop()?;
        let t0 = Instant::now();
        let o = lost_rows::check(&dir, &map, workers, &AtomicBool::new(false));
        let b = t0.elapsed();
        if !o.findings.is_empty() {
            return Err(format!("the copy is not clean: {:?}", o.findings));
        }
        if round == 0 {
            println!("warm-up; {}", o.coverage.join("; "));
            continue;
        }
        println!(
            "round {round}: pg_amcheck {:.2} s | lost rows {:.2} s | ratio {:.3}",
            a.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64()
        );
        amcheck.push(a);
        ours.push(b);
    }
    let (ma, mo) = (median(&mut amcheck), median(&mut ours));
    println!(
        "median: pg_amcheck --heapallindexed --parent-check {:.2} s, lost-rows check {:.2} s, ratio {:.3} (goal <= 0.5)",
        ma.as_secs_f64(),
        mo.as_secs_f64(),
        mo.as_secs_f64() / ma.as_secs_f64()
    );
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}
