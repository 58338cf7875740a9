//! The database schema as numbered migrations; `PRAGMA user_version` records how many are applied.

/// Every migration, in order. Never edit one that has shipped: add the next.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts, licences, caps, nodes, samples, bill lines, billing state.
    r#"
    CREATE TABLE accounts (
        ref                INTEGER PRIMARY KEY,
        id                 TEXT NOT NULL UNIQUE,
        created_at_ms      INTEGER NOT NULL,
        -- Set when a licence or cap change may alter days already billed:
        -- the next billing run recomputes from here.
        recompute_from_ms  INTEGER
    );

    CREATE TABLE licences (
        id             INTEGER PRIMARY KEY,
        account_ref    INTEGER NOT NULL REFERENCES accounts(ref),
        cores          INTEGER NOT NULL CHECK (cores >= 1),
        start_ms       INTEGER NOT NULL,
        end_ms         INTEGER NOT NULL CHECK (end_ms >= start_ms),
        created_at_ms  INTEGER NOT NULL
    );
    CREATE INDEX licences_by_account ON licences(account_ref);

    -- The cap history: the cap of a day is the last change before the day ends.
    CREATE TABLE caps (
        id          INTEGER PRIMARY KEY,
        account_ref INTEGER NOT NULL REFERENCES accounts(ref),
        cores       INTEGER NOT NULL CHECK (cores >= 500),
        from_ms     INTEGER NOT NULL,
        set_at_ms   INTEGER NOT NULL
    );
    CREATE INDEX caps_by_account ON caps(account_ref);

    -- A node is (account, cluster, node name).
    CREATE TABLE nodes (
        id          INTEGER PRIMARY KEY,
        account_ref INTEGER NOT NULL REFERENCES accounts(ref),
        cluster     TEXT NOT NULL,
        name        TEXT NOT NULL,
        UNIQUE (account_ref, cluster, name)
    );

    -- Every accepted sample, kept for audit. Rows are only ever inserted.
    CREATE TABLE samples (
        id              INTEGER PRIMARY KEY,
        account_ref     INTEGER NOT NULL REFERENCES accounts(ref),
        node_id         INTEGER NOT NULL REFERENCES nodes(id),
        seq             INTEGER,
        cores           INTEGER NOT NULL CHECK (cores BETWEEN 1 AND 10000),
        at_ms           INTEGER NOT NULL,
        received_at_ms  INTEGER NOT NULL,
        agent_version   TEXT
    );
    -- A resend of the same (node, seq) is a duplicate, never a second row.
    CREATE UNIQUE INDEX samples_by_node_seq ON samples(node_id, seq) WHERE seq IS NOT NULL;
    CREATE INDEX samples_by_account_at ON samples(account_ref, at_ms);

    -- Issued bill lines. Never updated or deleted. The key (account, day, seq)
    -- and the rule "daily is seq 1" make a second daily line for a day impossible.
    CREATE TABLE bill_lines (
        account_ref           INTEGER NOT NULL REFERENCES accounts(ref),
        day                   TEXT NOT NULL,
        seq                   INTEGER NOT NULL CHECK (seq >= 1),
        kind                  TEXT NOT NULL CHECK (kind IN ('daily', 'adjustment')),
        hours                 INTEGER NOT NULL,
        excess_core_hours     INTEGER NOT NULL,
        average_excess_cores  TEXT NOT NULL,
        cap_cores             INTEGER NOT NULL,
        billable_cores        TEXT NOT NULL,
        amount                TEXT NOT NULL,
        currency              TEXT NOT NULL,
        issued_at_ms          INTEGER NOT NULL,
        PRIMARY KEY (account_ref, day, seq),
        CHECK ((kind = 'daily') = (seq = 1))
    ) WITHOUT ROWID;
    CREATE INDEX bill_lines_by_issue ON bill_lines(issued_at_ms);

    -- One row: the last billing run and the last sample id it had seen.
    CREATE TABLE billing_state (
        id                INTEGER PRIMARY KEY CHECK (id = 1),
        last_run_ms       INTEGER,
        sample_watermark  INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO billing_state (id) VALUES (1);
    "#,
];
