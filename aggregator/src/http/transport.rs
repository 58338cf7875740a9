//! The transport's part in authorization: which connections may push.

use std::sync::Arc;

use axum::response::IntoResponse;

use super::{ApiError, Role, ROUTES};
use crate::metrics::ServiceMetrics;
use crate::security::tls::Transport;

/// With `tls_client_ca` set, the routes of the `cluster` role (`POST
/// /v1/samples`) take only connections that
/// presented a client certificate the CA signed (a certificate it did not
/// sign never gets past the handshake). Other routes are for people and
/// probes, and their tokens say who may call them.
pub async fn require_client_certificate_to_push(
    axum::extract::State(metrics): axum::extract::State<Arc<ServiceMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let certified = request
        .extensions()
        .get::<Transport>()
        .is_some_and(|t| t.client_certificate);
    if !certified && is_cluster_route(&request) {
        metrics.client_certificate_refusals.inc();
        return ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "pushing samples needs a client certificate signed by the service's client CA \
             (tls_client_ca); give the agent --client-cert and --client-key",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether the request was routed to a route whose role is `cluster`
/// (`routes::ROUTES`), the only ones an agent calls.
fn is_cluster_route(request: &axum::extract::Request) -> bool {
    let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() else {
        return false;
    };
    let method = request.method().as_str();
    ROUTES.iter().any(|(m, path, role, _)| {
        *role == Role::Cluster && *path == matched.as_str() && m.eq_ignore_ascii_case(method)
    })
}
