//! `aggregator migrate-store`: a SQLite store with a few weeks of history is
//! copied by the real binary into an empty store (PostgreSQL when the suite
//! runs on it, otherwise another SQLite file); the copy must bill exactly as
//! the original did, and go on billing as the original does.

use crate::support;

use std::path::Path;
use std::process::Command;

use aggregator::billing::lifecycle::run_lifecycle;
use aggregator::billing::run_billing;
use aggregator::config::BillingConfig;
use aggregator::config::Database;
use aggregator::config::NoticeChannels;
use aggregator::store::{Durability, Incoming, NewContact, NewOrder, Store, StoreError};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use shared::bill::{BillLine, LineKind};
use shared::lifecycle::ContactRole;
use shared::overage::Licence;
use shared::sample::AgeLimits;

fn local(wall: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{wall}+08:00"))
        .unwrap()
        .with_timezone(&Utc)
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn price() -> Decimal {
    shared::lifecycle::default_price_per_core_month()
}

fn push(store: &mut Store, account: &str, node: &str, cores: Option<u32>, at: DateTime<Utc>) {
    let incoming = Incoming {
        account,
        cluster: "prod",
        node,
        cores,
        at: Some(at),
        seq: None,
        agent_version: Some("0.2.0"),
        received_at: at + TimeDelta::minutes(1),
    };
    store
        .ingest()
        .insert(&[incoming], &AgeLimits::default())
        .unwrap();
}

/// Hourly samples of `day` from two nodes.
fn push_day(store: &mut Store, account: &str, cores: u32, day: &str) {
    for h in 0..24 {
        for node in ["node-1", "node-2"] {
            push(
                store,
                account,
                node,
                Some(cores),
                local(&format!("{day}T{h:02}:07:00")),
            );
        }
    }
}

/// The 02:00 run: billing, then the lifecycle.
fn run(store: &mut Store, day: &str, config: &BillingConfig) -> Vec<BillLine> {
    let at = local(&format!("{day}T02:00:00"));
    let lines = run_billing(store, at, config).unwrap();
    run_lifecycle(store, at, &config.zone, price()).unwrap();
    lines
}

/// Two weeks of three accounts: a main account with a contact, a cluster,
/// a prepaid auto-renewing order and a late sample that adjusts a billed
/// day; its sub-account on a trial; one on a counting-period licence; a
/// rejected sample. Returns the tokens it issued, the one rotated away first.
fn history(store: &mut Store, config: &BillingConfig) -> Vec<String> {
    let t0 = local("2026-11-01T10:00:00");
    let admin = store.tokens().generate_admin_token(t0).unwrap().unwrap();
    store.accounts().create_account("acme", t0).unwrap();
    store
        .accounts()
        .add_contact(
            "acme",
            &NewContact {
                name: "Ann Lee".into(),
                role: ContactRole::Creator,
                email: Some("ann@acme.example".into()),
                sms: Some("+8613800138000".into()),
            },
            t0,
        )
        .unwrap();
    let rotated_away = store
        .accounts()
        .create_cluster("acme", "prod", None, t0)
        .unwrap();
    let cluster = store
        .accounts()
        .rotate_cluster_token("acme", "prod", None, t0 + TimeDelta::minutes(1))
        .unwrap();
    let reader = store
        .accounts()
        .issue_reader_token("acme", "dashboard", t0)
        .unwrap();
    let revoked = store
        .accounts()
        .issue_reader_token("acme", "old", t0)
        .unwrap();
    store
        .accounts()
        .revoke_reader_token("acme", revoked.id, t0)
        .unwrap();
    store
        .accounts()
        .credit_balance("acme", "67.50".parse().unwrap(), "wire-1", t0)
        .unwrap();
    store
        .accounts()
        .place_order(
            "acme",
            &NewOrder {
                cores: 10,
                months: 1,
                start: Some(date("2026-11-01")),
                auto_renew: true,
                pay_from_balance: true,
            },
            &config.zone,
            price(),
            t0,
        )
        .unwrap();
    store
        .accounts()
        .create_sub_account("acme-dev", "acme", t0)
        .unwrap();
    store
        .accounts()
        .start_trial("acme-dev", &config.zone, t0)
        .unwrap();
    store.accounts().create_account("zeta", t0).unwrap();
    store
        .accounts()
        .add_licence(
            "zeta",
            &Licence {
                cores: 4,
                start: local("2026-11-01T00:00:00"),
                end: local("2026-12-01T00:00:00"),
            },
            t0,
        )
        .unwrap();
    let mut day = date("2026-11-01");
    while day <= date("2026-11-14") {
        let d = day.to_string();
        push_day(store, "acme", 8, &d);
        push_day(store, "acme-dev", 2, &d);
        push_day(store, "zeta", 3, &d);
        day = day.succ_opt().unwrap();
        run(store, &day.to_string(), config);
    }
    // A late sample for a billed day, and one refused.
    push(
        store,
        "acme",
        "node-3",
        Some(16),
        local("2026-11-10T12:07:00"),
    );
    push(store, "zeta", "node-1", None, local("2026-11-14T12:07:00"));
    let adjusted = run(store, "2026-11-15", config);
    assert!(
        adjusted.iter().any(|l| l.kind == LineKind::Adjustment),
        "{adjusted:?}"
    );
    vec![rotated_away, cluster, admin, reader.token, revoked.token]
}

fn migrate(from: &Path, to: &Database) -> std::process::Output {
    let to = match to {
        Database::Sqlite(path) => path.display().to_string(),
        Database::Postgres(url) => url.clone(),
    };
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args(["migrate-store", "--from"])
        .arg(from)
        .args(["--to", &to])
        .output()
        .unwrap()
}

fn sorted(mut lines: Vec<BillLine>) -> Vec<BillLine> {
    lines.sort_by(|a, b| {
        (a.issued_at, &a.account, a.day, a.seq).cmp(&(b.issued_at, &b.account, b.day, b.seq))
    });
    lines
}

#[test]
fn a_migrated_store_holds_the_same_bills_and_goes_on_billing_as_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let config = BillingConfig::default();
    let source_path = dir.path().join("source.sqlite");
    let mut source = Store::open(&source_path, Durability::Durable).unwrap();
    source.set_notice_channels(NoticeChannels {
        webhook: true,
        email: true,
    });
    let tokens = history(&mut source, &config);

    let target_db = support::database(&dir.path().join("target.sqlite"));
    let out = migrate(&source_path, &target_db);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the stores agree"), "{stdout}");
    assert!(stdout.contains("samples "), "{stdout}");

    let mut target =
        support::open_store(&dir.path().join("target.sqlite"), Durability::Durable).unwrap();
    target.set_notice_channels(NoticeChannels {
        webhook: true,
        email: true,
    });
    let lines = sorted(source.reads().bill_lines(None, None).unwrap());
    // Daily lines of three accounts over 14 days (none for trial days), one adjustment.
    assert!(lines.len() > 2 * 14, "{} lines", lines.len());
    assert_eq!(
        sorted(target.reads().bill_lines(None, None).unwrap()),
        lines
    );
    for account in ["acme", "acme-dev", "zeta"] {
        assert_eq!(
            target.accounts().notices(account, 1000).unwrap(),
            source.accounts().notices(account, 1000).unwrap(),
            "the notices of {account}"
        );
        assert_eq!(
            target.accounts().state_history(account).unwrap(),
            source.accounts().state_history(account).unwrap(),
            "the state history of {account}"
        );
        assert_eq!(
            target.billing().life(account).unwrap().1,
            source.billing().life(account).unwrap().1,
            "the state of {account}"
        );
    }
    assert_eq!(
        target.tokens().admin_token_hash().unwrap(),
        source.tokens().admin_token_hash().unwrap()
    );
    assert_eq!(
        target.accounts().reader_tokens("acme").unwrap(),
        source.accounts().reader_tokens("acme").unwrap()
    );
    // Every token the source issued, the one rotated away too, is known to
    // the target as issued, and refused there for a new cluster.
    for token in &tokens {
        assert!(source.tokens().token_issued(token).unwrap().is_some());
        assert_eq!(
            target.tokens().token_issued(token).unwrap(),
            source.tokens().token_issued(token).unwrap()
        );
    }
    assert!(matches!(
        target.accounts().create_cluster(
            "zeta",
            "prod",
            Some(tokens[0].clone()),
            local("2026-11-15T10:00:00")
        ),
        Err(StoreError::TokenInUse)
    ));
    // New reader tokens' ids follow the copied ones.
    let next = target
        .accounts()
        .issue_reader_token("acme", "after the move", local("2026-11-15T10:00:00"))
        .unwrap();
    assert!(target
        .tokens()
        .reader_for_token(&next.token)
        .unwrap()
        .is_some());
    assert_eq!(target.accounts().reader_tokens("acme").unwrap().len(), 3);
    assert_eq!(
        target.delivery().outbox(false, 1000).unwrap().len(),
        source.delivery().outbox(false, 1000).unwrap().len()
    );

    // Both go on alike: a late sample, new days, a renewal from the balance
    // at the end of November, a new account (new ids follow the copied ones).
    for store in [&mut source, &mut target] {
        push(
            store,
            "acme",
            "node-4",
            Some(32),
            local("2026-11-12T09:07:00"),
        );
        let mut day = date("2026-11-15");
        while day <= date("2026-12-03") {
            push_day(store, "acme", 12, &day.to_string());
            day = day.succ_opt().unwrap();
            run(store, &day.to_string(), &config);
        }
        store
            .accounts()
            .create_account("newco", local("2026-12-03T10:00:00"))
            .unwrap();
        store
            .accounts()
            .add_contact(
                "newco",
                &NewContact {
                    name: "New".into(),
                    role: ContactRole::Creator,
                    email: Some("new@newco.example".into()),
                    sms: None,
                },
                local("2026-12-03T10:00:00"),
            )
            .unwrap();
        push_day(store, "newco", 600, "2026-12-03");
        run(store, "2026-12-04", &config);
    }
    let after = sorted(source.reads().bill_lines(None, None).unwrap());
    assert!(after.len() > lines.len() + 19, "{} lines", after.len());
    assert_eq!(
        sorted(target.reads().bill_lines(None, None).unwrap()),
        after
    );
    assert_eq!(
        target.accounts().notices("acme", 1000).unwrap().len(),
        source.accounts().notices("acme", 1000).unwrap().len()
    );

    // The target now holds data: a second copy into it is refused.
    let again = migrate(&source_path, &target_db);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds data"), "{stderr}");
}
