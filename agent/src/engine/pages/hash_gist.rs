//! Hash and GiST index pages (PostgreSQL 15 `access/hash.h`,
//! `access/gist.h`): which heap rows their entries point at. Both keep
//! plain index tuples whose `t_tid` is the row's address: every entry of a
//! hash bucket or overflow page, and every entry of a GiST leaf.

use super::{LpFlags, Page, PageError, Tid};

/// Both keep a 16-byte special space ending in a page id.
const SPECIAL: usize = 16;
const HASH_PAGE_ID: u16 = 0xFF80;
const GIST_PAGE_ID: u16 = 0xFF81;
/// `LH_OVERFLOW_PAGE | LH_BUCKET_PAGE`: the hash pages that hold entries.
const LH_ENTRIES: u16 = (1 << 0) | (1 << 1);
/// `LH_PAGE_TYPE`: the page-type bits of `hasho_flag`.
const LH_PAGE_TYPE: u16 = 0x000F;
const F_LEAF: u16 = 1 << 0;
const F_DELETED: u16 = 1 << 1;

/// The special space's flags, after checking the page id.
fn flags(page: &Page, id: u16, what: &str) -> Result<u16, PageError> {
    let s = page.special();
    if s.len() != SPECIAL || u16::from_ne_bytes([s[14], s[15]]) != id {
        return Err(PageError::Layout(format!("not a {what} index page")));
    }
    Ok(u16::from_ne_bytes([s[12], s[13]]))
}

/// The `t_tid` of every entry on the page.
fn entry_tids(page: &Page, out: &mut Vec<Tid>) -> Result<u64, PageError> {
    let mut n = 0;
    for i in 1..=page.max_offset() {
        let lp = page.line_pointer(i).expect("i is within max_offset");
        if lp.flags == LpFlags::Unused {
            continue;
        }
        let item = page.item(i)?;
        let tid = Tid::read(item).ok_or_else(|| {
            PageError::Layout(format!("entry {i} is {} bytes, no TID", item.len()))
        })?;
        out.push(tid);
        n += 1;
    }
    Ok(n)
}

/// Hash: entries of bucket and overflow pages (the metapage and bitmap
/// pages hold none).
pub fn hash_tids(page: &Page, out: &mut Vec<Tid>) -> Result<u64, PageError> {
    let f = flags(page, HASH_PAGE_ID, "hash")?;
    if f & LH_PAGE_TYPE & LH_ENTRIES == 0 {
        return Ok(0);
    }
    entry_tids(page, out)
}

/// GiST: entries of live leaf pages (inner pages hold downlinks).
pub fn gist_tids(page: &Page, out: &mut Vec<Tid>) -> Result<u64, PageError> {
    let f = flags(page, GIST_PAGE_ID, "GiST")?;
    if f & F_LEAF == 0 || f & F_DELETED != 0 {
        return Ok(0);
    }
    entry_tids(page, out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fixture, page, tid};
    use super::*;

    /// pageinspect's ctids, one per line.
    fn expected(name: &str) -> Vec<Tid> {
        String::from_utf8(fixture(name))
            .unwrap()
            .lines()
            .map(tid)
            .collect()
    }

    #[test]
    fn hash_and_gist_entries_match_pageinspect() {
        let b = fixture("hash_bucket.page");
        let mut got = vec![];
        let n = hash_tids(&page(&b), &mut got).unwrap();
        assert_eq!(got, expected("hash_bucket.items"));
        assert_eq!(n as usize, got.len());
        let g = fixture("gist_leaf.page");
        let mut got = vec![];
        gist_tids(&page(&g), &mut got).unwrap();
        assert_eq!(got, expected("gist_leaf.items"));
    }

    #[test]
    fn inner_pages_and_other_kinds_point_at_no_rows_or_are_refused() {
        let g = fixture("gist_internal.page");
        let mut got = vec![];
        assert_eq!(gist_tids(&page(&g), &mut got).unwrap(), 0);
        assert!(got.is_empty());
        let bt = fixture("btree_leaf.page");
        assert!(matches!(
            hash_tids(&page(&bt), &mut got),
            Err(PageError::Layout(_))
        ));
        assert!(matches!(
            gist_tids(&page(&bt), &mut got),
            Err(PageError::Layout(_))
        ));
        let heap = fixture("heap.page");
        assert!(matches!(
            gist_tids(&page(&heap), &mut got),
            Err(PageError::Layout(_))
        ));
    }
}
