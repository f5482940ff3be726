//! `tandem-controller import-sqlite FILE`: move a fleet's SQLite store into
//! an empty PostgreSQL store, once, every row kept (its `rowid` too, which
//! orders sets and windows), in one transaction: either all of it lands or
//! nothing does.

use std::path::Path;

use super::sql::{Row, Value};
use super::{Store, StoreError, StoreLocation};

/// The tables of the schema, parents before children; an SQLite store
/// holding another table is refused (this list is behind the schema).
const TABLES: &[&str] = &[
    "sets",
    "members",
    "agents",
    "audit",
    "operations",
    "verdicts",
    "runs",
    "run_sets",
    "settings",
    "set_events",
    "policies",
    "schedules",
    "windows",
];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the target must be a PostgreSQL store (a postgresql:// URI in `store`), not {0}")]
    NotPostgres(StoreLocation),
    #[error(
        "{0} does not exist; give the path of the SQLite store (`store` in the old controller.toml)"
    )]
    NoSource(String),
    #[error(
        "the PostgreSQL store already holds a fleet ({0} rows in its tables); import-sqlite fills an empty store only, so nothing was written"
    )]
    NotEmpty(i64),
    #[error(
        "the SQLite store has tables this controller does not import ({0}); use the import-sqlite of the controller version that wrote it"
    )]
    UnknownTables(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copy every row of the SQLite store at `from` into the PostgreSQL store
/// at `to`; returns each table with its row count.
pub async fn import_sqlite(
    from: &Path,
    to: &StoreLocation,
) -> Result<Vec<(&'static str, usize)>, ImportError> {
    if !matches!(to, StoreLocation::Postgres(_)) {
        return Err(ImportError::NotPostgres(to.clone()));
    }
    if !from.is_file() {
        return Err(ImportError::NoSource(from.display().to_string()));
    }
    // Opening migrates the old file to this version's schema first.
    let source = Store::open_async(StoreLocation::Sqlite(from.to_owned())).await?;
    let target = Store::open_async(to.clone()).await?;
    let unknown: Vec<String> = source
        .call(|c| {
            c.query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                super::sql::args![],
            )?
            .iter()
            .map(|r| r.get::<String>(0))
            .collect::<Result<Vec<_>, _>>()
        })
        .await?
        .into_iter()
        .filter(|t| !TABLES.contains(&t.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(ImportError::UnknownTables(unknown.join(", ")));
    }
    let mut tables: Vec<(&'static str, Vec<String>, Vec<Row>)> = Vec::new();
    for &table in TABLES {
        let (columns, rows) = source
            .call(move |c| {
                let columns: Vec<String> = c
                    .query(
                        &format!("SELECT name FROM pragma_table_info('{table}')"),
                        super::sql::args![],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect::<Result<_, _>>()?;
                let rows = c.query(
                    &format!(
                        "SELECT rowid, {} FROM {table} ORDER BY rowid",
                        columns.join(", ")
                    ),
                    super::sql::args![],
                )?;
                Ok((columns, rows))
            })
            .await?;
        tables.push((table, columns, rows));
    }
    let counts: Vec<(&'static str, usize)> =
        tables.iter().map(|(t, _, rows)| (*t, rows.len())).collect();
    target
        .call(move |c| {
            c.unfenced();
            let mut present = 0i64;
            for &table in TABLES {
                present += c
                    .query_one(&format!("SELECT count(*) FROM {table}"), super::sql::args![])?
                    .get::<i64>(0)?;
            }
            if present > 0 {
                return Err(super::sql::DbError::Refused(
                    ImportError::NotEmpty(present).to_string(),
                ));
            }
            for (table, columns, rows) in &tables {
                let names = std::iter::once("rowid".to_owned())
                    .chain(columns.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ");
                let marks = (1..=columns.len() + 1)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!("INSERT INTO {table}({names}) VALUES ({marks})");
                for row in rows {
                    let params: Vec<&dyn super::sql::Param> =
                        row.0.iter().map(|v: &Value| v as &dyn super::sql::Param).collect();
                    c.exec(&sql, &params)?;
                }
            }
            // Every identity column (each table's `rowid`, the `AUTOINCREMENT`
            // ids) goes on after what was imported.
            let identities: Vec<(String, String)> = c
                .query(
                    "SELECT table_name::text, column_name::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND is_identity = 'YES'",
                    super::sql::args![],
                )?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<_, super::sql::DbError>>()?;
            for (table, column) in identities {
                c.query_one(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), GREATEST((SELECT max({column}) FROM {table}), 0) + 1, false)"
                    ),
                    super::sql::args![],
                )?;
            }
            Ok(())
        })
        .await?;
    Ok(counts)
}
