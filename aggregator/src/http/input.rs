//! The edge: every value a request carries is checked here against its
//! domain (`shared::domain`) before a handler uses it, and refused with a 422
//! naming the field. Path parameters are checked for every route at once
//! (`check_path`); query and body fields through the functions below, one per
//! kind.

use axum::extract::{RawPathParams, Request, State as Extract};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use shared::domain::{self, NameKind, OutOfDomain};

use super::ApiError;
use crate::state::AppState;
use std::sync::Arc;

/// The most characters of a contact's name, a credit's reference or a label.
pub const TEXT_MAX_CHARS: usize = 200;
/// The most characters of a third party's error message (serde's, axum's) passed on.
const MESSAGE_MAX_CHARS: usize = 400;

fn refused(field: &str, e: OutOfDomain) -> ApiError {
    ApiError::unprocessable(field, format!("{field} {e}"))
}

/// A new account id or cluster name: its domain, nothing else.
pub fn new_name(field: &str, kind: NameKind, value: &str) -> Result<(), ApiError> {
    domain::check_name(kind, value).map_err(|e| refused(field, e))
}

/// The name of something that may exist: its domain, or one of the names
/// stored before the domain was written.
pub fn existing_name(
    state: &Arc<AppState>,
    field: &str,
    kind: NameKind,
    value: &str,
) -> Result<(), ApiError> {
    match domain::check_name(kind, value) {
        Ok(()) => Ok(()),
        Err(_) if state.legacy_names.contains(kind, value) => Ok(()),
        Err(e) => Err(refused(field, e)),
    }
}

pub fn day(field: &str, value: &str) -> Result<NaiveDate, ApiError> {
    domain::parse_day(value).map_err(|e| refused(field, e))
}

/// A month `YYYY-MM`: its first day.
pub fn month(field: &str, value: &str) -> Result<NaiveDate, ApiError> {
    domain::parse_month(value).map_err(|e| refused(field, e))
}

/// The required `day=` of a query.
pub fn required_day(value: Option<&str>) -> Result<NaiveDate, ApiError> {
    day(
        "day",
        value.ok_or_else(|| ApiError::unprocessable("day", "day=YYYY-MM-DD is required"))?,
    )
}

pub fn instant(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    domain::parse_instant(value).map_err(|e| refused(field, e))
}

pub fn money(field: &str, value: &str) -> Result<Decimal, ApiError> {
    domain::parse_money(value).map_err(|e| refused(field, e))
}

/// Cores of a licence, an order or a cap.
pub fn cores(field: &str, value: u64) -> Result<u32, ApiError> {
    domain::check_total_cores(value).map_err(|e| refused(field, e))
}

/// Free text: printable, not blank, at most `max_chars`.
/// A value from `allowed`, or the refusal naming `field` and them.
pub fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(ApiError::unprocessable(
        field,
        format!(
            "{field} must be one of {}, got {}",
            allowed.join(", "),
            domain::quote(value)
        ),
    ))
}

pub fn text(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    domain::check_text(value, max_chars).map_err(|e| refused(field, e))
}

/// What each path parameter is: `{id}` an account, `{name}` a cluster,
/// `{order}` and `{token_id}` whole numbers, `{product}` one of the products,
/// `{month}` a month `YYYY-MM`.
fn check_param(state: &Arc<AppState>, name: &str, value: &str) -> Result<(), ApiError> {
    match name {
        "id" => existing_name(state, "id", NameKind::AccountId, value),
        "name" => existing_name(state, "name", NameKind::ClusterName, value),
        "order" | "token_id" => {
            let whole =
                !value.is_empty() && value.len() <= 18 && value.bytes().all(|b| b.is_ascii_digit());
            if whole {
                Ok(())
            } else {
                Err(ApiError::unprocessable(
                    name,
                    format!(
                        "{name} must be a whole number from 0 to 10^18, got {}",
                        domain::quote(value)
                    ),
                ))
            }
        }
        "month" => month("month", value).map(|_| ()),
        "day" => day("day", value).map(|_| ()),
        "product" => one_of("product", value, &crate::store::PRODUCTS),
        other => Err(ApiError::internal(format!(
            "path parameter {other:?} has no domain in routes::input"
        ))),
    }
}

/// The layer in front of every route with path parameters.
pub async fn check_path(
    Extract(state): Extract<Arc<AppState>>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            return ApiError::bad_request("path", clip_quoted(&e.body_text())).into_response()
        }
    };
    for (name, value) in &params {
        if let Err(e) = check_param(&state, name, value) {
            return e.into_response();
        }
    }
    next.run(request).await
}

/// A third party's error message made safe to answer with: every quoted
/// part (in `"…"` or `` `…` ``) cut to 64 characters, and the whole to 400.
pub fn clip_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_MAX_CHARS + 8));
    let mut open: Option<char> = None;
    let mut run = 0usize;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                open = None;
                if run > domain::QUOTE_MAX_CHARS {
                    out.push('…');
                }
                out.push(c);
            }
            Some(_) => {
                run += 1;
                if run <= domain::QUOTE_MAX_CHARS {
                    out.push(c);
                }
            }
            None => {
                if c == '"' || c == '`' {
                    open = Some(c);
                    run = 0;
                }
                out.push(c);
            }
        }
        if out.chars().count() > MESSAGE_MAX_CHARS {
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_third_partys_message_quotes_at_most_64_characters_of_a_value() {
        let long = "x".repeat(1_000_000);
        let clipped = clip_quoted(&format!(
            "invalid type: string \"{long}\", expected u32 at line 1 column 9"
        ));
        assert!(clipped.len() < 200, "{clipped}");
        assert!(clipped.ends_with("\", expected u32 at line 1 column 9"));
        let clipped = clip_quoted(&format!("Cannot parse `{long}` to a `i64`"));
        assert!(clipped.ends_with("…` to a `i64`"), "{clipped}");
        assert_eq!(clip_quoted("plain"), "plain");
        assert!(clip_quoted(&"y".repeat(5_000)).chars().count() <= MESSAGE_MAX_CHARS + 2);
    }
}
