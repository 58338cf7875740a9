//! Monthly statements over HTTP: `GET /v1/admin/accounts/{id}/statements/{month}`
//! and the customer's `GET /v1/accounts/{id}/statements/{month}`
//! (`?format=json|csv|html`; the JSON signed), and the key that checks them,
//! `GET /v1/statement-key`.

use std::sync::Arc;

use axum::extract::State as Extract;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::admin::{ApiPath, ApiQuery};
use super::{blocking, input, ApiError};
use crate::reports::statement;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatQuery {
    pub format: Option<String>,
}

/// The statement of the account in the path for the month in the path.
pub async fn monthly(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath((id, month)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<FormatQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return Err(ApiError::bad_request(
            "format",
            format!(
                "{} is not json, csv or html",
                shared::domain::quote(&format)
            ),
        ));
    }
    let first = input::month("month", &month)?;
    let (config, now) = (state.config.billing.clone(), state.clock.now());
    let today = config.zone.day_of(now);
    if first > today {
        return Err(ApiError::unprocessable(
            "month",
            format!(
                "month {month} has not begun (today is {today} in {})",
                config.zone.name()
            ),
        ));
    }
    let made = blocking(&state.reader, move |s| {
        statement::monthly_statement(s, &config, &id, first, now)
    })
    .await?;
    Ok(match format.as_str() {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            statement::render_csv(&made),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            statement::render_html(&made),
        )
            .into_response(),
        _ => {
            let key = blocking(&state.store, move |s| statement::signing_key(s, now)).await?;
            let value = serde_json::to_value(&made).map_err(ApiError::internal)?;
            Json(key.sign(value)).into_response()
        }
    })
}

/// `GET /v1/statement-key`: `{"algorithm", "key_id", "public_key"}`, what
/// `aggregator verify-statement --key` takes.
pub async fn public_key(Extract(state): Extract<Arc<AppState>>) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let key = blocking(&state.store, move |s| statement::signing_key(s, now)).await?;
    Ok(Json(key.public()).into_response())
}
