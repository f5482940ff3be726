//! Reading the integrity checks' output (SPEC T2.6) into [`Finding`]s.
//!
//! Pure functions over the text the tools printed; the formats below are the
//! ones PostgreSQL 15 prints (`LC_ALL=C`), taken from real runs: the files in
//! `fixtures/` are verbatim outputs, and `tests/tests/corruption.rs` checks
//! these parsers against the tools on real corruptions.
//!
//! # pg_amcheck (`--all --heapallindexed --parent-check --install-missing`)
//!
//! Findings go to **stdout**, one header line per failed check followed by
//! the message lines indented by four spaces:
//!
//! ```text
//! btree index "postgres.public.tandem_corrupt_f_idx":
//!     ERROR:  heap tuple (0,1) from table "tandem_corrupt" lacks matching index tuple within index "tandem_corrupt_f_idx"
//! heap table "postgres.public.tandem_corrupt", block 0, offset 125:
//!     number of attributes 2046 exceeds maximum expected for table 1
//! heap table "postgres.public.tandem_corrupt":
//!     ERROR:  invalid page in block 0 of relation base/5/16384
//! ```
//!
//! A heap header may carry `, block N, offset N[, attribute N]`; a heap
//! message from `verify_heapam` has no `ERROR:` prefix, one from a failed
//! query (e.g. a page checksum failure) has. **stderr** holds the server's
//! notices (`NOTICE:  extension "amcheck" already exists, skipping` once per
//! database from `--install-missing` when the extension is there already,
//! `WARNING:  page verification failed, ...`) and the tool's own errors
//! (`pg_amcheck: error: connection to server on socket ... failed: ...`,
//! continued by tab-indented lines; `pg_amcheck: error: no connectable
//! databases to check matching "x"`).
//!
//! Exit codes: **0** every check ran and passed (stdout is empty; stderr is
//! empty or only NOTICE lines); **2** every check ran and at least one found
//! corruption (a check whose query failed, e.g. "invalid page", counts as
//! corruption too); **1** the tool itself failed (connection, no databases,
//! bad option); 1 wins over 2, and the output may still hold findings from
//! checks that ran before the failure. A caller should treat 1 as "test
//! failed to run" even when findings were parsed.
//!
//! stdout is block-buffered when it is a file or pipe, so with `2>&1` the
//! NOTICE lines usually come first and, with very long output, a stderr line
//! could even land inside a stdout line. Capture the two streams separately
//! and hand the parser stdout followed by stderr (that is also what
//! `testdb.out` should hold); the parser tolerates stderr lines between
//! stdout blocks either way.
//!
//! # pg_checksums (`--check -D DIR`, server stopped)
//!
//! Each bad page is one stderr line, with the path as the `-D` argument
//! spelled it:
//!
//! ```text
//! pg_checksums: error: checksum verification failed in file "/data/base/5/16384", block 0: calculated checksum A4AB but block contains 9060
//! ```
//!
//! A summary goes to stdout (`Checksum operation completed`, `Files
//! scanned:`, `Blocks scanned:`, `Bad checksums:  N`, `Data checksum
//! version: 1`); it is printed only when the scan finished. Exit codes: **0**
//! clean; **1** bad checksums *or* a tool failure (`cluster must be shut
//! down`, `data checksums are not enabled in cluster`, `could not read block
//! 1 in file "...": read 4096 of 8192`, which stops the scan), so the kinds
//! parsed here (`checksum` vs `check_failed`) tell the two apart.
//!
//! # pg_dumpall (logical read, to /dev/null)
//!
//! pg_dumpall runs pg_dump per database and stops at the first failure
//! (exit 1). A failed read looks like:
//!
//! ```text
//! pg_dump: error: Dumping the contents of table "tandem_corrupt" failed: PQgetResult() failed.
//! pg_dump: detail: Error message from server: ERROR:  invalid page in block 0 of relation base/5/16384
//! pg_dump: detail: Command was: COPY public.tandem_corrupt (i) TO stdout;
//! pg_dumpall: error: pg_dump failed on database "postgres", exiting
//! ```
//!
//! # Messages
//!
//! A finding's message is the tool's own text: the lines that belong to it
//! (indentation removed; `detail:`/`hint:` lines and tab-indented
//! continuations appended) joined with `\n`.

use std::path::Path;

use tandem_proto::model::Finding;

/// `Finding::kind` values (documented on [`Finding`]).
pub const KIND_INDEX: &str = "index";
pub const KIND_HEAP: &str = "heap";
pub const KIND_CHECKSUM: &str = "checksum";
pub const KIND_LOGICAL_READ: &str = "logical_read";
pub const KIND_CHECK_FAILED: &str = "check_failed";

/// Parse pg_amcheck's output (stdout, then stderr; see the module doc).
///
/// One [`Finding`] per header line (`btree index "db.schema.rel":` → kind
/// `index`, `heap table "db.schema.rel"[, block N, ...]:` → kind `heap`),
/// database and relation from the quoted name (split at its first dot), the
/// message from the indented lines below it, prefixed with the header's
/// location (`block 0, offset 125: ...`) when there is one. Each
/// `pg_amcheck: error:` line is a `check_failed` finding (no database or
/// relation) with its `detail:`/`hint:` lines and tab-indented continuations.
/// Everything else (notices, warnings, progress, blank lines) is ignored.
pub fn parse_amcheck(output: &str) -> Vec<Finding> {
    /// A finding whose message lines are still being collected.
    struct Pending<'a> {
        finding: Finding,
        /// The header's location (`block 0, offset 125`), or empty.
        location: &'a str,
        /// The header line, the message of last resort.
        header: &'a str,
        lines: Vec<&'a str>,
    }
    let mut pending: Vec<Pending> = Vec::new();
    // The finding the next four-space-indented line belongs to (stdout).
    let mut block: Option<usize> = None;
    // The tool error the next detail/hint/tab line belongs to (stderr).
    let mut tool_error: Option<usize> = None;
    for line in output.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(text) = line.strip_prefix("    ") {
            if let Some(i) = block {
                pending[i].lines.push(text);
            }
            continue;
        }
        if let Some(text) = line.strip_prefix('\t') {
            if let Some(i) = tool_error {
                pending[i].lines.push(text);
            }
            continue;
        }
        if let Some(i) = tool_error
            && is_server_continuation(line)
        {
            pending[i].lines.push(line);
            continue;
        }
        if let Some(header) = parse_amcheck_header(line) {
            let (database, relation) = split_qualified(header.name);
            pending.push(Pending {
                finding: Finding {
                    database: database.to_string(),
                    relation: relation.to_string(),
                    kind: header.kind.to_string(),
                    message: String::new(),
                },
                location: header.location,
                header: line.trim_end_matches(':'),
                lines: Vec::new(),
            });
            block = Some(pending.len() - 1);
            continue;
        }
        match tool_line(line, "pg_amcheck") {
            Some(ToolLine::Error(msg)) => {
                pending.push(Pending {
                    finding: check_failed("", ""),
                    location: "",
                    header: "",
                    lines: vec![msg],
                });
                tool_error = Some(pending.len() - 1);
            }
            Some(ToolLine::Detail(msg)) => {
                if let Some(i) = tool_error {
                    pending[i].lines.push(msg);
                }
            }
            // Warnings, notices, progress: not findings.
            Some(ToolLine::Other) | None => tool_error = None,
        }
    }
    pending
        .into_iter()
        .map(|p| {
            let mut finding = p.finding;
            finding.message = match (p.lines.is_empty(), p.location.is_empty()) {
                // A header whose message lines never came still says what failed.
                (true, _) => p.header.to_string(),
                (false, true) => p.lines.join("\n"),
                (false, false) => format!("{}: {}", p.location, p.lines.join("\n")),
            };
            finding
        })
        .collect()
}

/// Parse `pg_checksums --check -D <data_dir>` output (stdout and stderr).
///
/// Each `pg_checksums: error: checksum verification failed in file "PATH",
/// block N: ...` line is a `checksum` finding: relation = PATH relative to
/// the data directory (`base/5/16384`; `data_dir` is stripped as the `-D`
/// argument spelled it, else the PostgreSQL layout `base/<db>/<file>`,
/// `global/<file>`, `pg_tblspc/<spc>/<version>/<db>/<file>` is recognised
/// from the end of the path), database = the database OID from that path as
/// text (`""` for `global/`), message = the line after `error: `. Every other
/// `pg_checksums: error:` line (cluster running, checksums off, a short read
/// that stops the scan) is `check_failed`, with the file as relation when it
/// names one.
pub fn parse_checksums(output: &str, data_dir: &Path) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    let mut last_error: Option<usize> = None;
    for line in output.lines() {
        match tool_line(line, "pg_checksums") {
            Some(ToolLine::Error(msg)) => {
                let path = quoted_after(msg, "in file \"");
                let relation = path.map(|p| relative_path(p, data_dir)).unwrap_or_default();
                let database = database_oid(&relation).to_string();
                let kind = if msg.starts_with("checksum verification failed in file ") {
                    KIND_CHECKSUM
                } else {
                    KIND_CHECK_FAILED
                };
                findings.push(Finding {
                    database,
                    relation,
                    kind: kind.to_string(),
                    message: msg.to_string(),
                });
                last_error = Some(findings.len() - 1);
            }
            Some(ToolLine::Detail(msg)) => {
                if let Some(i) = last_error {
                    append_line(&mut findings[i].message, msg);
                }
            }
            Some(ToolLine::Other) | None => {}
        }
    }
    findings
}

/// Parse pg_dumpall's stderr (when it fails).
///
/// Each `pg_dump: error:` line is a `logical_read` finding with its
/// `pg_dump: detail:` lines appended; relation from the detail `Command was:
/// COPY schema.table ...` (else from `table "name"` in the error); the
/// database from pg_dumpall's following `pg_dump failed on database "db",
/// exiting`. That pg_dumpall line only wraps the pg_dump errors before it, so
/// it is a finding of its own only when no pg_dump error came before it.
/// Other `pg_dumpall: error:` lines are findings too. An error that is a
/// connection failure (`connection to server ...`, `could not connect ...`)
/// is `check_failed`: the tool did not get to read anything.
pub fn parse_dump_errors(output: &str) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    // Findings from pg_dump not yet claimed by a pg_dumpall "failed on
    // database" line.
    let mut unclaimed_from = 0;
    let mut last_error: Option<usize> = None;
    for line in output.lines() {
        if let Some(text) = line.strip_prefix('\t') {
            if let Some(i) = last_error {
                append_line(&mut findings[i].message, text);
            }
            continue;
        }
        if let Some(i) = last_error
            && is_server_continuation(line)
        {
            append_line(&mut findings[i].message, line);
            continue;
        }
        let (tool, parsed) = match tool_line(line, "pg_dump") {
            Some(p) => ("pg_dump", p),
            None => match tool_line(line, "pg_dumpall") {
                Some(p) => ("pg_dumpall", p),
                None => continue,
            },
        };
        match parsed {
            ToolLine::Error(msg) => {
                if tool == "pg_dumpall"
                    && let Some(db) = quoted_after(msg, "pg_dump failed on database \"")
                {
                    if unclaimed_from < findings.len() {
                        for f in &mut findings[unclaimed_from..] {
                            if f.database.is_empty() {
                                f.database = db.to_string();
                            }
                        }
                        unclaimed_from = findings.len();
                        last_error = None;
                        continue;
                    }
                    findings.push(dump_finding(db, msg));
                } else {
                    findings.push(dump_finding("", msg));
                }
                if tool == "pg_dumpall" {
                    unclaimed_from = findings.len();
                }
                last_error = Some(findings.len() - 1);
            }
            ToolLine::Detail(msg) => {
                if let Some(i) = last_error {
                    let f = &mut findings[i];
                    if let Some(command) = msg.strip_prefix("Command was: COPY ")
                        && let Some(name) = command.split([' ', '(']).next()
                        && !name.is_empty()
                    {
                        f.relation = name.to_string();
                    }
                    append_line(&mut f.message, msg);
                }
            }
            ToolLine::Other => last_error = None,
        }
    }
    findings
}

/// A pg_dump/pg_dumpall error line as a finding.
fn dump_finding(database: &str, msg: &str) -> Finding {
    let connection = msg.starts_with("connection to server") || msg.contains("could not connect");
    if connection {
        return check_failed(database, msg);
    }
    Finding {
        database: database.to_string(),
        relation: quoted_after(msg, "table \"")
            .unwrap_or_default()
            .to_string(),
        kind: KIND_LOGICAL_READ.to_string(),
        message: msg.to_string(),
    }
}

fn check_failed(database: &str, msg: &str) -> Finding {
    Finding {
        database: database.to_string(),
        relation: String::new(),
        kind: KIND_CHECK_FAILED.to_string(),
        message: msg.to_string(),
    }
}

/// A line a PostgreSQL client tool logged about itself (`tool: level: msg`).
enum ToolLine<'a> {
    Error(&'a str),
    /// `detail:` or `hint:`: more about the error before it.
    Detail(&'a str),
    /// `warning:` and anything else the tool logged.
    Other,
}

fn tool_line<'a>(line: &'a str, tool: &str) -> Option<ToolLine<'a>> {
    let rest = line.strip_prefix(tool)?.strip_prefix(": ")?;
    Some(if let Some(msg) = rest.strip_prefix("error: ") {
        ToolLine::Error(msg)
    } else if let Some(msg) = rest
        .strip_prefix("detail: ")
        .or_else(|| rest.strip_prefix("hint: "))
    {
        ToolLine::Detail(msg)
    } else {
        ToolLine::Other
    })
}

/// A later line of a server error message the tool logged whole (`query
/// failed: ERROR:  ...` is followed by `DETAIL:  ...`, unindented).
fn is_server_continuation(line: &str) -> bool {
    ["DETAIL:  ", "HINT:  ", "CONTEXT:  ", "QUERY:  ", "LINE "]
        .iter()
        .any(|p| line.starts_with(p))
}

/// A pg_amcheck header line, e.g. `heap table "d.s.t", block 0, offset 1:`.
struct AmcheckHeader<'a> {
    kind: &'static str,
    /// `db.schema.relation` as printed (names unquoted).
    name: &'a str,
    /// `block 0, offset 1` or empty.
    location: &'a str,
}

fn parse_amcheck_header(line: &str) -> Option<AmcheckHeader<'_>> {
    let body = line.strip_suffix(':')?;
    let (what, rest) = body.split_once(" \"")?;
    let kind = match what.split_once(' ') {
        Some(("heap", "table")) => KIND_HEAP,
        Some((am, "index")) if !am.is_empty() && am.chars().all(|c| c.is_ascii_alphanumeric()) => {
            KIND_INDEX
        }
        _ => return None,
    };
    let (name, location) = match rest.find("\", block ") {
        Some(i) => (&rest[..i], &rest[i + 3..]),
        None => (rest.strip_suffix('"')?, ""),
    };
    Some(AmcheckHeader {
        kind,
        name,
        location,
    })
}

/// `db.schema.rel` → (`db`, `schema.rel`); no dot → (``, name).
fn split_qualified(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("", name))
}

/// The text between `prefix` and the next `"` in `s`.
fn quoted_after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let start = s.find(prefix)? + prefix.len();
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

/// `path` relative to `data_dir` (see [`parse_checksums`]).
fn relative_path(path: &str, data_dir: &Path) -> String {
    let dir = data_dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    if !dir.is_empty()
        && let Some(rest) = path.strip_prefix(dir)
        && let Some(rest) = rest.strip_prefix('/')
    {
        return rest.trim_start_matches('/').to_string();
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let n = parts.len();
    let from = [(3, "base"), (2, "global"), (5, "pg_tblspc")]
        .into_iter()
        .find(|&(len, top)| n >= len && parts[n - len] == top)
        .map(|(len, _)| n - len);
    match from {
        Some(i) => parts[i..].join("/"),
        None => path.to_string(),
    }
}

/// The database OID in a data-directory-relative relation path, or `""`.
fn database_oid(relation: &str) -> &str {
    let parts: Vec<&str> = relation.split('/').collect();
    let oid = match parts.as_slice() {
        ["base", oid, _] | ["pg_tblspc", _, _, oid, _] => oid,
        _ => return "",
    };
    if !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()) {
        oid
    } else {
        ""
    }
}

fn append_line(message: &mut String, line: &str) {
    if !message.is_empty() {
        message.push('\n');
    }
    message.push_str(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pg_amcheck on a private instance with the replicated index corruption
    /// (stdout then stderr), from `tests/tests/corruption.rs`.
    const AMCHECK_INDEX: &str = include_str!("fixtures/amcheck_index.txt");
    /// pg_amcheck on a database without corruption (amcheck already there).
    const AMCHECK_CLEAN: &str = include_str!("fixtures/amcheck_clean.txt");
    /// A damaged heap page read with `ignore_checksum_failure=on`.
    const AMCHECK_HEAP: &str = include_str!("fixtures/amcheck_heap.txt");
    /// The same damaged page with checksums enforced: both checks' queries fail.
    const AMCHECK_INVALID_PAGE: &str = include_str!("fixtures/amcheck_invalid_page.txt");
    const AMCHECK_CONNECT: &str = include_str!("fixtures/amcheck_connect.txt");
    /// pg_checksums on the standby with one damaged page, and its data dir.
    const CHECKSUMS_BAD: &str = include_str!("fixtures/checksums_bad.txt");
    /// The `-D` argument of that run.
    const CHECKSUMS_BAD_DIR: &str = "/tmp/tandem-test-X6RvXu/corrupt-standby1";
    const CHECKSUMS_SHORT: &str = include_str!("fixtures/checksums_short.txt");
    const CHECKSUMS_RUNNING: &str = include_str!("fixtures/checksums_running.txt");
    const DUMPALL_BAD: &str = include_str!("fixtures/dumpall_bad.txt");
    const DUMPALL_CONNECT: &str = include_str!("fixtures/dumpall_connect.txt");

    fn finding(database: &str, relation: &str, kind: &str, message: &str) -> Finding {
        Finding {
            database: database.into(),
            relation: relation.into(),
            kind: kind.into(),
            message: message.into(),
        }
    }

    #[test]
    fn amcheck_index_corruption() {
        assert_eq!(
            parse_amcheck(AMCHECK_INDEX),
            vec![finding(
                "postgres",
                "public.tandem_corrupt_f_idx",
                "index",
                "ERROR:  heap tuple (0,1) from table \"tandem_corrupt\" lacks matching index \
                 tuple within index \"tandem_corrupt_f_idx\""
            )]
        );
    }

    #[test]
    fn amcheck_clean_run_has_no_findings() {
        assert_eq!(parse_amcheck(AMCHECK_CLEAN), vec![]);
    }

    #[test]
    fn empty_output_has_no_findings() {
        assert_eq!(parse_amcheck(""), vec![]);
        assert_eq!(parse_checksums("", Path::new("/data")), vec![]);
        assert_eq!(parse_dump_errors(""), vec![]);
    }

    #[test]
    fn amcheck_heap_finding_keeps_its_location() {
        let found = parse_amcheck(AMCHECK_HEAP);
        assert_eq!(
            found,
            vec![
                finding(
                    "postgres",
                    "public.tandem_corrupt",
                    "heap",
                    "block 0, offset 125: number of attributes 2046 exceeds maximum expected \
                     for table 1"
                ),
                finding(
                    "postgres",
                    "public.tandem_corrupt_f_idx",
                    "index",
                    "ERROR:  heap tuple (0,1) from table \"tandem_corrupt\" lacks matching \
                     index tuple within index \"tandem_corrupt_f_idx\""
                ),
            ]
        );
    }

    #[test]
    fn amcheck_failed_queries_are_findings_and_warnings_are_not() {
        let found = parse_amcheck(AMCHECK_INVALID_PAGE);
        let msg = "ERROR:  invalid page in block 0 of relation base/5/16384";
        assert_eq!(
            found,
            vec![
                finding("postgres", "public.tandem_corrupt", "heap", msg),
                finding("postgres", "public.tandem_corrupt_f_idx", "index", msg),
            ]
        );
    }

    #[test]
    fn amcheck_connection_error_is_check_failed() {
        let found = parse_amcheck(AMCHECK_CONNECT);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, "check_failed");
        assert_eq!(found[0].database, "");
        assert!(
            found[0]
                .message
                .starts_with("connection to server on socket"),
            "{found:?}"
        );
        assert!(
            found[0].message.ends_with(
                "\nIs the server running locally and accepting connections on that socket?"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn amcheck_other_tool_errors_and_details() {
        let out = "pg_amcheck: warning: skipping something\n\
                   pg_amcheck: error: no connectable databases to check matching \"nosuch\"\n\
                   pg_amcheck: hint: Try \"pg_amcheck --help\" for more information.\n";
        assert_eq!(
            parse_amcheck(out),
            vec![finding(
                "",
                "",
                "check_failed",
                "no connectable databases to check matching \"nosuch\"\n\
                 Try \"pg_amcheck --help\" for more information."
            )]
        );
    }

    #[test]
    fn server_error_lines_after_a_tool_error_belong_to_it() {
        // Shaped like PG15's `query failed: %s` + `Query was: %s` (the server
        // message is logged whole, its DETAIL line unindented).
        let out = "NOTICE:  something\n\
                   DETAIL:  about the notice\n\
                   pg_amcheck: error: query failed: ERROR:  permission denied\n\
                   DETAIL:  more\n\
                   pg_amcheck: detail: Query was: SELECT 1\n";
        assert_eq!(
            parse_amcheck(out),
            vec![finding(
                "",
                "",
                "check_failed",
                "query failed: ERROR:  permission denied\nDETAIL:  more\nQuery was: SELECT 1"
            )]
        );
        let out = out.replace("pg_amcheck", "pg_dumpall");
        assert_eq!(
            parse_dump_errors(&out),
            vec![finding(
                "",
                "",
                "logical_read",
                "query failed: ERROR:  permission denied\nDETAIL:  more\nQuery was: SELECT 1"
            )]
        );
    }

    #[test]
    fn amcheck_tolerates_stderr_between_blocks_and_multi_line_messages() {
        let out = "NOTICE:  extension \"amcheck\" already exists, skipping\n\
                   btree index \"db.with.dots.s.i\":\n\
                   \x20   ERROR:  item order invariant violated for index \"i\"\n\
                   NOTICE:  interleaved\n\
                   \x20   DETAIL:  Lower index tid=(1,2) (points to heap tid=(0,3))\n\
                   heap table \"db.s.t\", block 3, offset 7, attribute 2:\n\
                   \x20   toast value 16390 not found in toast table\n\
                   gist index \"db.s.g\":\n";
        assert_eq!(
            parse_amcheck(out),
            vec![
                finding(
                    "db",
                    "with.dots.s.i",
                    "index",
                    "ERROR:  item order invariant violated for index \"i\"\n\
                     DETAIL:  Lower index tid=(1,2) (points to heap tid=(0,3))"
                ),
                finding(
                    "db",
                    "s.t",
                    "heap",
                    "block 3, offset 7, attribute 2: toast value 16390 not found in toast table"
                ),
                finding("db", "s.g", "index", "gist index \"db.s.g\""),
            ]
        );
    }

    #[test]
    fn checksums_bad_page() {
        let dir = Path::new(CHECKSUMS_BAD_DIR);
        let found = parse_checksums(CHECKSUMS_BAD, dir);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.kind, "checksum");
        assert!(f.relation.starts_with("base/5/"), "{f:?}");
        assert_eq!(f.database, "5");
        assert!(
            f.message.starts_with(&format!(
                "checksum verification failed in file \"{}/{}\", block 0: calculated checksum ",
                dir.display(),
                f.relation
            )),
            "{f:?}"
        );
        // The same without knowing the data directory (or with a stale one).
        assert_eq!(
            parse_checksums(CHECKSUMS_BAD, Path::new("/elsewhere")),
            found
        );
        // A trailing slash on the data directory changes nothing.
        assert_eq!(
            parse_checksums(CHECKSUMS_BAD, Path::new(&format!("{}/", dir.display()))),
            found
        );
    }

    #[test]
    fn checksums_short_read_stops_the_scan_and_is_check_failed() {
        let found = parse_checksums(CHECKSUMS_SHORT, Path::new("/tmp/tx.yn2Z/p"));
        assert_eq!(
            found,
            vec![
                finding(
                    "5",
                    "base/5/16384",
                    "checksum",
                    "checksum verification failed in file \"/tmp/tx.yn2Z/p/base/5/16384\", \
                     block 0: calculated checksum A4AB but block contains 9060"
                ),
                finding(
                    "5",
                    "base/5/16384",
                    "check_failed",
                    "could not read block 1 in file \"/tmp/tx.yn2Z/p/base/5/16384\": read \
                     4096 of 8192"
                ),
            ]
        );
    }

    #[test]
    fn checksums_running_cluster_is_check_failed() {
        assert_eq!(
            parse_checksums(CHECKSUMS_RUNNING, Path::new("/data")),
            vec![finding("", "", "check_failed", "cluster must be shut down")]
        );
    }

    #[test]
    fn checksum_paths_relative_to_the_data_directory() {
        let dir = Path::new("/srv/base/pg");
        for (path, rel, db) in [
            ("/srv/base/pg/base/16384/2619", "base/16384/2619", "16384"),
            ("/srv/base/pg/global/1262", "global/1262", ""),
            (
                "/srv/base/pg/pg_tblspc/16400/PG_15_202209061/16384/16401",
                "pg_tblspc/16400/PG_15_202209061/16384/16401",
                "16384",
            ),
            ("/other/base/16384/2619", "base/16384/2619", "16384"),
            ("relative/global/1262", "global/1262", ""),
        ] {
            let line = format!(
                "pg_checksums: error: checksum verification failed in file \"{path}\", block 3: \
                 calculated checksum 1 but block contains 2\n"
            );
            let found = parse_checksums(&line, dir);
            assert_eq!(found.len(), 1, "{path}");
            assert_eq!(
                (found[0].relation.as_str(), found[0].database.as_str()),
                (rel, db)
            );
        }
    }

    #[test]
    fn dump_read_failure_is_one_logical_read_finding() {
        assert_eq!(
            parse_dump_errors(DUMPALL_BAD),
            vec![finding(
                "postgres",
                "public.tandem_corrupt",
                "logical_read",
                "Dumping the contents of table \"tandem_corrupt\" failed: PQgetResult() failed.\n\
                 Error message from server: ERROR:  invalid page in block 0 of relation \
                 base/5/16384\n\
                 Command was: COPY public.tandem_corrupt (i) TO stdout;"
            )]
        );
    }

    #[test]
    fn dumpall_errors_of_its_own() {
        let out = "pg_dumpall: error: pg_dump failed on database \"app\", exiting\n\
                   pg_dumpall: error: query failed: ERROR:  invalid page in block 0 of relation base/1/1260\n\
                   pg_dumpall: detail: Query was: SELECT rolname FROM pg_authid\n";
        assert_eq!(
            parse_dump_errors(out),
            vec![
                finding(
                    "app",
                    "",
                    "logical_read",
                    "pg_dump failed on database \"app\", exiting"
                ),
                finding(
                    "",
                    "",
                    "logical_read",
                    "query failed: ERROR:  invalid page in block 0 of relation base/1/1260\n\
                     Query was: SELECT rolname FROM pg_authid"
                ),
            ]
        );
    }

    #[test]
    fn dump_connection_error_is_check_failed() {
        let found = parse_dump_errors(DUMPALL_CONNECT);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, "check_failed");
        assert!(
            found[0].message.ends_with(
                "\nIs the server running locally and accepting connections on that socket?"
            ),
            "{found:?}"
        );
    }
}
