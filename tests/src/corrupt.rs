//! Corruption makers for tests (DESIGN "Tests"): a *replicated* logical
//! corruption that every member of the set shares
//! ([`replicated_index_corruption`]) and *standby-local* page damage that only
//! one standby's files have ([`standby_local_page_damage`]), plus the steps
//! that get a standby's pages onto its disk before damaging them
//! ([`wait_replayed`], [`flush_and_stop_standby`]).
//!
//! What the tools report (PostgreSQL 15): `pg_amcheck --heapallindexed`
//! on the index corruption prints `btree index "db.public.tandem_corrupt_f_idx":`
//! then `    ERROR:  heap tuple (0,1) from table "tandem_corrupt" lacks
//! matching index tuple within index "tandem_corrupt_f_idx"` (exit 2);
//! `pg_checksums --check` on the damaged standby prints `pg_checksums: error:
//! checksum verification failed in file "<data>/base/5/16384", block 0:
//! calculated checksum X but block contains Y` (exit 1), and reading the
//! table on the started standby fails with `invalid page in block 0 of
//! relation base/5/16384`.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::pg::PgServer;
use crate::wait::wait_for;

/// The table, function and index [`replicated_index_corruption`] makes.
pub const CORRUPT_TABLE: &str = "tandem_corrupt";
pub const CORRUPT_FUNCTION: &str = "tandem_f";
pub const CORRUPT_INDEX: &str = "tandem_corrupt_f_idx";

/// PostgreSQL's page size.
const PAGE: usize = 8192;
/// How many bytes [`standby_local_page_damage`] flips.
const DAMAGE_LEN: usize = 16;
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Replicated logical corruption (DESIGN "Tests"): on the primary, in
/// database `db`, create table `tandem_corrupt(i int)` with rows 1..=1000, an
/// IMMUTABLE SQL function `tandem_f(int) returns int` (returning i), an index
/// `tandem_corrupt_f_idx` on `tandem_f(i)`; then redefine `tandem_f` to return
/// i+1 (CREATE OR REPLACE) so the index no longer matches its table. Returns
/// the index name (`"tandem_corrupt_f_idx"`).
///
/// Every standby replays it (use [`wait_replayed`] to wait for that);
/// `pg_amcheck --heapallindexed` then reports "lacks matching index tuple",
/// and `REINDEX INDEX tandem_corrupt_f_idx` on the primary repairs it.
///
/// The table is then vacuumed (freeze, analyze) so that neither hint bits
/// nor autovacuum touch its pages again: a later change after a checkpoint
/// would send a full-page image to the standbys, and replaying it would
/// overwrite (repair) damage made by [`standby_local_page_damage`].
pub fn replicated_index_corruption(primary: &PgServer, db: &str) -> anyhow::Result<String> {
    primary
        .psql(
            db,
            &format!(
                "create table {CORRUPT_TABLE} (i int); \
                 insert into {CORRUPT_TABLE} select generate_series(1, 1000); \
                 create function {CORRUPT_FUNCTION}(int) returns int \
                     language sql immutable as 'select $1'; \
                 create index {CORRUPT_INDEX} on {CORRUPT_TABLE} ({CORRUPT_FUNCTION}(i)); \
                 create or replace function {CORRUPT_FUNCTION}(int) returns int \
                     language sql immutable as 'select $1 + 1'"
            ),
        )
        .with_context(|| format!("make the index corruption on {} ({db})", primary.name))?;
    // VACUUM cannot run in psql -c's implicit transaction with the rest.
    primary
        .psql(db, &format!("vacuum (freeze, analyze) {CORRUPT_TABLE}"))
        .with_context(|| format!("vacuum {CORRUPT_TABLE} on {} ({db})", primary.name))?;
    Ok(CORRUPT_INDEX.to_string())
}

/// Wait until `standby` has replayed everything the primary has written so
/// far (`pg_last_wal_replay_lsn() >= ` the primary's `pg_current_wal_lsn()`
/// now). Returns that primary position (`0/3000148`).
pub async fn wait_replayed(primary: &PgServer, standby: &PgServer) -> anyhow::Result<String> {
    let lsn = primary
        .psql("postgres", "select pg_current_wal_lsn()")
        .with_context(|| format!("read the log position of {}", primary.name))?;
    let sql = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
    let what = format!("{} to replay up to {lsn}", standby.name);
    let (sql, want) = (&sql, &lsn);
    wait_for(&what, REPLAY_TIMEOUT, POLL_EVERY, move || async move {
        match standby.psql("postgres", sql)?.as_str() {
            "t" => Ok(Some(())),
            other => bail!("replayed past {want}: {other:?}"),
        }
    })
    .await?;
    Ok(lsn)
}

/// Get the standby's pages onto its disk and stop it: `CHECKPOINT` on the
/// primary, wait until the standby has replayed past it ([`wait_replayed`]),
/// then stop the standby with `-m fast`.
///
/// Why all three: a standby writes its dirty pages only at a restartpoint,
/// and it makes one (at the latest at a fast shutdown) only when it has
/// replayed a checkpoint record newer than its last restartpoint; otherwise
/// the shutdown skips it ("skipping restartpoint, already performed") and
/// the pages stay in WAL only, and the relation file may even be empty.
pub async fn flush_and_stop_standby(primary: &PgServer, standby: &PgServer) -> anyhow::Result<()> {
    primary
        .psql("postgres", "checkpoint")
        .with_context(|| format!("checkpoint on {}", primary.name))?;
    wait_replayed(primary, standby).await?;
    standby.stop()
}

/// Standby-local damage: flip bytes in the middle of the first page of table
/// `table` (in database `db`) in the standby's data directory, so that page's
/// checksum no longer matches. Returns the relation file's path relative to
/// the data directory (e.g. `base/5/16384`).
///
/// The standby must be stopped, with the page on its disk: call
/// [`flush_and_stop_standby`] first (after the table was made and nothing
/// changes it any more, see [`replicated_index_corruption`]). The function
/// refuses (error) when the standby runs, and when the file has no
/// initialised first page (shorter than 8 KiB, or an all-new page, which
/// `pg_checksums` skips), which means the standby had not flushed it.
///
/// The path is the primary's `pg_relation_filepath` (a standby's files have
/// the same paths). The damage: 16 bytes XORed with `0xFF` (so
/// every byte surely changes) in the middle of the page's tuple area, far
/// from the page header and its checksum field. It is then confirmed with
/// `pg_checksums --check --filenode`; in the rare case the 16-bit checksum
/// still matches, the next bytes are flipped too.
///
/// When the standby is started again it keeps the damage (no WAL touches the
/// page after the checkpoint) and a read of the table fails with `invalid
/// page in block 0 of relation base/...`.
pub fn standby_local_page_damage(
    primary: &PgServer,
    standby: &PgServer,
    db: &str,
    table: &str,
) -> anyhow::Result<String> {
    ensure!(
        !standby.is_running(),
        "{} must be stopped before its files are damaged (see flush_and_stop_standby)",
        standby.name
    );
    let relation = primary
        .psql(
            db,
            &format!(
                "select pg_relation_filepath('{}'::regclass)",
                table.replace('\'', "''")
            ),
        )
        .with_context(|| format!("find the file of {table} on {} ({db})", primary.name))?;
    ensure!(
        !relation.is_empty(),
        "{table} on {} ({db}) has no relation file",
        primary.name
    );
    let path = standby.data_dir.join(&relation);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut page = vec![0u8; PAGE];
    file.read_exact(&mut page).with_context(|| {
        format!(
            "{} has no full first page: the standby has not flushed {table} \
             (checkpoint on the primary, wait for replay, stop the standby fast)",
            path.display()
        )
    })?;
    // PageHeaderData: pd_lsn (8), pd_checksum (2), pd_flags (2), pd_lower (2),
    // pd_upper (2), ...
    let pd_lower = usize::from(u16::from_le_bytes([page[12], page[13]]));
    let pd_upper = usize::from(u16::from_le_bytes([page[14], page[15]]));
    ensure!(
        pd_upper != 0 && pd_lower >= 24 && pd_lower <= pd_upper && pd_upper <= PAGE,
        "the first page of {} is not an initialised page (pd_lower {pd_lower}, pd_upper \
         {pd_upper}): the standby has not flushed {table} (checkpoint on the primary, wait \
         for replay, stop the standby fast)",
        path.display()
    );
    // The middle of the tuples, or of the page when it holds none.
    let area = if pd_upper < PAGE { pd_upper } else { 24 };
    let mut offset = (area + (PAGE - area) / 2).min(PAGE - 2 * DAMAGE_LEN);
    let filenode = relation.rsplit('/').next().unwrap_or_default().to_string();
    for _ in 0..4 {
        flip(&mut file, offset)
            .with_context(|| format!("damage {} at {offset}", path.display()))?;
        file.sync_all()
            .with_context(|| format!("fsync {}", path.display()))?;
        if checksum_fails(standby, &filenode)? {
            return Ok(relation);
        }
        offset += DAMAGE_LEN;
    }
    bail!(
        "pg_checksums still accepts {} after flipping bytes in its first page",
        path.display()
    )
}

/// XOR `DAMAGE_LEN` bytes at `offset` with 0xFF.
fn flip(file: &mut std::fs::File, offset: usize) -> std::io::Result<()> {
    let mut bytes = [0u8; DAMAGE_LEN];
    file.seek(SeekFrom::Start(offset as u64))?;
    file.read_exact(&mut bytes)?;
    for b in &mut bytes {
        *b ^= 0xFF;
    }
    file.seek(SeekFrom::Start(offset as u64))?;
    file.write_all(&bytes)
}

/// Whether `pg_checksums --check --filenode <filenode>` on the stopped
/// standby reports a bad checksum (exit 1 with "checksum verification
/// failed"); any other failure is an error.
fn checksum_fails(standby: &PgServer, filenode: &str) -> anyhow::Result<bool> {
    let out = standby
        .command("pg_checksums")
        .args(["--check", "--filenode", filenode, "-D"])
        .arg(&standby.data_dir)
        .output()
        .context("run pg_checksums")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(false),
        Some(1) if stderr.contains("checksum verification failed") => Ok(true),
        _ => bail!(
            "pg_checksums --check --filenode {filenode} on {} failed ({}): {}",
            standby.name,
            out.status,
            stderr.trim_end()
        ),
    }
}

/// The file of relation `relation` (a name `regclass` reads, e.g.
/// `public.t` or `pg_toast.pg_toast_16390`) relative to the data
/// directory, as the primary names it (a standby's files have the same
/// paths).
pub fn relation_file(primary: &PgServer, db: &str, relation: &str) -> anyhow::Result<String> {
    let path = primary
        .psql(
            db,
            &format!(
                "select pg_relation_filepath('{}'::regclass)",
                relation.replace('\'', "''")
            ),
        )
        .with_context(|| format!("find the file of {relation} on {} ({db})", primary.name))?;
    ensure!(!path.is_empty(), "{relation} has no relation file");
    Ok(path)
}

/// A lost write made by hand: overwrite page `block` of `relation`'s file
/// in the stopped `standby`'s data directory with zeros. PostgreSQL takes
/// an all-zero page for a valid new one (`pg_checksums` skips it, a scan
/// sees no rows there). Returns the file, relative to the data directory.
/// Call [`flush_and_stop_standby`] first.
pub fn zero_page(
    primary: &PgServer,
    standby: &PgServer,
    db: &str,
    relation: &str,
    block: u64,
) -> anyhow::Result<String> {
    ensure!(!standby.is_running(), "{} must be stopped", standby.name);
    let rel = relation_file(primary, db, relation)?;
    let path = standby.data_dir.join(&rel);
    let mut f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let len = f.metadata()?.len();
    ensure!(
        (block + 1) * PAGE as u64 <= len,
        "{} has no block {block} ({len} bytes): the standby has not flushed {relation}",
        path.display()
    );
    f.seek(SeekFrom::Start(block * PAGE as u64))?;
    f.write_all(&[0u8; PAGE])?;
    f.sync_all()?;
    Ok(rel)
}

/// A file cut short: truncate `relation`'s file in the stopped `standby`'s
/// data directory to its first `keep` pages. Returns the file, relative
/// to the data directory, and how many pages it had.
pub fn cut_relation(
    primary: &PgServer,
    standby: &PgServer,
    db: &str,
    relation: &str,
    keep: u64,
) -> anyhow::Result<(String, u64)> {
    ensure!(!standby.is_running(), "{} must be stopped", standby.name);
    let rel = relation_file(primary, db, relation)?;
    let path = standby.data_dir.join(&rel);
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let pages = f.metadata()?.len() / PAGE as u64;
    ensure!(
        pages > keep,
        "{} has {pages} pages, not more than {keep}: the standby has not flushed {relation}",
        path.display()
    );
    f.set_len(keep * PAGE as u64)?;
    f.sync_all()?;
    Ok((rel, pages))
}
