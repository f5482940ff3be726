//! PostgreSQL's on-disk page layout, read without the server (PostgreSQL 15:
//! `storage/bufpage.h`, `storage/itemid.h`, `storage/itemptr.h`; B-tree
//! pages in [`btree`], hash and GiST in [`hash_gist`], relation files and
//! their segments in [`relfile`]).
//!
//! Every reader here takes untrusted bytes: a page that does not parse is
//! a [`PageError`] naming what was wrong, never a panic, so a damaged copy
//! gives a finding. Integers are the server's native byte order; Tandem's
//! agents run on little-endian machines (x86-64, aarch64), as the servers
//! whose files they read.

pub mod btree;
pub mod hash_gist;
pub mod relfile;

/// `SizeOfPageHeaderData`: the fixed part of every page header.
pub const PAGE_HEADER: usize = 24;
/// `PG_PAGE_LAYOUT_VERSION` (the low byte of `pd_pagesize_version`).
const LAYOUT_VERSION: u16 = 4;
/// `PD_VALID_FLAG_BITS`: flags a valid page header may carry.
const VALID_FLAGS: u16 = 0x0007;
/// `MaxHeapTuplesPerPage` for 8 kB pages: no heap line pointer is higher.
pub const MAX_HEAP_TUPLES_8K: u16 = 291;

/// Why a page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page is {len} bytes, not {expected}")]
    Size { len: usize, expected: usize },
    #[error("page header is not valid ({0})")]
    Header(String),
    #[error("page is marked new (pd_upper 0) but is not all zeros")]
    NewNotZero,
    #[error("line pointer {item} lies outside the page ({off}+{len})")]
    Item { item: u16, off: u16, len: u16 },
    #[error("{0}")]
    Layout(String),
}

/// A page as PostgreSQL would read it.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// Never initialised: all zeros (`PageIsNew`). Valid to PostgreSQL, and
    /// empty: a row that should be here is not.
    New,
    Page(Page<'a>),
}

/// A page with a valid header.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    bytes: &'a [u8],
    lower: u16,
    special: u16,
}

/// `lp_flags` of a line pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpFlags {
    Unused,
    Normal,
    Redirect,
    Dead,
}

/// One line pointer (`ItemIdData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinePointer {
    pub off: u16,
    pub flags: LpFlags,
    pub len: u16,
}

/// A row's address (`ItemPointerData`): block and line pointer number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

impl Tid {
    /// Read the six bytes of an `ItemPointerData` (`bi_hi`, `bi_lo`,
    /// `ip_posid`).
    pub fn read(b: &[u8]) -> Option<Tid> {
        let b = b.get(..6)?;
        let hi = u16::from_ne_bytes([b[0], b[1]]) as u32;
        let lo = u16::from_ne_bytes([b[2], b[3]]) as u32;
        Some(Tid {
            block: (hi << 16) | lo,
            offset: u16::from_ne_bytes([b[4], b[5]]),
        })
    }

    /// Packed into one sortable word (block first).
    pub fn key(self) -> u64 {
        ((self.block as u64) << 16) | self.offset as u64
    }

    pub fn from_key(k: u64) -> Tid {
        Tid {
            block: (k >> 16) as u32,
            offset: (k & 0xFFFF) as u16,
        }
    }
}

impl std::fmt::Display for Tid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},{})", self.block, self.offset)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Read one page of `block_size` bytes the way `PageIsVerifiedExtended`
/// judges a header (the checksum is `pg_checksums`' business).
pub fn parse(bytes: &[u8], block_size: usize) -> Result<Parsed<'_>, PageError> {
    if bytes.len() != block_size {
        return Err(PageError::Size {
            len: bytes.len(),
            expected: block_size,
        });
    }
    let upper = u16_at(bytes, 14);
    if upper == 0 {
        return if bytes.iter().all(|&b| b == 0) {
            Ok(Parsed::New)
        } else {
            Err(PageError::NewNotZero)
        };
    }
    let flags = u16_at(bytes, 10);
    let lower = u16_at(bytes, 12);
    let special = u16_at(bytes, 16);
    let size_version = u16_at(bytes, 18);
    let bad = |why: String| Err(PageError::Header(why));
    if flags & !VALID_FLAGS != 0 {
        return bad(format!("flags {flags:#x}"));
    }
    if (lower as usize) < PAGE_HEADER || lower > upper || upper > special {
        return bad(format!(
            "pd_lower {lower}, pd_upper {upper}, pd_special {special}"
        ));
    }
    if special as usize > block_size || !special.is_multiple_of(8) {
        return bad(format!("pd_special {special}"));
    }
    if (size_version & 0xFF00) as usize != block_size || size_version & 0x00FF != LAYOUT_VERSION {
        return bad(format!("pd_pagesize_version {size_version:#x}"));
    }
    Ok(Parsed::Page(Page {
        bytes,
        lower,
        special,
    }))
}

impl<'a> Page<'a> {
    /// `PageGetMaxOffsetNumber`: the number of line pointers.
    pub fn max_offset(&self) -> u16 {
        ((self.lower as usize - PAGE_HEADER) / 4) as u16
    }

    /// Line pointer `n` (1-based), or None past the last one.
    pub fn line_pointer(&self, n: u16) -> Option<LinePointer> {
        if n == 0 || n > self.max_offset() {
            return None;
        }
        let raw = u32_at(self.bytes, PAGE_HEADER + 4 * (n as usize - 1));
        Some(LinePointer {
            off: (raw & 0x7FFF) as u16,
            flags: match (raw >> 15) & 0x3 {
                0 => LpFlags::Unused,
                1 => LpFlags::Normal,
                2 => LpFlags::Redirect,
                _ => LpFlags::Dead,
            },
            len: (raw >> 17) as u16,
        })
    }

    /// The bytes line pointer `n` points at, checked to lie between the
    /// line pointer array and the special space.
    pub fn item(&self, n: u16) -> Result<&'a [u8], PageError> {
        let lp = self.line_pointer(n).ok_or_else(|| {
            PageError::Layout(format!(
                "no line pointer {n} (the page has {})",
                self.max_offset()
            ))
        })?;
        let (off, len) = (lp.off as usize, lp.len as usize);
        if off < self.lower as usize || off + len > self.special as usize || len == 0 {
            return Err(PageError::Item {
                item: n,
                off: lp.off,
                len: lp.len,
            });
        }
        Ok(&self.bytes[off..off + len])
    }

    /// The special space at the end of the page (index pages keep their
    /// own data there).
    pub fn special(&self) -> &'a [u8] {
        &self.bytes[self.special as usize..]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/engine/fixtures/pages")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// A fixture page that must parse (not new).
    pub(crate) fn page(bytes: &[u8]) -> Page<'_> {
        match parse(bytes, 8192).unwrap() {
            Parsed::Page(p) => p,
            Parsed::New => panic!("a new page"),
        }
    }

    /// A TID as pageinspect prints it: `(0,7)`, possibly quoted.
    pub(crate) fn tid(s: &str) -> Tid {
        let (b, o) = s
            .trim_matches(|c| c == '(' || c == ')' || c == '"')
            .split_once(',')
            .unwrap();
        Tid {
            block: b.parse().unwrap(),
            offset: o.parse().unwrap(),
        }
    }

    fn text(name: &str) -> String {
        String::from_utf8(fixture(name)).unwrap()
    }

    /// `lp lp_flags` lines from pageinspect's `heap_page_items`.
    fn expected_flags(name: &str) -> Vec<(u16, u16)> {
        text(name)
            .lines()
            .map(|l| {
                let mut w = l.split_whitespace().map(|w| w.parse::<u16>().unwrap());
                (w.next().unwrap(), w.next().unwrap())
            })
            .collect()
    }

    fn flag_number(f: LpFlags) -> u16 {
        match f {
            LpFlags::Unused => 0,
            LpFlags::Normal => 1,
            LpFlags::Redirect => 2,
            LpFlags::Dead => 3,
        }
    }

    #[test]
    fn heap_and_toast_line_pointers_match_pageinspect() {
        for (page, items) in [("heap.page", "heap.items"), ("toast.page", "toast.items")] {
            let bytes = fixture(page);
            let Parsed::Page(p) = parse(&bytes, 8192).unwrap() else {
                panic!("{page} is not new");
            };
            let want = expected_flags(items);
            assert_eq!(p.max_offset() as usize, want.len(), "{page}");
            for (lp, flags) in want {
                let got = p.line_pointer(lp).unwrap();
                assert_eq!(flag_number(got.flags), flags, "{page} lp {lp}");
                if got.flags == LpFlags::Normal {
                    assert!(p.item(lp).is_ok(), "{page} lp {lp}");
                }
            }
            assert_eq!(p.line_pointer(p.max_offset() + 1), None);
            assert_eq!(p.line_pointer(0), None);
        }
    }

    #[test]
    fn a_zeroed_page_is_new_and_a_damaged_header_is_an_error() {
        let zero = vec![0u8; 8192];
        assert!(matches!(parse(&zero, 8192), Ok(Parsed::New)));
        let mut b = zero.clone();
        b[100] = 1;
        assert_eq!(parse(&b, 8192).unwrap_err(), PageError::NewNotZero);
        let mut h = fixture("heap.page");
        h[12] = 0xFF; // pd_lower past pd_upper
        h[13] = 0x7F;
        assert!(matches!(parse(&h, 8192), Err(PageError::Header(_))));
        assert!(matches!(
            parse(&h[..100], 8192),
            Err(PageError::Size { len: 100, .. })
        ));
    }

    #[test]
    fn tids_pack_in_block_order() {
        let a = Tid {
            block: 70000,
            offset: 3,
        };
        let b = Tid {
            block: 70001,
            offset: 1,
        };
        assert!(a.key() < b.key());
        assert_eq!(Tid::from_key(a.key()), a);
        assert_eq!(
            Tid::read(&[1, 0, 0x70, 0x11, 3, 0]).unwrap().block,
            0x1_1170
        );
        assert_eq!(Tid::read(&[1, 0]), None);
    }
}
