//! Bill lines: the `daily` line of a day, the `adjustment` lines that follow late samples, and their idempotency key.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize, Serializer};

use crate::overage::DayFigures;

/// The currency bills are issued in unless configured otherwise.
pub const DEFAULT_CURRENCY: &str = "USD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The first bill of a day.
    Daily,
    /// The difference a recomputation found, after the day was billed.
    Adjustment,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Daily => "daily",
            LineKind::Adjustment => "adjustment",
        }
    }
}

impl std::str::FromStr for LineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "daily" => Ok(LineKind::Daily),
            "adjustment" => Ok(LineKind::Adjustment),
            other => Err(format!("unknown bill line kind {other:?}")),
        }
    }
}

/// One line handed to the billing backend. Lines are never rewritten: a
/// change to a billed day is a new `adjustment` line with the next `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillLine {
    pub account: String,
    pub day: NaiveDate,
    /// 1 for the daily line, then 2, 3, ... for adjustments.
    pub seq: u32,
    pub kind: LineKind,
    pub hours: u32,
    pub excess_core_hours: u64,
    pub average_excess_cores: Decimal,
    pub cap_cores: u32,
    pub billable_cores: Decimal,
    /// The amount this line adds to the day: the whole bill on a daily line,
    /// the difference (possibly negative) on an adjustment.
    pub amount: Decimal,
    pub currency: String,
    #[serde(serialize_with = "rfc3339_z")]
    pub issued_at: DateTime<Utc>,
    pub idempotency_key: String,
}

fn rfc3339_z<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// The key a billing backend deduplicates on: account, day and sequence.
pub fn idempotency_key(account: &str, day: NaiveDate, seq: u32) -> String {
    format!("{account}/{day}/{seq}")
}

/// What has been issued for one day so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Issued {
    pub lines: u32,
    pub last_seq: u32,
    pub amount: Decimal,
}

impl Issued {
    pub fn add(&mut self, seq: u32, amount: Decimal) {
        self.lines += 1;
        self.last_seq = self.last_seq.max(seq);
        self.amount += amount;
    }
}

/// The line a run issues for a day given what was issued before: the daily
/// line if there is none yet, an adjustment if the amount has changed, else none.
pub fn next_line(
    account: &str,
    figures: &DayFigures,
    issued: &Issued,
    currency: &str,
    issued_at: DateTime<Utc>,
) -> Option<BillLine> {
    let (kind, seq, amount) = if issued.lines == 0 {
        (LineKind::Daily, 1, figures.amount)
    } else if figures.amount != issued.amount {
        (
            LineKind::Adjustment,
            issued.last_seq + 1,
            figures.amount - issued.amount,
        )
    } else {
        return None;
    };
    assert!(
        kind == LineKind::Adjustment || !amount.is_sign_negative() || amount.is_zero(),
        "a daily line is never negative"
    );
    Some(BillLine {
        account: account.to_string(),
        day: figures.day,
        seq,
        kind,
        hours: figures.hours,
        excess_core_hours: figures.excess_core_hours,
        average_excess_cores: figures.average_excess_cores,
        cap_cores: figures.cap_cores,
        billable_cores: figures.billable_cores,
        amount,
        currency: currency.to_string(),
        issued_at,
        idempotency_key: idempotency_key(account, figures.day, seq),
    })
}
