//! A token is issued once: cluster and reader tokens, generated or supplied,
//! held, rotated away or revoked, are never given out again; the upgrade to
//! schema 7 records the tokens held before it. On SQLite, or on PostgreSQL
//! when the suite runs on it.

use crate::support;

use aggregator::store::{Durability, Store, StoreError, TokenKind};
use chrono::{DateTime, TimeDelta, Utc};
use support::{execute_behind_the_store, local, open_store, postgres_server};

/// A well-formed cluster token, different for each `seed`.
fn supplied(seed: u8) -> String {
    format!("cmc_{}", format!("{seed:02x}").repeat(32))
}

fn t0() -> DateTime<Utc> {
    local("2026-11-24T12:00:00")
}

fn store_with(accounts: &[&str]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
    for account in accounts {
        store.accounts().create_account(account, t0()).unwrap();
    }
    (dir, store)
}

fn in_use<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    match result {
        Err(StoreError::TokenInUse) => true,
        other => panic!("expected TokenInUse, got {other:?}"),
    }
}

#[test]
fn a_token_rotated_away_cannot_be_given_to_another_accounts_cluster_nor_back_to_its_own() {
    let (_dir, mut store) = store_with(&["acme", "rival"]);
    let first = supplied(0x01);
    store
        .accounts()
        .create_cluster("acme", "prod", Some(first.clone()), t0())
        .unwrap();
    let generated = store
        .accounts()
        .rotate_cluster_token("acme", "prod", None, t0() + TimeDelta::hours(1))
        .unwrap();
    store
        .accounts()
        .rotate_cluster_token(
            "acme",
            "prod",
            Some(supplied(0x02)),
            t0() + TimeDelta::hours(2),
        )
        .unwrap();

    for old in [&first, &generated] {
        // To another account's cluster, new or existing; to another cluster
        // of the same account; back to its own cluster.
        assert!(in_use(store.accounts().create_cluster(
            "rival",
            "prod",
            Some(old.clone()),
            t0()
        )));
        assert!(in_use(store.accounts().create_cluster(
            "acme",
            "staging",
            Some(old.clone()),
            t0()
        )));
        assert!(in_use(store.accounts().rotate_cluster_token(
            "acme",
            "prod",
            Some(old.clone()),
            t0()
        )));
        assert_eq!(store.ingest().cluster_for_token(old).unwrap(), None);
    }
    store
        .accounts()
        .create_cluster("rival", "prod", None, t0())
        .unwrap();
    assert!(in_use(store.accounts().rotate_cluster_token(
        "rival",
        "prod",
        Some(first.clone()),
        t0()
    )));
    // The token it holds now is refused as well, for itself and for others.
    assert!(in_use(store.accounts().rotate_cluster_token(
        "acme",
        "prod",
        Some(supplied(0x02)),
        t0()
    )));
    assert!(in_use(store.accounts().create_cluster(
        "rival",
        "edge",
        Some(supplied(0x02)),
        t0()
    )));

    // Nothing refused was written: the clusters are as they were, and
    // acme's current token still speaks for acme.
    assert_eq!(store.accounts().clusters("acme").unwrap(), ["prod"]);
    assert_eq!(store.accounts().clusters("rival").unwrap(), ["prod"]);
    let holder = store
        .ingest()
        .cluster_for_token(&supplied(0x02))
        .unwrap()
        .unwrap();
    assert_eq!(
        (holder.account.as_str(), holder.cluster.as_str()),
        ("acme", "prod")
    );
}

#[test]
fn every_issued_token_is_recorded_by_its_hash_with_its_kind_and_when() {
    let (_dir, mut store) = store_with(&["acme"]);
    let admin = store.tokens().generate_admin_token(t0()).unwrap().unwrap();
    let later = t0() + TimeDelta::minutes(5);
    let cluster = store
        .accounts()
        .create_cluster("acme", "prod", None, later)
        .unwrap();
    let reader = store
        .accounts()
        .issue_reader_token("acme", "finance", later)
        .unwrap();
    store
        .accounts()
        .revoke_reader_token("acme", reader.id, later + TimeDelta::minutes(1))
        .unwrap();

    assert_eq!(
        store.tokens().token_issued(&admin).unwrap(),
        Some((TokenKind::Admin, t0()))
    );
    assert_eq!(
        store.tokens().token_issued(&cluster).unwrap(),
        Some((TokenKind::Cluster, later))
    );
    // A revoked reader token stays recorded: it is never issued again.
    assert_eq!(
        store.tokens().token_issued(&reader.token).unwrap(),
        Some((TokenKind::Reader, later))
    );
    assert_eq!(store.tokens().token_issued(&supplied(0x03)).unwrap(), None);
    // A cluster token held now is refused for another cluster.
    assert!(in_use(store.accounts().create_cluster(
        "acme",
        "staging",
        Some(cluster),
        t0()
    )));
}

#[test]
fn a_cluster_that_is_not_created_does_not_use_up_its_supplied_token() {
    let (_dir, mut store) = store_with(&["acme"]);
    store
        .accounts()
        .create_cluster("acme", "prod", None, t0())
        .unwrap();
    let token = supplied(0x04);
    assert!(matches!(
        store
            .accounts()
            .create_cluster("acme", "prod", Some(token.clone()), t0()),
        Err(StoreError::ClusterExists(..))
    ));
    assert!(matches!(
        store
            .accounts()
            .rotate_cluster_token("acme", "nowhere", Some(token.clone()), t0()),
        Err(StoreError::UnknownCluster(..))
    ));
    assert_eq!(store.tokens().token_issued(&token).unwrap(), None);
    store
        .accounts()
        .create_cluster("acme", "staging", Some(token.clone()), t0())
        .unwrap();
    assert!(store.tokens().token_issued(&token).unwrap().is_some());
}

/// The schema version of this build.
const LATEST: usize = aggregator::store::SCHEMA_VERSION;

#[test]
fn the_upgrade_to_schema_7_records_every_token_held_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let mut store = open_store(&path, Durability::Scratch).unwrap();
    assert_eq!(store.schema_version().unwrap(), LATEST);
    store.accounts().create_account("acme", t0()).unwrap();
    let admin = store.tokens().generate_admin_token(t0()).unwrap().unwrap();
    let created = t0() + TimeDelta::minutes(1);
    let prod = store
        .accounts()
        .create_cluster("acme", "prod", Some(supplied(0x05)), created)
        .unwrap();
    let rotated = t0() + TimeDelta::minutes(2);
    let edge_before = store
        .accounts()
        .create_cluster("acme", "edge", None, created)
        .unwrap();
    let edge = store
        .accounts()
        .rotate_cluster_token("acme", "edge", None, rotated)
        .unwrap();
    let reader = store
        .accounts()
        .issue_reader_token("acme", "live", created)
        .unwrap();
    let revoked = store
        .accounts()
        .issue_reader_token("acme", "gone", created)
        .unwrap();
    store
        .accounts()
        .revoke_reader_token("acme", revoked.id, rotated)
        .unwrap();
    drop(store);

    // The database as version 6 left it: no record of issued tokens.
    let back_to_6 = if postgres_server().is_some() {
        "DROP TABLE audit_log; DROP TABLE issued_tokens; DROP TABLE names_outside_domain; DELETE FROM core_meter_schema WHERE version >= 7;"
    } else {
        "DROP TABLE audit_log; DROP TABLE issued_tokens; DROP TABLE names_outside_domain; PRAGMA user_version = 6;"
    };
    execute_behind_the_store(
        &path,
        &format!("{}{back_to_6}", crate::support::undo_migrations_9_to_15()),
    );

    let mut store = open_store(&path, Durability::Scratch).unwrap();
    assert_eq!(store.schema_version().unwrap(), LATEST);
    for (token, kind, at) in [
        (&admin, TokenKind::Admin, t0()),
        (&prod, TokenKind::Cluster, created),
        (&edge, TokenKind::Cluster, rotated),
        (&reader.token, TokenKind::Reader, created),
        (&revoked.token, TokenKind::Reader, created),
    ] {
        assert_eq!(
            store.tokens().token_issued(token).unwrap(),
            Some((kind, at))
        );
    }
    // A token rotated away before the upgrade was never kept: it cannot be known.
    assert_eq!(store.tokens().token_issued(&edge_before).unwrap(), None);
    // What is held now cannot be given to another cluster after the upgrade.
    store.accounts().create_account("rival", t0()).unwrap();
    assert!(in_use(store.accounts().create_cluster(
        "rival",
        "prod",
        Some(prod),
        t0()
    )));
}
