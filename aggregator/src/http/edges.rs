//! The edges every request meets before its handler: a declared length over 1 MiB, a body that is not JSON, the request timeout, a method the route does not take; each answered in the API's error format.

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State as Extract};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::wire::MAX_BATCH_BYTES;

use super::ApiError;
use crate::state::AppState;
use std::sync::Arc;

/// The most bytes of a request's head (request line and headers). hyper is
/// given it as its read buffer's limit, but a read that brings in more than
/// the limit at once is parsed all the same: so the head is measured again
/// here, and one over it is answered as hyper answers: 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What every request meets first, in one layer (each layer is a boxed
/// future and a clone per request, and ingest pays for each): the fault
/// hook, a head over 64 KiB (431), a declared body over 1 MiB (413), then
/// the rest of the service under the request timeout (503).
pub(super) async fn front(
    Extract(state): Extract<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state
        .faults
        .panic_in_next_request
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        panic!("fault hook: a panic in a request handler");
    }
    if let Some(refused) = head_too_large(&request).or_else(|| declared_too_large(&request)) {
        return refused;
    }
    time_limit(&state, next.run(request)).await
}

/// Refuses a request whose head is over [`MAX_HEAD_BYTES`]: its request
/// line and header lines, counted as they were sent.
fn head_too_large(request: &Request) -> Option<Response> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| {
            a.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        });
    let request_line = request.method().as_str().len() + target + " HTTP/1.1\r\n".len();
    let header_lines: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": \r\n".len() + value.len())
        .sum();
    if request_line + header_lines + "\r\n".len() > MAX_HEAD_BYTES {
        tracing::debug!("request refused: its head is over 64 KiB");
        return Some(
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "head_too_large",
                "the request's head (request line and headers) is over 64 KiB",
            )
            .into_response(),
        );
    }
    None
}

pub(super) fn too_large() -> ApiError {
    too_large_for(MAX_BATCH_BYTES)
}

/// The body is over `limit` bytes.
pub(super) fn too_large_for(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is over {} MiB", limit >> 20),
    )
}

/// The most a request's body may weigh: 4 MiB for a list of images (a
/// node's, or a registry's), 1 MiB for everything else.
pub(super) fn body_limit(path: &str) -> usize {
    let images = path == shared::wire::IMAGES_PATH
        || (path.starts_with("/v1/admin/accounts/") && path.ends_with("/images"));
    // A console form is a few fields; the batch authorization is a batch
    // of image ids (10,000 of 71 bytes fit in 1 MiB).
    let small_form = path.starts_with("/console") && !path.ends_with("/images/authorize");
    if images {
        shared::wire::MAX_IMAGE_LIST_BYTES
    } else if small_form {
        CONSOLE_FORM_BYTES
    } else {
        MAX_BATCH_BYTES
    }
}

/// The largest body of a console form other than the batch authorization.
pub(super) const CONSOLE_FORM_BYTES: usize = 16 * 1024;

/// Refuses a request that declares a body over 1 MiB before a byte of it is
/// read, on every route (those that do not read a body too): a client that
/// declares 100 MiB and then sends slowly is answered at once rather than
/// at the request timeout, and before its token is looked at.
fn declared_too_large(request: &Request) -> Option<Response> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = body_limit(request.uri().path());
    if declared.is_some_and(|n| n > limit as u64) {
        tracing::debug!(
            limit,
            "request refused: the declared body is over its limit"
        );
        // The body is not read, so the connection cannot carry another
        // request: saying so keeps a client from sending one on it.
        let mut response = too_large_for(limit).into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return Some(response);
    }
    None
}

/// A body must say it is JSON (`Content-Type: application/json`, any case,
/// parameters such as `charset` allowed); an empty body needs no type. A body
/// of unknown length (chunked) is not empty.
pub(super) fn json_body(headers: &HeaderMap, body: &Body) -> Result<(), ApiError> {
    if body.is_end_stream() {
        return Ok(());
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let declared = match (types.next(), types.next()) {
        (None, _) => "none was given".to_string(),
        (Some(_), Some(_)) => "it was given twice".to_string(),
        (Some(value), None) => {
            let media_type = value
                .to_str()
                .ok()
                .and_then(|v| v.split(';').next())
                .map(str::trim);
            match media_type {
                Some(t) if t.eq_ignore_ascii_case("application/json") => return Ok(()),
                Some(t) => format!("got {}", shared::domain::quote(t)),
                None => "got one that is not text".to_string(),
            }
        }
    };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("a body must be JSON with Content-Type: application/json; {declared}"),
    )
    .field("Content-Type"))
}

/// [`json_body`] in front of a route that takes a body, after its gate.
pub(super) async fn json_bodies_only(request: Request, next: Next) -> Response {
    if let Err(e) = json_body(request.headers(), request.body()) {
        return e.into_response();
    }
    next.run(request).await
}

/// The request timeout (`request_timeout_secs`): a request not answered in
/// time (a body sent slowly, say) is answered 503 with `Retry-After`.
async fn time_limit(
    state: &Arc<AppState>,
    answer: impl std::future::Future<Output = Response>,
) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => {
            tracing::debug!(timeout = ?limit, "request refused: not answered within the request timeout");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the request was not answered within {} s (request_timeout_secs); send it again, whole",
                    limit.as_secs_f64()
                ),
            )
            .retry_after(limit.as_secs().max(1))
            .into_response()
        }
    }
}

/// A known path with a method it does not take: 405, with axum's `Allow`.
pub(super) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "this route does not take {}; the Allow header lists what it takes",
            shared::domain::quote(method.as_str())
        ),
    )
}
