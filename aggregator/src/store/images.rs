//! The image-scan add-on in the store (SPEC 10.1 to 10.3): packs of
//! authorizations, the inventory of image IDs, what each node holds now,
//! authorizations with their receipts, refunds, and product pauses.
//!
//! The inventory grows with distinct images, not with hours: a node's list
//! replaces its previous one (`node_images`), and an image unchanged since
//! that list costs no write at all.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use shared::images::{self as rules, Stock};
use shared::lifecycle::NoticeKind;
use shared::zone::BillingZone;

use super::db::{Conn, Dialect, OptionalExtension};
use super::orders::{decimal, payment, post_entry};
use super::pages::{one_more, Listed};
use super::states::recorded_state;
use super::{from_ms, Images, StoreError};

/// One image of a list: its ID and what describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: Option<u64>,
}

/// A pack of authorizations bought.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pack {
    pub id: i64,
    pub product: &'static str,
    pub quantity: u64,
    pub unit_price: Decimal,
    pub price: Decimal,
    /// `invoice` or `balance`.
    pub paid_from: String,
    pub consumed: u64,
    pub refunded: u64,
    pub ordered_at: DateTime<Utc>,
}

/// Where an account's authorizations stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authorizations {
    pub purchased: u64,
    pub consumed: u64,
    pub refunded: u64,
    /// The trial's allowance while the trial runs, else 0.
    pub trial_allowance: u64,
    pub trial_consumed: u64,
    pub available: u64,
    pub auto_authorize: bool,
    /// The most automatic authorizations a day (0: no limit).
    pub max_daily: u64,
    pub packs: Vec<Pack>,
}

/// What a batch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authorized {
    pub authorized: Vec<String>,
    pub already_authorized: Vec<String>,
    pub available: u64,
}

/// A refund of unused authorizations to the balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refund {
    pub quantity: u64,
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub available: u64,
}

/// A node holding an image now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub cluster: String,
    pub node: String,
}

/// One image of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryImage {
    pub image_id: String,
    /// `node`, `registry`, or both.
    pub sources: Vec<&'static str>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub nodes: Vec<Holder>,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: Option<u64>,
    pub authorized: bool,
    pub authorized_at: Option<DateTime<Utc>>,
}

/// A consumption, or an automatic attempt refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub id: i64,
    pub image_id: String,
    pub at: DateTime<Utc>,
    /// `manual`, `auto` or `trial`; `reach_limit` or `insufficient` for an
    /// automatic attempt refused.
    pub how: String,
    /// Whether it came from automatic authorization.
    pub automatic: bool,
    /// The pack drawn from (none for the trial and for a refusal).
    pub pack: Option<i64>,
}

/// What became of a node's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListOutcome {
    /// `stored`, `stale` (a newer list of the node is held) or `rejected`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Images the account had never seen.
    pub new_images: u64,
    pub auto_authorized: u64,
    pub auto_refused: u64,
}

impl ListOutcome {
    fn nothing(status: &'static str, reason: Option<&'static str>) -> ListOutcome {
        ListOutcome {
            status,
            reason,
            new_images: 0,
            auto_authorized: 0,
            auto_refused: 0,
        }
    }
}

/// The images of an account's day, for the daily report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImagesDay {
    /// Images seen during the day: first seen by its end, last seen from
    /// its start on.
    pub seen: u64,
    /// Of those, first seen that day.
    pub new: u64,
    /// Of those seen, authorized by the day's end.
    pub authorized: u64,
    pub unauthorized: u64,
    /// Authorizations consumed that day (manual, auto, trial).
    pub consumed: u64,
    /// Automatic attempts refused that day (reach_limit, insufficient).
    pub refused: u64,
}

/// A product's pause of new purchases, both days included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    pub product: String,
    pub paused_from: NaiveDate,
    pub paused_until: NaiveDate,
}

/// The products an order may name.
pub const PRODUCTS: [&str; 3] = ["pro", "image_scan", "log_storage"];

/// Refuses a purchase of `product` on `today` when a pause covers it.
pub(super) fn check_not_paused(
    conn: &Conn,
    product: &str,
    today: NaiveDate,
) -> Result<(), StoreError> {
    let pause: Option<(String, String)> = conn
        .prepare_cached("SELECT paused_from, paused_until FROM product_pauses WHERE product = ?1")?
        .query_row([product], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((from, until)) = pause {
        let (from, until) = (super::orders::day(&from)?, super::orders::day(&until)?);
        if (from..=until).contains(&today) {
            return Err(StoreError::Conflict {
                code: "product_paused",
                field: "product",
                message: format!(
                    "{product} is paused for new purchases from {from} to {until}; what was bought stays usable"
                ),
            });
        }
    }
    Ok(())
}

fn refuse_stopped(conn: &Conn, account_ref: i64, account: &str) -> Result<(), StoreError> {
    if recorded_state(conn, account_ref)?.is_stopped() {
        return Err(StoreError::Conflict {
            code: "service_stopped",
            field: "id",
            message: format!(
                "the service of account {account:?} is stopped: it can authorize nothing until it is renewed"
            ),
        });
    }
    Ok(())
}

/// Serializes the authorizations of one account across replicas: on
/// PostgreSQL the account's row is locked until the transaction ends (SQLite
/// has one writer).
fn lock_account(conn: &Conn, account_ref: i64) -> Result<(), StoreError> {
    if conn.dialect() == Dialect::Postgres {
        conn.query_row(
            "SELECT ref FROM accounts WHERE ref = ?1 FOR UPDATE",
            [account_ref],
            |r| r.get::<_, i64>(0),
        )?;
    }
    Ok(())
}

fn in_trial(conn: &Conn, account_ref: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM trials WHERE account_ref = ?1 AND start_ms <= ?2 AND ?2 < end_ms",
        )?
        .query_row((account_ref, now.timestamp_millis()), |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .is_some())
}

/// The account's stock at `now`; `trial` is the allowance a trial gives.
fn stock(
    conn: &Conn,
    account_ref: i64,
    now: DateTime<Utc>,
    trial: u64,
) -> Result<Stock, StoreError> {
    let (purchased, consumed, refunded): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT CAST(coalesce(sum(quantity), 0) AS BIGINT), CAST(coalesce(sum(consumed), 0) AS BIGINT),
                    CAST(coalesce(sum(refunded), 0) AS BIGINT)
               FROM image_scan_packs WHERE account_ref = ?1",
        )?
        .query_row([account_ref], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let trial_consumed: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM image_receipts WHERE account_ref = ?1 AND how = 'trial'",
        )?
        .query_row([account_ref], |r| r.get(0))?;
    let trial_allowance = if in_trial(conn, account_ref, now)? {
        trial
    } else {
        0
    };
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(Stock {
        purchased: count(purchased),
        consumed: count(consumed),
        refunded: count(refunded),
        trial_allowance,
        trial_consumed: count(trial_consumed),
    })
}

/// The account's automatic authorization: (on, max_daily).
fn auto_settings(conn: &Conn, account_ref: i64) -> Result<(bool, u64), StoreError> {
    let found: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT auto_authorize, max_daily FROM image_settings WHERE account_ref = ?1",
        )?
        .query_row([account_ref], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(found.map_or((false, 0), |(on, max)| {
        (on != 0, u64::try_from(max).unwrap_or(0))
    }))
}

/// Consumes one authorization for each of `images` (refs of images not yet
/// authorized), trial first then the oldest packs, with a receipt each;
/// `stock` must cover them. Issues `image_authorizations_low` when what is
/// available crosses to a tenth of what was purchased.
#[allow(clippy::too_many_arguments)]
fn consume(
    conn: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    images: &[i64],
    stock: Stock,
    automatic: bool,
    now: DateTime<Utc>,
    channels: crate::config::NoticeChannels,
) -> Result<Stock, StoreError> {
    let n = images.len() as u64;
    let draw = stock.draw(n).ok_or(StoreError::Conflict {
        code: "insufficient_authorizations",
        field: "image_ids",
        message: format!(
            "the batch needs {n} authorizations and {} are available",
            stock.available()
        ),
    })?;
    let mut packs: Vec<(i64, u64)> = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, quantity - consumed - refunded FROM image_scan_packs
              WHERE account_ref = ?1 AND quantity - consumed - refunded > 0 ORDER BY id",
        )?;
        let mut rows = stmt.query([account_ref])?;
        while let Some(r) = rows.next()? {
            packs.push((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)));
        }
    }
    let mut sources: Vec<(Option<i64>, &str)> = Vec::with_capacity(images.len());
    sources.extend((0..draw.trial).map(|_| (None, "trial")));
    let paid_how = if automatic { "auto" } else { "manual" };
    for (pack, take) in rules::draw_oldest_first(&packs, draw.purchased) {
        conn.prepare_cached("UPDATE image_scan_packs SET consumed = consumed + ?2 WHERE id = ?1")?
            .execute((pack, take as i64))?;
        sources.extend((0..take).map(|_| (Some(pack), paid_how)));
    }
    let at = now.timestamp_millis();
    for (image, (pack, how)) in images.iter().zip(sources) {
        conn.prepare_cached(
            "INSERT INTO image_receipts (account_ref, image_ref, at_ms, how, automatic, pack_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute((account_ref, image, at, how, i64::from(automatic), pack))?;
        conn.prepare_cached("UPDATE images SET authorized_at_ms = ?2 WHERE id = ?1")?
            .execute((image, at))?;
    }
    let after = Stock {
        consumed: stock.consumed + draw.purchased,
        trial_consumed: stock.trial_consumed + draw.trial,
        ..stock
    };
    note_low(conn, zone, account_ref, &after, now, channels)?;
    Ok(after)
}

/// Issues `image_authorizations_low` once each time what is available
/// falls to the mark, and re-arms it when it rises above.
fn note_low(
    conn: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    stock: &Stock,
    now: DateTime<Utc>,
    channels: crate::config::NoticeChannels,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO image_settings (account_ref) VALUES (?1) ON CONFLICT (account_ref) DO NOTHING",
    )?
    .execute([account_ref])?;
    let notified: i64 = conn
        .prepare_cached("SELECT low_notified FROM image_settings WHERE account_ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    match (stock.is_low(), notified != 0) {
        (true, false) => {
            let details = serde_json::json!({
                "product": "image_scan",
                "available": stock.available(),
                "purchased": stock.purchased,
            });
            super::notices::issue_notice(
                conn,
                account_ref,
                "image_scan",
                NoticeKind::ImageAuthorizationsLow,
                zone.day_of(now),
                &details,
                now,
                channels,
            )?;
            conn.prepare_cached(
                "UPDATE image_settings SET low_notified = 1 WHERE account_ref = ?1",
            )?
            .execute([account_ref])?;
        }
        (false, true) => {
            conn.prepare_cached(
                "UPDATE image_settings SET low_notified = 0 WHERE account_ref = ?1",
            )?
            .execute([account_ref])?;
        }
        _ => {}
    }
    Ok(())
}

/// The ref of `id` in the account's inventory, adding it (first seen `at`)
/// when new: (ref, new).
fn image_ref(
    conn: &Conn,
    account_ref: i64,
    image: &NewImage,
    at: DateTime<Utc>,
    registry: bool,
) -> Result<(i64, bool), StoreError> {
    let tags = serde_json::to_string(&image.repo_tags).expect("strings serialize");
    let digests = serde_json::to_string(&image.repo_digests).expect("strings serialize");
    let size = image
        .size_bytes
        .map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    let found: Option<(i64, String, String, Option<i64>, i64, i64)> = conn
        .prepare_cached(
            "SELECT id, repo_tags, repo_digests, size_bytes, on_nodes, in_registry FROM images
              WHERE account_ref = ?1 AND image_id = ?2",
        )?
        .query_row((account_ref, image.id.as_str()), |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let (source_node, source_registry) = (i64::from(!registry), i64::from(registry));
    match found {
        Some((id, old_tags, old_digests, old_size, on_nodes, in_registry)) => {
            let sources = (on_nodes.max(source_node), in_registry.max(source_registry));
            if (old_tags, old_digests, old_size, (on_nodes, in_registry))
                != (tags.clone(), digests.clone(), size, sources)
            {
                conn.prepare_cached(
                    "UPDATE images SET repo_tags = ?2, repo_digests = ?3, size_bytes = ?4,
                            on_nodes = ?5, in_registry = ?6 WHERE id = ?1",
                )?
                .execute((id, tags, digests, size, sources.0, sources.1))?;
            }
            if registry {
                conn.prepare_cached(
                    "UPDATE images SET last_seen_ms = ?2 WHERE id = ?1 AND last_seen_ms < ?2",
                )?
                .execute((id, at.timestamp_millis()))?;
            }
            Ok((id, false))
        }
        None => {
            let id = conn.query_row(
                "INSERT INTO images (account_ref, image_id, first_seen_ms, last_seen_ms, on_nodes,
                                     in_registry, repo_tags, repo_digests, size_bytes)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
                (
                    account_ref,
                    image.id.as_str(),
                    at.timestamp_millis(),
                    source_node,
                    source_registry,
                    tags,
                    digests,
                    size,
                ),
                |r| r.get(0),
            )?;
            Ok((id, true))
        }
    }
}

/// Authorizes the images first seen now, when the account says so, in
/// arrival order; records a receipt for each refused. (authorized, refused)
#[allow(clippy::too_many_arguments)]
fn auto_authorize(
    conn: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    arrivals: &[i64],
    now: DateTime<Utc>,
    channels: crate::config::NoticeChannels,
    trial: u64,
) -> Result<(u64, u64), StoreError> {
    let (on, max_daily) = auto_settings(conn, account_ref)?;
    if !on || arrivals.is_empty() {
        return Ok((0, 0));
    }
    let today = zone.day_of(now);
    let (from, until) = (zone.day_start(today), zone.day_end(today));
    let auto_today: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM image_receipts WHERE account_ref = ?1 AND automatic = 1
                AND how IN ('auto', 'trial') AND at_ms >= ?2 AND at_ms < ?3",
        )?
        .query_row(
            (
                account_ref,
                from.timestamp_millis(),
                until.timestamp_millis(),
            ),
            |r| r.get(0),
        )?;
    let stock = stock(conn, account_ref, now, trial)?;
    let fates = rules::plan_auto(
        arrivals.len(),
        stock.available(),
        u64::try_from(auto_today).unwrap_or(0),
        max_daily,
    );
    // Once one is refused, every later one is (`plan_auto`): the
    // authorized come first, so the receipts keep the arrival order.
    let take: Vec<i64> = arrivals
        .iter()
        .zip(&fates)
        .filter(|(_, fate)| fate.is_ok())
        .map(|(image, _)| *image)
        .collect();
    if !take.is_empty() {
        consume(conn, zone, account_ref, &take, stock, true, now, channels)?;
    }
    let mut refused = 0;
    for (image, fate) in arrivals.iter().zip(fates) {
        if let Err(why) = fate {
            refused += 1;
            conn.prepare_cached(
                "INSERT INTO image_receipts (account_ref, image_ref, at_ms, how, automatic)
                 VALUES (?1, ?2, ?3, ?4, 1)",
            )?
            .execute((account_ref, image, now.timestamp_millis(), why.as_str()))?;
        }
    }
    Ok((take.len() as u64, refused))
}

/// Images first stored from `since` until `until` that have no
/// authorization: what a run's `images_unauthorized` notice counts.
pub(super) fn unauthorized_between(
    conn: &Conn,
    account_ref: i64,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM images WHERE account_ref = ?1 AND first_seen_ms >= ?2
                AND first_seen_ms < ?3 AND authorized_at_ms IS NULL",
        )?
        .query_row(
            (
                account_ref,
                since.timestamp_millis(),
                until.timestamp_millis(),
            ),
            |r| r.get(0),
        )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn json_list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("a stored list: {e}")))
}

impl Images<'_> {
    /// Buys `quantity` authorizations at `unit_price` each, invoiced or
    /// from the balance; refused while the product is paused.
    pub fn buy_pack(
        &mut self,
        account: &str,
        quantity: u32,
        pay_from_balance: bool,
        unit_price: Decimal,
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<Pack, StoreError> {
        if !(1..=rules::MAX_PACK_QUANTITY).contains(&quantity) {
            return Err(super::orders::invalid(
                "quantity",
                format!(
                    "quantity {quantity} must be from 1 to {}",
                    rules::MAX_PACK_QUANTITY
                ),
            ));
        }
        let account_ref = self.require_account(account)?;
        let price = rules::pack_price(quantity, unit_price);
        let (channels, trial) = (self.notice_channels, self.trial_image_authorizations);
        let tx = self.0.conn.transaction()?;
        lock_account(&tx, account_ref)?;
        check_not_paused(&tx, "image_scan", zone.day_of(now))?;
        let paid_from = payment(&tx, account_ref, price, pay_from_balance)?;
        let id: i64 = tx.query_row(
            "INSERT INTO image_scan_packs (account_ref, quantity, unit_price, price, paid_from, ordered_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            (
                account_ref,
                i64::from(quantity),
                unit_price.to_string(),
                price.to_string(),
                paid_from,
                now.timestamp_millis(),
            ),
            |r| r.get(0),
        )?;
        if pay_from_balance {
            post_entry(
                &tx,
                account_ref,
                "debit",
                price,
                Some(&format!("image_scan pack {id}")),
                None,
                now,
            )?;
        }
        let after = stock(&tx, account_ref, now, trial)?;
        note_low(&tx, zone, account_ref, &after, now, channels)?;
        tx.commit()?;
        Ok(Pack {
            id,
            product: "image_scan",
            quantity: u64::from(quantity),
            unit_price,
            price,
            paid_from: paid_from.to_string(),
            consumed: 0,
            refunded: 0,
            ordered_at: now,
        })
    }

    /// Authorizes a batch of image IDs of the inventory: one authorization
    /// each for those not yet authorized, the whole batch refused when it
    /// needs more than is available; the same batch again consumes nothing.
    pub fn authorize(
        &mut self,
        account: &str,
        ids: &[String],
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<Authorized, StoreError> {
        let account_ref = self.require_account(account)?;
        let (channels, trial) = (self.notice_channels, self.trial_image_authorizations);
        let tx = self.0.conn.transaction()?;
        lock_account(&tx, account_ref)?;
        refuse_stopped(&tx, account_ref, account)?;
        let mut known: HashMap<String, (i64, bool)> = HashMap::with_capacity(ids.len());
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, authorized_at_ms IS NOT NULL FROM images WHERE account_ref = ?1 AND image_id = ?2",
            )?;
            for id in ids {
                if known.contains_key(id) {
                    continue;
                }
                let found: Option<(i64, bool)> = stmt
                    .query_row((account_ref, id.as_str()), |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let found = found.ok_or_else(|| {
                    super::orders::invalid(
                        "image_ids",
                        format!(
                            "image {id} is not in the inventory of account {account:?}: push it from a node or add it as a registry image first"
                        ),
                    )
                })?;
                known.insert(id.clone(), found);
            }
        }
        let stock = stock(&tx, account_ref, now, trial)?;
        let plan = rules::plan_batch(ids, |id| known[id].1, stock.available()).map_err(|e| {
            StoreError::Conflict {
                code: "insufficient_authorizations",
                field: "image_ids",
                message: format!(
                    "the batch needs {} authorizations and {} are available; nothing was authorized",
                    e.needed, e.available
                ),
            }
        })?;
        let refs: Vec<i64> = plan.authorize.iter().map(|id| known[id].0).collect();
        let after = if refs.is_empty() {
            stock
        } else {
            consume(&tx, zone, account_ref, &refs, stock, false, now, channels)?
        };
        tx.commit()?;
        Ok(Authorized {
            authorized: plan.authorize,
            already_authorized: plan.already_authorized,
            available: after.available(),
        })
    }

    /// Where the account's authorizations stand, with its packs.
    pub fn authorizations(
        &mut self,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<Authorizations, StoreError> {
        let account_ref = self.require_account(account)?;
        let stock = stock(
            &self.0.conn,
            account_ref,
            now,
            self.trial_image_authorizations,
        )?;
        let (auto_authorize, max_daily) = auto_settings(&self.0.conn, account_ref)?;
        let mut packs = Vec::new();
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT id, quantity, unit_price, price, paid_from, consumed, refunded, ordered_at_ms
               FROM image_scan_packs WHERE account_ref = ?1 ORDER BY id",
        )?;
        let mut rows = stmt.query([account_ref])?;
        while let Some(r) = rows.next()? {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            packs.push(Pack {
                id: r.get(0)?,
                product: "image_scan",
                quantity: count(r.get(1)?),
                unit_price: decimal(&r.get::<_, String>(2)?)?,
                price: decimal(&r.get::<_, String>(3)?)?,
                paid_from: r.get(4)?,
                consumed: count(r.get(5)?),
                refunded: count(r.get(6)?),
                ordered_at: from_ms(r.get(7)?),
            });
        }
        Ok(Authorizations {
            purchased: stock.purchased,
            consumed: stock.consumed + stock.trial_consumed,
            refunded: stock.refunded,
            trial_allowance: stock.trial_allowance,
            trial_consumed: stock.trial_consumed,
            available: stock.available(),
            auto_authorize,
            max_daily,
            packs,
        })
    }

    /// Turns automatic authorization on or off, with its daily limit.
    pub fn set_auto(
        &mut self,
        account: &str,
        auto_authorize: bool,
        max_daily: u64,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(account)?;
        self.0.conn.execute(
            "INSERT INTO image_settings (account_ref, auto_authorize, max_daily) VALUES (?1, ?2, ?3)
             ON CONFLICT (account_ref) DO UPDATE SET auto_authorize = ?2, max_daily = ?3",
            (
                account_ref,
                i64::from(auto_authorize),
                i64::try_from(max_daily).unwrap_or(i64::MAX),
            ),
        )?;
        Ok(())
    }

    /// Gives `quantity` unused purchased authorizations back to the balance
    /// at the price paid, newest pack first.
    pub fn refund(
        &mut self,
        account: &str,
        quantity: u64,
        now: DateTime<Utc>,
    ) -> Result<Refund, StoreError> {
        if quantity == 0 {
            return Err(super::orders::invalid(
                "quantity",
                "quantity must be at least 1",
            ));
        }
        let account_ref = self.require_account(account)?;
        let trial = self.trial_image_authorizations;
        let tx = self.0.conn.transaction()?;
        lock_account(&tx, account_ref)?;
        let stock = stock(&tx, account_ref, now, trial)?;
        let unused = stock.unused_purchased();
        if quantity > unused {
            return Err(StoreError::Conflict {
                code: "insufficient_authorizations",
                field: "quantity",
                message: format!(
                    "{quantity} to refund, and {unused} purchased authorizations are unused; consumed ones cannot be refunded"
                ),
            });
        }
        let mut packs: Vec<(i64, u64, Decimal)> = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, quantity - consumed - refunded, unit_price FROM image_scan_packs
                  WHERE account_ref = ?1 AND quantity - consumed - refunded > 0 ORDER BY id DESC",
            )?;
            let mut rows = stmt.query([account_ref])?;
            while let Some(r) = rows.next()? {
                packs.push((
                    r.get(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    decimal(&r.get::<_, String>(2)?)?,
                ));
            }
        }
        let mut left = quantity;
        let mut amount = Decimal::ZERO;
        for (pack, has, each) in packs {
            if left == 0 {
                break;
            }
            let take = has.min(left);
            tx.prepare_cached(
                "UPDATE image_scan_packs SET refunded = refunded + ?2 WHERE id = ?1",
            )?
            .execute((pack, take as i64))?;
            amount += each * Decimal::from(take);
            left -= take;
        }
        let amount = shared::money::cents(amount);
        let id: i64 = tx.query_row(
            "INSERT INTO image_scan_refunds (account_ref, quantity, amount, at_ms) VALUES (?1, ?2, ?3, ?4) RETURNING id",
            (account_ref, quantity as i64, amount.to_string(), now.timestamp_millis()),
            |r| r.get(0),
        )?;
        let balance_after = post_entry(
            &tx,
            account_ref,
            "credit",
            amount,
            Some(&format!("image_scan refund {id}")),
            None,
            now,
        )?;
        let available = stock.available() - quantity;
        tx.commit()?;
        Ok(Refund {
            quantity,
            amount,
            balance_after,
            available,
        })
    }

    /// Stores a node's list of images at `at`, replacing the node's older
    /// one; an older list arriving late is ignored (`stale`). Images new to
    /// the account are authorized automatically when the account says so.
    #[allow(clippy::too_many_arguments)]
    pub fn record_node_list(
        &mut self,
        account: &str,
        cluster: &str,
        node: &str,
        at: DateTime<Utc>,
        images: &[NewImage],
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<ListOutcome, StoreError> {
        let account_ref = self.require_account(account)?;
        let (channels, trial) = (self.notice_channels, self.trial_image_authorizations);
        let tx = self.0.conn.transaction()?;
        if recorded_state(&tx, account_ref)?.is_stopped() {
            return Ok(ListOutcome::nothing("rejected", Some("service_stopped")));
        }
        lock_account(&tx, account_ref)?;
        let node_id = super::samples::node_id(&tx, account_ref, cluster, node)?;
        let previous: Option<i64> = tx
            .prepare_cached("SELECT at_ms FROM node_image_lists WHERE node_id = ?1")?
            .query_row([node_id], |r| r.get(0))
            .optional()?;
        if previous.is_some_and(|p| p > at.timestamp_millis()) {
            return Ok(ListOutcome::nothing("stale", None));
        }
        // What the node held, with how each was described.
        let mut held: HashMap<String, (i64, String, String, Option<i64>)> = HashMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT i.image_id, i.id, i.repo_tags, i.repo_digests, i.size_bytes
                   FROM node_images n JOIN images i ON i.id = n.image_ref WHERE n.node_id = ?1",
            )?;
            let mut rows = stmt.query([node_id])?;
            while let Some(r) = rows.next()? {
                held.insert(r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
            }
        }
        let mut arrivals = Vec::new();
        let mut now_held = Vec::with_capacity(images.len());
        for image in images {
            if let Some((id, tags, digests, size)) = held.remove(&image.id) {
                let same = serde_json::to_string(&image.repo_tags).ok().as_ref() == Some(&tags)
                    && serde_json::to_string(&image.repo_digests).ok().as_ref() == Some(&digests)
                    && image
                        .size_bytes
                        .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
                        == size;
                if !same {
                    image_ref(&tx, account_ref, image, at, false)?;
                }
                now_held.push((id, false));
                continue;
            }
            let (id, new) = image_ref(&tx, account_ref, image, at, false)?;
            if new {
                arrivals.push(id);
            }
            now_held.push((id, true));
        }
        for (id, added) in &now_held {
            if *added {
                tx.prepare_cached(
                    "INSERT INTO node_images (node_id, image_ref) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?
                .execute((node_id, id))?;
            }
        }
        // Images the node no longer holds were last seen on its previous list.
        for (_, (id, ..)) in held {
            tx.prepare_cached("DELETE FROM node_images WHERE node_id = ?1 AND image_ref = ?2")?
                .execute((node_id, id))?;
            if let Some(p) = previous {
                tx.prepare_cached(
                    "UPDATE images SET last_seen_ms = ?2 WHERE id = ?1 AND last_seen_ms < ?2",
                )?
                .execute((id, p))?;
            }
        }
        tx.prepare_cached(
            "INSERT INTO node_image_lists (node_id, at_ms, received_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (node_id) DO UPDATE SET at_ms = ?2, received_at_ms = ?3",
        )?
        .execute((node_id, at.timestamp_millis(), now.timestamp_millis()))?;
        let (auto_authorized, auto_refused) =
            auto_authorize(&tx, zone, account_ref, &arrivals, now, channels, trial)?;
        tx.commit()?;
        Ok(ListOutcome {
            status: "stored",
            reason: None,
            new_images: arrivals.len() as u64,
            auto_authorized,
            auto_refused,
        })
    }

    /// Adds images held in a registry (not on a node) to the inventory.
    pub fn add_registry_images(
        &mut self,
        account: &str,
        images: &[NewImage],
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<ListOutcome, StoreError> {
        let account_ref = self.require_account(account)?;
        let (channels, trial) = (self.notice_channels, self.trial_image_authorizations);
        let tx = self.0.conn.transaction()?;
        lock_account(&tx, account_ref)?;
        let mut arrivals = Vec::new();
        for image in images {
            let (id, new) = image_ref(&tx, account_ref, image, now, true)?;
            if new {
                arrivals.push(id);
            }
        }
        let (auto_authorized, auto_refused) =
            auto_authorize(&tx, zone, account_ref, &arrivals, now, channels, trial)?;
        tx.commit()?;
        Ok(ListOutcome {
            status: "stored",
            reason: None,
            new_images: arrivals.len() as u64,
            auto_authorized,
            auto_refused,
        })
    }

    /// A page of the inventory in the order images were first stored,
    /// optionally only those (not) authorized: up to `limit` after `after`.
    pub fn inventory(
        &mut self,
        account: &str,
        authorized: Option<bool>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Listed<InventoryImage, i64>, StoreError> {
        let account_ref = self.require_account(account)?;
        let filter = match authorized {
            None => "",
            Some(true) => " AND i.authorized_at_ms IS NOT NULL",
            Some(false) => " AND i.authorized_at_ms IS NULL",
        };
        let total: i64 = self.0.conn.query_row(
            &format!("SELECT count(*) FROM images i WHERE i.account_ref = ?1{filter}"),
            [account_ref],
            |r| r.get(0),
        )?;
        let mut out = Vec::new();
        {
            let mut stmt = self.0.conn.prepare_cached(&format!(
                "SELECT i.id, i.image_id, i.on_nodes, i.in_registry, i.first_seen_ms,
                        greatest_seen.at_ms, i.last_seen_ms, i.repo_tags, i.repo_digests,
                        i.size_bytes, i.authorized_at_ms
                   FROM images i
                   LEFT JOIN (SELECT n.image_ref, max(l.at_ms) AS at_ms
                                FROM node_images n JOIN node_image_lists l ON l.node_id = n.node_id
                               GROUP BY n.image_ref) greatest_seen ON greatest_seen.image_ref = i.id
                  WHERE i.account_ref = ?1 AND i.id > ?2{filter}
                  ORDER BY i.id LIMIT ?3"
            ))?;
            let mut rows = stmt.query((account_ref, after.unwrap_or(0), one_more(limit)))?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                let mut sources = Vec::new();
                if r.get::<_, i64>(2)? != 0 {
                    sources.push("node");
                }
                if r.get::<_, i64>(3)? != 0 {
                    sources.push("registry");
                }
                let held_at: Option<i64> = r.get(5)?;
                let stored: i64 = r.get(6)?;
                let authorized_at: Option<i64> = r.get(10)?;
                out.push((
                    id,
                    InventoryImage {
                        image_id: r.get(1)?,
                        sources,
                        first_seen: from_ms(r.get(4)?),
                        last_seen: from_ms(held_at.map_or(stored, |h| h.max(stored))),
                        nodes: Vec::new(),
                        repo_tags: json_list(&r.get::<_, String>(7)?)?,
                        repo_digests: json_list(&r.get::<_, String>(8)?)?,
                        size_bytes: r
                            .get::<_, Option<i64>>(9)?
                            .and_then(|s| u64::try_from(s).ok()),
                        authorized: authorized_at.is_some(),
                        authorized_at: authorized_at.map(from_ms),
                    },
                ));
            }
        }
        let mut page = Listed::from_rows(out, limit, total as u64);
        // The nodes holding each image of the page.
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT d.cluster, d.name FROM node_images n JOIN nodes d ON d.id = n.node_id
              JOIN images i ON i.id = n.image_ref
              WHERE i.account_ref = ?1 AND i.image_id = ?2 ORDER BY d.cluster, d.name",
        )?;
        for image in &mut page.items {
            let mut rows = stmt.query((account_ref, image.image_id.as_str()))?;
            while let Some(r) = rows.next()? {
                image.nodes.push(Holder {
                    cluster: r.get(0)?,
                    node: r.get(1)?,
                });
            }
        }
        Ok(page)
    }

    /// A page of the account's receipts, oldest first: up to `limit` after `after`.
    pub fn receipts(
        &mut self,
        account: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Listed<Receipt, i64>, StoreError> {
        let account_ref = self.require_account(account)?;
        let total: i64 = self.0.conn.query_row(
            "SELECT count(*) FROM image_receipts WHERE account_ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT r.id, i.image_id, r.at_ms, r.how, r.automatic, r.pack_id
               FROM image_receipts r JOIN images i ON i.id = r.image_ref
              WHERE r.account_ref = ?1 AND r.id > ?2 ORDER BY r.id LIMIT ?3",
        )?;
        let mut rows = stmt.query((account_ref, after.unwrap_or(0), one_more(limit)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let receipt = Receipt {
                id: r.get(0)?,
                image_id: r.get(1)?,
                at: from_ms(r.get(2)?),
                how: r.get(3)?,
                automatic: r.get::<_, i64>(4)? != 0,
                pack: r.get(5)?,
            };
            out.push((receipt.id, receipt));
        }
        Ok(Listed::from_rows(out, limit, total as u64))
    }

    /// The images of the account's day from `start` to `end`.
    pub fn day(
        &mut self,
        account: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<ImagesDay, StoreError> {
        let account_ref = self.require_account(account)?;
        let (start, end) = (start.timestamp_millis(), end.timestamp_millis());
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let (seen, new, authorized): (i64, i64, i64) = self.0.conn.query_row(
            "SELECT count(*),
                    CAST(coalesce(sum(CASE WHEN i.first_seen_ms >= ?2 THEN 1 ELSE 0 END), 0) AS BIGINT),
                    CAST(coalesce(sum(CASE WHEN i.authorized_at_ms < ?3 THEN 1 ELSE 0 END), 0) AS BIGINT)
               FROM images i
               LEFT JOIN (SELECT n.image_ref, max(l.at_ms) AS at_ms
                            FROM node_images n JOIN node_image_lists l ON l.node_id = n.node_id
                           GROUP BY n.image_ref) held ON held.image_ref = i.id
              WHERE i.account_ref = ?1 AND i.first_seen_ms < ?3
                AND coalesce(held.at_ms, i.last_seen_ms) >= ?2",
            (account_ref, start, end),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let (consumed, refused): (i64, i64) = self.0.conn.query_row(
            "SELECT CAST(coalesce(sum(CASE WHEN how IN ('manual', 'auto', 'trial') THEN 1 ELSE 0 END), 0) AS BIGINT),
                    CAST(coalesce(sum(CASE WHEN how IN ('reach_limit', 'insufficient') THEN 1 ELSE 0 END), 0) AS BIGINT)
               FROM image_receipts WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3",
            (account_ref, start, end),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(ImagesDay {
            seen: count(seen),
            new: count(new),
            authorized: count(authorized),
            unauthorized: count(seen - authorized),
            consumed: count(consumed),
            refused: count(refused),
        })
    }

    /// Pauses new purchases of `product` from `from` to `until` (both
    /// included), replacing its previous pause.
    pub fn pause_product(
        &mut self,
        product: &str,
        from: NaiveDate,
        until: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Pause, StoreError> {
        if !PRODUCTS.contains(&product) {
            return Err(super::orders::invalid(
                "product",
                format!("{product:?} is not a product: pro, image_scan or log_storage"),
            ));
        }
        if until < from {
            return Err(super::orders::invalid(
                "paused_until",
                format!("paused_until {until} is before paused_from {from}"),
            ));
        }
        self.0.conn.execute(
            "INSERT INTO product_pauses (product, paused_from, paused_until, set_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (product) DO UPDATE SET paused_from = ?2, paused_until = ?3, set_at_ms = ?4",
            (product, from.to_string(), until.to_string(), now.timestamp_millis()),
        )?;
        Ok(Pause {
            product: product.to_string(),
            paused_from: from,
            paused_until: until,
        })
    }

    /// Lifts `product`'s pause; true when there was one.
    pub fn resume_product(&mut self, product: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .conn
            .execute("DELETE FROM product_pauses WHERE product = ?1", [product])?
            > 0)
    }

    /// Every product's pause.
    pub fn pauses(&mut self) -> Result<Vec<Pause>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT product, paused_from, paused_until FROM product_pauses ORDER BY product",
        )?;
        let mut rows = stmt.query(())?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(Pause {
                product: r.get(0)?,
                paused_from: super::orders::day(&r.get::<_, String>(1)?)?,
                paused_until: super::orders::day(&r.get::<_, String>(2)?)?,
            });
        }
        Ok(out)
    }
}
