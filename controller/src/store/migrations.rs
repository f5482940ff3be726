//! The store's schema, one migration a step; `PRAGMA user_version` says how
//! many have run. Append new steps; never edit a released one.

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
