//! SQLite's first five migrations, as they shipped. PostgreSQL starts from
//! their sum (`schema_postgres.rs`); from migration 6 on, both databases
//! take one text each (`migrations.rs`).

/// SQLite's migrations 1 to 5, in order. Never edit one that has shipped.
pub const SQLITE_1_TO_5: [&str; 5] = [
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
    // 5: the life of an account (SPEC section 8, LIFECYCLE.md): main and
    // sub-accounts, states and their history, trials, licence orders and
    // renewal, the prepaid balance, contacts, notices and their delivery.
    r#"
    ALTER TABLE accounts ADD COLUMN parent_ref INTEGER REFERENCES accounts(ref);
    -- The current state and since when; the history is account_states.
    ALTER TABLE accounts ADD COLUMN state TEXT NOT NULL DEFAULT 'unlicensed';
    ALTER TABLE accounts ADD COLUMN state_since_ms INTEGER;
    -- The last day whose 02:00 run stepped this account (NULL: none yet).
    ALTER TABLE accounts ADD COLUMN stepped_through TEXT;
    -- The prepaid balance, an exact decimal; every change is in balance_entries.
    ALTER TABLE accounts ADD COLUMN balance TEXT NOT NULL DEFAULT '0.00';
    -- Samples before this instant were deleted with the account's data: days
    -- before it are never billed again.
    ALTER TABLE accounts ADD COLUMN data_deleted_before_ms INTEGER;
    -- Lapses before this instant are treated as happening at it, so that an
    -- upgrade never stops or deletes an account at once for a licence that
    -- ended before the lifecycle existed: -1 (every account older than this
    -- migration) is set to its first run's instant; NULL for new accounts.
    ALTER TABLE accounts ADD COLUMN lifecycle_from_ms INTEGER;
    UPDATE accounts SET lifecycle_from_ms = -1;

    -- ends_ms: the licence's end without grace (NULL for licences given as a
    -- counting period through POST .../licenses: end_ms less the grace).
    ALTER TABLE licences ADD COLUMN ends_ms INTEGER;
    ALTER TABLE licences ADD COLUMN auto_renew INTEGER NOT NULL DEFAULT 0;
    -- The licence that renewed this one; a licence renews at most once.
    ALTER TABLE licences ADD COLUMN renewed_by INTEGER REFERENCES licences(id);
    CREATE UNIQUE INDEX licences_renewed_by ON licences(renewed_by) WHERE renewed_by IS NOT NULL;

    -- Every order of licensed cores: a purchase through the API or an
    -- auto-renewal. Never updated or deleted.
    CREATE TABLE orders (
        id             INTEGER PRIMARY KEY,
        account_ref    INTEGER NOT NULL REFERENCES accounts(ref),
        kind           TEXT NOT NULL CHECK (kind IN ('purchase', 'renewal')),
        licence_id     INTEGER NOT NULL UNIQUE REFERENCES licences(id),
        cores          INTEGER NOT NULL CHECK (cores >= 1),
        months         INTEGER NOT NULL CHECK (months >= 1),
        start_day      TEXT NOT NULL,
        end_day        TEXT NOT NULL,
        price          TEXT NOT NULL,
        paid_from      TEXT NOT NULL CHECK (paid_from IN ('invoice', 'balance')),
        ordered_at_ms  INTEGER NOT NULL
    );
    CREATE INDEX orders_by_account ON orders(account_ref);

    -- The prepaid balance's ledger: credits from the billing backend (a
    -- reference is taken once), debits for orders paid from the balance.
    CREATE TABLE balance_entries (
        id             INTEGER PRIMARY KEY,
        account_ref    INTEGER NOT NULL REFERENCES accounts(ref),
        kind           TEXT NOT NULL CHECK (kind IN ('credit', 'debit')),
        amount         TEXT NOT NULL,
        balance_after  TEXT NOT NULL,
        reference      TEXT,
        order_id       INTEGER REFERENCES orders(id),
        at_ms          INTEGER NOT NULL,
        UNIQUE (account_ref, reference)
    );

    -- One trial per main account: the key is the main account.
    CREATE TABLE trials (
        main_ref       INTEGER PRIMARY KEY REFERENCES accounts(ref),
        account_ref    INTEGER NOT NULL UNIQUE REFERENCES accounts(ref),
        start_ms       INTEGER NOT NULL,
        end_ms         INTEGER NOT NULL,
        started_at_ms  INTEGER NOT NULL
    );

    -- Every state change, with the instant it took effect and why.
    CREATE TABLE account_states (
        id           INTEGER PRIMARY KEY,
        account_ref  INTEGER NOT NULL REFERENCES accounts(ref),
        state        TEXT NOT NULL,
        at_ms        INTEGER NOT NULL,
        -- When the service recorded it (later than at_ms after an outage).
        recorded_at_ms INTEGER NOT NULL,
        cause        TEXT NOT NULL
    );
    CREATE INDEX account_states_by_account ON account_states(account_ref, at_ms);

    -- A deletion of an account's data, done in bounded batches after the
    -- step that decided it; finished_at_ms is set when nothing is left.
    CREATE TABLE deletions (
        id              INTEGER PRIMARY KEY,
        account_ref     INTEGER NOT NULL REFERENCES accounts(ref),
        before_ms       INTEGER NOT NULL,
        decided_at_ms   INTEGER NOT NULL,
        samples         INTEGER NOT NULL DEFAULT 0,
        rejections      INTEGER NOT NULL DEFAULT 0,
        finished_at_ms  INTEGER
    );

    CREATE TABLE contacts (
        id             INTEGER PRIMARY KEY,
        account_ref    INTEGER NOT NULL REFERENCES accounts(ref),
        name           TEXT NOT NULL,
        role           TEXT NOT NULL CHECK (role IN ('creator', 'global_resource_collaborator', 'finance_collaborator', 'collaborator')),
        email          TEXT,
        sms            TEXT,
        created_at_ms  INTEGER NOT NULL,
        CHECK (email IS NOT NULL OR sms IS NOT NULL)
    );
    CREATE INDEX contacts_by_account ON contacts(account_ref);

    -- Notices, at most one of a kind per account and day. recipients and
    -- details are JSON. Never updated or deleted.
    CREATE TABLE notices (
        id            INTEGER PRIMARY KEY,
        account_ref   INTEGER NOT NULL REFERENCES accounts(ref),
        kind          TEXT NOT NULL,
        day           TEXT NOT NULL,
        issued_at_ms  INTEGER NOT NULL,
        recipients    TEXT NOT NULL,
        details       TEXT NOT NULL,
        UNIQUE (account_ref, kind, day)
    );

    -- The notice outbox: one row per notice and channel (the webhook; each
    -- email address when an SMTP relay is set), written with the notice.
    CREATE TABLE notice_deliveries (
        notice_id        INTEGER NOT NULL REFERENCES notices(id),
        channel          TEXT NOT NULL CHECK (channel IN ('webhook', 'email')),
        address          TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER NOT NULL,
        delivered_at_ms  INTEGER,
        last_error       TEXT,
        PRIMARY KEY (notice_id, channel, address)
    ) WITHOUT ROWID;
    CREATE INDEX notice_deliveries_pending ON notice_deliveries (next_attempt_ms) WHERE delivered_at_ms IS NULL;
    "#,
];
