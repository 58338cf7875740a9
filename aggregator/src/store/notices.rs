//! Notices to an account's contacts (SPEC section 8): issued in the
//! transaction that decides them, with one delivery row per channel.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use shared::lifecycle::{NoticeKind, Product};

use super::db::{Conn, OptionalExtension};
use super::pages::{one_more, Listed};
use super::Accounts;
use super::{from_ms, StoreError};
use crate::config::NoticeChannels;

/// One address a notice goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Recipient {
    pub contact: i64,
    pub name: String,
    pub role: String,
    /// `email` or `sms`.
    pub channel: String,
    pub address: String,
}

/// How one channel of a notice stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeDelivery {
    /// `webhook` or `email`.
    pub channel: String,
    /// The email address (empty for the webhook).
    pub address: String,
    pub attempts: u32,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// A notice as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub id: i64,
    pub account: String,
    /// The product it is about: `pro` (licensed cores), `log_storage`, `image_scan`.
    pub product: String,
    pub kind: String,
    /// The day it is about: the run's day, or the billed day for `licence_short`.
    pub day: NaiveDate,
    pub issued_at: DateTime<Utc>,
    pub subject: String,
    pub recipients: Vec<Recipient>,
    pub details: Value,
    pub deliveries: Vec<NoticeDelivery>,
}

/// Issues a notice of `kind` about `day` to the contacts whose role it goes
/// to (a sub-account without contacts: its main account's), unless one of that kind was already issued to the account for that
/// day. Returns its id when issued.
#[allow(clippy::too_many_arguments)]
pub(super) fn issue_notice(
    tx: &Conn,
    account_ref: i64,
    product: &str,
    kind: NoticeKind,
    day: NaiveDate,
    details: &Value,
    now: DateTime<Utc>,
    channels: NoticeChannels,
) -> Result<Option<i64>, StoreError> {
    let roles: Vec<&str> = kind.roles().iter().map(|r| r.as_str()).collect();
    let mut recipients = Vec::new();
    {
        // A sub-account without contacts of its own reaches its main account's.
        let mut stmt = tx.prepare_cached(
            "SELECT id, name, role, email, sms FROM contacts
              WHERE account_ref = CASE WHEN EXISTS (SELECT 1 FROM contacts WHERE account_ref = ?1) THEN ?1
                                       ELSE coalesce((SELECT parent_ref FROM accounts WHERE ref = ?1), ?1) END
              ORDER BY id",
        )?;
        let mut rows = stmt.query([account_ref])?;
        while let Some(r) = rows.next()? {
            let role: String = r.get(2)?;
            if !roles.contains(&role.as_str()) {
                continue;
            }
            let (contact, name): (i64, String) = (r.get(0)?, r.get(1)?);
            for (channel, address) in [
                ("email", r.get::<_, Option<String>>(3)?),
                ("sms", r.get(4)?),
            ] {
                if let Some(address) = address {
                    recipients.push(Recipient {
                        contact,
                        name: name.clone(),
                        role: role.clone(),
                        channel: channel.to_string(),
                        address,
                    });
                }
            }
        }
    }
    let inserted: Option<i64> = tx
        .query_row(
            "INSERT INTO notices (account_ref, kind, day, issued_at_ms, recipients, details, product)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (account_ref, product, kind, day) DO NOTHING RETURNING id",
            (
            account_ref,
            kind.as_str(),
            day.to_string(),
            now.timestamp_millis(),
            serde_json::to_string(&recipients).expect("recipients serialize"),
            details.to_string(),
            product,
            ),
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = inserted else {
        return Ok(None);
    };
    let mut queue = tx.prepare_cached(
        "INSERT INTO notice_deliveries (notice_id, channel, address, next_attempt_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )?;
    if channels.webhook {
        queue.execute((id, "webhook", "", now.timestamp_millis()))?;
    }
    if channels.email {
        for r in recipients.iter().filter(|r| r.channel == "email") {
            queue.execute((id, "email", &r.address, now.timestamp_millis()))?;
        }
    }
    Ok(Some(id))
}

/// The columns `notice_row` reads, in its order.
pub(super) const NOTICE_COLUMNS: &str =
    "n.id, a.id, n.kind, n.day, n.issued_at_ms, n.recipients, n.details, n.product";

pub(super) fn notice_row(r: &super::db::Row<'_>) -> Result<Notice, StoreError> {
    let kind: String = r.get(2)?;
    let day: String = r.get(3)?;
    let recipients: String = r.get(5)?;
    let details: String = r.get(6)?;
    let product: String = r.get(7)?;
    Ok(Notice {
        id: r.get(0)?,
        account: r.get(1)?,
        subject: match (kind.parse::<NoticeKind>(), product.parse::<Product>()) {
            (Ok(k), Ok(p)) => k.subject_for(p).to_string(),
            (Ok(k), Err(_)) => k.subject().to_string(),
            _ => String::new(),
        },
        product,
        kind,
        day: day
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("notice day {day:?} is not a day: {e}")))?,
        issued_at: from_ms(r.get(4)?),
        recipients: serde_json::from_str(&recipients)
            .map_err(|e| StoreError::Corrupt(format!("notice recipients: {e}")))?,
        details: serde_json::from_str(&details)
            .map_err(|e| StoreError::Corrupt(format!("notice details: {e}")))?,
        deliveries: Vec::new(),
    })
}

impl Accounts<'_> {
    /// The account's newest `limit` notices, newest first, each with its deliveries.
    pub fn notices(&mut self, account: &str, limit: usize) -> Result<Vec<Notice>, StoreError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX - 1);
        Ok(self.notice_page(account, None, limit)?.items)
    }

    /// A page of the account's notices, newest first (by id), each with its
    /// deliveries: up to `limit` after the notice `after`.
    pub fn notice_page(
        &mut self,
        account: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Listed<Notice, i64>, StoreError> {
        let account_ref = self.require_account(account)?;
        let total: i64 = self.0.conn.query_row(
            "SELECT count(*) FROM notices WHERE account_ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "SELECT {NOTICE_COLUMNS} FROM notices n JOIN accounts a ON a.ref = n.account_ref
              WHERE n.account_ref = ?1 AND n.id < ?2 ORDER BY n.id DESC LIMIT ?3"
        ))?;
        let mut rows = stmt.query((account_ref, after.unwrap_or(i64::MAX), one_more(limit)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let notice = notice_row(&r)?;
            out.push((notice.id, notice));
        }
        drop(rows);
        let mut page = Listed::from_rows(out, limit, total as u64);
        let mut deliveries = self.0.conn.prepare_cached(
            "SELECT channel, address, attempts, delivered_at_ms, next_attempt_ms, last_error
               FROM notice_deliveries WHERE notice_id = ?1 ORDER BY channel, address",
        )?;
        for n in &mut page.items {
            let rows = deliveries.query_map([n.id], |r| {
                Ok(NoticeDelivery {
                    channel: r.get(0)?,
                    address: r.get(1)?,
                    attempts: r.get(2)?,
                    delivered_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
                    next_attempt_at: from_ms(r.get(4)?),
                    last_error: r.get(5)?,
                })
            })?;
            n.deliveries = rows.collect::<Result<_, _>>()?;
        }
        Ok(page)
    }

    /// Issues a notice outside a lifecycle step (tests of delivery, tools).
    pub fn issue_notice(
        &mut self,
        account: &str,
        kind: NoticeKind,
        day: NaiveDate,
        details: &Value,
        now: DateTime<Utc>,
        channels: NoticeChannels,
    ) -> Result<Option<i64>, StoreError> {
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        let id = issue_notice(&tx, account_ref, "pro", kind, day, details, now, channels)?;
        tx.commit()?;
        Ok(id)
    }
}
