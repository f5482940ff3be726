//! Reading Firebird 3's check tools into [`Finding`]s.
//!
//! Pure functions over the text the tools printed; the formats below are
//! Firebird 3.0.11's (Debian `firebird3.0-utils`), taken from real runs on
//! real damaged files: `../fixtures/firebird_*.txt` are verbatim outputs and
//! `tests/tests/firebird.rs` checks these parsers against the tools on a
//! database damaged for real.
//!
//! # `gfix -v -full DB` (embedded, on the stopped copy)
//!
//! stdout is empty when the database is clean. Otherwise it is only a
//! summary of counts, with no table names:
//!
//! (tabs shown as four spaces)
//!
//! ```text
//! Summary of validation errors
//!
//!     Number of record level errors    : 1
//!     Number of record level warnings    : 1
//! ```
//!
//! (`data page errors`, `index page errors`, `pointer page errors`, ...).
//! The exit code is **0 even when errors were found**; it is non-zero when
//! the tool could not run (`I/O error during "open" operation for file ...`
//! on stdout, then `-`-prefixed continuation lines).
//!
//! # The server log (`firebird.log`; Debian: `/var/log/firebird/firebird3.0.log`)
//!
//! Validation writes what it found there, one block per message, each with
//! the host and time, then the database as it was opened:
//!
//! ```text
//! vm    Sun Dec  6 21:16:27 2026
//!     Database: /tmp/fbx/copy/a.fdb
//!     Error: Data page 185 {sequence 0}, line 0 is bad in table T (128)
//! ```
//!
//! `Validation started`, `Validation finished: 1 errors, 0 warnings, 0
//! fixed` and `Warning: ...` blocks come the same way. The log is shared by
//! every process of the host, so only blocks naming the copy's path count.
//!
//! # `gbak -b -v -user SYSDBA DB stdout` (the logical read, data to nowhere)
//!
//! Progress on stderr (`gbak:    writing data for table T`); a failure is
//! `gbak: ERROR:...` lines then `gbak:Exiting before completion due to
//! errors`, exit 1. The table being read when it failed is the last
//! `writing data for table` line.

use tandem_proto::model::Finding;

use crate::engine::findings::{KIND_CHECK_FAILED, KIND_HEAP, KIND_INDEX, KIND_LOGICAL_READ};

/// What `gfix -v -full` printed on stdout: its error and warning counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GfixSummary {
    /// `(what, count)` per `Number of <what> errors : N` line.
    pub errors: Vec<(String, u64)>,
    pub warnings: Vec<(String, u64)>,
}

impl GfixSummary {
    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}

/// Parse gfix's summary (see the module doc).
pub fn parse_gfix_summary(stdout: &str) -> GfixSummary {
    let mut s = GfixSummary::default();
    for line in stdout.lines() {
        let Some(rest) = line.trim().strip_prefix("Number of ") else {
            continue;
        };
        let Some((what, n)) = rest.split_once(':') else {
            continue;
        };
        let Ok(n) = n.trim().parse::<u64>() else {
            continue;
        };
        let what = what.trim();
        if let Some(w) = what.strip_suffix(" errors") {
            s.errors.push((w.to_owned(), n));
        } else if let Some(w) = what.strip_suffix(" warnings") {
            s.warnings.push((w.to_owned(), n));
        }
    }
    s
}

/// The `Error:` messages validation wrote to the server log about the
/// database `path` (exactly as gfix was given it), as findings: kind
/// `index` when the message is about an index, else `heap`; the relation
/// is the table the message names (`in table T (128)` → `T`), empty when
/// it names none. `database` is what the findings say as their database.
pub fn parse_validation_log(log: &str, path: &str, database: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut ours = false;
    for line in log.lines() {
        let t = line.trim();
        if let Some(db) = t.strip_prefix("Database: ") {
            ours = db == path;
            continue;
        }
        // A block starts with an unindented "host<TAB>time" line.
        if !line.starts_with(char::is_whitespace) && !t.is_empty() {
            ours = false;
            continue;
        }
        if !ours {
            continue;
        }
        let Some(msg) = t.strip_prefix("Error: ") else {
            continue;
        };
        let relation = table_of(msg).unwrap_or_default();
        let kind = if msg.starts_with("Index ") || msg.contains(" index ") {
            KIND_INDEX
        } else {
            KIND_HEAP
        };
        out.push(Finding {
            database: database.to_owned(),
            relation,
            kind: kind.to_owned(),
            message: msg.to_owned(),
        });
    }
    out
}

/// The `Warning:` messages validation wrote to the server log about the
/// database `path`, each prefixed with what wrote it. Validation does not
/// count them as errors, but they are not nothing: a data page whose
/// records were overwritten can show up only as "orphan backversions"
/// (its rows gone from the table, and from `gbak`'s read).
pub fn validation_warnings(log: &str, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut ours = false;
    for line in log.lines() {
        let t = line.trim();
        if let Some(db) = t.strip_prefix("Database: ") {
            ours = db == path;
        } else if !line.starts_with(char::is_whitespace) && !t.is_empty() {
            ours = false;
        } else if ours && let Some(w) = t.strip_prefix("Warning: ") {
            out.push(format!("gfix -v -full warned: {w}"));
        }
    }
    out
}

/// `... in table T (128)` → `T`.
fn table_of(msg: &str) -> Option<String> {
    let (_, rest) = msg.rsplit_once(" in table ")?;
    let name = match rest.rsplit_once(" (") {
        Some((name, id)) if id.ends_with(')') => name,
        _ => rest,
    };
    Some(name.trim().to_owned())
}

/// The findings of one `gfix -v -full` run: those of the log when it names
/// any, else (the log could not be read, or said nothing about the copy)
/// one `heap` finding with gfix's counts, saying where to look. A failed
/// run (non-zero exit) is a `check_failed` finding with its output.
pub fn gfix_findings(
    exit_ok: bool,
    output: &str,
    from_log: Vec<Finding>,
    database: &str,
    log_path: &str,
) -> Vec<Finding> {
    if !exit_ok {
        return vec![Finding {
            database: database.to_owned(),
            relation: String::new(),
            kind: KIND_CHECK_FAILED.to_owned(),
            message: format!("gfix -v -full could not run: {}", one_message(output)),
        }];
    }
    let summary = parse_gfix_summary(output);
    if summary.error_count() == 0 || !from_log.is_empty() {
        return if summary.error_count() == 0 {
            vec![]
        } else {
            from_log
        };
    }
    let counts: Vec<String> = summary
        .errors
        .iter()
        .map(|(what, n)| format!("{n} {what} errors"))
        .collect();
    vec![Finding {
        database: database.to_owned(),
        relation: String::new(),
        kind: KIND_HEAP.to_owned(),
        message: format!(
            "gfix -v -full found {}; the tables are named in the server log {log_path}, which had nothing about this copy (is it the server's log, and readable by the agent?)",
            counts.join(", ")
        ),
    }]
}

/// The findings of `gbak -b` (stderr; see the module doc): none when it
/// finished, else one `logical_read` finding naming the table it was
/// reading, or `check_failed` when it failed before reading any table.
pub fn parse_gbak(exit_ok: bool, stderr: &str, database: &str) -> Vec<Finding> {
    if exit_ok {
        return vec![];
    }
    let (table, message) = gbak_stop(stderr, "writing data for table ");
    vec![Finding {
        database: database.to_owned(),
        kind: if table.is_some() {
            KIND_LOGICAL_READ
        } else {
            KIND_CHECK_FAILED
        }
        .to_owned(),
        relation: table.unwrap_or_default(),
        message,
    }]
}

/// Where a failed gbak stopped: the last table its `-v` output names
/// after `doing` ("writing data for table ", "restoring data for table "),
/// and its `ERROR:` lines (else the output's gist).
fn gbak_stop(output: &str, doing: &str) -> (Option<String>, String) {
    let mut table = None;
    let mut errors = Vec::new();
    for line in output.lines() {
        let t = line.trim_start_matches("gbak:").trim();
        if let Some(name) = t.strip_prefix(doing) {
            table = Some(name.trim().to_owned());
        }
        if let Some(e) = t.strip_prefix("ERROR:") {
            errors.push(e.trim().to_owned());
        }
    }
    let message = if errors.is_empty() {
        one_message(output)
    } else {
        errors.join("\n")
    };
    (table, message)
}

/// The findings of `gbak -c` restoring a backup (its `-v` output): none
/// when it finished, else one `logical_read` finding saying the backup
/// does not restore, naming the table it was restoring (`gbak:restoring
/// data for table T`), with gbak's errors.
pub fn parse_gbak_restore(exit_ok: bool, output: &str, database: &str) -> Vec<Finding> {
    if exit_ok {
        return vec![];
    }
    let (table, why) = gbak_stop(output, "restoring data for table ");
    let at = table
        .as_deref()
        .map(|t| format!(" (it stopped in table {t})"))
        .unwrap_or_default();
    vec![Finding {
        database: database.to_owned(),
        kind: KIND_LOGICAL_READ.to_owned(),
        relation: table.clone().unwrap_or_default(),
        message: format!("the backup does not restore: gbak -c failed{at}: {why}; it is not kept"),
    }]
}

/// Rows per table in `gbak -v` output: for `gbak -b`, the last
/// `N records written` after each `writing data for table T`; for `gbak
/// -c`, the last `N records restored` after each `restoring data for table
/// T`, added up when a table's data is restored more than once (measured:
/// a backup file with 4 KiB overwritten restored PAYMENTS twice, 10006 then
/// 9758 rows, and gbak exited 0).
pub fn gbak_row_counts(output: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let mut table: Option<String> = None;
    let mut last = 0;
    let mut flush = |table: &Option<String>, last: u64| {
        if let Some(t) = table {
            *out.entry(t.clone()).or_insert(0) += last;
        }
    };
    for line in output.lines() {
        let t = line.trim_start_matches("gbak:").trim();
        let started = t
            .strip_prefix("writing data for table ")
            .or_else(|| t.strip_prefix("restoring data for table "));
        if let Some(name) = started {
            flush(&table, last);
            table = Some(name.trim().to_owned());
            last = 0;
        } else if let Some(n) = t
            .strip_suffix(" records written")
            .or_else(|| t.strip_suffix(" records restored"))
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            last = n;
        }
    }
    flush(&table, last);
    out
}

/// `lost_rows` findings for each table the restore did not bring back
/// whole: fewer (or more) rows restored than `gbak -b` wrote.
pub fn restored_rows_findings(backup: &str, restore: &str, database: &str) -> Vec<Finding> {
    let written = gbak_row_counts(backup);
    let restored = gbak_row_counts(restore);
    written
        .iter()
        .filter_map(|(t, &w)| {
            let r = restored.get(t).copied().unwrap_or(0);
            (r != w).then(|| Finding {
                database: database.to_owned(),
                relation: t.clone(),
                kind: "lost_rows".to_owned(),
                message: format!(
                    "the backup does not restore table {t} whole: gbak -b wrote {w} rows, gbak -c restored {r} (the backup file is damaged); it is not kept"
                ),
            })
        })
        .collect()
}

/// The non-empty lines of a tool's output, joined (for messages).
fn one_message(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "(no output)".to_owned()
    } else {
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GFIX_CLEAN: &str = include_str!("../fixtures/firebird_gfix_clean.txt");
    const GFIX_DATA_PAGE: &str = include_str!("../fixtures/firebird_gfix_data_page.txt");
    const GFIX_RECORD: &str = include_str!("../fixtures/firebird_gfix_record.txt");
    const GFIX_MISSING: &str = include_str!("../fixtures/firebird_gfix_missing.txt");
    const LOG: &str = include_str!("../fixtures/firebird_log_validation.txt");
    const GBAK_CLEAN: &str = include_str!("../fixtures/firebird_gbak_clean.txt");
    const GBAK_RECORD: &str = include_str!("../fixtures/firebird_gbak_record.txt");
    const GBAK_MISSING: &str = include_str!("../fixtures/firebird_gbak_missing.txt");

    #[test]
    fn gfix_summary_counts_errors_and_warnings() {
        assert_eq!(parse_gfix_summary(GFIX_CLEAN), GfixSummary::default());
        let s = parse_gfix_summary(GFIX_DATA_PAGE);
        assert_eq!(s.errors, [("data page".to_owned(), 1)]);
        let s = parse_gfix_summary(GFIX_RECORD);
        assert_eq!(s.errors, [("record level".to_owned(), 1)]);
        assert_eq!(s.warnings, [("record level".to_owned(), 1)]);
    }

    #[test]
    fn the_log_names_the_table_of_each_error_of_this_copy_only() {
        let a = parse_validation_log(LOG, "/tmp/fbx/copy/a.fdb", "a.fdb");
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].relation, "T");
        assert_eq!(a[0].kind, "heap");
        assert_eq!(a[0].database, "a.fdb");
        assert_eq!(
            a[0].message,
            "Data page 185 {sequence 0}, line 0 is bad in table T (128)"
        );
        let b = parse_validation_log(LOG, "/tmp/fbx/copy/b.fdb", "b.fdb");
        assert_eq!(b.len(), 1, "warnings are not findings: {b:?}");
        assert_eq!(b[0].message, "Record 146 is wrong length in table T (128)");
        assert!(parse_validation_log(LOG, "/tmp/fbx/copy/t.fdb", "t.fdb").is_empty());
        assert_eq!(
            validation_warnings(LOG, "/tmp/fbx/copy/b.fdb"),
            [
                "gfix -v -full warned: Relation has 146 orphan backversions {0 in use} in table T (128)"
            ]
        );
        assert!(validation_warnings(LOG, "/tmp/fbx/copy/a.fdb").is_empty());
        assert!(parse_validation_log(LOG, "/tmp/fbx/copy/a.fd", "x").is_empty());
    }

    #[test]
    fn gfix_findings_come_from_the_log_or_say_where_to_look() {
        let log = parse_validation_log(LOG, "/tmp/fbx/copy/a.fdb", "a.fdb");
        let f = gfix_findings(true, GFIX_DATA_PAGE, log, "a.fdb", "/l");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].relation, "T");
        let f = gfix_findings(true, GFIX_DATA_PAGE, vec![], "a.fdb", "/l");
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("1 data page errors"), "{f:?}");
        assert!(f[0].message.contains("server log /l"), "{f:?}");
        assert!(gfix_findings(true, GFIX_CLEAN, vec![], "t.fdb", "/l").is_empty());
        let f = gfix_findings(false, GFIX_MISSING, vec![], "n.fdb", "/l");
        assert_eq!(f[0].kind, "check_failed");
        assert!(f[0].message.contains("No such file or directory"), "{f:?}");
    }

    #[test]
    fn a_backup_that_does_not_restore_names_the_table_and_why() {
        assert!(parse_gbak_restore(true, "", "c.fdb").is_empty());
        let f = parse_gbak_restore(
            false,
            include_str!("../fixtures/firebird_gbak_restore_bad.txt"),
            "c.fdb",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "logical_read");
        assert_eq!(f[0].relation, "PAYMENTS");
        assert_eq!(
            f[0].message,
            "the backup does not restore: gbak -c failed (it stopped in table PAYMENTS): Expected XDR record length; it is not kept"
        );
    }

    #[test]
    fn rows_written_and_restored_are_counted_per_table() {
        let written = gbak_row_counts(include_str!("../fixtures/firebird_gbak_backup_counts.txt"));
        let restored =
            gbak_row_counts(include_str!("../fixtures/firebird_gbak_restore_counts.txt"));
        assert_eq!(written.get("PAYMENTS"), Some(&19859));
        assert_eq!(written.get("Lines"), Some(&2));
        assert_eq!(written.get("NOTES"), Some(&1));
        assert_eq!(written, restored);
        assert!(
            restored_rows_findings(
                include_str!("../fixtures/firebird_gbak_backup_counts.txt"),
                include_str!("../fixtures/firebird_gbak_restore_counts.txt"),
                "g.fdb"
            )
            .is_empty()
        );
        // A damaged backup file that gbak -c "restored" with exit 0.
        let garbled = include_str!("../fixtures/firebird_gbak_restore_garbled.txt");
        assert_eq!(
            gbak_row_counts(garbled).get("PAYMENTS"),
            Some(&(10006 + 9758))
        );
        let f = restored_rows_findings(
            "gbak:    writing data for table PAYMENTS\ngbak:20000 records written\n",
            garbled,
            "b.fdb",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "lost_rows");
        assert_eq!(f[0].relation, "PAYMENTS");
        assert!(
            f[0].message
                .contains("gbak -b wrote 20000 rows, gbak -c restored 19764"),
            "{f:?}"
        );
    }

    #[test]
    fn gbak_names_the_table_it_could_not_read() {
        assert!(parse_gbak(true, GBAK_CLEAN, "t.fdb").is_empty());
        let f = parse_gbak(false, GBAK_RECORD, "b.fdb");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "logical_read");
        assert_eq!(f[0].relation, "T");
        assert!(
            f[0].message.contains("decompression overran buffer"),
            "{f:?}"
        );
        let f = parse_gbak(false, GBAK_MISSING, "n.fdb");
        assert_eq!(f[0].kind, "check_failed");
        assert!(
            f[0].message.contains("Error while trying to open file"),
            "{f:?}"
        );
    }
}
