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
];
