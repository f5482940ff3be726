//! A relation's files on disk (PostgreSQL's `md.c` layout): the main fork in
//! segments `N`, `N.1`, `N.2`, ... of `segment_blocks` pages each, and the
//! visibility map (`N_vm`) and free space map (`N_fsm`) forks beside it.
//!
//! [`audit`] says what PostgreSQL itself would not: a segment cut short
//! while later ones exist (PostgreSQL then sees the relation end early, and
//! every row after the cut is silently gone), a missing segment, a file
//! that is not a whole number of pages, a map fork longer than the main
//! fork can need (the table was longer once). Segments after the end that
//! are empty are normal: PostgreSQL truncates inactive segments to zero
//! length instead of removing them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Page and segment size of the cluster the files belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub block_size: usize,
    pub segment_blocks: u64,
}

impl Layout {
    /// Heap blocks one visibility map page covers (`HEAPBLOCKS_PER_PAGE`:
    /// two bits per block after a MAXALIGNed page header).
    fn vm_blocks_per_page(&self) -> u64 {
        (self.block_size as u64 - super::PAGE_HEADER as u64) * 4
    }

    /// Leaf slots of one free space map page (`SlotsPerFSMPage`).
    fn fsm_slots(&self) -> u64 {
        let bs = self.block_size as u64;
        let nodes = bs - super::PAGE_HEADER as u64 - 4;
        nodes - (bs / 2 - 1)
    }

    /// `fsm_logical_to_physical` for a bottom-level page: its block number
    /// in the FSM fork, counting the upper-level pages before it.
    fn fsm_leaf_block(&self, leaf: u64) -> u64 {
        let depth = if self.fsm_slots() >= 1626 { 3 } else { 4 };
        let (mut pages, mut n) = (0, leaf);
        for _ in 0..depth {
            pages += n + 1;
            n /= self.fsm_slots();
        }
        pages - 1
    }

    /// The most pages each map fork can have for a main fork of `nblocks`
    /// (with the slack a truncation leaves: the map page of the first
    /// block past the end may stay).
    fn map_limits(&self, nblocks: u64) -> (u64, u64) {
        let vm = nblocks / self.vm_blocks_per_page() + 1;
        let fsm = self.fsm_leaf_block(nblocks / self.fsm_slots()) + 1;
        (vm, fsm)
    }
}

/// The relation files of one directory (`base/<db>`, `global`, a
/// tablespace's), read once: name stem and fork → segment → bytes.
#[derive(Debug, Default)]
pub struct DirIndex {
    dir: PathBuf,
    files: HashMap<String, BTreeMap<u32, u64>>,
}

impl DirIndex {
    pub fn read(dir: &Path) -> io::Result<DirIndex> {
        let mut files: HashMap<String, BTreeMap<u32, u64>> = HashMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let (stem, seg) = match name.rsplit_once('.') {
                Some((s, n)) => match n.parse::<u32>() {
                    Ok(n) => (s.to_owned(), n),
                    Err(_) => continue,
                },
                None => (name, 0),
            };
            let len = e.metadata()?.len();
            files.entry(stem).or_default().insert(seg, len);
        }
        Ok(DirIndex {
            dir: dir.to_owned(),
            files,
        })
    }

    fn segments(&self, stem: &str) -> Option<&BTreeMap<u32, u64>> {
        self.files.get(stem)
    }
}

/// What is wrong with a relation's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The first file of the main fork is not there.
    NoFile { file: PathBuf },
    /// A file that is not a whole number of pages.
    PartialPage { file: PathBuf, bytes: u64 },
    /// A segment shorter than a full one, with data in segments after it:
    /// the pages between are gone.
    ShortSegment {
        file: PathBuf,
        blocks: u64,
        later: PathBuf,
    },
    /// A segment missing while later ones hold data.
    MissingSegment { file: PathBuf, later: PathBuf },
    /// A map fork longer than a main fork of this length can need.
    MapTooLong {
        file: PathBuf,
        pages: u64,
        most: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NoFile { file } => write!(f, "its file {} is missing", file.display()),
            Problem::PartialPage { file, bytes } => write!(
                f,
                "{} is {bytes} bytes, not a whole number of pages (a torn or cut file)",
                file.display()
            ),
            Problem::ShortSegment {
                file,
                blocks,
                later,
            } => write!(
                f,
                "segment {} holds only {blocks} pages but {} follows: the pages between are missing, and PostgreSQL sees the relation end at the cut",
                file.display(),
                later.display()
            ),
            Problem::MissingSegment { file, later } => write!(
                f,
                "segment {} is missing but {} follows: PostgreSQL sees the relation end there",
                file.display(),
                later.display()
            ),
            Problem::MapTooLong { file, pages, most } => write!(
                f,
                "{} has {pages} pages, more than the {most} the table's length can need: the table was longer",
                file.display()
            ),
        }
    }
}

impl Problem {
    /// The finding kind: a missing file or segment, or a cut one.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NoFile { .. } | Problem::MissingSegment { .. } => "missing_segment",
            _ => "truncated_relation",
        }
    }
}

/// A relation's main fork as PostgreSQL sees it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Pages PostgreSQL would read (`mdnblocks`: up to the first short
    /// or missing segment).
    pub nblocks: u64,
    pub problems: Vec<Problem>,
}

fn seg_name(dir: &Path, stem: &str, seg: u32) -> PathBuf {
    if seg == 0 {
        dir.join(stem)
    } else {
        dir.join(format!("{stem}.{seg}"))
    }
}

/// Audit the files of relation file node `stem` in `index`'s directory.
pub fn audit(layout: Layout, index: &DirIndex, stem: &str) -> Audit {
    let dir = &index.dir;
    let mut problems = vec![];
    let bs = layout.block_size as u64;
    let Some(segs) = index.segments(stem).filter(|s| s.contains_key(&0)) else {
        return Audit {
            nblocks: 0,
            problems: vec![Problem::NoFile {
                file: dir.join(stem),
            }],
        };
    };
    for (&seg, &bytes) in segs {
        if !bytes.is_multiple_of(bs) {
            problems.push(Problem::PartialPage {
                file: seg_name(dir, stem, seg),
                bytes,
            });
        }
    }
    // Walk the segments as md.c does: a full one means another may follow.
    let full = layout.segment_blocks * bs;
    let mut nblocks = 0;
    let mut end_seg = 0;
    loop {
        match segs.get(&end_seg) {
            Some(&b) if b >= full => {
                nblocks += layout.segment_blocks;
                end_seg += 1;
            }
            Some(&b) => {
                nblocks += b / bs;
                break;
            }
            None => break,
        }
    }
    if let Some((&later, _)) = segs.range(end_seg + 1..).find(|(_, b)| **b > 0) {
        let file = seg_name(dir, stem, end_seg);
        let later = seg_name(dir, stem, later);
        problems.push(match segs.get(&end_seg) {
            Some(&b) => Problem::ShortSegment {
                file,
                blocks: b / bs,
                later,
            },
            None => Problem::MissingSegment { file, later },
        });
    }
    let (vm_most, fsm_most) = layout.map_limits(nblocks);
    for (fork, most) in [("vm", vm_most), ("fsm", fsm_most)] {
        let fstem = format!("{stem}_{fork}");
        if let Some(f) = index.segments(&fstem) {
            let pages: u64 = f.values().map(|b| b / bs).sum();
            if pages > most {
                problems.push(Problem::MapTooLong {
                    file: dir.join(&fstem),
                    pages,
                    most,
                });
            }
        }
    }
    Audit { nblocks, problems }
}

/// Reads pages of one relation's main fork, opening segments as needed.
pub struct Reader {
    dir: PathBuf,
    stem: String,
    layout: Layout,
    open: HashMap<u32, File>,
}

impl Reader {
    pub fn new(index: &DirIndex, stem: &str, layout: Layout) -> Reader {
        Reader {
            dir: index.dir.clone(),
            stem: stem.to_owned(),
            layout,
            open: HashMap::new(),
        }
    }

    /// Read page `block` into `buf` (one page long).
    pub fn read(&mut self, block: u64, buf: &mut [u8]) -> io::Result<()> {
        let seg = (block / self.layout.segment_blocks) as u32;
        let at = (block % self.layout.segment_blocks) * self.layout.block_size as u64;
        let f = match self.open.entry(seg) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(File::open(seg_name(&self.dir, &self.stem, seg))?)
            }
        };
        f.read_exact_at(buf, at)
    }

    /// The path of the segment holding `block`, for messages.
    pub fn file_of(&self, block: u64) -> PathBuf {
        seg_name(
            &self.dir,
            &self.stem,
            (block / self.layout.segment_blocks) as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Layout = Layout {
        block_size: 8192,
        segment_blocks: 4,
    };

    fn files(spec: &[(&str, u64)]) -> (tempfile::TempDir, DirIndex) {
        let t = tempfile::tempdir().unwrap();
        for (name, bytes) in spec {
            let f = File::create(t.path().join(name)).unwrap();
            f.set_len(*bytes).unwrap();
        }
        let i = DirIndex::read(t.path()).unwrap();
        (t, i)
    }

    const P: u64 = 8192;

    #[test]
    fn whole_segments_and_empty_inactive_ones_are_fine() {
        let (_t, i) = files(&[
            ("100", 4 * P),
            ("100.1", 4 * P),
            ("100.2", 2 * P),
            ("100.3", 0),
            ("100_vm", P),
            ("100_fsm", 3 * P),
        ]);
        let a = audit(L, &i, "100");
        assert_eq!(a.nblocks, 10);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        // Exactly one full segment: the relation ends there.
        let (_t, i) = files(&[("7", 4 * P)]);
        assert_eq!(
            audit(L, &i, "7"),
            Audit {
                nblocks: 4,
                problems: vec![]
            }
        );
    }

    #[test]
    fn a_short_or_missing_middle_segment_and_a_torn_file_are_found() {
        let (t, i) = files(&[("100", 4 * P), ("100.1", 3 * P), ("100.2", 2 * P)]);
        let a = audit(L, &i, "100");
        assert_eq!(a.nblocks, 7);
        assert_eq!(
            a.problems,
            vec![Problem::ShortSegment {
                file: t.path().join("100.1"),
                blocks: 3,
                later: t.path().join("100.2")
            }]
        );
        assert_eq!(a.problems[0].kind(), "truncated_relation");
        let (t, i) = files(&[("100", 4 * P), ("100.2", P)]);
        let a = audit(L, &i, "100");
        assert_eq!(a.nblocks, 4);
        assert_eq!(
            a.problems,
            vec![Problem::MissingSegment {
                file: t.path().join("100.1"),
                later: t.path().join("100.2")
            }]
        );
        assert_eq!(a.problems[0].kind(), "missing_segment");
        let (_t, i) = files(&[("100", 2 * P + 100)]);
        let a = audit(L, &i, "100");
        assert_eq!(a.nblocks, 2);
        assert!(
            matches!(a.problems[..], [Problem::PartialPage { bytes, .. }] if bytes == 2 * P + 100)
        );
        let (_t, i) = files(&[("5", P)]);
        assert!(matches!(
            audit(L, &i, "9").problems[..],
            [Problem::NoFile { .. }]
        ));
    }

    #[test]
    fn map_forks_longer_than_the_table_can_need_are_found() {
        let (_t, i) = files(&[("100", P), ("100_vm", 2 * P), ("100_fsm", 3 * P)]);
        let a = audit(L, &i, "100");
        assert!(
            matches!(
                a.problems[..],
                [Problem::MapTooLong {
                    pages: 2,
                    most: 1,
                    ..
                }]
            ),
            "{:?}",
            a.problems
        );
        // The FSM: a root, a middle and one leaf page per 4069 blocks.
        assert_eq!(L.fsm_slots(), 4069);
        assert_eq!(L.fsm_leaf_block(0), 2);
        assert_eq!(L.fsm_leaf_block(1), 3);
        assert_eq!(L.vm_blocks_per_page(), 32672);
    }

    #[test]
    fn the_reader_finds_blocks_in_their_segments() {
        let t = tempfile::tempdir().unwrap();
        let mut seg1 = vec![0u8; 2 * P as usize];
        seg1[P as usize] = 42; // block 5 = segment 1, page 1
        std::fs::write(t.path().join("9"), vec![0u8; 4 * P as usize]).unwrap();
        std::fs::write(t.path().join("9.1"), &seg1).unwrap();
        let i = DirIndex::read(t.path()).unwrap();
        let mut r = Reader::new(&i, "9", L);
        let mut buf = vec![0u8; P as usize];
        r.read(5, &mut buf).unwrap();
        assert_eq!(buf[0], 42);
        assert!(r.read(6, &mut buf).is_err());
        assert_eq!(r.file_of(5), t.path().join("9.1"));
    }
}
