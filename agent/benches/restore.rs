//! Benchmark of getting a backup back into service: Tandem's unpack (with
//! the manifest verified and the tree fsynced) then `pg_ctl start -w`,
//! against `pgbackrest restore` from a local repository of the same data
//! then `pg_ctl start -w`, in the same run. Time: from nothing in place to
//! a server accepting connections.
//!
//! ```text
//! cargo bench -p tandem-agent --bench restore -- DATADIR [--rounds N]
//! ```
//!
//! DATADIR is a stopped data directory (`--bench copy -- --make DIR`);
//! pgBackRest must be installed (`apt-get install pgbackrest`). Set-up (not
//! timed): DATADIR is copied, a server on the copy archives with
//! `pgbackrest archive-push`, `pgbackrest backup --type=full` (zstd level 3,
//! 2 processes) is taken, the server stops, and Tandem packs the same copy.
//! pgBackRest's restore writes the recovery settings, and its server
//! replays the backup's WAL from the repository before it opens; Tandem's
//! file is a stopped server's directory, which opens at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use tandem_agent::backup::archive::{BackupMeta, PackOptions};
use tandem_agent::backup::{self, BackupKind};
use tokio_util::sync::CancellationToken;

mod common;
use common::PG_BIN;
type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut datadir = None;
    let mut rounds = 3usize;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => rounds = v,
                None => return usage(),
            },
            s if s.starts_with('-') => return usage(),
            s => datadir = Some(PathBuf::from(s)),
        }
    }
    let Some(dir) = datadir else { return usage() };
    match bench(&dir, rounds.max(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo bench -p tandem-agent --bench restore -- DATADIR [--rounds N]\n\
         DATADIR is a stopped data directory (cargo bench -p tandem-agent --bench copy -- --make DIR);\n\
         pgBackRest must be installed."
    );
    ExitCode::from(2)
}

/// `sh -c script` as the postgres OS user when root.
fn pg_sh(script: &str) -> Res<()> {
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    };
    let out = cmd
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{script}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn postgres_owner() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres").ok().flatten()?;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(src: &Path, rounds: usize) -> Res<()> {
    let work = src
        .parent()
        .ok_or("DATADIR has no parent")?
        .join("restore-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = postgres_owner() {
        std::os::unix::fs::chown(&work, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let w = work.display().to_string();
    let conf = format!("{w}/pgbackrest.conf");
    pg_sh(&format!(
        "cp -a {} {w}/src && mkdir -p {w}/sock {w}/repo {w}/log {w}/lock {w}/spool && chmod 700 {w}/src && \
         printf '[global]\\nrepo1-path={w}/repo\\ncompress-type=zst\\ncompress-level=3\\nprocess-max=2\\nlog-path={w}/log\\nlock-path={w}/lock\\nspool-path={w}/spool\\nstart-fast=y\\nlog-level-console=warn\\n[bench]\\npg1-path={w}/src\\npg1-socket-path={w}/sock\\npg1-port=5432\\n' > {conf}",
        src.display()
    ))?;
    let pgbr = format!("pgbackrest --config={conf} --stanza=bench");
    let opts = format!(
        "-k {w}/sock -c listen_addresses='' -c archive_mode=on -c archive_command='{pgbr} archive-push %p'"
    );
    pg_sh(&format!(
        "{PG_BIN}/pg_ctl -D {w}/src -l {w}/src.log -o \"{opts}\" -w start"
    ))?;
    let setup = pg_sh(&format!(
        "{pgbr} stanza-create && {pgbr} backup --type=full"
    ));
    pg_sh(&format!("{PG_BIN}/pg_ctl -D {w}/src -m fast -w stop"))?;
    setup?;
    println!("pgBackRest repository: {w}/repo (full backup, zstd level 3)");

    let cancel = CancellationToken::new();
    let meta = BackupMeta {
        format: 1,
        kind: BackupKind::Daily,
        taken_at: jiff::Timestamp::now(),
        start_lsn: tandem_proto::model::Lsn(0),
        end_lsn: tandem_proto::model::Lsn(0),
        set: "bench".into(),
        member: "bench".into(),
        files: 0,
        unpacked_bytes: 0,
        verified: false,
    };
    fs::create_dir_all(work.join("tandem")).map_err(|e| e.to_string())?;
    let packed = backup::pack(
        &work.join("src"),
        &work.join("tandem"),
        meta,
        PackOptions::default(),
        &|_| {},
        &cancel,
    )
    .map_err(|e| e.to_string())?;
    let file = packed.commit().map_err(|e| e.to_string())?;
    println!(
        "Tandem backup: {} ({:.1} MB)",
        file.display(),
        packed.packed_bytes as f64 / 1e6
    );

    let start_opts = format!("-k {w}/sock -c listen_addresses=''");
    let (mut theirs, mut ours) = (vec![], vec![]);
    for round in 1..=rounds {
        // pgBackRest: restore, then start until ready.
        pg_sh("sync")?;
        let t = Instant::now();
        pg_sh(&format!(
            "{pgbr} --pg1-path={w}/r1 restore && {PG_BIN}/pg_ctl -D {w}/r1 -l {w}/r1.log -o \"{start_opts}\" -w -t 600 start"
        ))?;
        let pb = t.elapsed().as_secs_f64();
        pg_sh(&format!(
            "{PG_BIN}/pg_ctl -D {w}/r1 -m fast -w stop && rm -rf {w}/r1"
        ))?;

        // Tandem: unpack and verify, then start until ready.
        pg_sh("sync")?;
        let t = Instant::now();
        backup::unpack(&file, &work.join("r2"), postgres_owner(), &|_| {}, &cancel)
            .map_err(|e| e.to_string())?;
        pg_sh(&format!(
            "{PG_BIN}/pg_ctl -D {w}/r2 -l {w}/r2.log -o \"{start_opts}\" -w -t 600 start"
        ))?;
        let tb = t.elapsed().as_secs_f64();
        pg_sh(&format!("{PG_BIN}/pg_ctl -D {w}/r2 -m fast -w stop"))?;
        fs::remove_dir_all(work.join("r2")).map_err(|e| e.to_string())?;
        println!(
            "round {round}: pgbackrest restore + start {pb:.3} s, tandem unpack + start {tb:.3} s"
        );
        theirs.push(pb);
        ours.push(tb);
    }
    let (p, t) = (median(&mut theirs), median(&mut ours));
    println!("medians of {rounds} rounds: pgbackrest {p:.3} s, tandem {t:.3} s");
    println!(
        "restore ratio (pgbackrest time / tandem time; goal >= 1.0): {:.2}",
        p / t
    );
    let _ = fs::remove_dir_all(&work);
    Ok(())
}
