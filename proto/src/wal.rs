//! What a WAL archive holds, and whether a roll-forward can read through it.
//!
//! The agent builds a [`Continuity`] from an archive's file names
//! ([`continuity`]: a local directory or the remote store), sends it as
//! `pb::WalArchive` in `ListBackups`, and anyone holding one (the agent
//! before a restore, `tandemctl`) asks [`Continuity::covers`] whether a
//! roll-forward from a backup's start reaches a given segment. Pure: no
//! files are read here.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::model::{Lsn, ModelError, timestamp_from_wire, timestamp_to_wire};
use crate::pb;

/// Segment size when the files do not tell (PostgreSQL's default).
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

fn is_hex(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
}

/// A WAL segment name: (timeline, log, segment within the log).
pub fn parse_segment(name: &str) -> Option<(u32, u32, u32)> {
    if name.len() != 24 || !is_hex(name) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).ok();
    Some((n(0..8)?, n(8..16)?, n(16..24)?))
}

fn per_log(segment_bytes: u64) -> u64 {
    0x1_0000_0000 / segment_bytes
}

/// A segment name's timeline and segment number (the segment's first LSN
/// divided by `segment_bytes`).
pub fn segment_number(name: &str, segment_bytes: u64) -> Option<(u32, u64)> {
    let (tl, log, seg) = parse_segment(name)?;
    Some((tl, log as u64 * per_log(segment_bytes) + seg as u64))
}

/// The name of segment number `segno` of timeline `tl`.
pub fn segment_name(tl: u32, segno: u64, segment_bytes: u64) -> String {
    let per = per_log(segment_bytes);
    format!("{tl:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// The name of the segment of timeline `tl` that holds `lsn`.
pub fn segment_of(tl: u32, lsn: Lsn, segment_bytes: u64) -> String {
    segment_name(tl, lsn.0 / segment_bytes, segment_bytes)
}

/// Whether `segment_bytes` is a size PostgreSQL allows (1 MiB to 1 GiB, a
/// power of two).
pub fn valid_segment_bytes(segment_bytes: u64) -> bool {
    (1 << 20..=1 << 30).contains(&segment_bytes) && segment_bytes.is_power_of_two()
}

/// One file of an archive as listed: its name, size and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFile {
    pub name: String,
    pub bytes: u64,
    pub modified: Option<Timestamp>,
}

/// What an archive holds, per timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuity {
    pub segment_bytes: u64,
    /// Per timeline: first and last segment name, and the missing ones in
    /// between (ranges `first..=last` of names).
    pub timelines: BTreeMap<u32, TimelineSpan>,
    /// When the newest segment was written, when the listing says.
    pub newest_modified: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSpan {
    pub first: String,
    pub last: String,
    pub segments: u64,
    pub gaps: Vec<(String, String)>,
}

/// Why a roll-forward cannot read what it needs from an archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Coverage {
    /// The archive has nothing of the timeline.
    #[error("the WAL archive has no segment of timeline {timeline}")]
    NoTimeline { timeline: u32 },
    /// The archive begins after the segment `need` that holds the start.
    #[error(
        "the WAL archive starts at {first}, after {need} (which holds the backup's start {start}); archiving began after the backup"
    )]
    StartsAfter {
        first: String,
        need: String,
        start: Lsn,
    },
    /// A hole in the archive between the start and the segment wanted.
    #[error("the WAL archive misses {from} to {to}: roll-forward cannot pass them")]
    Gap { from: String, to: String },
    /// The archive ends before the segment wanted.
    #[error("the WAL archive ends at {last}, before {need}: it has not been archived (yet)")]
    EndsBefore { last: String, need: String },
    /// The segment wanted is not a segment name.
    #[error("{name:?} is not a WAL segment name (24 hex digits)")]
    NotASegment { name: String },
}

impl Continuity {
    pub fn has_gaps(&self) -> bool {
        self.timelines.values().any(|t| !t.gaps.is_empty())
    }

    /// Whether roll-forward from `start` on timeline `tl` finds every
    /// segment from the one holding `start` to the archive's last one.
    pub fn covers_from(&self, tl: u32, start: Lsn) -> Result<(), Coverage> {
        self.covers(tl, start, None)
    }

    /// Whether roll-forward from `start` on timeline `tl` finds every
    /// segment from the one holding `start` through the segment `through`
    /// (a name on `tl`; `None`: the archive's last one of `tl`). Gaps after
    /// `through` do not matter.
    pub fn covers(&self, tl: u32, start: Lsn, through: Option<&str>) -> Result<(), Coverage> {
        let Some(span) = self.timelines.get(&tl) else {
            return Err(Coverage::NoTimeline { timeline: tl });
        };
        let need = segment_of(tl, start, self.segment_bytes);
        if need < span.first {
            return Err(Coverage::StartsAfter {
                first: span.first.clone(),
                need,
                start,
            });
        }
        let through = match through {
            None => span.last.clone(),
            Some(s) => {
                let Some((_, segno)) = segment_number(s, self.segment_bytes) else {
                    return Err(Coverage::NotASegment { name: s.to_owned() });
                };
                // Compared on `tl`: a name is ordered by timeline first.
                segment_name(tl, segno, self.segment_bytes)
            }
        };
        if through > span.last {
            return Err(Coverage::EndsBefore {
                last: span.last.clone(),
                need: through,
            });
        }
        if let Some((a, b)) = span.gaps.iter().find(|(a, b)| *b >= need && *a <= through) {
            return Err(Coverage::Gap {
                from: a.clone(),
                to: b.clone(),
            });
        }
        Ok(())
    }

    /// As `ListBackups` carries it; `member` is filled in by the controller.
    pub fn to_wire(&self, location: &str) -> pb::WalArchive {
        pb::WalArchive {
            member: String::new(),
            location: location.to_owned(),
            segment_bytes: self.segment_bytes,
            timelines: self
                .timelines
                .iter()
                .map(|(tl, s)| pb::WalTimeline {
                    timeline: *tl,
                    first: s.first.clone(),
                    last: s.last.clone(),
                    segments: s.segments,
                    gaps: s
                        .gaps
                        .iter()
                        .map(|(a, b)| pb::WalGap {
                            from: a.clone(),
                            to: b.clone(),
                        })
                        .collect(),
                })
                .collect(),
            newest_modified: self.newest_modified.map(timestamp_to_wire),
            problem: String::new(),
        }
    }
}

impl TryFrom<&pb::WalArchive> for Continuity {
    type Error = ModelError;
    fn try_from(w: &pb::WalArchive) -> Result<Self, ModelError> {
        if !valid_segment_bytes(w.segment_bytes) {
            return Err(ModelError::Invalid {
                field: "segment_bytes",
                why: format!(
                    "{} is not a WAL segment size (a power of two, 1 MiB to 1 GiB)",
                    w.segment_bytes
                ),
            });
        }
        let seg = |field: &'static str, name: &str| {
            if parse_segment(name).is_some() {
                Ok(name.to_owned())
            } else {
                Err(ModelError::Invalid {
                    field,
                    why: format!("{name:?} is not a WAL segment name"),
                })
            }
        };
        let mut timelines = BTreeMap::new();
        for t in &w.timelines {
            let gaps = t
                .gaps
                .iter()
                .map(|g| Ok((seg("gaps.from", &g.from)?, seg("gaps.to", &g.to)?)))
                .collect::<Result<Vec<_>, ModelError>>()?;
            timelines.insert(
                t.timeline,
                TimelineSpan {
                    first: seg("first", &t.first)?,
                    last: seg("last", &t.last)?,
                    segments: t.segments,
                    gaps,
                },
            );
        }
        let newest_modified = timestamp_from_wire("newest_modified", w.newest_modified)?;
        Ok(Continuity {
            segment_bytes: w.segment_bytes,
            timelines,
            newest_modified,
        })
    }
}

/// What a list of archived files holds: segments per timeline, the gaps,
/// the segment size (the size of a segment; 16 MiB when that is not a valid
/// one) and the newest segment's time. Other names (`.history`, `.backup`,
/// `.partial`) are ignored. Shared by the directory and the remote store.
pub fn continuity(files: impl IntoIterator<Item = WalFile>) -> Continuity {
    let mut by_tl: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    let mut segment_bytes = 0u64;
    let mut newest_modified: Option<Timestamp> = None;
    for f in files {
        let Some((tl, log, seg)) = parse_segment(&f.name) else {
            continue;
        };
        if segment_bytes == 0 {
            segment_bytes = f.bytes;
        }
        if let Some(m) = f.modified {
            newest_modified = Some(newest_modified.map_or(m, |n| n.max(m)));
        }
        by_tl.entry(tl).or_default().push((log, seg));
    }
    if !valid_segment_bytes(segment_bytes) {
        segment_bytes = DEFAULT_SEGMENT_BYTES;
    }
    let per = per_log(segment_bytes);
    let mut timelines = BTreeMap::new();
    for (tl, mut segs) in by_tl {
        segs.sort();
        let nos: Vec<u64> = segs
            .iter()
            .map(|&(log, seg)| log as u64 * per + seg as u64)
            .collect();
        let mut gaps = Vec::new();
        for w in nos.windows(2) {
            if w[1] > w[0] + 1 {
                gaps.push((
                    segment_name(tl, w[0] + 1, segment_bytes),
                    segment_name(tl, w[1] - 1, segment_bytes),
                ));
            }
        }
        timelines.insert(
            tl,
            TimelineSpan {
                first: segment_name(tl, nos[0], segment_bytes),
                last: segment_name(tl, *nos.last().expect("not empty"), segment_bytes),
                segments: nos.len() as u64,
                gaps,
            },
        );
    }
    Continuity {
        segment_bytes,
        timelines,
        newest_modified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn files(names: &[&str]) -> Vec<WalFile> {
        names
            .iter()
            .map(|n| WalFile {
                name: (*n).to_owned(),
                bytes: SEG,
                modified: None,
            })
            .collect()
    }

    /// Timeline 1: segments 3, 4, 5 then 8 (6 and 7 missing).
    fn holey() -> Continuity {
        continuity(files(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000008",
            "00000002.history",
        ]))
    }

    #[test]
    fn roll_forward_through_a_segment_needs_only_the_segments_up_to_it() {
        let c = holey();
        let start = Lsn(3 * SEG + 40);
        // Up to segment 5: covered although 6 and 7 are missing later.
        assert_eq!(c.covers(1, start, Some("000000010000000000000005")), Ok(()));
        // Through 8: the gap is in the way.
        let e = c
            .covers(1, start, Some("000000010000000000000008"))
            .unwrap_err();
        assert!(matches!(&e, Coverage::Gap { from, .. } if from == "000000010000000000000006"));
        assert_eq!(c.covers_from(1, start), Err(e));
        // Starting after the gap: covered to the end.
        assert_eq!(c.covers_from(1, Lsn(8 * SEG)), Ok(()));
        // Beyond the last segment: not archived yet.
        let e = c
            .covers(1, Lsn(8 * SEG), Some("000000010000000000000009"))
            .unwrap_err();
        assert!(
            e.to_string().contains("ends at 000000010000000000000008"),
            "{e}"
        );
        // Before the first: archiving began later.
        let e = c.covers(1, Lsn(2 * SEG), None).unwrap_err();
        assert!(e.to_string().contains("archiving began after"), "{e}");
        assert!(matches!(
            c.covers(2, Lsn(0), None),
            Err(Coverage::NoTimeline { timeline: 2 })
        ));
        assert!(matches!(
            c.covers(1, start, Some("x")),
            Err(Coverage::NotASegment { .. })
        ));
    }

    #[test]
    fn it_goes_over_the_wire_and_back() {
        let mut c = holey();
        c.newest_modified = Some("2026-12-01T10:00:00Z".parse().unwrap());
        let w = c.to_wire("/var/lib/tandem/wal");
        assert_eq!(w.location, "/var/lib/tandem/wal");
        assert_eq!(w.timelines[0].gaps[0].to, "000000010000000000000007");
        assert_eq!(Continuity::try_from(&w), Ok(c));
        let mut bad = w.clone();
        bad.segment_bytes = 3;
        assert!(Continuity::try_from(&bad).is_err());
        let mut bad = w;
        bad.timelines[0].first = "nope".into();
        assert!(Continuity::try_from(&bad).is_err());
    }

    #[test]
    fn the_newest_time_and_the_segment_size_come_from_the_files() {
        let t = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let c = continuity([
            WalFile {
                name: "000000010000000000000001".into(),
                bytes: 1 << 20,
                modified: t("2026-12-01T10:00:00Z"),
            },
            WalFile {
                name: "000000010000000000000002".into(),
                bytes: 1 << 20,
                modified: t("2026-12-02T10:00:00Z"),
            },
        ]);
        assert_eq!(c.segment_bytes, 1 << 20);
        assert_eq!(c.newest_modified, t("2026-12-02T10:00:00Z"));
        assert_eq!(
            segment_of(1, Lsn((1 << 20) * 0x1001), 1 << 20),
            "000000010000000100000001"
        );
        assert_eq!(
            segment_number("000000010000000100000001", 1 << 20),
            Some((1, 0x1001))
        );
    }
}
