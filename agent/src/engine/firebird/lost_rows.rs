//! Rows gone from a Firebird copy that validation does not see.
//!
//! Measured on Firebird 3.0.11 with the record area of one `PAYMENTS` data
//! page (141 rows) overwritten in a stopped database's file:
//!
//! - with `0xFF`: `gfix -v -full` says only "Warning: Relation has 141
//!   orphan backversions {0 in use} in table PAYMENTS (128)", `gbak -b`
//!   reads 19859 rows without an error, and both `PLAN (T NATURAL)` and a
//!   count through the primary key say 19859: the rows are simply gone;
//! - with zeros: no error and no warning at all; `gbak -b` writes 20000
//!   rows (141 of them garbage), the natural count says 20000.
//!
//! In both, the primary key index still has its 20000 entries
//! (`fbstat -i`: `nodes: 20000`), and a navigational scan through it
//! (`PLAN (T ORDER PK) ORDER BY <its columns>`: the engine fetches each
//! entry's record and keeps it only when the record's key is the entry's)
//! reaches 19859 rows. After `gfix -sweep` of the copy (no garbage left:
//! deleted rows, old key versions and the inserts of transactions that were
//! running when the copy was taken are gone, with their index entries) a
//! healthy table has exactly one entry per row in each index, so
//! **entries − rows reached through the index = rows lost**.
//!
//! The check, on the copy (embedded, its own lock directory): `gfix
//! -sweep`; the catalog query [`CATALOG_SQL`] (each user table, and its
//! active indexes on columns); `fbstat -i` (index pages only: the entry
//! counts); for each table, one index (unique first) counted through by
//! [`count_sql`]. A table with no usable index is said to be not covered.

use std::collections::BTreeMap;

use tandem_proto::model::Finding;

use crate::engine::findings::{KIND_CHECK_FAILED, KIND_HEAP};

pub const KIND_LOST_ROWS: &str = "lost_rows";

/// Every user table (`TBL` lines), and every segment of every active index
/// on columns of one (`SEGMENT` lines: table, index, unique, descending,
/// position, column; tab-separated).
pub const CATALOG_SQL: &str = "set list on;\n\
select trim(r.rdb$relation_name) || ascii_char(9) || trim(i.rdb$index_name) || ascii_char(9) || coalesce(i.rdb$unique_flag, 0) || ascii_char(9) || coalesce(i.rdb$index_type, 0) || ascii_char(9) || s.rdb$field_position || ascii_char(9) || trim(s.rdb$field_name) as segment\n\
from rdb$relations r\n\
join rdb$indices i on i.rdb$relation_name = r.rdb$relation_name\n\
join rdb$index_segments s on s.rdb$index_name = i.rdb$index_name\n\
where coalesce(r.rdb$system_flag, 0) = 0 and r.rdb$view_blr is null and coalesce(r.rdb$relation_type, 0) = 0\n\
and coalesce(i.rdb$index_inactive, 0) = 0 and i.rdb$expression_blr is null\n\
order by 1;\n\
select trim(r.rdb$relation_name) as tbl from rdb$relations r where coalesce(r.rdb$system_flag, 0) = 0 and r.rdb$view_blr is null and coalesce(r.rdb$relation_type, 0) = 0 order by 1;\n";

/// An index on columns of a user table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDef {
    pub table: String,
    pub name: String,
    pub unique: bool,
    pub descending: bool,
    /// In the index's order.
    pub columns: Vec<String>,
}

/// What [`CATALOG_SQL`] printed: the user tables, and their indexes.
pub fn parse_catalog(text: &str) -> (Vec<String>, Vec<IndexDef>) {
    let mut tables = Vec::new();
    // (table, index) -> (unique, descending, [(position, column)])
    type Segments = (bool, bool, Vec<(u32, String)>);
    let mut idx: BTreeMap<(String, String), Segments> = BTreeMap::new();
    for line in text.lines() {
        if let Some(v) = value_of(line, "TBL") {
            tables.push(v.to_owned());
        } else if let Some(v) = value_of(line, "SEGMENT") {
            let f: Vec<&str> = v.split('\t').collect();
            let [table, name, unique, desc, pos, col] = f[..] else {
                continue;
            };
            let Ok(pos) = pos.trim().parse::<u32>() else {
                continue;
            };
            let e = idx.entry((table.to_owned(), name.to_owned())).or_insert((
                unique.trim() == "1",
                desc.trim() == "1",
                vec![],
            ));
            e.2.push((pos, col.to_owned()));
        }
    }
    let indexes = idx
        .into_iter()
        .map(|((table, name), (unique, descending, mut cols))| {
            cols.sort();
            IndexDef {
                table,
                name,
                unique,
                descending,
                columns: cols.into_iter().map(|(_, c)| c).collect(),
            }
        })
        .collect();
    (tables, indexes)
}

/// `NAME   value` of isql's `set list on` output.
fn value_of<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?;
    rest.starts_with([' ', '\t'])
        .then(|| rest.trim_start_matches([' ', '\t']).trim_end())
}

/// One index per table to count through (unique ones first, then by
/// name), and the tables that have none.
pub fn choose(tables: &[String], indexes: &[IndexDef]) -> (Vec<IndexDef>, Vec<String>) {
    let mut chosen = Vec::new();
    let mut uncovered = Vec::new();
    for t in tables {
        let best = indexes
            .iter()
            .filter(|i| &i.table == t && !i.columns.is_empty())
            .min_by_key(|i| (!i.unique, i.name.clone()));
        match best {
            Some(i) => chosen.push(i.clone()),
            None => uncovered.push(t.clone()),
        }
    }
    (chosen, uncovered)
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One count per chosen index, through it (navigational: each entry's
/// record fetched, kept when its key is the entry's), as `N_<k>`.
pub fn count_sql(chosen: &[IndexDef]) -> String {
    let mut s = String::from("set list on;\n");
    for (k, i) in chosen.iter().enumerate() {
        let dir = if i.descending { " desc" } else { "" };
        let order: Vec<String> = i.columns.iter().map(|c| quote(c) + dir).collect();
        s.push_str(&format!(
            "select count(*) as \"N_{k}\" from (select 1 as x from {t} plan ({t} order {ix}) order by {o});\n",
            t = quote(&i.table),
            ix = quote(&i.name),
            o = order.join(", "),
        ));
    }
    s
}

/// The counts [`count_sql`] printed, by position (`None`: not printed,
/// isql stopped before it).
pub fn parse_counts(text: &str, n: usize) -> Vec<Option<u64>> {
    let mut out = vec![None; n];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("N_") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (k.parse::<usize>(), v.parse::<u64>())
            && k < n
        {
            out[k] = Some(v);
        }
    }
    out
}

/// The entries (`nodes: N`) of each index in `fbstat -i` output, by
/// (table, index).
pub fn parse_fbstat_nodes(text: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    let mut table: Option<String> = None;
    let mut index: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if !line.starts_with(char::is_whitespace) && !t.is_empty() {
            // "PAYMENTS (128)" starts a table; other unindented lines
            // (the header, "Analyzing ...") end one.
            table = t
                .rsplit_once(" (")
                .filter(|(_, id)| {
                    id.strip_suffix(')')
                        .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()))
                })
                .map(|(name, _)| name.to_owned());
            index = None;
        } else if let Some(rest) = t.strip_prefix("Index ") {
            index = rest.rsplit_once(" (").map(|(n, _)| n.to_owned());
        } else if let (Some(tb), Some(ix)) = (&table, &index)
            && let Some((_, n)) = t.split_once("nodes: ")
            && let Ok(n) = n.split(',').next().unwrap_or("").trim().parse::<u64>()
        {
            out.insert((tb.clone(), ix.clone()), n);
        }
    }
    out
}

/// A failed `gfix -sweep` of the copy: damage when the engine stopped at
/// an internal consistency check (measured: a data page whose line index
/// was overwritten makes the sweep stop with "internal Firebird
/// consistency check (cannot find record back version ...)"), else a
/// check that could not run. Either way the counts are not made.
pub fn sweep_failed(output: &str, database: &str) -> Finding {
    let text: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = text.join("\n");
    let (kind, message) = if text.contains("internal Firebird consistency check") {
        (
            KIND_HEAP,
            format!(
                "the copy's records are damaged: gfix -sweep stopped at {text}; the rows of its tables could not be counted, lost rows are not ruled out"
            ),
        )
    } else {
        (
            KIND_CHECK_FAILED,
            format!("gfix -sweep of the copy failed, so lost rows are not ruled out: {text}"),
        )
    };
    Finding {
        database: database.to_owned(),
        relation: String::new(),
        kind: kind.to_owned(),
        message,
    }
}

/// What the check found: `lost_rows` for each table whose index has more
/// entries than rows reached through it, `check_failed` for each table
/// that could not be counted. Also the coverage lines.
pub fn findings(
    chosen: &[IndexDef],
    counts: &[Option<u64>],
    nodes: &BTreeMap<(String, String), u64>,
    database: &str,
) -> (Vec<Finding>, Vec<String>) {
    let mut found = Vec::new();
    let mut rows_total = 0;
    for (k, i) in chosen.iter().enumerate() {
        let finding = |kind: &str, message: String| Finding {
            database: database.to_owned(),
            relation: i.table.clone(),
            kind: kind.to_owned(),
            message,
        };
        let entries = nodes.get(&(i.table.clone(), i.name.clone()));
        match (counts.get(k).copied().flatten(), entries) {
            (Some(rows), Some(&entries)) if entries > rows => found.push(finding(
                KIND_LOST_ROWS,
                format!(
                    "{} rows of table {} are gone from the copy: its index {} has {entries} entries, but only {rows} rows are reached through them (their records are missing or damaged, which gfix -v may report only as a warning or not at all); the live database's file has the same pages: check it, and restore the table from a backup",
                    entries - rows,
                    i.table,
                    i.name
                ),
            )),
            (Some(rows), Some(_)) => rows_total += rows,
            (None, _) => found.push(finding(
                KIND_CHECK_FAILED,
                format!(
                    "the rows of table {} could not be counted through its index {} (see testdb.out): lost rows there are not ruled out",
                    i.table, i.name
                ),
            )),
            (Some(_), None) => found.push(finding(
                KIND_CHECK_FAILED,
                format!(
                    "fbstat -i did not list the index {} of table {} (see testdb.out): lost rows there are not ruled out",
                    i.name, i.table
                ),
            )),
        }
    }
    let coverage = vec![format!(
        "lost rows: {} tables counted through an index against its entries ({rows_total} rows in the clean ones)",
        chosen.len()
    )];
    (found, coverage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = include_str!("../fixtures/firebird_index_catalog.txt");
    const FBSTAT: &str = include_str!("../fixtures/firebird_fbstat_index.txt");
    const COUNTS: &str = include_str!("../fixtures/firebird_index_counts.txt");
    const COUNTS_FAILED: &str = include_str!("../fixtures/firebird_index_counts_failed.txt");

    fn chosen() -> (Vec<IndexDef>, Vec<String>) {
        let (tables, indexes) = parse_catalog(CATALOG);
        choose(&tables, &indexes)
    }

    #[test]
    fn the_catalog_gives_tables_and_their_column_indexes() {
        let (tables, indexes) = parse_catalog(CATALOG);
        assert_eq!(tables, ["Lines", "NOTES", "PAYMENTS"]);
        assert_eq!(indexes.len(), 3, "{indexes:?}");
        let pk2 = indexes.iter().find(|i| i.name == "RDB$PRIMARY2").unwrap();
        assert_eq!(pk2.table, "Lines");
        assert!(pk2.unique && !pk2.descending);
        assert_eq!(pk2.columns, ["A", "B"]);
        let desc = indexes.iter().find(|i| i.name == "LINES_DESC").unwrap();
        assert!(desc.descending && !desc.unique);
        // NOTES has only an expression index: not usable, not covered.
        let (chosen, uncovered) = choose(&tables, &indexes);
        assert_eq!(uncovered, ["NOTES"]);
        let names: Vec<&str> = chosen.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["RDB$PRIMARY2", "RDB$PRIMARY1"]);
    }

    #[test]
    fn counts_go_through_the_index_in_its_order_with_quoted_names() {
        let (chosen, _) = chosen();
        let sql = count_sql(&chosen);
        assert!(
            sql.contains("select count(*) as \"N_0\" from (select 1 as x from \"Lines\" plan (\"Lines\" order \"RDB$PRIMARY2\") order by \"A\", \"B\");"),
            "{sql}"
        );
        let d = IndexDef {
            table: "T\"x".into(),
            name: "D".into(),
            unique: false,
            descending: true,
            columns: vec!["C".into()],
        };
        assert!(
            count_sql(&[d])
                .contains("from \"T\"\"x\" plan (\"T\"\"x\" order \"D\") order by \"C\" desc")
        );
    }

    #[test]
    fn a_damaged_page_is_lost_rows_naming_the_table_and_how_many() {
        let (chosen, _) = chosen();
        let counts = parse_counts(COUNTS, chosen.len());
        assert_eq!(counts, [Some(2), Some(19859)]);
        let nodes = parse_fbstat_nodes(FBSTAT);
        assert_eq!(nodes[&("PAYMENTS".into(), "RDB$PRIMARY1".into())], 20000);
        assert_eq!(nodes[&("Lines".into(), "LINES_DESC".into())], 2);
        assert_eq!(nodes[&("NOTES".into(), "NOTES_EXPR".into())], 1);
        let (found, coverage) = findings(&chosen, &counts, &nodes, "g.fdb");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, "lost_rows");
        assert_eq!(found[0].relation, "PAYMENTS");
        assert_eq!(found[0].database, "g.fdb");
        assert!(
            found[0]
                .message
                .starts_with("141 rows of table PAYMENTS are gone"),
            "{found:?}"
        );
        assert!(coverage[0].contains("2 tables"), "{coverage:?}");
    }

    #[test]
    fn a_sweep_stopped_by_damage_is_damage_else_a_failed_check() {
        let f = sweep_failed(
            include_str!("../fixtures/firebird_sweep_bugcheck.txt"),
            "d.fdb",
        );
        assert_eq!(f.kind, "heap");
        assert!(
            f.message.contains("cannot find record back version"),
            "{f:?}"
        );
        let f = sweep_failed("I/O error during \"open\" operation", "d.fdb");
        assert_eq!(f.kind, "check_failed");
    }

    #[test]
    fn a_count_that_did_not_run_is_a_failed_check() {
        let (chosen, _) = chosen();
        let counts = parse_counts(COUNTS_FAILED, chosen.len());
        assert_eq!(counts, [None, None]);
        let (found, _) = findings(&chosen, &counts, &parse_fbstat_nodes(FBSTAT), "g.fdb");
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| f.kind == "check_failed"), "{found:?}");
        // Healthy: as many rows reached as entries.
        let mut nodes = parse_fbstat_nodes(FBSTAT);
        nodes.insert(("PAYMENTS".into(), "RDB$PRIMARY1".into()), 19859);
        let (found, _) = findings(&chosen, &parse_counts(COUNTS, 2), &nodes, "g.fdb");
        assert!(found.is_empty(), "{found:?}");
    }
}
