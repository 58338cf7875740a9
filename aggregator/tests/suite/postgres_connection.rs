//! The service on PostgreSQL when its connections are cut (a server restart,
//! a failover, an administrator's `pg_terminate_backend`): the request in
//! flight is answered 503 `database_unreachable`, never a 500 and never a
//! half-stored batch, and the next one connects again. Runs when the suite
//! runs on PostgreSQL.

use crate::support;

use aggregator::config::Database;
use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp};

/// Ends every session of the database but the caller's.
fn cut_connections(url: &str) {
    support::off_runtime(|| {
        let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .unwrap();
    });
}

/// Pushes one sample; the status and the error code, if any.
async fn push(app: &TestApp, token: &str, seq: u64) -> (u16, Value) {
    let sample = json!({"node": "node-1", "cores": 8, "at": local(&format!("2026-11-24T{:02}:05:00", seq % 24)),
                        "seq": seq, "agent_version": "test"});
    app.call(
        Method::POST,
        "/v1/samples",
        Some(token),
        Some(json!({"samples": [sample]})),
    )
    .await
}

#[tokio::test]
async fn cut_connections_are_answered_503_and_the_next_request_reconnects() {
    if support::postgres_server().is_none() {
        eprintln!("postgres_connection: skipped: the suite runs on SQLite");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("core-meter.sqlite"),
        None,
        local("2026-11-25T10:00:00"),
    )
    .await;
    let Database::Postgres(url) = app.database.clone() else {
        unreachable!("on PostgreSQL")
    };
    let token = app.account_with_cluster("acme", "prod").await;
    assert_eq!(push(&app, &token, 1).await.0, 200);

    for round in 0..3u64 {
        cut_connections(&url);
        // The first request after the cut may find a dead connection: 503
        // naming it, and nothing stored; a retry, as an agent makes, is taken.
        let mut answers = Vec::new();
        let seq = 10 + round;
        loop {
            let (status, body) = push(&app, &token, seq).await;
            answers.push((status, body["error"]["code"].clone()));
            if status == 200 {
                assert_eq!(body["results"][0]["status"], "accepted", "{body}");
                break;
            }
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "database_unreachable", "{body}");
            assert!(answers.len() < 4, "{answers:?}");
        }
        eprintln!("round {round}: {answers:?}");
        // The admin side (its own connection) reconnects too.
        let mut reads = 0;
        loop {
            reads += 1;
            let (s, v) = app
                .admin(Method::GET, "/v1/admin/accounts/acme", None)
                .await;
            if s == 200 {
                break;
            }
            assert_eq!(
                (s, &v["error"]["code"]),
                (503, &json!("database_unreachable")),
                "{v}"
            );
            assert!(reads < 4);
        }
    }
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let seqs: Vec<u64> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 4, "each sample stored once: {v}");
    app.stop().await;
}

/// A table as both databases can describe it: its columns (name, type
/// family, nullable), its primary key, and its other indexes and unique
/// keys (columns, unique).
type Tables = std::collections::BTreeMap<String, Table>;

#[derive(Debug, PartialEq, Eq, Default)]
struct Table {
    columns: Vec<(String, &'static str, bool)>,
    primary_key: Vec<String>,
    indexes: std::collections::BTreeSet<(Vec<String>, bool)>,
}

/// The type family of a declared type: what the store reads a column as.
fn family(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" | "int" | "int8" | "smallint" => "integer",
        "array" => "array",
        "text" | "character varying" | "varchar" => "text",
        "blob" | "bytea" => "blob",
        "real" | "double precision" => "real",
        other => panic!("a column type the comparison does not know: {other}"),
    }
}

fn sqlite_tables(path: &std::path::Path) -> Tables {
    let conn = rusqlite::Connection::open(path).unwrap();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut tables = Tables::new();
    for name in names {
        let mut table = Table::default();
        let mut pk: Vec<(i64, String)> = Vec::new();
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({name})")).unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let (column, declared, notnull, in_pk): (String, String, bool, i64) = (
                r.get(1).unwrap(),
                r.get(2).unwrap(),
                r.get(3).unwrap(),
                r.get(5).unwrap(),
            );
            // A primary key column is never null, whatever SQLite reports.
            table
                .columns
                .push((column.clone(), family(&declared), !notnull && in_pk == 0));
            if in_pk > 0 {
                pk.push((in_pk, column));
            }
        }
        pk.sort();
        table.primary_key = pk.into_iter().map(|(_, c)| c).collect();
        // The one difference by design: a SQLite table without a primary key
        // keys its rows by the implicit `rowid`, which PostgreSQL's copy
        // declares as a column of that name (`rejections`).
        if table.primary_key.is_empty() {
            table
                .columns
                .insert(0, ("rowid".to_string(), "integer", false));
            table.primary_key = vec!["rowid".to_string()];
        }
        let indexes: Vec<(String, bool, String)> = conn
            .prepare(&format!("PRAGMA index_list({name})"))
            .unwrap()
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (index, unique, origin) in indexes {
            if origin == "pk" {
                continue;
            }
            let columns: Vec<String> = conn
                .prepare(&format!("PRAGMA index_info({index})"))
                .unwrap()
                .query_map([], |r| r.get(2))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            table.indexes.insert((columns, unique));
        }
        tables.insert(name, table);
    }
    tables
}

fn postgres_tables(url: &str) -> Tables {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut tables = Tables::new();
    for row in client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'YES'
               FROM information_schema.columns
              WHERE table_schema = 'public' AND table_name <> 'core_meter_schema'
              ORDER BY table_name, ordinal_position",
            &[],
        )
        .unwrap()
    {
        let table: String = row.get(0);
        let declared: String = row.get(2);
        tables
            .entry(table)
            .or_default()
            .columns
            .push((row.get(1), family(&declared), row.get(3)));
    }
    for row in client
        .query(
            "SELECT t.relname::text, i.indisprimary, i.indisunique,
                    array_agg(a.attname::text ORDER BY k.ord)
               FROM pg_index i
               JOIN pg_class t ON t.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
               JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
               JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
              WHERE t.relname <> 'core_meter_schema'
              GROUP BY i.indexrelid, t.relname, i.indisprimary, i.indisunique",
            &[],
        )
        .unwrap()
    {
        let table = tables.entry(row.get(0)).or_default();
        let columns: Vec<String> = row.get(3);
        if row.get(1) {
            table.primary_key = columns;
        } else {
            table.indexes.insert((columns, row.get(2)));
        }
    }
    tables
}

#[test]
fn an_empty_sqlite_and_an_empty_postgresql_migrate_to_the_same_tables_keys_and_indexes() {
    let Some(server) = support::postgres_server() else {
        eprintln!("postgres_connection: skipped: the suite runs on SQLite");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("core-meter.sqlite");
    aggregator::store::Store::open(&file, aggregator::store::Durability::Scratch).unwrap();
    let sqlite = sqlite_tables(&file);
    let db = support::database(&dir.path().join("postgres.sqlite"));
    support::open_store(
        &dir.path().join("postgres.sqlite"),
        aggregator::store::Durability::Scratch,
    )
    .unwrap();
    let Database::Postgres(url) = db else {
        unreachable!("on PostgreSQL: {server}")
    };
    let mut postgres = support::off_runtime(|| postgres_tables(&url));
    assert!(sqlite.len() >= 15, "{:?}", sqlite.keys());
    // The differences by design (migration 14): PostgreSQL files a node's
    // samples of a day in one row of `sample_days` (a partition a month),
    // behind a view `samples` with SQLite's columns and the day; and its
    // nodes keep their highest seq.
    let days = postgres.remove("sample_days").expect("sample_days");
    assert_eq!(days.primary_key, ["account_ref", "day", "node_id"]);
    assert_eq!(
        days.indexes,
        [(vec!["node_id".to_string(), "day".to_string()], false)].into()
    );
    postgres.retain(|name, _| !name.starts_with("sample_days_"));
    let view = postgres.remove("samples").expect("the view samples");
    let columns = |t: &Table| {
        t.columns
            .iter()
            .map(|c| (c.0.clone(), c.1))
            .collect::<Vec<_>>()
    };
    let mut filed = columns(&sqlite["samples"]);
    filed.push(("day".to_string(), "integer"));
    assert_eq!(
        columns(&view),
        filed,
        "the view samples: SQLite's columns, then the day"
    );
    assert!(view.primary_key.is_empty() && view.indexes.is_empty());
    let nodes = postgres.get_mut("nodes").expect("nodes");
    assert_eq!(
        nodes.columns.pop(),
        Some(("seq_hi".to_string(), "integer", true))
    );
    let sqlite: Tables = sqlite
        .into_iter()
        .filter(|(name, _)| name != "samples")
        .collect();
    let names = |t: &Tables| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&sqlite), names(&postgres), "the same tables");
    for (name, table) in &sqlite {
        assert_eq!(
            Some(table),
            postgres.get(name),
            "table {name}: SQLite, then PostgreSQL"
        );
    }
}
