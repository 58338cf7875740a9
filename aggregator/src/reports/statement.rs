//! The monthly statement of one account: every daily line of the month's
//! days, the adjustments issued in it, the orders placed, the ledger with
//! its credits, refunds and debits, the balance at each end, and totals. As
//! JSON (signed, see `security::statement_key`), CSV and a page made for
//! printing.
//!
//! Each bill line is in exactly one statement: a daily line in the month of
//! its day, an adjustment in the month it was issued (a statement already
//! handed out is never contradicted by a later one; the correction shows in
//! the next).

use chrono::{DateTime, Datelike, Months, NaiveDate, SecondsFormat, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::config::BillingConfig;
use crate::security::statement_key::StatementKey;
use crate::store::{OrderEntry, RefundEntry, Store, StoreError};

/// The statement format's name and version, the first member a reader checks.
pub const FORMAT: &str = "core-meter-statement/1";

#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub format: &'static str,
    pub account: String,
    /// `YYYY-MM`.
    pub month: String,
    pub timezone: String,
    pub currency: String,
    /// The month's first and last day.
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub generated_at: DateTime<Utc>,
    /// The month's last day is not billed yet (its 02:00 run is to come):
    /// more lines may join this statement.
    pub provisional: bool,
    pub opening_balance: Decimal,
    pub closing_balance: Decimal,
    pub days: Vec<DayLine>,
    pub adjustments: Vec<AdjustmentLine>,
    pub orders: Vec<OrderEntry>,
    pub ledger: Vec<LedgerLine>,
    pub refunds: Vec<RefundEntry>,
    pub totals: Totals,
}

#[derive(Debug, Clone, Serialize)]
pub struct DayLine {
    pub day: NaiveDate,
    pub hours: u32,
    pub excess_core_hours: u64,
    pub cap_cores: u32,
    pub billable_cores: Decimal,
    pub amount: Decimal,
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdjustmentLine {
    /// The day it corrects (possibly in an earlier month).
    pub day: NaiveDate,
    pub seq: u32,
    pub billable_cores: Decimal,
    /// The difference it bills: positive adds, negative gives back.
    pub amount: Decimal,
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LedgerLine {
    pub at: DateTime<Utc>,
    /// `credit`, `refund` (unused authorizations given back) or `debit`.
    pub kind: &'static str,
    /// Signed: what the entry did to the balance.
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub reference: Option<String>,
    pub order: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// The daily lines.
    pub daily: Decimal,
    /// The adjustments (signed).
    pub adjustments: Decimal,
    /// Usage billed this month: daily plus adjustments.
    pub usage: Decimal,
    /// Orders invoiced by the billing backend.
    pub orders_invoiced: Decimal,
    /// Orders paid from the balance.
    pub orders_from_balance: Decimal,
    /// Credits to the balance, refunds not included.
    pub credits: Decimal,
    pub refunds: Decimal,
    /// What the ledger took from the balance.
    pub debits: Decimal,
}

/// The statement of `account` for the month starting on `first` (its first
/// day), as of `now`.
pub fn monthly_statement(
    store: &mut Store,
    config: &BillingConfig,
    account: &str,
    first: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Statement, StoreError> {
    let zone = &config.zone;
    let first = first.with_day(1).expect("every month has a first day");
    let next = first + Months::new(1);
    let last = next.pred_opt().expect("a month's last day");
    let window = (
        zone.day_start(first).timestamp_millis(),
        zone.day_start(next).timestamp_millis(),
    );
    let facts = store.statements().month(account, (first, last), window)?;
    let days: Vec<DayLine> = facts
        .daily
        .iter()
        .map(|l| DayLine {
            day: l.day,
            hours: l.hours,
            excess_core_hours: l.excess_core_hours,
            cap_cores: l.cap_cores,
            billable_cores: l.billable_cores,
            amount: l.amount,
            issued_at: l.issued_at,
        })
        .collect();
    let adjustments: Vec<AdjustmentLine> = facts
        .adjustments
        .iter()
        .map(|l| AdjustmentLine {
            day: l.day,
            seq: l.seq,
            billable_cores: l.billable_cores,
            amount: l.amount,
            issued_at: l.issued_at,
        })
        .collect();
    let ledger: Vec<LedgerLine> = facts
        .ledger
        .iter()
        .map(|(e, refund)| {
            let debit = e.kind == "debit";
            LedgerLine {
                at: e.at,
                kind: match (debit, refund) {
                    (true, _) => "debit",
                    (false, Some(_)) => "refund",
                    (false, None) => "credit",
                },
                amount: if debit { -e.amount } else { e.amount },
                balance_after: e.balance_after,
                reference: e.reference.clone(),
                order: e.order,
            }
        })
        .collect();
    let sum = |it: &mut dyn Iterator<Item = Decimal>| it.fold(Decimal::new(0, 2), |a, b| a + b);
    let daily = sum(&mut days.iter().map(|d| d.amount));
    let adjusted = sum(&mut adjustments.iter().map(|a| a.amount));
    let totals = Totals {
        daily,
        adjustments: adjusted,
        usage: daily + adjusted,
        orders_invoiced: sum(&mut facts
            .orders
            .iter()
            .filter(|o| o.paid_from == "invoice")
            .map(|o| o.price)),
        orders_from_balance: sum(&mut facts
            .orders
            .iter()
            .filter(|o| o.paid_from == "balance")
            .map(|o| o.price)),
        credits: sum(&mut ledger
            .iter()
            .filter(|l| l.kind == "credit")
            .map(|l| l.amount)),
        refunds: sum(&mut ledger
            .iter()
            .filter(|l| l.kind == "refund")
            .map(|l| l.amount)),
        debits: sum(&mut ledger
            .iter()
            .filter(|l| l.kind == "debit")
            .map(|l| -l.amount)),
    };
    Ok(Statement {
        format: FORMAT,
        account: account.to_string(),
        month: first.format("%Y-%m").to_string(),
        timezone: zone.name().to_string(),
        currency: config.currency.clone(),
        from: first,
        to: last,
        generated_at: now,
        provisional: now < zone.due_at(last),
        opening_balance: facts.opening_balance,
        closing_balance: facts.closing_balance,
        days,
        adjustments,
        orders: facts.orders,
        ledger,
        refunds: facts.refunds,
        totals,
    })
}

/// The service's signing key, made on first use and kept in the store.
pub fn signing_key(store: &mut Store, now: DateTime<Utc>) -> Result<StatementKey, StoreError> {
    let seed = store
        .statements()
        .signing_seed(|| StatementKey::new_seed().map_err(|e| e.to_string()), now)?;
    Ok(StatementKey::from_seed(seed))
}

fn instant(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One CSV: a `section` column first (`summary`, `day`, `adjustment`,
/// `order`, `ledger`, `total`), then the section's own columns; each cell
/// through the report's formula guard.
pub fn render_csv(s: &Statement) -> String {
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut row = |cells: [String; 7]| rows.push(cells);
    row([
        "summary".into(),
        s.from.to_string(),
        "opening_balance".into(),
        String::new(),
        s.opening_balance.to_string(),
        String::new(),
        format!(
            "account {} month {} {} {}",
            s.account,
            s.month,
            s.currency,
            if s.provisional {
                "provisional"
            } else {
                "final"
            }
        ),
    ]);
    for d in &s.days {
        row([
            "day".into(),
            d.day.to_string(),
            "daily".into(),
            d.billable_cores.to_string(),
            d.amount.to_string(),
            String::new(),
            format!(
                "{} excess core-hours, cap {}",
                d.excess_core_hours, d.cap_cores
            ),
        ]);
    }
    for a in &s.adjustments {
        row([
            "adjustment".into(),
            a.day.to_string(),
            format!("adjustment {}", a.seq),
            a.billable_cores.to_string(),
            a.amount.to_string(),
            String::new(),
            format!("issued {}", instant(&a.issued_at)),
        ]);
    }
    for o in &s.orders {
        row([
            "order".into(),
            instant(&o.ordered_at),
            format!("{} {} {}", o.product, o.kind, o.id),
            format!("{} {}", o.quantity, o.unit),
            o.price.to_string(),
            String::new(),
            match (o.start_day, o.end_day) {
                (Some(a), Some(b)) => format!("{a} to {b}, paid from {}", o.paid_from),
                _ => format!("paid from {}", o.paid_from),
            },
        ]);
    }
    for l in &s.ledger {
        row([
            "ledger".into(),
            instant(&l.at),
            l.kind.into(),
            String::new(),
            l.amount.to_string(),
            l.balance_after.to_string(),
            l.reference.clone().unwrap_or_default(),
        ]);
    }
    let t = &s.totals;
    for (item, amount) in [
        ("daily", t.daily),
        ("adjustments", t.adjustments),
        ("usage", t.usage),
        ("orders_invoiced", t.orders_invoiced),
        ("orders_from_balance", t.orders_from_balance),
        ("credits", t.credits),
        ("refunds", t.refunds),
        ("debits", t.debits),
    ] {
        row([
            "total".into(),
            s.to.to_string(),
            item.into(),
            String::new(),
            amount.to_string(),
            String::new(),
            String::new(),
        ]);
    }
    row([
        "summary".into(),
        s.to.to_string(),
        "closing_balance".into(),
        String::new(),
        s.closing_balance.to_string(),
        String::new(),
        String::new(),
    ]);
    super::csv::write_csv(
        &[
            "section",
            "date",
            "item",
            "quantity",
            "amount",
            "balance_after",
            "detail",
        ],
        rows,
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#1a1a1a;max-width:60em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;width:100%}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}tfoot td{font-weight:bold}
.prov{background:#fff3cd;padding:.5em;border:1px solid #a07800}.sum td{border:none;text-align:left;padding:2px 8px}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}tr{break-inside:avoid}.prov{border:1px solid #000}}";

/// The statement as a page made for printing: no scripts, no external
/// assets, every value escaped by the template.
pub fn render_html(s: &Statement) -> String {
    let money = |d: &Decimal| format!("{d} {}", s.currency);
    let page: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Statement " (s.month) " — " (s.account) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Statement for " (s.account) ", " (s.month) }
                @if s.provisional {
                    p.prov role="note" { "Provisional: the month's last day is not billed yet; more lines may join this statement." }
                }
                table.sum {
                    tr { td { "Period" } td { (s.from) " to " (s.to) " (" (s.timezone) ")" } }
                    tr { td { "Opening balance" } td #opening { (money(&s.opening_balance)) } }
                    tr { td { "Usage billed" } td #usage { (money(&s.totals.usage)) } }
                    tr { td { "Orders invoiced" } td { (money(&s.totals.orders_invoiced)) } }
                    tr { td { "Orders paid from the balance" } td { (money(&s.totals.orders_from_balance)) } }
                    tr { td { "Credits" } td { (money(&s.totals.credits)) } }
                    tr { td { "Refunds" } td { (money(&s.totals.refunds)) } }
                    tr { td { "Closing balance" } td #closing { (money(&s.closing_balance)) } }
                    tr { td { "Generated" } td { (instant(&s.generated_at)) } }
                }
                h2 { "Daily lines" }
                table #days {
                    thead { tr { th.l { "Day" } th { "Hours" } th { "Excess core-hours" } th { "Cap" } th { "Billable cores" } th { "Amount" } } }
                    tbody {
                        @for d in &s.days {
                            tr { td.l { (d.day) } td { (d.hours) } td { (d.excess_core_hours) } td { (d.cap_cores) } td { (d.billable_cores) } td { (d.amount) } }
                        }
                    }
                    tfoot { tr { td.l colspan="5" { "Total" } td { (s.totals.daily) } } }
                }
                h2 { "Adjustments" }
                @if s.adjustments.is_empty() {
                    p { "None this month." }
                } @else {
                    table #adjustments {
                        thead { tr { th.l { "Day corrected" } th { "Line" } th { "Billable cores" } th { "Amount" } th.l { "Issued" } } }
                        tbody {
                            @for a in &s.adjustments {
                                tr { td.l { (a.day) } td { (a.seq) } td { (a.billable_cores) } td { (a.amount) } td.l { (instant(&a.issued_at)) } }
                            }
                        }
                        tfoot { tr { td.l colspan="3" { "Total" } td { (s.totals.adjustments) } td {} } }
                    }
                }
                h2 { "Orders and renewals" }
                @if s.orders.is_empty() {
                    p { "None this month." }
                } @else {
                    table #orders {
                        thead { tr { th.l { "Ordered" } th.l { "Product" } th.l { "Kind" } th { "Quantity" } th.l { "Term" } th.l { "Paid from" } th { "Price" } } }
                        tbody {
                            @for o in &s.orders {
                                tr {
                                    td.l { (instant(&o.ordered_at)) } td.l { (o.product) " " (o.id) } td.l { (o.kind) }
                                    td { (o.quantity) " " (o.unit) }
                                    td.l { @if let (Some(a), Some(b)) = (o.start_day, o.end_day) { (a) " to " (b) } }
                                    td.l { (o.paid_from) } td { (o.price) }
                                }
                            }
                        }
                    }
                }
                h2 { "Balance" }
                @if s.ledger.is_empty() {
                    p { "No change this month." }
                } @else {
                    table #ledger {
                        thead { tr { th.l { "When" } th.l { "Entry" } th.l { "Reference" } th { "Amount" } th { "Balance after" } } }
                        tbody {
                            @for l in &s.ledger {
                                tr { td.l { (instant(&l.at)) } td.l { (l.kind) } td.l { (l.reference.as_deref().unwrap_or("")) } td { (l.amount) } td { (l.balance_after) } }
                            }
                        }
                    }
                }
            }
        }
    };
    page.into_string()
}
