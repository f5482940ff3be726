//! B-tree index pages (PostgreSQL 15 `access/nbtree.h`, `access/itup.h`):
//! which heap rows a leaf page's entries point at, posting lists included.

use super::{Page, PageError, Tid, u32_at};

/// `BTREE_MAGIC`, in the metapage.
const MAGIC: u32 = 0x053162;
/// `MAXALIGN(sizeof(BTPageOpaqueData))`: a B-tree page's special space.
const SPECIAL: usize = 16;
const BTP_LEAF: u16 = 1 << 0;
const BTP_DELETED: u16 = 1 << 2;
const BTP_META: u16 = 1 << 3;
const BTP_HALF_DEAD: u16 = 1 << 4;
/// `INDEX_SIZE_MASK` and `INDEX_ALT_TID_MASK` of `t_info`.
const SIZE_MASK: u16 = 0x1FFF;
const ALT_TID: u16 = 0x2000;
/// `BT_IS_POSTING` and `BT_OFFSET_MASK` of a posting tuple's offset.
const IS_POSTING: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x0FFF;
/// `sizeof(IndexTupleData)`.
const TUPLE_HEADER: usize = 8;

/// What kind of B-tree page this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Meta {
        version: u32,
        root: u32,
        level: u32,
    },
    /// A live leaf: its entries point at heap rows.
    Leaf {
        rightmost: bool,
    },
    Internal,
    /// Deleted or half-dead: out of the tree, its entries count for nothing.
    Ignored,
}

/// Read the page's `BTPageOpaqueData` (and the metapage's header).
pub fn kind(page: &Page) -> Result<Kind, PageError> {
    let s = page.special();
    if s.len() != SPECIAL {
        return Err(PageError::Layout(format!(
            "special space is {} bytes, not a B-tree page's {SPECIAL}",
            s.len()
        )));
    }
    let next = u32_at(s, 4);
    let flags = u16::from_ne_bytes([s[12], s[13]]);
    if flags & BTP_META != 0 {
        let b = page.bytes;
        let magic = u32_at(b, super::PAGE_HEADER);
        if magic != MAGIC {
            return Err(PageError::Layout(format!(
                "metapage magic {magic:#x}, not {MAGIC:#x}"
            )));
        }
        return Ok(Kind::Meta {
            version: u32_at(b, super::PAGE_HEADER + 4),
            root: u32_at(b, super::PAGE_HEADER + 8),
            level: u32_at(b, super::PAGE_HEADER + 12),
        });
    }
    if flags & (BTP_DELETED | BTP_HALF_DEAD) != 0 {
        return Ok(Kind::Ignored);
    }
    Ok(if flags & BTP_LEAF != 0 {
        Kind::Leaf {
            rightmost: next == 0,
        }
    } else {
        Kind::Internal
    })
}

/// Append the heap rows the entries of a leaf page point at to `out`
/// (every TID of a posting list); returns how many index entries (tuples)
/// were read. Pages that are not live leaves add nothing.
pub fn leaf_tids(page: &Page, out: &mut Vec<Tid>) -> Result<u64, PageError> {
    let Kind::Leaf { rightmost } = kind(page)? else {
        return Ok(0);
    };
    // P_FIRSTDATAKEY: item 1 is the high key unless the page is rightmost.
    let first = if rightmost { 1 } else { 2 };
    let mut entries = 0;
    for n in first..=page.max_offset() {
        let lp = page.line_pointer(n).expect("n is within max_offset");
        if lp.flags == super::LpFlags::Unused {
            continue;
        }
        let item = page.item(n)?;
        if item.len() < TUPLE_HEADER {
            return Err(PageError::Layout(format!(
                "entry {n} is {} bytes, shorter than a tuple header",
                item.len()
            )));
        }
        let tid = Tid::read(item).expect("8 bytes are there");
        let info = u16::from_ne_bytes([item[6], item[7]]);
        let size = (info & SIZE_MASK) as usize;
        if size < TUPLE_HEADER || size > item.len() {
            return Err(PageError::Layout(format!(
                "entry {n} says it is {size} bytes, its line pointer {}",
                item.len()
            )));
        }
        entries += 1;
        if info & ALT_TID == 0 {
            out.push(tid);
            continue;
        }
        if tid.offset & IS_POSTING == 0 {
            return Err(PageError::Layout(format!(
                "entry {n} is a pivot tuple among the leaf's entries"
            )));
        }
        let count = (tid.offset & OFFSET_MASK) as usize;
        let at = tid.block as usize;
        if count < 2 || at < TUPLE_HEADER || at + 6 * count > size {
            return Err(PageError::Layout(format!(
                "entry {n}: a posting list of {count} at byte {at} does not fit its {size} bytes"
            )));
        }
        for i in 0..count {
            out.push(Tid::read(&item[at + 6 * i..]).expect("checked to fit"));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fixture, page, tid as parse_tid};
    use super::*;

    /// pageinspect's `bt_page_items` lines: `htid tids` (tids empty unless
    /// the entry is a posting list).
    fn expected(name: &str) -> Vec<Tid> {
        let t = String::from_utf8(fixture(name)).unwrap();
        let mut out = vec![];
        for l in t.lines() {
            let (htid, tids) = l.split_once(' ').unwrap_or((l, ""));
            let tids = tids.trim().trim_matches(|c| c == '{' || c == '}');
            if tids.is_empty() {
                out.push(parse_tid(htid));
            } else {
                // "(0,7)","(0,14)",...: split between the quoted pairs.
                out.extend(tids.split("\",\"").map(parse_tid));
            }
        }
        out
    }

    #[test]
    fn leaf_entries_match_pageinspect_plain_and_posting_lists() {
        for (p, items) in [
            ("btree_leaf.page", "btree_leaf.items"),
            ("btree_leaf_posting.page", "btree_leaf_posting.items"),
        ] {
            let bytes = fixture(p);
            let mut got = vec![];
            let entries = leaf_tids(&page(&bytes), &mut got).unwrap();
            let want = expected(items);
            assert_eq!(got, want, "{p}");
            assert!(entries > 0 && entries as usize <= want.len(), "{p}");
        }
        // Posting lists hold more TIDs than entries.
        let bytes = fixture("btree_leaf_posting.page");
        let mut got = vec![];
        let entries = leaf_tids(&page(&bytes), &mut got).unwrap();
        assert!((entries as usize) < got.len());
    }

    #[test]
    fn meta_and_internal_pages_point_at_no_rows() {
        let bytes = fixture("btree_meta.page");
        let want: Vec<u32> = String::from_utf8(fixture("btree_meta.items"))
            .unwrap()
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(
            kind(&page(&bytes)).unwrap(),
            Kind::Meta {
                version: want[0],
                root: want[1],
                level: want[2]
            }
        );
        let internal = fixture("btree_internal.page");
        assert_eq!(kind(&page(&internal)).unwrap(), Kind::Internal);
        let mut got = vec![];
        assert_eq!(leaf_tids(&page(&internal), &mut got).unwrap(), 0);
        assert!(got.is_empty());
    }

    #[test]
    fn a_heap_page_or_a_broken_posting_list_is_an_error_not_a_panic() {
        let heap = fixture("heap.page");
        assert!(matches!(kind(&page(&heap)), Err(PageError::Layout(_))));
        let mut bytes = fixture("btree_leaf_posting.page");
        let p = page(&bytes);
        // Find a posting entry and make its count overflow the tuple.
        let n = (2..=p.max_offset())
            .find(|&n| {
                let it = p.item(n).unwrap();
                u16::from_ne_bytes([it[6], it[7]]) & ALT_TID != 0
            })
            .unwrap();
        let off = p.line_pointer(n).unwrap().off as usize;
        bytes[off + 4] = 0xFF;
        bytes[off + 5] = 0x2F; // BT_IS_POSTING | 4095 TIDs
        let mut got = vec![];
        assert!(matches!(
            leaf_tids(&page(&bytes), &mut got),
            Err(PageError::Layout(_))
        ));
    }
}
