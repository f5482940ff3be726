//! Benchmark of backup packing (`tandem_agent::backup::pack`) against
//! `tar -cf - DIR | zstd -T0` on the same stopped PostgreSQL data directory,
//! in the same run; and of unpacking against `zstd -dc | tar -xf -`.
//!
//! ```text
//! cargo bench -p tandem-agent --bench pack -- DATADIR [--rounds N] [--threads N]
//! ```
//!
//! Both pack the same files: the data directory without the WAL segments a
//! restore cannot need (recycled ones), which Tandem leaves out as
//! PostgreSQL's base backup does; tar gets that list (`-T`).
//! Make DATADIR with the copy benchmark: `cargo bench -p tandem-agent
//! --bench copy -- --make DIR --scale 50` (pgbench data). The source is read
//! once before timing (warm page cache); rounds alternate between the tools
//! and Tandem. Tandem's pack hashes every file (BLAKE3 manifest inside) and
//! fsyncs the backup file; `tar | zstd` does neither, so the figure "+ sync"
//! adds `sync -f` to the plain tools' time. Unpacking: Tandem verifies every
//! file against the manifest and fsyncs the tree (`syncfs`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use tandem_agent::backup::archive::{BackupMeta, PackOptions};
use tandem_agent::backup::{self, BackupKind};
use tandem_agent::engine::copy;
use tokio_util::sync::CancellationToken;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo bench -p tandem-agent --bench pack -- DATADIR [--rounds N] [--threads N]\n\
         DATADIR is a stopped PostgreSQL data directory; make one with\n\
         cargo bench -p tandem-agent --bench copy -- --make DIR --scale 50"
    );
    ExitCode::from(2)
}

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut datadir: Option<PathBuf> = None;
    let mut rounds = 3usize;
    let mut opts = PackOptions::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed: Res<()> = match a.as_str() {
            "--rounds" => value("--rounds")
                .and_then(|v| v.parse().map_err(|e| format!("--rounds: {e}")))
                .map(|v| rounds = v),
            "--threads" => value("--threads")
                .and_then(|v| v.parse().map_err(|e| format!("--threads: {e}")))
                .map(|v| opts.threads = v),
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
    let Some(dir) = datadir else {
        return usage();
    };
    match bench(&dir, rounds.max(1), opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn sh(script: &str) -> Res<()> {
    let status = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{script}` failed: {status}"))
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(src: &Path, rounds: usize, opts: PackOptions) -> Res<()> {
    let plan = copy::plan(src).map_err(|e| e.to_string())?;
    // The same files for both: Tandem leaves out WAL segments a restore
    // cannot need (recycled ones), so tar gets the same list.
    let packed = tandem_agent::backup::archive::packed_plan(src, tandem_proto::model::Lsn(0))
        .map_err(|e| e.to_string())?;
    let out = src
        .parent()
        .ok_or("DATADIR has no parent")?
        .join("pack-bench");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    // Warm the page cache.
    let mut buf = vec![0u8; 1 << 20];
    for e in &plan.entries {
        let mut f = fs::File::open(src.join(&e.rel)).map_err(|e| e.to_string())?;
        while f.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    }
    println!(
        "source {}: {} files, {:.1} MB; zstd threads {}, level {}",
        src.display(),
        plan.entries.len(),
        mb(plan.total_bytes),
        opts.threads,
        opts.level
    );
    let list = out.join("files.txt");
    let mut names: Vec<String> = packed
        .dirs
        .iter()
        .map(|d| format!("./{}", d.display()))
        .collect();
    names.extend(
        packed
            .entries
            .iter()
            .map(|e| format!("./{}", e.rel.display())),
    );
    fs::write(&list, names.join("\n") + "\n").map_err(|e| e.to_string())?;
    println!(
        "packed by both: {} files, {:.1} MB ({} WAL segments left out as not needed)",
        packed.entries.len(),
        mb(packed.total_bytes),
        plan.entries.len() - packed.entries.len()
    );
    let plan = packed;
    let s = src.display();
    let o = out.display();
    let (mut tool, mut tool_sync, mut ours) = (vec![], vec![], vec![]);
    let (mut untool, mut unours) = (vec![], vec![]);
    let (mut tool_size, mut our_size) = (0u64, 0u64);
    let cancel = CancellationToken::new();
    for round in 0..rounds {
        sh("sync")?;
        let t = Instant::now();
        sh(&format!(
            "tar -cf - -C {s} --no-recursion -T {o}/files.txt | zstd -q -f -T0 -o {o}/tool.tar.zst"
        ))?;
        let plain = t.elapsed().as_secs_f64();
        sh(&format!("sync -f {o}/tool.tar.zst"))?;
        let synced = t.elapsed().as_secs_f64();
        tool_size = fs::metadata(out.join("tool.tar.zst"))
            .map_err(|e| e.to_string())?
            .len();
        sh("sync")?;

        let meta = BackupMeta {
            format: 1,
            kind: BackupKind::Daily,
            taken_at: jiff::Timestamp::now(),
            start_lsn: tandem_proto::model::Lsn(round as u64),
            end_lsn: tandem_proto::model::Lsn(round as u64),
            set: "bench".into(),
            member: "bench".into(),
            files: 0,
            unpacked_bytes: 0,
            verified: false,
        };
        let t = Instant::now();
        let packed =
            backup::pack(src, &out, meta, opts, &|_| {}, &cancel).map_err(|e| e.to_string())?;
        let file = packed.commit().map_err(|e| e.to_string())?;
        let our = t.elapsed().as_secs_f64();
        our_size = packed.packed_bytes;
        println!(
            "round {}: tar|zstd -T0 {plain:.3} s (+sync {synced:.3} s), tandem pack {our:.3} s",
            round + 1
        );
        tool.push(plain);
        tool_sync.push(synced);
        ours.push(our);

        // Unpack both.
        sh("sync")?;
        let t = Instant::now();
        sh(&format!(
            "mkdir {o}/untool && zstd -q -dc {o}/tool.tar.zst | tar -xf - -C {o}/untool && sync -f {o}/untool"
        ))?;
        untool.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        backup::unpack(&file, &out.join("unours"), None, &|_| {}, &cancel)
            .map_err(|e| e.to_string())?;
        unours.push(t.elapsed().as_secs_f64());
        println!(
            "round {}: zstd -dc|tar -x + sync {:.3} s, tandem unpack+verify {:.3} s",
            round + 1,
            untool.last().unwrap(),
            unours.last().unwrap()
        );
        for d in ["untool", "unours"] {
            fs::remove_dir_all(out.join(d)).map_err(|e| e.to_string())?;
        }
        for f in [file, out.join("tool.tar.zst")] {
            fs::remove_file(&f).map_err(|e| format!("cannot remove {}: {e}", f.display()))?;
        }
    }
    let (t, ts, u) = (median(&mut tool), median(&mut tool_sync), median(&mut ours));
    let (ut, uu) = (median(&mut untool), median(&mut unours));
    let total = plan.total_bytes;
    println!("medians of {rounds} rounds:");
    println!(
        "  tar | zstd -T0         {t:.3} s ({:.0} MB/s), {:.1} MB",
        mb(total) / t,
        mb(tool_size)
    );
    println!(
        "  tar | zstd -T0 + sync  {ts:.3} s ({:.0} MB/s)",
        mb(total) / ts
    );
    println!(
        "  tandem pack            {u:.3} s ({:.0} MB/s), {:.1} MB",
        mb(total) / u,
        mb(our_size)
    );
    println!("  zstd -dc | tar -x + sync {ut:.3} s; tandem unpack+verify {uu:.3} s");
    println!(
        "pack throughput ratio vs tar | zstd -T0: {:.2} (goal >= 1.0)",
        t / u
    );
    println!(
        "pack throughput ratio vs tar | zstd -T0 + sync: {:.2}",
        ts / u
    );
    println!(
        "unpack throughput ratio vs zstd -dc | tar -x + sync: {:.2}",
        ut / uu
    );
    let _ = fs::remove_dir_all(&out);
    Ok(())
}
