//! Keyset pages of the lists the API answers: each list's order ends in a
//! unique key, a page is the rows after the previous page's last key (a
//! `LIMIT` in SQL, so a page costs its own length), and rows stored between
//! two pages can make a later page neither skip nor repeat a row.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// One page of a list: its items, how many the whole list holds (the same
/// filter, from its start), and the key the next page starts after (none
/// on the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T, K> {
    pub items: Vec<T>,
    pub total: u64,
    pub next: Option<K>,
}

impl<T, K: Clone> Listed<T, K> {
    /// A page from up to `limit + 1` rows read in order, each with its key:
    /// a row beyond `limit` means there is a next page, after the last one kept.
    pub(super) fn from_rows(mut rows: Vec<(K, T)>, limit: u32, total: u64) -> Listed<T, K> {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Listed {
            items: rows.into_iter().map(|(_, t)| t).collect(),
            total,
            next,
        }
    }
}

/// Where a sample is in the audit trail's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleKey {
    pub at_ms: i64,
    pub id: i64,
}

/// Where a bill line is in the order of the bills and the outbox (its
/// instant of issue, then its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineKey {
    pub issued_at_ms: i64,
    pub account: String,
    pub day: NaiveDate,
    pub seq: u32,
}

impl LineKey {
    pub(super) fn of(line: &shared::bill::BillLine) -> LineKey {
        LineKey {
            issued_at_ms: line.issued_at.timestamp_millis(),
            account: line.account.clone(),
            day: line.day,
            seq: line.seq,
        }
    }

    /// Before every line in issue order (no line was issued at `i64::MIN`).
    pub(super) fn first() -> LineKey {
        LineKey {
            issued_at_ms: i64::MIN,
            account: String::new(),
            day: NaiveDate::MIN,
            seq: 0,
        }
    }
}

/// The `LIMIT` that reads a page and tells whether another follows.
pub(super) fn one_more(limit: u32) -> i64 {
    i64::from(limit) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_beyond_the_limit_makes_the_last_kept_row_the_next_pages_start() {
        let rows = vec![(1, "a"), (2, "b"), (3, "c")];
        let page = Listed::from_rows(rows, 2, 7);
        assert_eq!(page.items, vec!["a", "b"]);
        assert_eq!((page.total, page.next), (7, Some(2)));
    }

    #[test]
    fn a_page_without_a_row_beyond_the_limit_is_the_last() {
        let page = Listed::from_rows(vec![(1, "a"), (2, "b")], 2, 2);
        assert_eq!((page.items.len(), page.next), (2, None));
        let empty: Listed<&str, i64> = Listed::from_rows(Vec::new(), 5, 0);
        assert_eq!((empty.items.len(), empty.next), (0, None));
    }
}
