//! The notice outbox: every delivery row of an issued notice (the webhook's, one per email address) waits here until its channel took it.

use super::db::OptionalExtension;
use super::Deliveries;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::notices::notice_row;
use super::outbox::OutboxStatus;
use super::{from_ms, Notice, StoreError};

/// The longest `last_error` kept: an SMTP relay's answer can be long, and the
/// row is read back with every listing.
pub const NOTICE_ERROR_MAX_CHARS: usize = 500;

/// Where a delivery row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeChannel {
    /// The notification webhook: the whole notice, every recipient, once.
    Webhook,
    /// One email to one address through the SMTP relay.
    Email,
}

impl NoticeChannel {
    pub const ALL: [NoticeChannel; 2] = [NoticeChannel::Webhook, NoticeChannel::Email];

    /// The `channel` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeChannel::Webhook => "webhook",
            NoticeChannel::Email => "email",
        }
    }
}

/// A delivery whose attempt is due, with the notice it delivers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DueNotice {
    /// The notice (its `deliveries` left empty).
    pub notice: Notice,
    pub channel: NoticeChannel,
    /// The email address; empty for the webhook.
    pub address: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// The columns `notice_row` reads, in its order, then the delivery's.
fn due_columns() -> String {
    format!("{}, d.address, d.attempts", super::notices::NOTICE_COLUMNS)
}

impl Deliveries<'_> {
    /// Undelivered rows of `channel` whose next attempt is due at `now`,
    /// oldest notice first. Only the channels the service delivers are asked
    /// for, so rows of a channel that is not configured wait untouched.
    pub fn due_notice_deliveries(
        &self,
        now: DateTime<Utc>,
        channel: NoticeChannel,
        limit: usize,
    ) -> Result<Vec<DueNotice>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "SELECT {}
               FROM notice_deliveries d
               JOIN notices n ON n.id = d.notice_id
               JOIN accounts a ON a.ref = n.account_ref
              WHERE d.delivered_at_ms IS NULL AND d.channel = ?1 AND d.next_attempt_ms <= ?2
              ORDER BY d.notice_id, d.address LIMIT ?3",
            due_columns()
        ))?;
        let mut rows = stmt.query((channel.as_str(), now.timestamp_millis(), limit as i64))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(DueNotice {
                notice: notice_row(&r)?,
                channel,
                address: r.get(8)?,
                attempts: r.get(9)?,
            });
        }
        Ok(out)
    }

    /// Claims up to `limit` rows of `channel` due at `now` for this replica
    /// to deliver, oldest notice first, as [`Store::claim_deliveries`] does
    /// for bill lines: their next attempt moves to `lease_until`.
    pub fn claim_notice_deliveries(
        &mut self,
        now: DateTime<Utc>,
        channel: NoticeChannel,
        limit: usize,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<DueNotice>, StoreError> {
        let claim = format!(
            "UPDATE notice_deliveries SET next_attempt_ms = ?4
              WHERE (notice_id, channel, address) IN (
                    SELECT d.notice_id, d.channel, d.address FROM notice_deliveries d
                     WHERE d.delivered_at_ms IS NULL AND d.channel = ?1 AND d.next_attempt_ms <= ?2
                     ORDER BY d.notice_id, d.address LIMIT ?3{})
              RETURNING notice_id, address",
            super::outbox::skip_locked(self.0.conn.dialect(), "d")
        );
        let claimed: Vec<(i64, String)> = self
            .conn
            .query_map(
                &claim,
                (
                    channel.as_str(),
                    now.timestamp_millis(),
                    limit as i64,
                    lease_until.timestamp_millis(),
                ),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(claimed.len());
        for (notice_id, address) in claimed {
            let mut rows = self.0.conn.query(
                &format!(
                    "SELECT {}
                       FROM notice_deliveries d
                       JOIN notices n ON n.id = d.notice_id
                       JOIN accounts a ON a.ref = n.account_ref
                      WHERE d.notice_id = ?1 AND d.channel = ?2 AND d.address = ?3",
                    due_columns()
                ),
                (notice_id, channel.as_str(), &address),
            )?;
            while let Some(r) = rows.next()? {
                out.push(DueNotice {
                    notice: notice_row(&r)?,
                    channel,
                    address: r.get(8)?,
                    attempts: r.get(9)?,
                });
            }
        }
        out.sort_by(|x, y| (x.notice.id, &x.address).cmp(&(y.notice.id, &y.address)));
        Ok(out)
    }

    /// Hands claimed rows back undelivered, due at `now`.
    pub fn release_notice_claims(
        &mut self,
        rows: &[DueNotice],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for d in rows {
            self.0.conn.execute(
                "UPDATE notice_deliveries SET next_attempt_ms = ?4
                  WHERE notice_id = ?1 AND channel = ?2 AND address = ?3 AND delivered_at_ms IS NULL",
                (d.notice.id, d.channel.as_str(), &d.address, now.timestamp_millis()),
            )?;
        }
        Ok(())
    }

    /// When the next undelivered row of `channel` is due, if there is one.
    pub fn next_notice_delivery_at(
        &self,
        channel: NoticeChannel,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ms: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT min(next_attempt_ms) FROM notice_deliveries
                  WHERE delivered_at_ms IS NULL AND channel = ?1",
            )?
            .query_row([channel.as_str()], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(ms.map(from_ms))
    }

    /// Records that the channel took the notice. A row already delivered
    /// keeps its first delivery instant.
    pub fn mark_notice_delivered(
        &mut self,
        notice_id: i64,
        channel: NoticeChannel,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.0.conn
            .prepare_cached(
                "UPDATE notice_deliveries
                    SET delivered_at_ms = ?4, attempts = attempts + 1, last_error = NULL
                  WHERE notice_id = ?1 AND channel = ?2 AND address = ?3 AND delivered_at_ms IS NULL",
            )?
            .execute((notice_id, channel.as_str(), address, now.timestamp_millis()))?;
        Ok(())
    }

    /// Records a failed attempt, why (cut to [`NOTICE_ERROR_MAX_CHARS`]), and
    /// when to try again.
    pub fn mark_notice_failed(
        &mut self,
        notice_id: i64,
        channel: NoticeChannel,
        address: &str,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(NOTICE_ERROR_MAX_CHARS).collect();
        self.0.conn
            .prepare_cached(
                "UPDATE notice_deliveries
                    SET attempts = attempts + 1, last_error = ?4, next_attempt_ms = ?5
                  WHERE notice_id = ?1 AND channel = ?2 AND address = ?3 AND delivered_at_ms IS NULL",
            )?
            .execute((
                notice_id,
                channel.as_str(),
                address,
                error,
                retry_at.timestamp_millis(),
            ))?;
        Ok(())
    }

    /// How the notice outbox stands, over every channel: `failing` counts the
    /// pending rows whose last attempt failed.
    pub fn notice_outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        super::outbox::queue_status(self, "notice_deliveries")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use serde_json::json;
    use shared::lifecycle::{ContactRole, NoticeKind};

    use super::*;
    use crate::config::NoticeChannels;
    use crate::store::Store;
    use crate::store::{Durability, NewContact};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A store with account acme, two contacts (one by email and SMS, one by
    /// SMS only) and one notice on both channels.
    fn issued() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
        let now = at("2026-11-25T02:00:00Z");
        store.accounts().create_account("acme", now).unwrap();
        for (name, email, sms) in [
            ("Ann", Some("ann@example.com"), Some("+8613800138000")),
            ("Bo", None, Some("+8613800138001")),
        ] {
            let contact = NewContact {
                name: name.into(),
                role: ContactRole::Creator,
                email: email.map(String::from),
                sms: sms.map(String::from),
            };
            store.accounts().add_contact("acme", &contact, now).unwrap();
        }
        let both = NoticeChannels {
            webhook: true,
            email: true,
        };
        let id = store
            .accounts()
            .issue_notice(
                "acme",
                NoticeKind::TrialEnding,
                "2026-11-25".parse().unwrap(),
                &json!({"days_left": 3}),
                now,
                both,
            )
            .unwrap()
            .unwrap();
        (dir, store, id)
    }

    #[test]
    fn a_due_row_carries_its_notice_and_leaves_the_queue_once_delivered() {
        let (_dir, mut store, id) = issued();
        let now = at("2026-11-25T02:00:00Z");
        let webhook = store
            .delivery()
            .due_notice_deliveries(now, NoticeChannel::Webhook, 10)
            .unwrap();
        assert_eq!(webhook.len(), 1);
        assert_eq!(webhook[0].notice.id, id);
        assert_eq!(webhook[0].notice.account, "acme");
        assert_eq!(
            webhook[0].notice.recipients.len(),
            3,
            "an email and two SMS"
        );
        assert_eq!(webhook[0].address, "");
        let email = store
            .delivery()
            .due_notice_deliveries(now, NoticeChannel::Email, 10)
            .unwrap();
        assert_eq!(email.len(), 1, "one row per email address, none for SMS");
        assert_eq!(email[0].address, "ann@example.com");
        assert_eq!(
            store.delivery().notice_outbox_status().unwrap(),
            OutboxStatus {
                pending: 2,
                failing: 0,
                delivered: 0
            }
        );
        store
            .delivery()
            .mark_notice_delivered(id, NoticeChannel::Webhook, "", now)
            .unwrap();
        assert!(store
            .delivery()
            .due_notice_deliveries(now, NoticeChannel::Webhook, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .delivery()
                .next_notice_delivery_at(NoticeChannel::Webhook)
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .delivery()
                .next_notice_delivery_at(NoticeChannel::Email)
                .unwrap(),
            Some(now)
        );
    }

    #[test]
    fn a_failed_row_waits_until_its_retry_with_its_error_cut_short() {
        let (_dir, mut store, id) = issued();
        let now = at("2026-11-25T02:00:00Z");
        let retry_at = now + TimeDelta::seconds(30);
        let long = "550 5.1.1 no such user ".repeat(100);
        store
            .delivery()
            .mark_notice_failed(id, NoticeChannel::Email, "ann@example.com", &long, retry_at)
            .unwrap();
        assert!(store
            .delivery()
            .due_notice_deliveries(now, NoticeChannel::Email, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .delivery()
                .next_notice_delivery_at(NoticeChannel::Email)
                .unwrap(),
            Some(retry_at)
        );
        let due = store
            .delivery()
            .due_notice_deliveries(retry_at, NoticeChannel::Email, 10)
            .unwrap();
        assert_eq!(due[0].attempts, 1);
        let stored = &store.accounts().notices("acme", 10).unwrap()[0].deliveries;
        let email = stored.iter().find(|d| d.channel == "email").unwrap();
        let error = email.last_error.as_deref().unwrap();
        assert_eq!(error.chars().count(), NOTICE_ERROR_MAX_CHARS);
        assert!(error.starts_with("550 5.1.1"));
        assert_eq!(store.delivery().notice_outbox_status().unwrap().failing, 1);
    }
}
