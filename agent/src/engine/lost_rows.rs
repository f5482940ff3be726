//! Rows the other checks cannot miss, found on the stopped copy's files:
//! every entry of a B-tree, hash or GiST index must point at a row its
//! table still has, and every relation's files must be as long as
//! PostgreSQL wrote them.
//!
//! `pg_amcheck --heapallindexed` checks table → index only, `pg_checksums`
//! skips all-zero pages, and a sequential scan of a table cut short just
//! sees fewer rows: a heap page zeroed by a torn or lost write, or a file
//! cut by whole pages, loses rows that none of them report. Here each heap
//! TID held by a B-tree leaf (posting lists included), a hash bucket or a
//! GiST leaf is looked up in its
//! table: inside the table's length, on a page that is not new, at a line
//! pointer that exists and is in use (normal, redirect or dead). Index
//! entries are read in chunks and sorted, so memory stays bounded whatever
//! the index's size, and each heap page is read once per chunk.
//!
//! The relation map (which file is which relation, which index belongs to
//! which table) is taken from the private instance's catalogs before it
//! stops ([`RelationMap`]); the files are read after it stopped, so they
//! are consistent with it. Index kinds whose row pointers are not read
//! here are named in the coverage, never skipped silently.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tandem_proto::model::Finding;

use super::pages::relfile::{self, DirIndex, Layout, Reader};
use super::pages::{self, LpFlags, Page, PageError, Parsed, Tid, btree, hash_gist};

/// Index entries held in memory at once per index being checked (8 bytes
/// each): 32 MiB per worker.
const CHUNK: usize = 4 << 20;
/// Blocks named in a finding's message; the count says the rest.
const SAMPLE: usize = 5;
/// Index blocks one worker reads at a time: a big index is shared among
/// the workers in pieces of this many pages (64 MiB).
const PIECE: u64 = 8192;

/// Page size and segment size (in pages) of the cluster.
pub const LAYOUT_SQL: &str = "SELECT current_setting('block_size'), \
     (SELECT setting FROM pg_settings WHERE name = 'segment_size')";

/// Every database, and whether it can be connected to.
pub const DATABASES_SQL: &str = "SELECT datallowconn, datname FROM pg_database ORDER BY datname";

/// The relations with storage of one database, for the file checks.
pub const RELATIONS_SQL: &str = "SELECT coalesce(json_agg(json_build_object(\
       'oid', c.oid::int8, 'name', n.nspname || '.' || c.relname, 'kind', c.relkind, \
       'persistence', c.relpersistence, 'path', pg_relation_filepath(c.oid), \
       'am', coalesce(am.amname, ''), 'table', i.indrelid::int8, \
       'valid', coalesce(i.indisvalid AND i.indisready AND i.indislive, true), \
       'toast_of', (SELECT o.relnamespace::regnamespace::text || '.' || o.relname \
                    FROM pg_class o WHERE o.reltoastrelid = c.oid LIMIT 1))), '[]') \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_am am ON am.oid = c.relam \
     LEFT JOIN pg_index i ON i.indexrelid = c.oid \
     WHERE c.relkind IN ('r', 't', 'm', 'i', 'S')";

/// The catalogs' view of the copy, written beside it by the private
/// instance before it stops.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelationMap {
    pub block_size: usize,
    pub segment_blocks: u64,
    pub databases: Vec<DatabaseRelations>,
    /// Databases that allow no connections (template0): their catalogs
    /// cannot be read, so their relations are not checked here.
    pub not_connectable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseRelations {
    pub database: String,
    pub relations: Vec<Relation>,
}

/// One relation with storage, as `pg_class` and `pg_index` say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relation {
    pub oid: u32,
    /// `schema.name`.
    pub name: String,
    /// `relkind`: r table, t TOAST table, m materialized view, i index,
    /// S sequence.
    pub kind: String,
    /// `relpersistence`: p permanent, u unlogged, t temporary.
    pub persistence: String,
    /// `pg_relation_filepath`, relative to the data directory.
    pub path: String,
    /// The index's access method (empty for tables).
    #[serde(default)]
    pub am: String,
    /// An index's table.
    #[serde(default)]
    pub table: Option<u32>,
    /// An index that is valid, ready and live (a failed `CREATE INDEX
    /// CONCURRENTLY` leaves one that is not).
    #[serde(default = "yes")]
    pub valid: bool,
    /// A TOAST table's owner, `schema.name`.
    #[serde(default)]
    pub toast_of: Option<String>,
}

fn yes() -> bool {
    true
}

/// What the check found and what it covered.
#[derive(Debug, Default)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    /// Lines saying what was checked, by which method, and how much.
    pub coverage: Vec<String>,
    /// What no check here covered (one line each); empty when everything
    /// was.
    pub not_covered: Vec<String>,
}

/// Why a heap TID points at nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lost {
    PastEnd,
    NewPage,
    NoLinePointer,
    UnusedSlot,
    BadPage,
}

impl Lost {
    fn says(self) -> &'static str {
        match self {
            Lost::PastEnd => "into blocks past the table's end",
            Lost::NewPage => "into all-zero (new) pages",
            Lost::NoLinePointer => "past a page's last line pointer",
            Lost::UnusedSlot => "at unused line pointers",
            Lost::BadPage => "into pages that cannot be read",
        }
    }
}

/// One index's result.
#[derive(Debug, Default)]
struct IndexResult {
    index_pages: u64,
    entries: u64,
    heap_pages: u64,
    lost: BTreeMap<Lost, u64>,
    lost_blocks: Vec<u32>,
    /// More blocks lost rows than [`SAMPLE`] names.
    more_blocks: bool,
    lost_total: u64,
    /// Pages of the index or its table that did not parse.
    unreadable: Vec<String>,
}

impl IndexResult {
    /// Add what another piece of the same index found.
    fn absorb(&mut self, o: IndexResult) {
        self.index_pages += o.index_pages;
        self.entries += o.entries;
        self.heap_pages += o.heap_pages;
        for (k, n) in o.lost {
            *self.lost.entry(k).or_default() += n;
        }
        self.lost_total += o.lost_total;
        self.lost_blocks.extend(o.lost_blocks);
        self.lost_blocks.sort_unstable();
        self.lost_blocks.dedup();
        self.more_blocks |= o.more_blocks || self.lost_blocks.len() > SAMPLE;
        self.lost_blocks.truncate(SAMPLE);
        self.unreadable.extend(o.unreadable);
    }
}

struct Job<'a> {
    database: &'a str,
    index: &'a Relation,
    table: &'a Relation,
    index_dir: &'a DirIndex,
    table_dir: &'a DirIndex,
    index_blocks: u64,
    table_blocks: u64,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn table_label(t: &Relation) -> String {
    match &t.toast_of {
        Some(owner) => format!("{} (the TOAST table of {owner})", t.name),
        None => t.name.clone(),
    }
}

/// Check the stopped copy in `dir` against `map`, `workers` indexes at a
/// time. `stop` ends the work early (the caller went away).
pub fn check(dir: &Path, map: &RelationMap, workers: usize, stop: &AtomicBool) -> Outcome {
    let layout = Layout {
        block_size: map.block_size,
        segment_blocks: map.segment_blocks,
    };
    let mut out = Outcome::default();

    // The directories, each read once.
    let mut dirs: HashMap<&str, std::io::Result<DirIndex>> = HashMap::new();
    for db in &map.databases {
        for r in &db.relations {
            let (d, _) = split(&r.path);
            dirs.entry(d)
                .or_insert_with(|| DirIndex::read(&dir.join(d)));
        }
    }

    // Relation length audit: every permanent relation once (shared
    // catalogs appear in every database).
    let mut blocks: HashMap<&str, u64> = HashMap::new();
    let (mut audited, mut unlogged) = (0u64, 0u64);
    for db in &map.databases {
        for r in &db.relations {
            if r.persistence != "p" {
                unlogged += u64::from(r.persistence == "u");
                continue;
            }
            if blocks.contains_key(r.path.as_str()) {
                continue;
            }
            let (d, stem) = split(&r.path);
            let index = match &dirs[d] {
                Ok(i) => i,
                Err(e) => {
                    out.findings.push(Finding {
                        database: db.database.clone(),
                        relation: r.name.clone(),
                        kind: "check_failed".into(),
                        message: format!(
                            "cannot read the directory {}: {e}",
                            dir.join(d).display()
                        ),
                    });
                    blocks.insert(&r.path, 0);
                    continue;
                }
            };
            let a = relfile::audit(layout, index, stem);
            audited += 1;
            for p in &a.problems {
                out.findings.push(Finding {
                    database: db.database.clone(),
                    relation: r.name.clone(),
                    kind: p.kind().into(),
                    message: format!("{}: {p}", table_label(r)),
                });
            }
            blocks.insert(&r.path, a.nblocks);
        }
    }
    out.coverage.push(format!(
        "relation files: {audited} relations in {} databases audited for cut, missing and torn segments",
        map.databases.len()
    ));

    // Index → table, for the index kinds read here.
    let mut jobs = vec![];
    let mut not_checked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for db in &map.databases {
        let by_oid: HashMap<u32, &Relation> = db.relations.iter().map(|r| (r.oid, r)).collect();
        for r in db.relations.iter().filter(|r| r.kind == "i") {
            if r.persistence != "p" || !seen.insert(&r.path) {
                continue;
            }
            let table = r.table.and_then(|t| by_oid.get(&t)).copied();
            let why = match (r.am.as_str(), table) {
                // BRIN keeps block ranges, not row pointers.
                ("brin", _) => continue,
                (_, None) => Some("its table is not in the catalogs".to_owned()),
                _ if !r.valid => Some("invalid or not ready".to_owned()),
                ("btree" | "hash" | "gist", Some(_)) => None,
                (am, _) => Some(format!("{am} indexes")),
            };
            match (why, table) {
                (None, Some(t)) => {
                    let (id, _) = split(&r.path);
                    let (td, _) = split(&t.path);
                    let (Ok(index_dir), Ok(table_dir)) = (&dirs[id], &dirs[td]) else {
                        continue; // said above, as check_failed
                    };
                    jobs.push(Job {
                        database: &db.database,
                        index: r,
                        table: t,
                        index_dir,
                        table_dir,
                        index_blocks: blocks.get(r.path.as_str()).copied().unwrap_or(0),
                        table_blocks: blocks.get(t.path.as_str()).copied().unwrap_or(0),
                    });
                }
                (Some(why), _) => not_checked
                    .entry(why)
                    .or_default()
                    .push(format!("{}.{}", db.database, r.name)),
                (None, None) => unreachable!("an index without a table has a reason"),
            }
        }
    }

    // Pieces of PIECE index blocks, biggest indexes first, so one big
    // index keeps every worker busy.
    let mut pieces: Vec<(usize, std::ops::Range<u64>)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(i, j)| {
            (0..j.index_blocks.div_ceil(PIECE).max(1))
                .map(move |p| (i, p * PIECE..((p + 1) * PIECE).min(j.index_blocks)))
        })
        .collect();
    pieces.sort_by_key(|(i, _)| std::cmp::Reverse(jobs[*i].index_blocks));
    let results: Vec<Mutex<Option<IndexResult>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, pieces.len().max(1)) {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some((i, blocks)) = pieces.get(n) else {
                        break;
                    };
                    let r = check_index(&jobs[*i], blocks.clone(), layout, stop);
                    let mut slot = results[*i].lock().unwrap_or_else(|p| p.into_inner());
                    match slot.as_mut() {
                        Some(sofar) => sofar.absorb(r),
                        None => *slot = Some(r),
                    }
                }
            });
        }
    });

    let (mut index_pages, mut entries, mut heap_pages, mut tables) = (0, 0, 0, vec![]);
    for (job, r) in jobs.iter().zip(results) {
        let Some(r) = r.into_inner().unwrap_or_else(|p| p.into_inner()) else {
            continue;
        };
        index_pages += r.index_pages;
        entries += r.entries;
        heap_pages += r.heap_pages;
        tables.push(job.table.oid);
        if r.lost_total > 0 {
            let how: Vec<String> = r
                .lost
                .iter()
                .map(|(k, n)| format!("{n} {}", k.says()))
                .collect();
            let mut blocks: Vec<String> = r.lost_blocks.iter().map(u32::to_string).collect();
            if r.more_blocks {
                blocks.push("...".into());
            }
            out.findings.push(Finding {
                database: job.database.to_owned(),
                relation: job.table.name.clone(),
                kind: "lost_rows".into(),
                message: format!(
                    "index {} points at {} row(s) that table {} does not have ({}); blocks {}; the table has {} pages",
                    job.index.name,
                    r.lost_total,
                    table_label(job.table),
                    how.join(", "),
                    blocks.join(", "),
                    job.table_blocks
                ),
            });
        }
        for u in r.unreadable {
            out.findings.push(Finding {
                database: job.database.to_owned(),
                relation: job.index.name.clone(),
                kind: "unreadable_page".into(),
                message: u,
            });
        }
    }
    tables.sort_unstable();
    tables.dedup();
    out.coverage.push(format!(
        "lost rows: {} indexes (B-tree, hash, GiST) of {} tables: {index_pages} index pages, {entries} entries, {heap_pages} table pages read",
        jobs.len(),
        tables.len()
    ));
    if stop.load(Ordering::Relaxed) {
        out.not_covered
            .push("the lost-rows check was stopped before it ended".into());
    }
    for (why, names) in not_checked {
        let mut list = names
            .iter()
            .take(SAMPLE)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > SAMPLE {
            list.push_str(", ...");
        }
        out.not_covered.push(format!(
            "{} indexes not checked for lost rows ({why}): {list}",
            names.len()
        ));
    }
    if unlogged > 0 {
        out.coverage.push(format!(
            "{unlogged} unlogged relations: reset to empty by recovery on a copy, nothing to check"
        ));
    }
    if !map.not_connectable.is_empty() {
        out.coverage.push(format!(
            "databases that allow no connections, not read: {}",
            map.not_connectable.join(", ")
        ));
    }
    out
}

/// Read one B-tree's leaves in block order, and look up their TIDs in the
/// table chunk by chunk.
fn check_index(
    job: &Job,
    blocks: std::ops::Range<u64>,
    layout: Layout,
    stop: &AtomicBool,
) -> IndexResult {
    let mut r = IndexResult::default();
    let (_, istem) = split(&job.index.path);
    let (_, tstem) = split(&job.table.path);
    let mut index = Reader::new(job.index_dir, istem, layout);
    let mut heap = Reader::new(job.table_dir, tstem, layout);
    let mut buf = vec![0u8; layout.block_size];
    let mut tids: Vec<Tid> = Vec::new();
    let mut keys: Vec<u64> = Vec::new();
    let entries_of: fn(&Page, &mut Vec<Tid>) -> Result<u64, PageError> = match job.index.am.as_str()
    {
        "hash" => hash_gist::hash_tids,
        "gist" => hash_gist::gist_tids,
        _ => btree::leaf_tids,
    };
    // Block 0 too: a GiST index's root is there (B-tree and hash keep a
    // metapage there, which holds no entries).
    for b in blocks {
        if stop.load(Ordering::Relaxed) {
            return r;
        }
        if let Err(e) = index.read(b, &mut buf) {
            r.unreadable.push(format!(
                "index block {b} of {} cannot be read: {e}",
                index.file_of(b).display()
            ));
            continue;
        }
        r.index_pages += 1;
        let page = match pages::parse(&buf, layout.block_size) {
            Ok(Parsed::Page(p)) => p,
            // A page added to the index and never used (a crash during a
            // split): nothing points from it.
            Ok(Parsed::New) => continue,
            Err(e) => {
                r.unreadable.push(format!("index block {b}: {e}"));
                continue;
            }
        };
        tids.clear();
        match entries_of(&page, &mut tids) {
            Ok(n) => r.entries += n,
            Err(e) => r.unreadable.push(format!("index block {b}: {e}")),
        }
        keys.extend(tids.iter().map(|t| t.key()));
        if keys.len() >= CHUNK {
            look_up(&mut keys, &mut heap, job.table_blocks, layout, &mut r);
        }
    }
    look_up(&mut keys, &mut heap, job.table_blocks, layout, &mut r);
    r
}

/// Look up a chunk of TIDs in the table, each page once; empties `keys`.
fn look_up(
    keys: &mut Vec<u64>,
    heap: &mut Reader,
    table_blocks: u64,
    layout: Layout,
    r: &mut IndexResult,
) {
    keys.sort_unstable();
    keys.dedup();
    let mut buf = vec![0u8; layout.block_size];
    let mut i = 0;
    while i < keys.len() {
        let block = Tid::from_key(keys[i]).block;
        let end = i + keys[i..].partition_point(|k| Tid::from_key(*k).block == block);
        let group = &keys[i..end];
        i = end;
        let mut lose = |why: Lost, n: u64| {
            *r.lost.entry(why).or_default() += n;
            r.lost_total += n;
            if !r.lost_blocks.contains(&block) {
                if r.lost_blocks.len() < SAMPLE {
                    r.lost_blocks.push(block);
                } else {
                    r.more_blocks = true;
                }
            }
        };
        if block as u64 >= table_blocks {
            lose(Lost::PastEnd, group.len() as u64);
            continue;
        }
        if let Err(e) = heap.read(block as u64, &mut buf) {
            r.unreadable.push(format!(
                "table block {block} of {} cannot be read: {e}",
                heap.file_of(block as u64).display()
            ));
            lose(Lost::BadPage, group.len() as u64);
            continue;
        }
        r.heap_pages += 1;
        let page = match pages::parse(&buf, layout.block_size) {
            Ok(Parsed::Page(p)) => p,
            Ok(Parsed::New) => {
                lose(Lost::NewPage, group.len() as u64);
                continue;
            }
            Err(e) => {
                r.unreadable.push(format!("table block {block}: {e}"));
                lose(Lost::BadPage, group.len() as u64);
                continue;
            }
        };
        for k in group {
            match page.line_pointer(Tid::from_key(*k).offset) {
                None => lose(Lost::NoLinePointer, 1),
                Some(lp) if lp.flags == LpFlags::Unused => lose(Lost::UnusedSlot, 1),
                Some(_) => {}
            }
        }
    }
    keys.clear();
}

/// Where the private instance leaves the relation map of the copy `dir`.
pub fn map_path(dir: &Path) -> PathBuf {
    dir.with_file_name("relations.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real B-tree leaf and heap page (fixtures from a real server), put
    /// in files named as `pg_relation_filepath` names them.
    fn copy_with(heap_pages: &[&[u8]], index_pages: &[&[u8]]) -> (tempfile::TempDir, RelationMap) {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("base/5");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("100"), heap_pages.concat()).unwrap();
        std::fs::write(db.join("200"), index_pages.concat()).unwrap();
        let map = RelationMap {
            block_size: 8192,
            segment_blocks: 131072,
            databases: vec![DatabaseRelations {
                database: "postgres".into(),
                relations: vec![
                    rel(100, "public.t", "r", "", None),
                    rel(200, "public.t_pkey", "i", "btree", Some(100)),
                    rel(300, "public.t_gin", "i", "gin", Some(100)),
                ],
            }],
            not_connectable: vec!["template0".into()],
        };
        (t, map)
    }

    fn rel(oid: u32, name: &str, kind: &str, am: &str, table: Option<u32>) -> Relation {
        Relation {
            oid,
            name: name.into(),
            kind: kind.into(),
            persistence: "p".into(),
            path: format!("base/5/{oid}"),
            am: am.into(),
            table,
            valid: true,
            toast_of: None,
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        super::super::pages::tests::fixture(name)
    }

    /// The leaf fixture's TIDs all lie in the first blocks of its table.
    fn leaf_blocks() -> u32 {
        let leaf = fixture("btree_leaf.page");
        let Ok(Parsed::Page(p)) = pages::parse(&leaf, 8192) else {
            panic!()
        };
        let mut tids = vec![];
        btree::leaf_tids(&p, &mut tids).unwrap();
        tids.iter().map(|t| t.block).max().unwrap() + 1
    }

    #[test]
    fn a_zeroed_or_missing_table_page_is_lost_rows_and_gin_is_named_not_covered() {
        let (meta, leaf) = (fixture("btree_meta.page"), fixture("btree_leaf.page"));
        let zero = vec![0u8; 8192];
        let n = leaf_blocks();
        // Block 0 zeroed, the rest cut off: every entry points at nothing.
        let (t, mut map) = copy_with(&[&zero], &[&meta, &leaf]);
        // The GIN index's file exists (the audit reads it).
        std::fs::write(t.path().join("base/5/300"), &meta).unwrap();
        let o = check(t.path(), &map, 2, &AtomicBool::new(false));
        let lost: Vec<_> = o
            .findings
            .iter()
            .filter(|f| f.kind == "lost_rows")
            .collect();
        assert_eq!(lost.len(), 1, "{:?}", o.findings);
        assert_eq!(lost[0].relation, "public.t");
        assert!(
            lost[0].message.contains("index public.t_pkey"),
            "{}",
            lost[0].message
        );
        assert!(
            lost[0].message.contains("all-zero (new) pages"),
            "{}",
            lost[0].message
        );
        if n > 1 {
            assert!(
                lost[0].message.contains("past the table's end"),
                "{}",
                lost[0].message
            );
        }
        assert_eq!(o.not_covered.len(), 1, "{:?}", o.not_covered);
        assert!(
            o.not_covered[0].contains("postgres.public.t_gin"),
            "{:?}",
            o.not_covered
        );
        assert!(o.coverage.iter().any(|c| c.contains("template0")));
        // A heap of pages whose line pointers are all there: the fixture heap
        // page is block 0 of the table the leaf came from only in part, so
        // build the expectation from the leaf itself: no table at all is
        // past-the-end for every entry.
        map.databases[0].relations.retain(|r| r.oid != 300);
        std::fs::write(t.path().join("base/5/100"), b"").unwrap();
        let o = check(t.path(), &map, 1, &AtomicBool::new(false));
        let lost: Vec<_> = o
            .findings
            .iter()
            .filter(|f| f.kind == "lost_rows")
            .collect();
        assert!(
            lost[0].message.contains("past the table's end"),
            "{}",
            lost[0].message
        );
        assert!(o.not_covered.is_empty());
    }

    #[test]
    fn pieces_of_one_index_add_up_and_name_the_lowest_blocks() {
        let piece = |blocks: &[u32], n: u64| IndexResult {
            index_pages: 2,
            entries: 10,
            lost: BTreeMap::from([(Lost::NewPage, n)]),
            lost_blocks: blocks.to_vec(),
            lost_total: n,
            ..Default::default()
        };
        let mut a = piece(&[7, 9], 3);
        a.absorb(piece(&[1, 2, 9, 12], 4));
        assert_eq!(a.lost_total, 7);
        assert_eq!(a.lost[&Lost::NewPage], 7);
        assert_eq!(a.index_pages, 4);
        assert_eq!(a.lost_blocks, vec![1, 2, 7, 9, 12]);
        assert!(!a.more_blocks);
        a.absorb(piece(&[0], 1));
        assert_eq!(a.lost_blocks, vec![0, 1, 2, 7, 9]);
        assert!(a.more_blocks);
    }

    #[test]
    fn entries_that_find_their_rows_are_clean() {
        // The posting-list leaf and the heap page come from the same table
        // `t` of the fixture script; its entries in block 0 are found there.
        let (meta, leaf, heap) = (
            fixture("btree_meta.page"),
            fixture("btree_leaf_posting.page"),
            fixture("heap.page"),
        );
        let Ok(Parsed::Page(p)) = pages::parse(&leaf, 8192) else {
            panic!()
        };
        let mut tids = vec![];
        btree::leaf_tids(&p, &mut tids).unwrap();
        // Keep only what block 0 holds: a leaf page that points there only.
        let (t, map) = copy_with(&[&heap], &[&meta, &leaf]);
        let o = check(t.path(), &map, 1, &AtomicBool::new(false));
        let in_block0 = tids.iter().filter(|t| t.block == 0).count();
        assert!(in_block0 > 0);
        // Entries into blocks 1.. are past this one-page table's end; none
        // of the block-0 ones is lost.
        let lost: Vec<_> = o
            .findings
            .iter()
            .filter(|f| f.kind == "lost_rows")
            .collect();
        let past = tids.iter().filter(|t| t.block > 0).count();
        if past == 0 {
            assert!(lost.is_empty(), "{lost:?}");
        } else {
            assert!(
                lost[0]
                    .message
                    .contains(&format!("points at {past} row(s)")),
                "{}",
                lost[0].message
            );
            assert!(!lost[0].message.contains("unused"), "{}", lost[0].message);
            assert!(!lost[0].message.contains("new"), "{}", lost[0].message);
        }
    }
}
