//! The store's schema, one migration a step, the same steps for both
//! stores: written in SQLite's spelling and turned into PostgreSQL's by
//! `sql::pg_ddl`. SQLite's `PRAGMA user_version`, PostgreSQL's
//! `tandem_schema` table, say how many have run. Append new steps; never
//! edit a released one.

use super::sql::{DbError, pg_ddl};
use super::{StoreError, StoreLocation};

pub const MIGRATIONS: &[&str] = &[
    // 1: the walking skeleton: sets, members, agents, audit log.
    r#"
    CREATE TABLE sets (
        name        TEXT PRIMARY KEY,
        generation  INTEGER NOT NULL DEFAULT 1,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE members (
        set_name    TEXT NOT NULL REFERENCES sets(name) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        agent       TEXT NOT NULL UNIQUE,
        PRIMARY KEY (set_name, name)
    );
    CREATE TABLE agents (
        name           TEXT PRIMARY KEY,
        set_name       TEXT NOT NULL,
        member         TEXT NOT NULL,
        address        TEXT NOT NULL,
        agent_version  TEXT NOT NULL,
        state          TEXT NOT NULL,
        first_seen     TEXT NOT NULL,
        last_seen      TEXT NOT NULL,
        facts          TEXT
    );
    CREATE TABLE audit (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         TEXT NOT NULL,
        identity   TEXT NOT NULL,
        action     TEXT NOT NULL,
        arguments  TEXT NOT NULL,
        outcome    TEXT NOT NULL,
        trace_id   TEXT NOT NULL DEFAULT ''
    );
    "#,
    // 2: testdb: operations dispatched to agents, and verdicts with history.
    r#"
    CREATE TABLE operations (
        id           TEXT PRIMARY KEY,
        run_id       TEXT NOT NULL,
        set_name     TEXT NOT NULL,
        member       TEXT NOT NULL,
        agent        TEXT NOT NULL,
        kind         TEXT NOT NULL,
        state        TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        finished_at  TEXT,
        trace_id     TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE verdicts (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        set_name      TEXT NOT NULL,
        kind          TEXT NOT NULL,
        verdict       TEXT NOT NULL,
        at            TEXT NOT NULL
    );
    CREATE INDEX verdicts_by_set ON verdicts(set_name, id);
    "#,
    // 3: fleet runs that survive a restart (SPEC C5), settings changed at run
    // time (limits), and each set's history of events (role changes, skips).
    r#"
    CREATE TABLE runs (
        id           TEXT PRIMARY KEY,
        created_at   TEXT NOT NULL,
        origin       TEXT NOT NULL,
        trace_id     TEXT NOT NULL DEFAULT '',
        finished_at  TEXT
    );
    CREATE TABLE run_sets (
        run_id        TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        position      INTEGER NOT NULL,
        set_name      TEXT NOT NULL,
        member        TEXT NOT NULL DEFAULT '',
        state         TEXT NOT NULL,
        agent         TEXT NOT NULL DEFAULT '',
        operation_id  TEXT NOT NULL DEFAULT '',
        verdict_id    INTEGER,
        PRIMARY KEY (run_id, set_name)
    );
    CREATE TABLE settings (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    CREATE TABLE set_events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        set_name  TEXT NOT NULL,
        at        TEXT NOT NULL,
        kind      TEXT NOT NULL,
        message   TEXT NOT NULL
    );
    CREATE INDEX set_events_by_set ON set_events(set_name, id);
    "#,
    // 4: policies changed with `tandemctl set policy` (they override the
    // config's), and where each set's schedule stands.
    r#"
    CREATE TABLE policies (
        set_name      TEXT PRIMARY KEY,
        test          TEXT NOT NULL,
        archive_copy  TEXT NOT NULL,
        archive_file  INTEGER NOT NULL,
        changed_at    TEXT NOT NULL
    );
    CREATE TABLE schedules (
        set_name  TEXT NOT NULL,
        purpose   TEXT NOT NULL,
        policy    TEXT NOT NULL,
        since     TEXT NOT NULL,
        last_due  TEXT,
        PRIMARY KEY (set_name, purpose)
    );
    "#,
    // 5: the store holds the inventory (`tandemctl set add/change/remove`).
    // A set's row is kept when it is removed (its generation goes on if it
    // comes back). `state`: `active`, `removed`, or `legacy` for rows a
    // controller from before this migration mirrored from its file.
    r#"
    ALTER TABLE sets ADD COLUMN state TEXT NOT NULL DEFAULT 'legacy';
    ALTER TABLE sets ADD COLUMN source TEXT NOT NULL DEFAULT 'controller.toml';
    ALTER TABLE sets ADD COLUMN changed_at TEXT;
    ALTER TABLE sets ADD COLUMN changed_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE members ADD COLUMN host TEXT;
    ALTER TABLE members ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: maintenance windows (SPEC T4, C4): the plan, each step's outcome and
    // the report, as one JSON document per window, so a restarted controller
    // carries on from the recorded step.
    r#"
    CREATE TABLE windows (
        id         TEXT PRIMARY KEY,
        set_name   TEXT NOT NULL,
        state      TEXT NOT NULL,
        doc        TEXT NOT NULL,
        opened_at  TEXT NOT NULL,
        closed_at  TEXT
    );
    CREATE INDEX windows_by_set ON windows(set_name, opened_at);
    "#,
    // 7: a set's policies carry the mode of its tests and copies (`online`,
    // `cold`; empty: each agent's default).
    r#"
    ALTER TABLE policies ADD COLUMN mode TEXT NOT NULL DEFAULT '';
    "#,
];

/// Tables only the shared store has: the leader's lease (one row: who
/// holds it, until when, under which generation; see `lease.rs`).
const PG_ONLY: &str = r#"
    CREATE TABLE IF NOT EXISTS tandem_schema (version BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS tandem_leader (
        id           INT PRIMARY KEY CHECK (id = 1),
        holder       TEXT NOT NULL,
        address      TEXT NOT NULL,
        generation   BIGINT NOT NULL,
        acquired_at  TIMESTAMPTZ NOT NULL,
        renewed_at   TIMESTAMPTZ NOT NULL,
        expires_at   TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE IF NOT EXISTS tandem_controllers (
        holder      TEXT PRIMARY KEY,
        address     TEXT NOT NULL,
        started_at  TIMESTAMPTZ NOT NULL,
        last_seen   TIMESTAMPTZ NOT NULL
    );
"#;

/// A key for `pg_advisory_xact_lock`: controllers starting together
/// migrate one after the other.
const MIGRATION_LOCK: i64 = 0x7a6e_6465_6d00_0001;

pub(super) fn migrate_sqlite(
    conn: &mut rusqlite::Connection,
    at: &StoreLocation,
) -> Result<(), StoreError> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    check_known(version, at)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store migrated");
    }
    Ok(())
}

pub(super) fn migrate_pg(
    client: &mut postgres::Client,
    at: &StoreLocation,
) -> Result<(), StoreError> {
    let open_err = |e: postgres::Error| StoreError::Open {
        at: at.clone(),
        source: DbError::Pg(e),
    };
    let mut tx = client.transaction().map_err(open_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(open_err)?;
    tx.batch_execute(PG_ONLY).map_err(open_err)?;
    let version: Option<i64> = tx
        .query_opt("SELECT version FROM tandem_schema", &[])
        .map_err(open_err)?
        .map(|r| r.get(0));
    if version.is_none() {
        tx.execute("INSERT INTO tandem_schema(version) VALUES (0)", &[])
            .map_err(open_err)?;
    }
    let version = version.unwrap_or(0) as usize;
    check_known(version, at)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(&pg_ddl(sql)).map_err(open_err)?;
        tx.execute(
            "UPDATE tandem_schema SET version = $1",
            &[&((i + 1) as i64)],
        )
        .map_err(open_err)?;
        tracing::info!(version = i + 1, "store migrated");
    }
    tx.commit().map_err(open_err)?;
    Ok(())
}

fn check_known(found: usize, at: &StoreLocation) -> Result<(), StoreError> {
    let known = MIGRATIONS.len();
    if found > known {
        return Err(StoreError::TooNew {
            at: at.clone(),
            found,
            known,
        });
    }
    Ok(())
}
