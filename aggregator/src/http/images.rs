//! The image-scan add-on's routes (SPEC 10.2, 10.3, 10.5): a node's images
//! (cluster token), registry images, the inventory, authorizations, their
//! receipts and refunds (admin, and the account's own reader token), and
//! product pauses (admin).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State as Extract};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::domain::{check_name, NameKind};
use shared::images::{check_image_id, MAX_BATCH_IDS, MAX_IMAGES_PER_NODE};

use super::admin::{body, read, ApiPath, ApiQuery};
use super::audit::{audited, By};
use super::page::{Listing, Page};
use super::{blocking, edges, input, ApiError};
use crate::security::tokens::bearer;
use crate::state::AppState;
use crate::store::NewImage;

/// The most tags or repository digests one image carries.
pub const MAX_IMAGE_NAMES: usize = 64;
/// The longest tag or repository digest.
pub const MAX_IMAGE_NAME_CHARS: usize = 512;

/// One image as a node or an admin describes it; a field this build does
/// not know (a newer agent's) is ignored, as in a sample.
#[derive(Deserialize)]
struct ImageBody {
    id: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    #[serde(default)]
    repo_digests: Vec<String>,
    size_bytes: Option<u64>,
    /// `registry` (the admin route's only source); absent from a node's list.
    source: Option<String>,
}

fn checked_images(images: Vec<ImageBody>, registry: bool) -> Result<Vec<NewImage>, ApiError> {
    if images.len() > MAX_IMAGES_PER_NODE {
        return Err(ApiError::unprocessable(
            "images",
            format!(
                "{} images; a list holds at most {MAX_IMAGES_PER_NODE}",
                images.len()
            ),
        ));
    }
    images
        .into_iter()
        .enumerate()
        .map(|(i, image)| {
            let field = |name: &str| format!("images[{i}].{name}");
            check_image_id(&image.id)
                .map_err(|e| ApiError::unprocessable(&field("id"), format!("id {e}")))?;
            match (registry, image.source.as_deref()) {
                (true, Some("registry")) | (false, None) => {}
                (true, _) => {
                    return Err(ApiError::unprocessable(
                        &field("source"),
                        "source must be \"registry\": images on nodes come from their agents",
                    ))
                }
                (false, Some(_)) => {
                    return Err(ApiError::unprocessable(
                        &field("source"),
                        "a node's list names no source",
                    ))
                }
            }
            for (name, list) in [
                ("repo_tags", &image.repo_tags),
                ("repo_digests", &image.repo_digests),
            ] {
                if list.len() > MAX_IMAGE_NAMES {
                    return Err(ApiError::unprocessable(
                        &field(name),
                        format!("{} entries; at most {MAX_IMAGE_NAMES}", list.len()),
                    ));
                }
                for text in list {
                    input::text(&field(name), text, MAX_IMAGE_NAME_CHARS)?;
                }
            }
            if image.size_bytes.is_some_and(|s| s > i64::MAX as u64) {
                return Err(ApiError::unprocessable(
                    &field("size_bytes"),
                    "size_bytes is too large",
                ));
            }
            Ok(NewImage {
                id: image.id,
                repo_tags: image.repo_tags,
                repo_digests: image.repo_digests,
                size_bytes: image.size_bytes,
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeList {
    node: String,
    at: String,
    images: Vec<ImageBody>,
}

/// `POST /v1/images`: a node's images now, from its agent. Answers 200
/// with what became of the list: `stored`, `stale` (a newer list of the node
/// is held), or `rejected` with `service_stopped`.
pub async fn push_images(
    Extract(state): Extract<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let token = bearer(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let identity = super::ingest::agent_of(&state, token).await?;
    edges::json_body(request.headers(), request.body())?;
    let limit = shared::wire::MAX_IMAGE_LIST_BYTES;
    let raw = Bytes::from_request(request, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            edges::too_large_for(limit)
        } else {
            ApiError::bad_request("", format!("cannot read the body: {e}"))
        }
    })?;
    let list: NodeList = body(&raw)?;
    check_name(NameKind::NodeName, &list.node)
        .map_err(|e| ApiError::unprocessable("node", format!("node {e}")))?;
    let at = input::instant("at", &list.at)?;
    let images = checked_images(list.images, false)?;
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let limits = state.config.billing.limits;
    if at > now + limits.max_future {
        return Err(ApiError::unprocessable(
            "at",
            format!("at {} is ahead of the service's clock ({now})", list.at),
        ));
    }
    let node = list.node;
    let outcome = blocking(&state.store, move |s| {
        s.images().record_node_list(
            &identity.account,
            &identity.cluster,
            &node,
            at,
            &images,
            &zone,
            now,
        )
    })
    .await?;
    state.metrics.images_pushed(
        outcome.status,
        outcome.new_images,
        outcome.auto_authorized,
        outcome.auto_refused,
    );
    if outcome.auto_authorized > 0 {
        state.notice_wake.notify_waiters();
    }
    Ok(Json(json!(outcome)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryImages {
    images: Vec<ImageBody>,
}

/// `POST /v1/admin/accounts/{id}/images`: images held in a registry.
pub async fn add_registry_images(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = raw.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            edges::too_large_for(shared::wire::MAX_IMAGE_LIST_BYTES)
        } else {
            ApiError::bad_request("", format!("cannot read the body: {e}"))
        }
    })?;
    let b: RegistryImages = body(&raw)?;
    let images = checked_images(b.images, true)?;
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let outcome = audited(&state, by, Some(id.clone()), move |s| {
        s.images().add_registry_images(&id, &images, &zone, now)
    })
    .await?;
    state.metrics.images_pushed(
        outcome.status,
        outcome.new_images,
        outcome.auto_authorized,
        outcome.auto_refused,
    );
    Ok((StatusCode::OK, Json(json!(outcome))).into_response())
}

#[derive(Deserialize)]
pub struct InventoryQuery {
    status: Option<String>,
}

/// `GET …/accounts/{id}/images?status=authorized|unauthorized`: the
/// inventory, paged, in the order images were first stored.
pub async fn inventory(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<InventoryQuery>,
    page: Page,
) -> Result<Response, ApiError> {
    let authorized = match q.status.as_deref() {
        None | Some("all") => None,
        Some("authorized") => Some(true),
        Some("unauthorized") => Some(false),
        Some(other) => {
            return Err(ApiError::unprocessable(
                "status",
                format!("status {other:?} is not all, authorized or unauthorized"),
            ))
        }
    };
    let filter = format!("{id}/{}", q.status.as_deref().unwrap_or("all"));
    let listing = Listing {
        list: "images",
        filter: &filter,
    };
    let after: Option<i64> = page.after(listing)?;
    let (account, limit) = (id.clone(), page.limit);
    let listed = blocking(&state.reader, move |s| {
        s.images().inventory(&account, authorized, after, limit)
    })
    .await?;
    let paged = listing.paged(listed.total, listed.next.as_ref());
    let next_cursor = paged.next_cursor.clone();
    Ok(paged.respond(Json(json!({
        "account": id,
        "images": listed.items,
        "next_cursor": next_cursor,
    }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    image_ids: Vec<String>,
}

/// `POST …/image-authorizations`: authorizes a batch of image IDs.
pub async fn authorize(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let b: Batch = body(&raw)?;
    if b.image_ids.is_empty() || b.image_ids.len() > MAX_BATCH_IDS {
        return Err(ApiError::unprocessable(
            "image_ids",
            format!(
                "{} image IDs; a batch names 1 to {MAX_BATCH_IDS}",
                b.image_ids.len()
            ),
        ));
    }
    for (i, image) in b.image_ids.iter().enumerate() {
        check_image_id(image).map_err(|e| {
            ApiError::unprocessable(&format!("image_ids[{i}]"), format!("image ID {e}"))
        })?;
    }
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let done = audited(&state, by, Some(id.clone()), move |s| {
        s.images().authorize(&id, &b.image_ids, &zone, now)
    })
    .await;
    match &done {
        Ok(done) => state
            .metrics
            .images_authorized("manual", done.authorized.len() as u64),
        Err(e) if e.code == "insufficient_authorizations" => {
            state.metrics.images_refused("manual", 1)
        }
        Err(_) => {}
    }
    let done = done?;
    state.notice_wake.notify_waiters();
    Ok(Json(json!(done)).into_response())
}

/// `GET …/image-authorizations`: purchased, consumed, refunded, the trial's
/// allowance, what is available, the automatic setting, and the packs.
pub async fn authorizations(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let now = state.clock.now();
    let summary = blocking(&state.reader, move |s| s.images().authorizations(&id, now)).await?;
    Ok(Json(json!(summary)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Auto {
    auto_authorize: bool,
    #[serde(default)]
    max_daily: u32,
}

/// `PUT …/image-authorizations/auto`: automatic authorization on arrival.
pub async fn set_auto(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    let a: Auto = body(&raw)?;
    if a.max_daily > shared::images::MAX_PACK_QUANTITY {
        return Err(ApiError::unprocessable(
            "max_daily",
            format!(
                "max_daily {} is more than {}",
                a.max_daily,
                shared::images::MAX_PACK_QUANTITY
            ),
        ));
    }
    let account = id.clone();
    audited(&state, by, Some(id.clone()), move |s| {
        s.images()
            .set_auto(&account, a.auto_authorize, u64::from(a.max_daily))
    })
    .await?;
    Ok(Json(json!({
        "account": id,
        "auto_authorize": a.auto_authorize,
        "max_daily": a.max_daily,
    })))
}

/// `GET …/image-authorizations/receipts`: every consumption and every
/// automatic attempt refused, oldest first, paged.
pub async fn receipts(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let listing = Listing {
        list: "image-receipts",
        filter: &id,
    };
    let after: Option<i64> = page.after(listing)?;
    let (account, limit) = (id.clone(), page.limit);
    let listed = blocking(&state.reader, move |s| {
        s.images().receipts(&account, after, limit)
    })
    .await?;
    let paged = listing.paged(listed.total, listed.next.as_ref());
    let next_cursor = paged.next_cursor.clone();
    Ok(paged.respond(Json(json!({
        "account": id,
        "receipts": listed.items,
        "next_cursor": next_cursor,
    }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    quantity: u32,
}

/// `POST …/image-authorizations/refund`: unused authorizations back to the
/// balance at the price paid.
pub async fn refund(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    let r: RefundBody = body(&raw)?;
    let now = state.clock.now();
    let refund = audited(&state, by, Some(id.clone()), move |s| {
        s.images().refund(&id, u64::from(r.quantity), now)
    })
    .await?;
    Ok(Json(json!(refund)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    paused_from: String,
    paused_until: String,
}

/// `PUT /v1/admin/products/{product}/pause`: no new purchases of the
/// product from one day to another, both included.
pub async fn pause_product(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(product): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    let p: PauseBody = body(&raw)?;
    let from = input::day("paused_from", &p.paused_from)?;
    let until = input::day("paused_until", &p.paused_until)?;
    let now = state.clock.now();
    let pause = audited(&state, by, None, move |s| {
        s.images().pause_product(&product, from, until, now)
    })
    .await?;
    Ok(Json(json!(pause)))
}

/// `DELETE /v1/admin/products/{product}/pause`: purchases again.
pub async fn resume_product(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(product): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let name = product.clone();
    let lifted = audited(&state, by, None, move |s| s.images().resume_product(&name)).await?;
    Ok(Json(json!({ "product": product, "lifted": lifted })))
}

/// `GET /v1/admin/products`: every product with its pause, if any.
pub async fn products(Extract(state): Extract<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let pauses = blocking(&state.reader, |s| s.images().pauses()).await?;
    let products: Vec<Value> = crate::store::PRODUCTS
        .iter()
        .map(|p| {
            json!({
                "product": p,
                "pause": pauses.iter().find(|x| x.product == *p),
            })
        })
        .collect();
    Ok(Json(json!({ "products": products })))
}
