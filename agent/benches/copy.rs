//! Benchmark of the ordered copy (`tandem_agent::engine::copy`) against
//! `cp -a` and `cp -a` + `sync -f` on the same stopped PostgreSQL data
//! directory, in the same run.
//!
//! ```text
//! cargo bench -p tandem-agent --bench copy -- DATADIR [--rounds N] [--workers N]
//! cargo bench -p tandem-agent --bench copy -- --make DIR [--scale N]
//! cargo bench -p tandem-agent --bench copy -- DATADIR --clone [--rounds N] [--workers N]
//! ```
//!
//! `--clone` compares, instead, the copy step cloning (`CopyMethod::Clone`,
//! manifest later) with the byte copy step (`CopyMethod::Bytes`, hashed as
//! it goes) of the same data directory; DATADIR must be on a filesystem that
//! clones (XFS made with `-m reflink=1`, Btrfs), and the copies go beside
//! it. It also times the manifest written after the clone
//! (`finish_manifest`, which reads the whole copy), off the step's path.
//!
//! `--make` creates a data directory for the benchmark (as the `postgres` OS
//! user when run as root): `initdb --data-checksums`, a server on a private
//! socket directory, `pgbench -i -s N` (default 50: about 1.5 GB with its WAL), stop.
//!
//! Page cache: dropping caches fairly would need root side effects, so
//! instead the source is read once before timing and every run sees a warm
//! page cache. Each timed run starts after a `sync` (not timed), and its copy
//! is deleted afterwards (not timed). Our time includes planning, hashing and
//! every fsync; compare it with `cp -a` + `sync -f` for the honest figure.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use tandem_agent::engine::copy::{self, CopyMethod, CopyOptions};
use tokio_util::sync::CancellationToken;

mod common;
use common::{PG_BIN, postgres_tool};

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo bench -p tandem-agent --bench copy -- DATADIR [--rounds N] [--workers N]\n\
         \x20      cargo bench -p tandem-agent --bench copy -- --make DIR [--scale N]\n\
         \x20      cargo bench -p tandem-agent --bench copy -- DATADIR --clone [--rounds N] [--workers N]\n\
         DATADIR is a stopped PostgreSQL data directory; --make creates one with pgbench\n\
         (scale 50 is about 1.5 GB: 0.8 GB of tables and indexes, 0.6 GB of WAL) using {PG_BIN}."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut datadir: Option<PathBuf> = None;
    let mut make: Option<PathBuf> = None;
    let mut rounds: usize = 3;
    let mut workers = copy::default_workers();
    let mut scale: u32 = 50;
    let mut clone = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed: Result<(), String> = match a.as_str() {
            "--make" => value("--make").map(|v| make = Some(PathBuf::from(v))),
            "--rounds" => value("--rounds")
                .and_then(|v| v.parse().map_err(|e| format!("--rounds: {e}")))
                .map(|v| rounds = v),
            "--workers" => value("--workers")
                .and_then(|v| v.parse().map_err(|e| format!("--workers: {e}")))
                .map(|v| workers = v),
            "--scale" => value("--scale")
                .and_then(|v| v.parse().map_err(|e| format!("--scale: {e}")))
                .map(|v| scale = v),
            "--clone" => {
                clone = true;
                Ok(())
            }
            "-h" | "--help" => return usage(),
            s if s.starts_with('-') => Err(format!("unknown option {s}")),
            s => {
                datadir = Some(PathBuf::from(s));
                Ok(())
            }
        };
        if let Err(e) = parsed {
            eprintln!("{e}");
            return usage();
        }
    }
    let result = match (make, datadir) {
        (Some(dir), None) => make_datadir(&dir, scale),
        (None, Some(dir)) if clone => bench_clone(&dir, rounds.max(1), workers.max(1)),
        (None, Some(dir)) => bench(&dir, rounds.max(1), workers.max(1)),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

/// Run `program args` as the `postgres` OS user when we are root.
fn as_postgres(program: &str, args: &[&str]) -> Res<()> {
    let (mut cmd, path) = postgres_tool(program);
    let status = cmd
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {args:?} failed: {status}"))
    }
}

fn make_datadir(dir: &Path, scale: u32) -> Res<()> {
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let dir = fs::canonicalize(parent)
        .map_err(|e| format!("{}: {e}", parent.display()))?
        .join(dir.file_name().ok_or("--make needs a directory name")?);
    let sock = dir.with_extension("sock");
    for d in [&dir, &sock] {
        fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .map_err(|e| format!("cannot look up user postgres: {e}"))?
                .ok_or("there is no OS user postgres")?;
            std::os::unix::fs::chown(d, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| format!("cannot chown {}: {e}", d.display()))?;
        }
    }
    let d = dir.to_str().ok_or("the directory name is not UTF-8")?;
    let s = sock.to_str().ok_or("the directory name is not UTF-8")?;
    as_postgres(
        "initdb",
        &["--data-checksums", "-A", "trust", "-U", "postgres", "-D", d],
    )?;
    let opts = format!("-k {s} -c listen_addresses=''");
    let log = format!("{s}/server.log");
    as_postgres("pg_ctl", &["-D", d, "-o", &opts, "-l", &log, "-w", "start"])?;
    let scale = scale.to_string();
    let loaded = as_postgres(
        "pgbench",
        &["-i", "-s", &scale, "-h", s, "-U", "postgres", "postgres"],
    );
    let stopped = as_postgres("pg_ctl", &["-D", d, "-m", "fast", "-w", "stop"]);
    loaded?;
    stopped?;
    let _ = fs::remove_dir_all(&sock);
    let plan = copy::plan(&dir).map_err(|e| e.to_string())?;
    println!(
        "made {}: {} files, {:.1} MB",
        dir.display(),
        plan.entries.len(),
        mb(plan.total_bytes)
    );
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn sync_all() -> Res<()> {
    run_cmd(Command::new("sync"))
}

fn run_cmd(mut cmd: Command) -> Res<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn remove(dst: &Path) -> Res<()> {
    if dst.exists() {
        fs::remove_dir_all(dst).map_err(|e| format!("cannot remove {}: {e}", dst.display()))?;
    }
    if let Ok(m) = copy::manifest_path(dst)
        && m.exists()
    {
        fs::remove_file(&m).map_err(|e| format!("cannot remove {}: {e}", m.display()))?;
    }
    Ok(())
}

/// Read every file of the plan once, so that it is in the page cache.
fn warm(src: &Path, plan: &copy::CopyPlan) -> Res<()> {
    let mut buf = vec![0u8; 256 << 10];
    for e in &plan.entries {
        let p = src.join(&e.rel);
        let mut f = fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        while f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", p.display()))?
            > 0
        {}
    }
    Ok(())
}

/// Time one run: `sync` and a warm-up read of the source first (not timed),
/// then `f`, then delete `dst` (not timed).
fn timed(
    src: &Path,
    plan: &copy::CopyPlan,
    dst: &Path,
    f: impl FnOnce() -> Res<()>,
) -> Res<Duration> {
    sync_all()?;
    warm(src, plan)?;
    let t = Instant::now();
    f()?;
    let d = t.elapsed();
    remove(dst)?;
    Ok(d)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(src: &Path, rounds: usize, workers: usize) -> Res<()> {
    let src = fs::canonicalize(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if src.join("postmaster.pid").exists() {
        return Err(format!(
            "{} has a postmaster.pid: stop the server first",
            src.display()
        ));
    }
    let plan = copy::plan(&src).map_err(|e| e.to_string())?;
    let root_meta = fs::metadata(&src).map_err(|e| e.to_string())?;
    let owner = Some((root_meta.uid(), root_meta.gid()));
    let parent = src.parent().ok_or("the data directory has no parent")?;
    let work = tempfile::Builder::new()
        .prefix(".tandem-copy-bench")
        .tempdir_in(parent)
        .map_err(|e| format!("cannot make a work directory in {}: {e}", parent.display()))?;
    let dst = work.path().join("copy");

    println!(
        "source {}: {} files, {:.1} MB, {} directories",
        src.display(),
        plan.entries.len(),
        mb(plan.total_bytes),
        plan.dirs.len()
    );
    println!(
        "{} rounds, median shown; before each run (not timed): sync, then one read of the whole \
         source so every run sees a warm page cache (no drop_caches); copies deleted after each \
         run, not timed",
        rounds
    );

    let cp = |sync: bool| {
        let mut c = Command::new("cp");
        c.arg("-a").arg(&src).arg(&dst);
        run_cmd(c)?;
        if sync {
            let mut s = Command::new("sync");
            s.arg("-f").arg(&dst);
            run_cmd(s)?;
        }
        Ok(())
    };
    let ours = |w: usize| {
        let plan = copy::plan(&src).map_err(|e| e.to_string())?;
        copy::copy(
            &plan,
            &src,
            &dst,
            &CopyOptions {
                workers: w,
                owner,
                method: CopyMethod::Bytes,
                ..CopyOptions::default()
            },
            &|_| {},
            &CancellationToken::new(),
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    };
    let mut cp_t = Vec::new();
    let mut cps_t = Vec::new();
    let mut ours_t = Vec::new();
    let mut ours1_t = Vec::new();
    for r in 0..rounds {
        let a = timed(&src, &plan, &dst, || cp(false))?;
        let b = timed(&src, &plan, &dst, || cp(true))?;
        let c = timed(&src, &plan, &dst, || ours(workers))?;
        let d = timed(&src, &plan, &dst, || ours(1))?;
        println!(
            "round {}: cp -a {:.3}s, cp -a + sync {:.3}s, ours (workers {workers}) {:.3}s, ours (workers 1) {:.3}s",
            r + 1,
            a.as_secs_f64(),
            b.as_secs_f64(),
            c.as_secs_f64(),
            d.as_secs_f64()
        );
        cp_t.push(a);
        cps_t.push(b);
        ours_t.push(c);
        ours1_t.push(d);
    }
    // One more copy, kept for a verify, so the figures are for a correct copy.
    ours(workers)?;
    copy::verify(&dst).map_err(|e| e.to_string())?;
    remove(&dst)?;

    let bytes = plan.total_bytes;
    let rows = [
        ("cp -a".to_owned(), median(cp_t)),
        ("cp -a + sync -f".to_owned(), median(cps_t)),
        (
            format!("ours, workers {workers} (hash + fsync)"),
            median(ours_t),
        ),
        ("ours, workers 1 (hash + fsync)".to_owned(), median(ours1_t)),
    ];
    println!();
    println!("{:<36} {:>9} {:>10}", "method", "time s", "MB/s");
    for (name, t) in &rows {
        println!(
            "{:<36} {:>9.3} {:>10.1}",
            name,
            t.as_secs_f64(),
            mb(bytes) / t.as_secs_f64()
        );
    }
    println!();
    println!("throughput ratios (cp time / our time; goal >= 0.9):");
    for (ours_name, ours_time) in &rows[2..] {
        for (cp_name, cp_time) in &rows[..2] {
            println!(
                "  {ours_name} vs {cp_name}: {:.2}",
                cp_time.as_secs_f64() / ours_time.as_secs_f64()
            );
        }
    }
    println!("(the copy made last was verified against its manifest)");
    Ok(())
}

/// The clone copy step against the byte copy step, on a filesystem that
/// clones; see the module documentation.
fn bench_clone(src: &Path, rounds: usize, workers: usize) -> Res<()> {
    let src = fs::canonicalize(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if src.join("postmaster.pid").exists() {
        return Err(format!(
            "{} has a postmaster.pid: stop the server first",
            src.display()
        ));
    }
    let plan = copy::plan(&src).map_err(|e| e.to_string())?;
    let root_meta = fs::metadata(&src).map_err(|e| e.to_string())?;
    let owner = Some((root_meta.uid(), root_meta.gid()));
    let parent = src.parent().ok_or("the data directory has no parent")?;
    let work = tempfile::Builder::new()
        .prefix(".tandem-copy-bench")
        .tempdir_in(parent)
        .map_err(|e| format!("cannot make a work directory in {}: {e}", parent.display()))?;
    let dst = work.path().join("copy");
    println!(
        "source {}: {} files, {:.1} MB; {rounds} rounds, median shown; before each run (not \
         timed): sync and one read of the whole source (warm page cache); copies deleted after \
         each run, not timed",
        src.display(),
        plan.entries.len(),
        mb(plan.total_bytes)
    );
    let step = |method: CopyMethod| -> Res<copy::CopyReport> {
        let plan = copy::plan(&src).map_err(|e| e.to_string())?;
        let r = copy::copy(
            &plan,
            &src,
            &dst,
            &CopyOptions {
                workers,
                owner,
                method,
                manifest_now: method == CopyMethod::Bytes,
                ..CopyOptions::default()
            },
            &|_| {},
            &CancellationToken::new(),
        )
        .map_err(|e| e.to_string())?;
        if r.method != method {
            return Err(format!(
                "asked {method}, {} ran: {}",
                r.method,
                r.note.as_deref().unwrap_or("")
            ));
        }
        Ok(r)
    };
    let (mut clone_t, mut bytes_t, mut manifest_t) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let mut manifest = Duration::ZERO;
        let c = timed(&src, &plan, &dst, || {
            let report = step(CopyMethod::Clone)?;
            // Not part of the step: timed on its own, then the copy is
            // checked against it.
            let t = Instant::now();
            copy::finish_manifest(
                &dst,
                &report.files_copied,
                workers,
                &|_| {},
                &CancellationToken::new(),
            )
            .map_err(|e| e.to_string())?;
            manifest = t.elapsed();
            copy::verify(&dst).map_err(|e| e.to_string())?;
            Ok(())
        })?
        .saturating_sub(manifest);
        let b = timed(&src, &plan, &dst, || step(CopyMethod::Bytes).map(|_| ()))?;
        println!(
            "round {}: clone step {:.3}s (then its manifest {:.3}s), byte copy step {:.3}s",
            r + 1,
            c.as_secs_f64(),
            manifest.as_secs_f64(),
            b.as_secs_f64()
        );
        clone_t.push(c);
        bytes_t.push(b);
        manifest_t.push(manifest);
    }
    let (c, b, m) = (median(clone_t), median(bytes_t), median(manifest_t));
    println!();
    println!("{:<44} {:>9}", "step", "time s");
    println!(
        "{:<44} {:>9.3}",
        format!("clone (workers {workers})"),
        c.as_secs_f64()
    );
    println!(
        "{:<44} {:>9.3}",
        format!("bytes, hashed (workers {workers})"),
        b.as_secs_f64()
    );
    println!(
        "{:<44} {:>9.3}",
        "manifest after the clone (reads the copy)",
        m.as_secs_f64()
    );
    println!();
    println!(
        "byte copy step / clone step: {:.1} (goal >= 10); byte copy / (clone + manifest): {:.2}",
        b.as_secs_f64() / c.as_secs_f64(),
        b.as_secs_f64() / (c + m).as_secs_f64()
    );
    println!("(every clone was verified against its manifest)");
    Ok(())
}
