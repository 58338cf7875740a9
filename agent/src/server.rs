//! The agent's own HTTP endpoints: `/healthz`, `/readyz` and `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// How the node's images stand, a line of `/readyz`'s detail.
    images: Arc<Mutex<String>>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    images: Arc<Mutex<String>>,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Shared {
            registry,
            ready,
            images,
        });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the health and metrics server stopped");
    }
}

/// Ready while samples reach the disk; not ready while they only live in
/// memory. The images' state is said below, and never makes the agent
/// unready: images never hold back a core sample.
async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let images = s.images.lock().map(|i| i.clone()).unwrap_or_default();
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready\n{images}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("spool not writable\n{images}\n"),
        )
    }
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
