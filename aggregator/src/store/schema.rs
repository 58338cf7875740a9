//! The database schema as numbered migrations; `PRAGMA user_version` records how many are applied.

/// Every migration, in order. Never edit one that has shipped: add the next.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts, licences, caps, nodes, samples, bill lines, billing state.
    r#"
    CREATE TABLE accounts (
        ref                INTEGER PRIMARY KEY,
        id                 TEXT NOT NULL UNIQUE,
        created_at_ms      INTEGER NOT NULL,
        -- The earliest instant whose day may have changed since the last
        -- billing run (a sample stored, a licence or cap set): the next run
        -- recomputes from its day. `marks` counts changes, so that a run only
        -- clears a mark that nothing touched while it ran.
        recompute_from_ms  INTEGER,
        marks              INTEGER NOT NULL DEFAULT 0
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
    -- Clustered by (account, at): billing and the audit trail read a range of
    -- it, and each row is written to one B-tree instead of a table and an
    -- index. `id` is the store's own counter (sample_ids), increasing in the
    -- order samples were stored. No foreign keys: ingest resolves account and
    -- node itself, and the parent look-ups would cost a fifth of ingest time.
    CREATE TABLE samples (
        account_ref     INTEGER NOT NULL,
        at_ms           INTEGER NOT NULL,
        node_id         INTEGER NOT NULL,
        id              INTEGER NOT NULL,
        cores           INTEGER NOT NULL CHECK (cores BETWEEN 1 AND 10000),
        received_at_ms  INTEGER NOT NULL,
        seq             INTEGER,
        agent_version   TEXT,
        PRIMARY KEY (account_ref, at_ms, node_id, id)
    ) WITHOUT ROWID;
    -- A resend of the same (node, seq) is a duplicate, never a second row.
    CREATE UNIQUE INDEX samples_by_node_seq ON samples(node_id, seq) WHERE seq IS NOT NULL;

    CREATE TABLE sample_ids (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        next  INTEGER NOT NULL
    );
    INSERT INTO sample_ids (id, next) VALUES (1, 1);

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

    -- One row: the instant of the latest billing run.
    CREATE TABLE billing_state (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        last_run_ms  INTEGER
    );
    INSERT INTO billing_state (id) VALUES (1);
    "#,
    // 2: clusters with their token hashes, the admin token, the bill outbox.
    r#"
    -- A cluster of an account. Its token is stored only as a SHA-256 hash;
    -- the token itself is shown once, when created or rotated.
    CREATE TABLE clusters (
        account_ref    INTEGER NOT NULL REFERENCES accounts(ref),
        name           TEXT NOT NULL,
        token_hash     BLOB NOT NULL UNIQUE,
        created_at_ms  INTEGER NOT NULL,
        rotated_at_ms  INTEGER,
        PRIMARY KEY (account_ref, name)
    );

    -- The generated admin token's hash, when none is configured.
    CREATE TABLE admin_token (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        token_hash     BLOB NOT NULL,
        created_at_ms  INTEGER NOT NULL
    );

    -- Every issued bill line waits here until the billing backend took it
    -- (a 2xx from the webhook). Rows are written in the transaction that
    -- issues the line, so a line is never issued without being queued.
    CREATE TABLE outbox (
        account_ref      INTEGER NOT NULL,
        day              TEXT NOT NULL,
        seq              INTEGER NOT NULL,
        delivered_at_ms  INTEGER,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER NOT NULL,
        last_error       TEXT,
        PRIMARY KEY (account_ref, day, seq),
        FOREIGN KEY (account_ref, day, seq) REFERENCES bill_lines (account_ref, day, seq)
    ) WITHOUT ROWID;
    CREATE INDEX outbox_pending ON outbox (next_attempt_ms) WHERE delivered_at_ms IS NULL;
    "#,
    // 3: rejected samples of known accounts, for the report's completeness section.
    r#"
    -- One row per rejected sample of a known account: when it claimed to be
    -- (its `at`, or its receipt when `at` was unreadable) and why it was refused.
    CREATE TABLE rejections (
        account_ref     INTEGER NOT NULL REFERENCES accounts(ref),
        at_ms           INTEGER NOT NULL,
        reason          TEXT NOT NULL,
        received_at_ms  INTEGER NOT NULL
    );
    CREATE INDEX rejections_by_account_at ON rejections (account_ref, at_ms);
    "#,
    // 4: how far retention has pruned raw samples, so reports and exports can
    // refuse a day whose samples are gone instead of showing it empty.
    r#"
    -- recompute_floor_ms: the earliest instant a new change may mark for
    -- recompute (the first day whose samples are all kept, plus the reach).
    CREATE TABLE IF NOT EXISTS retention (
        id                  INTEGER PRIMARY KEY CHECK (id = 1),
        pruned_before_ms    INTEGER NOT NULL,
        recompute_floor_ms  INTEGER NOT NULL
    );
    "#,
];
