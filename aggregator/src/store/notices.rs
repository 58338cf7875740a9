//! Notices to an account's contacts (SPEC section 8): issued in the
//! transaction that decides them, with one delivery row per channel.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use shared::lifecycle::{NoticeKind, Product};

use std::collections::HashMap;

use super::db::{texts, Conn, Dialect, OptionalExtension, Value as Param};
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

/// A contact as notices read it: id, name, role, email, SMS number.
type ContactRow = (i64, String, String, Option<String>, Option<String>);

/// The contacts a notice of an account goes to: its own, or a sub-account
/// without contacts its main account's; `?1` is the account.
const CONTACTS_OF: &str = "SELECT id, name, role, email, sms FROM contacts
      WHERE account_ref = CASE WHEN EXISTS (SELECT 1 FROM contacts WHERE account_ref = ?1) THEN ?1
                               ELSE coalesce((SELECT parent_ref FROM accounts WHERE ref = ?1), ?1) END
      ORDER BY id";

/// The addresses a notice of `kind` goes to, of `contacts` in their order.
fn recipients(contacts: &[ContactRow], kind: NoticeKind) -> Vec<Recipient> {
    let roles: Vec<&str> = kind.roles().iter().map(|r| r.as_str()).collect();
    let mut out = Vec::new();
    for (contact, name, role, email, sms) in contacts {
        if !roles.contains(&role.as_str()) {
            continue;
        }
        for (channel, address) in [("email", email), ("sms", sms)] {
            if let Some(address) = address {
                out.push(Recipient {
                    contact: *contact,
                    name: name.clone(),
                    role: role.clone(),
                    channel: channel.to_string(),
                    address: address.clone(),
                });
            }
        }
    }
    out
}

fn contact_row(r: &super::db::Row<'_>, at: usize) -> Result<ContactRow, super::db::DbError> {
    Ok((
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get(at + 3)?,
        r.get(at + 4)?,
    ))
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
    let contacts: Vec<ContactRow> = tx
        .prepare_cached(CONTACTS_OF)?
        .query_map([account_ref], |r| contact_row(r, 0))?
        .collect::<Result<_, _>>()?;
    let recipients = recipients(&contacts, kind);
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
    for (channel, address) in deliveries(&recipients, channels) {
        queue.execute((id, channel, address, now.timestamp_millis()))?;
    }
    Ok(Some(id))
}

/// The channels and addresses a notice with `recipients` is delivered to.
fn deliveries(recipients: &[Recipient], channels: NoticeChannels) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    if channels.webhook {
        out.push(("webhook", ""));
    }
    if channels.email {
        for r in recipients.iter().filter(|r| r.channel == "email") {
            out.push(("email", r.address.as_str()));
        }
    }
    out
}

/// A notice to issue; see [`issue_notice`].
pub(super) struct NewNotice<'a> {
    pub account_ref: i64,
    pub product: &'a str,
    pub kind: NoticeKind,
    pub day: NaiveDate,
    pub details: Value,
}

/// Issues `notices` as [`issue_notice`] issues each, in their order; on
/// PostgreSQL in three statements for all of them. Returns each one's id
/// when issued.
pub(super) fn issue_notices(
    tx: &Conn,
    notices: &[NewNotice<'_>],
    now: DateTime<Utc>,
    channels: NoticeChannels,
) -> Result<Vec<Option<i64>>, StoreError> {
    if tx.dialect() == Dialect::Sqlite || notices.is_empty() {
        return notices
            .iter()
            .map(|n| {
                issue_notice(
                    tx,
                    n.account_ref,
                    n.product,
                    n.kind,
                    n.day,
                    &n.details,
                    now,
                    channels,
                )
            })
            .collect();
    }
    let mut accounts: Vec<i64> = notices.iter().map(|n| n.account_ref).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let array: Vec<Option<i64>> = accounts.iter().copied().map(Some).collect();
    let mut contacts: HashMap<i64, Vec<ContactRow>> = HashMap::new();
    let mut rows = tx
        .prepare_cached(&format!(
            "SELECT a, c.* FROM unnest(?1::BIGINT[]) AS a CROSS JOIN LATERAL ({}) AS c ORDER BY a, c.id",
            CONTACTS_OF.replace("?1", "a")
        ))?
        .query([Param::Ints(&array)])?;
    while let Some(r) = rows.next()? {
        contacts
            .entry(r.get(0)?)
            .or_default()
            .push(contact_row(&r, 1)?);
    }
    let recipients: Vec<Vec<Recipient>> = notices
        .iter()
        .map(|n| {
            recipients(
                contacts.get(&n.account_ref).map_or(&[], Vec::as_slice),
                n.kind,
            )
        })
        .collect();
    let refs: Vec<Option<i64>> = notices.iter().map(|n| Some(n.account_ref)).collect();
    let kinds: Vec<Option<&str>> = notices.iter().map(|n| Some(n.kind.as_str())).collect();
    let days: Vec<String> = notices.iter().map(|n| n.day.to_string()).collect();
    let lists: Vec<String> = recipients
        .iter()
        .map(|r| serde_json::to_string(r).expect("recipients serialize"))
        .collect();
    let details: Vec<String> = notices.iter().map(|n| n.details.to_string()).collect();
    let products: Vec<Option<&str>> = notices.iter().map(|n| Some(n.product)).collect();
    let (days, lists, details) = (texts(&days), texts(&lists), texts(&details));
    let mut ids: Vec<Option<i64>> = vec![None; notices.len()];
    let mut rows = tx
        .prepare_cached(
            "INSERT INTO notices (account_ref, kind, day, issued_at_ms, recipients, details, product)
             SELECT r, k, d, ?4, l, t, p FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::TEXT[], ?5::TEXT[], ?6::TEXT[], ?7::TEXT[])
                                        WITH ORDINALITY AS n(r, k, d, l, t, p, i)
              ORDER BY i
             ON CONFLICT (account_ref, product, kind, day) DO NOTHING RETURNING id, account_ref, product, kind, day",
        )?
        .query((
            Param::Ints(&refs),
            Param::Texts(&kinds),
            Param::Texts(&days),
            now.timestamp_millis(),
            Param::Texts(&lists),
            Param::Texts(&details),
            Param::Texts(&products),
        ))?;
    // The first notice with a key is the one inserted.
    let mut first: HashMap<(i64, &str, &str, &str), usize> = HashMap::new();
    for (at, n) in notices.iter().enumerate() {
        let day = days[at].expect("every day");
        first
            .entry((n.account_ref, n.product, n.kind.as_str(), day))
            .or_insert(at);
    }
    while let Some(r) = rows.next()? {
        let (id, account_ref, product, kind, day): (i64, i64, String, String, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        if let Some(&at) = first.get(&(account_ref, product.as_str(), kind.as_str(), day.as_str()))
        {
            ids[at] = Some(id);
        }
    }
    let (mut notice_ids, mut channel_names, mut addresses) = (Vec::new(), Vec::new(), Vec::new());
    for (id, recipients) in ids.iter().zip(&recipients) {
        let Some(id) = id else { continue };
        for (channel, address) in deliveries(recipients, channels) {
            notice_ids.push(Some(*id));
            channel_names.push(Some(channel));
            addresses.push(Some(address));
        }
    }
    if !notice_ids.is_empty() {
        tx.prepare_cached(
            "INSERT INTO notice_deliveries (notice_id, channel, address, next_attempt_ms)
             SELECT n, c, a, ?4 FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::TEXT[]) AS d(n, c, a)
             ON CONFLICT DO NOTHING",
        )?
        .execute((
            Param::Ints(&notice_ids),
            Param::Texts(&channel_names),
            Param::Texts(&addresses),
            now.timestamp_millis(),
        ))?;
    }
    Ok(ids)
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
