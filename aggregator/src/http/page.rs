//! `limit` and `cursor`, the query parameters of every list route, parsed
//! here and nowhere else; the cursor the service hands out; and the headers
//! a page answers with (`X-Total-Count`, `X-Next-Cursor`).
//!
//! A cursor is the hex of the key the next page starts after (JSON) and a
//! tag: the first 8 bytes of SHA-256 over the list's name, its filter and
//! the key. A cursor edited, cut, or taken from another list or another
//! filter does not carry its tag and is refused, naming `cursor`. The tag
//! is no secret: a cursor is a position, not a permission.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiError;

/// The most items one page holds, and how many a page holds unless asked
/// for fewer: a script that reads a day in one call still gets it all.
pub const MAX_LIMIT: u32 = 10_000;

/// The longest cursor read: more than twice the longest key the service
/// makes (a bill line's, with an account id stored before ids had a domain,
/// of up to 128 characters) and its tag.
const MAX_CURSOR_CHARS: usize = 2_048;

/// Bytes of the tag at a cursor's end.
const TAG_BYTES: usize = 8;

pub const TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");
pub const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// Which page of a list a request asks for: at most `limit` items, after
/// the position its `cursor` names (the list's start without one).
#[derive(Debug)]
pub struct Page {
    pub limit: u32,
    cursor: Option<Cursor>,
}

/// A cursor as given: its text (for messages) and its bytes.
#[derive(Debug)]
struct Cursor {
    given: String,
    bytes: Vec<u8>,
}

/// A list and the filter of one request on it: a cursor belongs to both.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    pub list: &'static str,
    pub filter: &'a str,
}

#[derive(Deserialize)]
struct Raw {
    limit: Option<String>,
    cursor: Option<String>,
}

impl Page {
    /// Reads `limit` and `cursor` from their query values.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Page, ApiError> {
        let limit = match limit {
            None => MAX_LIMIT,
            Some(text) => parse_limit(text)?,
        };
        let cursor = cursor.map(parse_cursor).transpose()?;
        Ok(Page { limit, cursor })
    }

    /// The key this page starts after in `listing`: none without a cursor;
    /// refused when the cursor is not one the service made for this list
    /// and filter.
    pub fn after<K: DeserializeOwned>(&self, listing: Listing<'_>) -> Result<Option<K>, ApiError> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        let (key, tag) = c.bytes.split_at(c.bytes.len() - TAG_BYTES);
        if tag != listing.tag(key) {
            return Err(not_a_cursor(
                &c.given,
                "it was not made for this list and filter",
            ));
        }
        serde_json::from_slice(key)
            .map(Some)
            .map_err(|_| not_a_cursor(&c.given, "its position is not one of this list"))
    }
}

impl Listing<'_> {
    fn tag(&self, key: &[u8]) -> [u8; TAG_BYTES] {
        let mut h = Sha256::new();
        for part in [self.list.as_bytes(), self.filter.as_bytes(), key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize()[..TAG_BYTES]
            .try_into()
            .expect("a SHA-256 holds 8 bytes")
    }

    /// The cursor of the page after `key`.
    pub fn cursor<K: Serialize>(&self, key: &K) -> String {
        let mut bytes = serde_json::to_vec(key).expect("a key serializes");
        let tag = self.tag(&bytes);
        bytes.extend_from_slice(&tag);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What a page answers besides its items.
    pub fn paged<K: Serialize>(&self, total: u64, next: Option<&K>) -> Paged {
        Paged {
            total,
            next_cursor: next.map(|k| self.cursor(k)),
        }
    }
}

/// What a page answers besides its items: how many the list holds, and
/// the next page's cursor (none on the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged {
    pub total: u64,
    pub next_cursor: Option<String>,
}

impl Paged {
    /// `body` with `X-Total-Count` and, unless this is the last page, `X-Next-Cursor`.
    pub fn respond(&self, body: impl IntoResponse) -> Response {
        let mut response = body.into_response();
        let headers = response.headers_mut();
        headers.insert(TOTAL_COUNT, HeaderValue::from(self.total));
        if let Some(next) = &self.next_cursor {
            headers.insert(
                NEXT_CURSOR,
                HeaderValue::from_str(next).expect("a cursor is hex"),
            );
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(raw) = Query::<Raw>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("query", e.body_text()))?;
        Page::parse(raw.limit.as_deref(), raw.cursor.as_deref())
    }
}

/// A whole number from 1 to [`MAX_LIMIT`], in decimal digits only.
fn parse_limit(text: &str) -> Result<u32, ApiError> {
    let number = if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        None
    } else {
        text.parse::<u32>().ok()
    };
    match number {
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "limit",
            format!(
                "{} is not a whole number from 1 to {MAX_LIMIT}",
                shared::domain::quote(text)
            ),
        )),
    }
}

/// The cursor's bytes, when it is lowercase hex of a tag and something before it.
fn parse_cursor(text: &str) -> Result<Cursor, ApiError> {
    let hex = text.as_bytes();
    let well_formed = text.len() <= MAX_CURSOR_CHARS
        && hex.len().is_multiple_of(2)
        && hex.len() > 2 * TAG_BYTES
        && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !well_formed {
        return Err(not_a_cursor(text, "a cursor is the next_cursor of a page"));
    }
    let digit = |b: u8| if b <= b'9' { b - b'0' } else { b - b'a' + 10 };
    Ok(Cursor {
        given: text.to_string(),
        bytes: hex
            .chunks(2)
            .map(|pair| digit(pair[0]) << 4 | digit(pair[1]))
            .collect(),
    })
}

fn not_a_cursor(text: &str, why: &str) -> ApiError {
    ApiError::bad_request(
        "cursor",
        format!(
            "{} is not a cursor of this list: {why}; start without one",
            shared::domain::quote(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: Listing<'static> = Listing {
        list: "samples",
        filter: "acme\n2026-11-24",
    };

    fn refused(e: ApiError) -> (u16, String, String) {
        (e.status.as_u16(), e.field.unwrap_or_default(), e.message)
    }

    #[test]
    fn a_cursor_leads_back_to_its_key() {
        let cursor = SAMPLES.cursor(&(1_764_000_000_000_i64, 42_i64));
        let page = Page::parse(Some("3"), Some(&cursor)).unwrap();
        assert_eq!(page.limit, 3);
        assert_eq!(
            page.after::<(i64, i64)>(SAMPLES).unwrap(),
            Some((1_764_000_000_000, 42))
        );
    }

    #[test]
    fn without_a_cursor_a_page_starts_at_the_lists_start_and_holds_up_to_the_most() {
        let page = Page::parse(None, None).unwrap();
        assert_eq!(page.limit, MAX_LIMIT);
        assert_eq!(page.after::<(i64, i64)>(SAMPLES).unwrap(), None);
    }

    #[test]
    fn a_cursor_of_another_list_or_filter_is_refused() {
        let cursor = SAMPLES.cursor(&(1_i64, 2_i64));
        let page = Page::parse(None, Some(&cursor)).unwrap();
        for other in [
            Listing {
                list: "bills",
                ..SAMPLES
            },
            Listing {
                filter: "acme\n2026-11-25",
                ..SAMPLES
            },
        ] {
            let (status, field, _) = refused(page.after::<(i64, i64)>(other).unwrap_err());
            assert_eq!((status, field.as_str()), (400, "cursor"));
        }
    }

    #[test]
    fn an_edited_cut_or_invented_cursor_is_refused_naming_the_field() {
        let cursor = SAMPLES.cursor(&(1_i64, 2_i64));
        let mut edited = cursor.clone().into_bytes();
        edited[3] = if edited[3] == b'0' { b'1' } else { b'0' };
        let edited = String::from_utf8(edited).unwrap();
        let long = "a".repeat(5000);
        for bad in [
            edited.as_str(),
            &cursor[2..],
            &cursor[..cursor.len() - 2],
            "",
            "abc",
            "zz",
            &cursor.to_uppercase(),
            "00000000000000000000000000000000",
            &long,
        ] {
            let e = Page::parse(None, Some(bad)).and_then(|p| p.after::<(i64, i64)>(SAMPLES));
            let (status, field, message) = refused(e.unwrap_err());
            assert_eq!((status, field.as_str()), (400, "cursor"), "{bad}");
            assert!(message.len() < 250, "{message}");
        }
    }

    #[test]
    fn a_well_tagged_cursor_of_the_wrong_shape_is_refused() {
        let cursor = SAMPLES.cursor(&"not a key");
        let page = Page::parse(None, Some(&cursor)).unwrap();
        let (status, field, _) = refused(page.after::<(i64, i64)>(SAMPLES).unwrap_err());
        assert_eq!((status, field.as_str()), (400, "cursor"));
    }

    #[test]
    fn a_limit_is_a_whole_number_from_1_to_10000() {
        for good in ["1", "10000", "0250", "7"] {
            assert!(Page::parse(Some(good), None).is_ok(), "{good}");
        }
        let long = "9".repeat(1000);
        for bad in [
            "0", "10001", "-1", "abc", "1e3", "", "+5", " 5", "5 ", "1.0", "99999", &long,
        ] {
            let (status, field, message) = refused(Page::parse(Some(bad), None).unwrap_err());
            assert_eq!((status, field.as_str()), (400, "limit"), "{bad:?}");
            assert!(message.len() < 200, "{message}");
        }
    }

    #[test]
    fn a_message_quotes_at_most_64_characters_of_the_value() {
        let long = format!("{}{}", "x".repeat(64), "y".repeat(1000));
        let (_, _, message) = refused(Page::parse(Some(&long), None).unwrap_err());
        assert!(message.contains(&"x".repeat(64)), "{message}");
        assert!(!message.contains('y'), "{message}");
        assert!(message.contains("1064 characters"), "{message}");
    }
}
