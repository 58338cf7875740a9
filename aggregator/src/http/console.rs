//! The console over HTTP: the login form and sessions (a cookie carrying a
//! session kept as its hash; HttpOnly, SameSite=Strict, Secure under TLS;
//! a CSRF token on every form), the language switch, and each page of
//! `console::pages` filled from the store. A form's action goes through
//! the API's own handler for the same change, so the console can do
//! nothing the API would refuse, and a refusal shows next to its field.
//!
//! Every page is a route of `ROUTES` with its role. The gate takes the
//! session's cookie or a bearer token: no caller is sent to the login form
//! (303), a caller of the wrong role or account gets a page saying which
//! role the page needs (403).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, RequestExt};
use chrono::{Datelike, Months, NaiveDate, TimeDelta};
use cookie::{Cookie, SameSite};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::admin::{ApiPath, ApiQuery};
use super::audit::{admin_actor, token_actor, By, Source};
use super::authz::{classify, header_token, Caller, Role};
use super::{blocking, ApiError};
use crate::console::pages::{self, Flash};
use crate::console::{Lang, Viewer};
use crate::state::AppState;
use crate::store::audit::{Actor, ChangeBy};
use crate::store::{Session, SessionOwner, SessionRole, SESSION_HOURS};

const SESSION_COOKIE: &str = "cm_session";
const LANG_COOKIE: &str = "cm_lang";
/// The login form's own CSRF token (a session has none yet): the form
/// carries what this cookie holds.
const LOGIN_COOKIE: &str = "cm_login";

/// Who is looking, as the gate found them.
#[derive(Debug, Clone)]
pub struct ConsoleCaller {
    /// `admin`, `reader` or `customer`.
    pub role: &'static str,
    pub account: Option<String>,
    /// The session, when the caller came with its cookie (a bearer token
    /// has none, and no form of theirs needs a CSRF token).
    pub session: Option<Session>,
    /// The token behind the caller, as the audit log names it.
    pub actor: Actor,
}

/// The cookie `name`, if the request carries it once. Twice is none: a
/// cookie planted for a longer path (from a sibling domain, or over plain
/// HTTP) would be sent first, and must not pick the session or the login
/// form's token.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v);
    let first = found.next();
    match found.next() {
        None => first,
        Some(_) => None,
    }
}

/// Whether the browser reached the service over HTTPS: the service's own
/// TLS, or a TLS-terminating proxy that says so (`X-Forwarded-Proto:
/// https`). A client that claims it falsely only makes its cookies stricter.
fn over_https(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.tls.is_some()
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn set_cookie(
    state: &AppState,
    headers: &HeaderMap,
    name: &'static str,
    value: String,
    max_age_secs: i64,
) -> HeaderValue {
    let cookie = Cookie::build((name, value))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_https(state, headers))
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie of ASCII is a header value")
}

fn lang_of(headers: &HeaderMap) -> Lang {
    cookie_value(headers, LANG_COOKIE)
        .and_then(Lang::parse)
        .unwrap_or_else(|| {
            Lang::from_accept_language(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
        })
}

/// The caller of a console request: a bearer token first, else the
/// session's cookie; none when neither names a live one.
async fn caller_of(
    state: &Arc<AppState>,
    headers: &HeaderMap,
) -> Result<Option<ConsoleCaller>, ApiError> {
    if let Some(token) = header_token(headers) {
        return Ok(match classify(state, Some(token)).await? {
            Caller::Admin => Some(ConsoleCaller {
                role: "admin",
                account: None,
                session: None,
                actor: admin_actor(&crate::security::tokens::hash_token(token)),
            }),
            Caller::Reader(r) => Some(ConsoleCaller {
                role: "reader",
                actor: token_actor("reader", r.token_id),
                account: Some(r.account),
                session: None,
            }),
            Caller::Customer(r) => Some(ConsoleCaller {
                role: "customer",
                actor: token_actor("customer", r.token_id),
                account: Some(r.account),
                session: None,
            }),
            // A token of a role no page takes: known, so refused (403), not
            // sent to log in.
            Caller::Cluster(_) | Caller::Logs(_) => Some(ConsoleCaller {
                role: "agent or log service",
                account: None,
                session: None,
                actor: token_actor("agent or log service", "-"),
            }),
            Caller::Anonymous | Caller::Unknown => None,
        });
    }
    let Some(cookie) = cookie_value(headers, SESSION_COOKIE).map(str::to_string) else {
        return Ok(None);
    };
    let now = state.clock.now();
    let found = blocking(&state.tokens, move |s| s.sessions().find(&cookie, now)).await?;
    Ok(found.and_then(|session| {
        let role = match session.role {
            SessionRole::Admin => {
                // Opened with an admin token since replaced: it ends with it.
                let current = session
                    .admin_hash
                    .as_deref()
                    .is_some_and(|h| state.admin_token.is_hash(h));
                if !current {
                    return None;
                }
                "admin"
            }
            SessionRole::Reader => "reader",
            SessionRole::Customer => "customer",
        };
        let actor = match (&session.admin_hash, session.reader_token) {
            (Some(hash), _) => admin_actor(hash),
            (None, token) => token_actor(role, token.unwrap_or_default()),
        };
        Some(ConsoleCaller {
            role,
            account: session.account.clone(),
            session: Some(session),
            actor,
        })
    }))
}

/// The state of a page's gate.
#[derive(Clone)]
pub struct ConsoleGate {
    pub state: Arc<AppState>,
    pub role: Role,
}

fn to_login(request: &Request) -> Response {
    let here = request
        .uri()
        .path_and_query()
        .map_or("/console", |p| p.as_str());
    let next = if request.method() == axum::http::Method::GET {
        here
    } else {
        "/console"
    };
    redirect(&format!(
        "/console/login?next={}",
        crate::console::urlencode(next)
    ))
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// What every console answer carries: no page may be framed (the forms'
/// buttons cannot be clicked through another page), no type sniffed, no
/// address leaked to another site, nothing kept by a cache.
pub async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The gate in front of every console page of a role.
pub async fn gate(
    Extract(gate): Extract<ConsoleGate>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers().clone();
    let caller = match caller_of(&gate.state, &headers).await {
        Ok(Some(c)) => c,
        Ok(None) => return to_login(&request),
        Err(e) => return e.into_response(),
    };
    let account = request
        .extract_parts::<Path<std::collections::HashMap<String, String>>>()
        .await
        .ok()
        .and_then(|Path(mut p)| p.remove("id"));
    let own = caller.account.is_some() && caller.account == account;
    let allowed = match gate.role {
        Role::Admin => caller.role == "admin",
        Role::Reader => caller.role == "admin" || own,
        Role::Customer => caller.role == "admin" || (caller.role == "customer" && own),
        _ => true,
    };
    if !allowed {
        let lang = lang_of(request.headers());
        let needs = match gate.role {
            Role::Admin => lang.t("refused.needs_admin"),
            Role::Customer => lang.t("refused.needs_customer"),
            _ => lang.t("refused.needs_reader"),
        };
        let message = lang.tf("refused.needs", &[("needs", needs), ("role", caller.role)]);
        return page(
            StatusCode::FORBIDDEN,
            pages::refused(lang, lang.t("refused.title"), maud::html! { (message) }),
        );
    }
    let lang = lang_of(request.headers());
    request.extensions_mut().insert(caller);
    as_page(lang, next.run(request).await).await
}

/// A page's refusal as a page: the API's JSON error (a query value out of
/// its domain, an unknown account, a store that cannot write) becomes
/// HTML in the reader's language, with the same status and headers.
async fn as_page(lang: Lang, response: Response) -> Response {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !json || !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // An error body is a few hundred bytes; anything larger is not one.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, "error").into_response();
    };
    let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let code = error["error"]["code"].as_str().unwrap_or("");
    let message = error["error"]["message"].as_str().unwrap_or("");
    let field = error["error"]["field"].as_str().unwrap_or("");
    let html = pages::refused(
        lang,
        lang.t("error.title"),
        maud::html! {
            (pages::why(lang, "", code, message))
            @if !field.is_empty() { " " code { (field) } }
        },
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Response::from_parts(parts, axum::body::Body::from(html))
}

fn viewer(state: &AppState, caller: &ConsoleCaller, headers: &HeaderMap, here: &str) -> Viewer {
    Viewer {
        lang: lang_of(headers),
        zone: state.config.billing.zone,
        currency: state.config.billing.currency.clone(),
        role: caller.role,
        own_account: caller.account.clone(),
        csrf: caller
            .session
            .as_ref()
            .map(|s| s.csrf.clone())
            .unwrap_or_default(),
        here: here.to_string(),
    }
}

/// A form's fields, in order (a field may repeat), at most `most`: a body
/// of a million empty fields is read no further than a form can need.
fn form(body: &[u8], most: usize) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .take(most)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect()
}

/// The fields a form of a few inputs may have (login, cap, orders, …).
const SMALL_FORM: usize = 16;
/// The fields the batch authorization may have: every image id of a
/// batch and the few others.
const BATCH_FORM: usize = shared::images::MAX_BATCH_IDS + SMALL_FORM;

fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A form of a session must carry its CSRF token; a bearer caller's
/// request carries no cookie a third party could ride on.
fn check_csrf(
    caller: &ConsoleCaller,
    fields: &[(String, String)],
    lang: Lang,
) -> Result<(), Box<Response>> {
    let Some(session) = &caller.session else {
        return Ok(());
    };
    let given = field(fields, "csrf").unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes())) {
        Ok(())
    } else {
        Err(Box::new(page(
            StatusCode::FORBIDDEN,
            pages::refused(
                lang,
                lang.t("refused.title"),
                maud::html! { (lang.t("login.form_expired")) },
            ),
        )))
    }
}

/// Where a login or a language switch may send the browser: a console
/// path of this service, nothing else.
fn safe_next(next: Option<&str>) -> String {
    // Only what a console path and its query are made of: no control
    // character can reach the Location header, no `//` or `\\` another host.
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._~?=&%-+".contains(c);
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.contains("//")
                && n.chars().all(plain)
                && n.len() <= 512 =>
        {
            n.to_string()
        }
        _ => "/console".into(),
    }
}

#[derive(serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
    to: Option<String>,
}

/// `GET /`: the console.
pub async fn root() -> Response {
    redirect("/console")
}

/// `GET /console`: an operator's accounts, a customer's own account, or the login form.
pub async fn home(
    Extract(state): Extract<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Ok(match caller_of(&state, &headers).await? {
        Some(c) if c.role == "admin" => redirect("/console/accounts"),
        Some(ConsoleCaller {
            role: "reader" | "customer",
            account: Some(a),
            ..
        }) => redirect(&format!("/console/accounts/{a}")),
        _ => redirect("/console/login"),
    })
}

/// `GET /console/login`: the form, with a fresh CSRF token in its cookie.
pub async fn login_form(
    Extract(state): Extract<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<NextQuery>,
) -> Response {
    login_page(
        &state,
        &headers,
        StatusCode::OK,
        None,
        &safe_next(q.next.as_deref()),
    )
}

fn login_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    message: Option<&str>,
    next: &str,
) -> Response {
    let token = crate::security::tokens::new_token("login");
    let mut response = page(
        status,
        pages::login(lang_of(headers), &token, message, next),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, headers, LOGIN_COOKIE, token, 3600),
    );
    response
}

/// `POST /console/login`: a token opens a session.
pub async fn login(
    Extract(state): Extract<Arc<AppState>>,
    Source(source): Source,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = form(&body, SMALL_FORM);
    let lang = lang_of(&headers);
    let next = safe_next(field(&fields, "next"));
    let expected = cookie_value(&headers, LOGIN_COOKIE).unwrap_or("");
    let given = field(&fields, "csrf").unwrap_or("");
    if expected.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Ok(login_page(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            Some(lang.t("login.form_expired")),
            &next,
        ));
    }
    let token = field(&fields, "token").unwrap_or("").trim().to_string();
    let (owner, caller_account) = match classify(&state, Some(&token)).await? {
        Caller::Admin => (
            SessionOwner::Admin(crate::security::tokens::hash_token(&token)),
            None,
        ),
        Caller::Reader(r) => (
            SessionOwner::Token {
                role: SessionRole::Reader,
                token_id: r.token_id,
            },
            Some(r.account),
        ),
        Caller::Customer(r) => (
            SessionOwner::Token {
                role: SessionRole::Customer,
                token_id: r.token_id,
            },
            Some(r.account),
        ),
        _ => {
            tracing::info!("console login refused");
            return Ok(login_page(
                &state,
                &headers,
                StatusCode::UNAUTHORIZED,
                Some(lang.t("login.refused")),
                &next,
            ));
        }
    };
    let now = state.clock.now();
    let (actor, account) = match (&owner, &caller_account) {
        (SessionOwner::Admin(hash), _) => (admin_actor(hash), None),
        (SessionOwner::Token { role, token_id }, account) => {
            (token_actor(role.as_str(), token_id), account.clone())
        }
    };
    let by = ChangeBy {
        actor,
        source,
        action: "POST /console/login".into(),
    };
    let opened = blocking(&state.store, move |s| {
        s.audited_as_stated(&by, account.as_deref(), now, |s| {
            let opened = s.sessions().open(&owner, now)?;
            let change = json!({
                format!("console_sessions/{}", opened.session.id): {
                    "before": null,
                    "after": {"role": opened.session.role.as_str(), "expires_at_ms": opened.session.expires_at.timestamp_millis()},
                }
            });
            Ok((opened, change))
        })
    })
    .await?;
    tracing::info!(session = opened.session.id, role = ?opened.session.role, "console session opened");
    let mut response = redirect(&next);
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(
            &state,
            &headers,
            SESSION_COOKIE,
            opened.cookie,
            SESSION_HOURS * 3600,
        ),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(&state, &headers, LOGIN_COOKIE, String::new(), 0),
    );
    Ok(response)
}

/// `POST /console/logout`: the session ends here and now.
pub async fn logout(
    Extract(state): Extract<Arc<AppState>>,
    Source(source): Source,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let lang = lang_of(&headers);
    let mut response = redirect("/console/login");
    // Only a session's own form ends it and clears its cookie: a form
    // posted from another site arrives without the cookie (SameSite) and
    // must not make the browser drop it either.
    if let Some(caller) = caller_of(&state, &headers).await? {
        if let Err(refused) = check_csrf(&caller, &form(&body, SMALL_FORM), lang) {
            return Ok(*refused);
        }
        if let Some(session) = caller.session {
            let now = state.clock.now();
            let by = ChangeBy {
                actor: caller.actor,
                source,
                action: "POST /console/logout".into(),
            };
            blocking(&state.store, move |s| {
                s.audited_as_stated(&by, caller.account.as_deref(), now, |s| {
                    s.sessions().end(session.id, now)?;
                    let change = json!({
                        format!("console_sessions/{}/ended_at_ms", session.id): {"before": null, "after": now.timestamp_millis()}
                    });
                    Ok(((), change))
                })
            })
            .await?;
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&state, &headers, SESSION_COOKIE, String::new(), 0),
            );
        }
    }
    Ok(response)
}

/// `GET /console/lang?to=en|zh-CN&next=`: the language, kept in a cookie.
pub async fn switch_language(
    Extract(state): Extract<Arc<AppState>>,
    ApiQuery(q): ApiQuery<NextQuery>,
    headers: HeaderMap,
) -> Response {
    let mut response = redirect(&safe_next(q.next.as_deref()));
    if let Some(lang) = q.to.as_deref().and_then(Lang::parse) {
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                &state,
                &headers,
                LANG_COOKIE,
                lang.code().into(),
                365 * 86_400,
            ),
        );
    }
    response
}

fn here(request_uri: &axum::http::Uri) -> String {
    request_uri.path_and_query().map_or_else(
        || request_uri.path().to_string(),
        |p| p.as_str().to_string(),
    )
}

/// Licensed cores at `now` from the account view's licences.
fn licensed_now(view: &Value, now: chrono::DateTime<chrono::Utc>) -> u64 {
    view["licenses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            let at = |k: &str| {
                l[k].as_str()
                    .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
            };
            at("start").is_some_and(|s| s <= now) && at("counts_until").is_some_and(|e| e > now)
        })
        .map(|l| l["cores"].as_u64().unwrap_or(0))
        .sum()
}

/// `GET /console/accounts/{id}`: the overview.
pub async fn overview(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let view = super::accounts::account_view(&state, id.clone()).await?;
    let (config, now) = (state.config.billing.clone(), state.clock.now());
    let today = config.zone.day_of(now);
    let account = id.clone();
    // Today's hours, and yesterday's for a shortfall that began before.
    let reports = blocking(&state.reader, move |s| {
        let today_report = crate::reports::daily_report(s, &config, &account, today, now).ok();
        let yesterday =
            crate::reports::daily_report(s, &config, &account, shared::zone::prev_day(today), now)
                .ok();
        Ok((today_report, yesterday))
    })
    .await?;
    let (today_report, yesterday_report) = reports;
    let hours: Vec<&crate::reports::Hour> = yesterday_report
        .iter()
        .chain(today_report.iter())
        .flat_map(|r| r.hours.iter())
        .collect();
    let last = hours.iter().rposition(|h| h.total_cores > 0);
    let total_now = last.map(|i| hours[i].total_cores);
    let short = last.and_then(|i| {
        let h = hours[i];
        (h.total_cores > h.licensed_cores).then(|| {
            let first = hours[..=i]
                .iter()
                .rposition(|x| x.total_cores <= x.licensed_cores)
                .map_or(0, |j| j + 1);
            let since = chrono::DateTime::parse_from_rfc3339(&hours[first].start)
                .map(|d| d.with_timezone(&chrono::Utc))
                .unwrap_or(now);
            (h.total_cores - h.licensed_cores, since)
        })
    });
    let overview = pages::Overview {
        account: id,
        licensed_cores: licensed_now(&view, now),
        total_cores_now: total_now,
        short,
        today: today_report.map(|r| pages::Today {
            excess_core_hours: r.figures.excess_core_hours,
            billable_cores: r.figures.billable_cores,
            amount: r.figures.amount,
        }),
        view,
    };
    Ok(page(StatusCode::OK, pages::overview(&v, &overview)))
}

#[derive(serde::Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
    n: Option<u64>,
    status: Option<String>,
    after: Option<i64>,
    month: Option<String>,
}

async fn purchase_page(
    state: &Arc<AppState>,
    v: &Viewer,
    id: String,
    flash: &Flash,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let view = super::accounts::account_view(state, id.clone()).await?;
    let (zone, now) = (state.config.billing.zone, state.clock.now());
    let account = id.clone();
    let (log_view, (balance, ledger)) = blocking(&state.reader, move |s| {
        let logs = serde_json::to_value(s.log_storage().view(&account, &zone, now)?)
            .unwrap_or(Value::Null);
        Ok((logs, s.accounts().balance(&account)?))
    })
    .await?;
    let purchase = pages::Purchase {
        account: id,
        cap_cores: view["cap_cores"].as_u64().unwrap_or(0),
        orders: view["orders"].clone(),
        log_orders: log_view["orders"].clone(),
        balance,
        ledger: ledger.into_iter().rev().take(200).collect(),
    };
    Ok(page(status, pages::purchase(v, &purchase, flash)))
}

/// `GET /console/accounts/{id}/purchase`.
pub async fn purchase(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DoneQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let ok = match q.done.as_deref() {
        Some("cap") => Some(v.tf(
            "purchase.cap_saved",
            &[("cores", &v.lang.int(q.n.unwrap_or(0)))],
        )),
        Some("order") => Some(v.tf(
            "purchase.order_placed",
            &[("id", &q.n.unwrap_or(0).to_string()), ("price", "")],
        )),
        Some("auto-renew") => Some(v.t("purchase.auto_renew_saved").to_string()),
        _ => None,
    };
    purchase_page(&state, &v, id, &Flash { ok, error: None }, StatusCode::OK).await
}

/// A form's action, refused: the page again with the error by its field.
fn refusal(form: &'static str, e: ApiError) -> Flash {
    Flash {
        ok: None,
        error: Some(pages::Refusal {
            form,
            field: e.field.clone().unwrap_or_default(),
            code: e.code,
            message: e.message,
        }),
    }
}

/// The body of a form's request, its fields, and the CSRF check.
async fn form_of(
    caller: &ConsoleCaller,
    headers: &HeaderMap,
    body: &Bytes,
    most: usize,
) -> Result<Vec<(String, String)>, Box<Response>> {
    let fields = form(body, most);
    check_csrf(caller, &fields, lang_of(headers))?;
    Ok(fields)
}

fn json_body(v: Value) -> Result<Bytes, axum::extract::rejection::BytesRejection> {
    Ok(Bytes::from(v.to_string()))
}

/// A whole number of a form, or the API's refusal naming it.
fn number(fields: &[(String, String)], name: &'static str) -> Result<u64, ApiError> {
    let text = field(fields, name).unwrap_or("").trim();
    text.parse::<u64>().map_err(|_| {
        ApiError::unprocessable(
            name,
            format!(
                "{name} must be a whole number, got {}",
                shared::domain::quote(text)
            ),
        )
    })
}

/// `POST /console/accounts/{id}/cap` (`cores`): through `PUT …/cap`.
pub async fn set_cap(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    by: By,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = match form_of(&caller, &headers, &body, SMALL_FORM).await {
        Ok(f) => f,
        Err(refused) => return Ok(*refused),
    };
    let here = format!("/console/accounts/{id}/purchase");
    let v = viewer(&state, &caller, &headers, &here);
    let done = match number(&fields, "cores") {
        Ok(cores) => super::admin::set_cap(
            Extract(state.clone()),
            by,
            ApiPath(id.clone()),
            json_body(json!({"cores": cores})),
        )
        .await
        .map(|_| cores),
        Err(e) => Err(e),
    };
    match done {
        Ok(cores) => Ok(redirect(&format!("{here}?done=cap&n={cores}"))),
        Err(e) if e.status.is_client_error() => {
            purchase_page(
                &state,
                &v,
                id,
                &refusal("cap", e),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

/// `POST /console/accounts/{id}/orders` (`product`, `quantity`, `months`):
/// through the customer's `POST /v1/accounts/{id}/orders`, paid from the balance.
pub async fn place_order(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    by: By,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = match form_of(&caller, &headers, &body, SMALL_FORM).await {
        Ok(f) => f,
        Err(refused) => return Ok(*refused),
    };
    let here = format!("/console/accounts/{id}/purchase");
    let v = viewer(&state, &caller, &headers, &here);
    let product = field(&fields, "product").unwrap_or("pro").to_string();
    let order = (|| -> Result<Value, ApiError> {
        let quantity = number(&fields, "quantity")?;
        let mut o = json!({"product": product, "pay_from_balance": true});
        match product.as_str() {
            "image_scan" => o["quantity"] = json!(quantity),
            "log_storage" => o["gb"] = json!(quantity),
            _ => o["cores"] = json!(quantity),
        }
        if product != "image_scan" {
            o["months"] = json!(number(&fields, "months")?);
        }
        Ok(o)
    })();
    let placed = match order {
        Ok(o) => {
            super::accounts::customer_order(
                Extract(state.clone()),
                by,
                ApiPath(id.clone()),
                json_body(o),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match placed {
        Ok(response) => {
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let placed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n = placed["id"]
                .as_u64()
                .or_else(|| placed["order"]["id"].as_u64())
                .unwrap_or(0);
            Ok(redirect(&format!("{here}?done=order&n={n}")))
        }
        Err(e) if e.status.is_client_error() => {
            purchase_page(
                &state,
                &v,
                id,
                &refusal("orders", e),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

/// `POST /console/accounts/{id}/auto-renew` (`product`, `order`, `auto_renew`).
pub async fn set_auto_renew(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    by: By,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = match form_of(&caller, &headers, &body, SMALL_FORM).await {
        Ok(f) => f,
        Err(refused) => return Ok(*refused),
    };
    let here = format!("/console/accounts/{id}/purchase");
    let v = viewer(&state, &caller, &headers, &here);
    let on = field(&fields, "auto_renew") == Some("true");
    let done = match number(&fields, "order") {
        Ok(order) => {
            let path = ApiPath((id.clone(), order as i64));
            let body = json_body(json!({"auto_renew": on}));
            if field(&fields, "product") == Some("log_storage") {
                super::log_storage::set_auto_renew(Extract(state.clone()), by, path, body)
                    .await
                    .map(|_| ())
            } else {
                super::accounts::set_auto_renew(Extract(state.clone()), by, path, body)
                    .await
                    .map(|_| ())
            }
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => Ok(redirect(&format!("{here}?done=auto-renew"))),
        Err(e) if e.status.is_client_error() => {
            purchase_page(
                &state,
                &v,
                id,
                &refusal("auto-renew", e),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

async fn images_page(
    state: &Arc<AppState>,
    v: &Viewer,
    id: String,
    q: &DoneQuery,
    flash: &Flash,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let filter = match q.status.as_deref() {
        Some("unauthorized") => "unauthorized",
        Some("authorized") => "authorized",
        _ => "all",
    };
    let authorized = match filter {
        "unauthorized" => Some(false),
        "authorized" => Some(true),
        _ => None,
    };
    let (now, after, account) = (state.clock.now(), q.after, id.clone());
    let (auth, listed, receipts) = blocking(&state.reader, move |s| {
        Ok((
            s.images().authorizations(&account, now)?,
            s.images().inventory(&account, authorized, after, 200)?,
            s.images().receipts(&account, None, 100)?,
        ))
    })
    .await?;
    let images = pages::Images {
        account: id,
        available: auth.available,
        auto_authorize: auth.auto_authorize,
        max_daily: auth.max_daily,
        filter: filter.into(),
        next_cursor: listed.next.map(|n| n.to_string()),
        images: listed.items,
        receipts: receipts.items,
    };
    Ok(page(status, pages::images(v, &images, flash)))
}

/// `GET /console/accounts/{id}/images?status=all|unauthorized|authorized&after=`.
pub async fn images(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DoneQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let ok = match q.done.as_deref() {
        Some("authorized") => {
            let now = state.clock.now();
            let account = id.clone();
            let available = blocking(&state.reader, move |s| {
                Ok(s.images().authorizations(&account, now)?.available)
            })
            .await?;
            Some(v.tf(
                "images.done",
                &[
                    ("n", &v.lang.int(q.n.unwrap_or(0))),
                    ("available", &v.lang.int(available)),
                ],
            ))
        }
        Some("auto") => Some(v.t("images.auto_saved").to_string()),
        _ => None,
    };
    images_page(
        &state,
        &v,
        id,
        &q,
        &Flash { ok, error: None },
        StatusCode::OK,
    )
    .await
}

fn no_query() -> DoneQuery {
    DoneQuery {
        done: None,
        n: None,
        status: None,
        after: None,
        month: None,
    }
}

/// `POST /console/accounts/{id}/images/authorize` (`image` repeated): the
/// confirmation first (how many it consumes, how many remain), then with
/// `confirm=yes` through `POST …/image-authorizations`.
pub async fn authorize_images(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    by: By,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = match form_of(&caller, &headers, &body, BATCH_FORM).await {
        Ok(f) => f,
        Err(refused) => return Ok(*refused),
    };
    let here = format!("/console/accounts/{id}/images");
    let v = viewer(&state, &caller, &headers, &here);
    let ids: Vec<String> = fields
        .iter()
        .filter(|(n, _)| n == "image")
        .map(|(_, v)| v.clone())
        .take(shared::images::MAX_BATCH_IDS + 1)
        .collect();
    if ids.is_empty() {
        let flash = Flash {
            ok: None,
            error: Some(pages::Refusal {
                form: "authorize",
                field: "image_ids".into(),
                code: "",
                message: v.t("images.none_chosen").into(),
            }),
        };
        return images_page(
            &state,
            &v,
            id,
            &no_query(),
            &flash,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    if field(&fields, "confirm") != Some("yes") {
        let (now, account) = (state.clock.now(), id.clone());
        let available = blocking(&state.reader, move |s| {
            Ok(s.images().authorizations(&account, now)?.available)
        })
        .await?;
        return Ok(page(
            StatusCode::OK,
            pages::images_confirm(&v, &id, &ids, available),
        ));
    }
    let n = ids.len();
    match super::images::authorize(
        Extract(state.clone()),
        by,
        ApiPath(id.clone()),
        json_body(json!({"image_ids": ids})),
    )
    .await
    {
        Ok(_) => Ok(redirect(&format!("{here}?done=authorized&n={n}"))),
        Err(e) if e.status.is_client_error() => {
            images_page(
                &state,
                &v,
                id,
                &no_query(),
                &refusal("authorize", e),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

/// `POST /console/accounts/{id}/images/auto` (`auto_authorize`, `max_daily`).
pub async fn set_auto(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    by: By,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = match form_of(&caller, &headers, &body, SMALL_FORM).await {
        Ok(f) => f,
        Err(refused) => return Ok(*refused),
    };
    let here = format!("/console/accounts/{id}/images");
    let v = viewer(&state, &caller, &headers, &here);
    let on = field(&fields, "auto_authorize") == Some("true");
    let done = match number(&fields, "max_daily") {
        Ok(max) => super::images::set_auto(
            Extract(state.clone()),
            by,
            ApiPath(id.clone()),
            json_body(json!({"auto_authorize": on, "max_daily": max})),
        )
        .await
        .map(|_| ()),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => Ok(redirect(&format!("{here}?done=auto"))),
        Err(e) if e.status.is_client_error() => {
            images_page(
                &state,
                &v,
                id,
                &no_query(),
                &refusal("auto", e),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

/// The most nodes the usage page lists.
const NODES_LISTED: usize = 1_000;

/// `GET /console/accounts/{id}/usage?month=YYYY-MM`.
pub async fn usage(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DoneQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let (config, now) = (state.config.billing.clone(), state.clock.now());
    let today = config.zone.day_of(now);
    let month = match q.month.as_deref() {
        Some(m) => super::input::month("month", m)?,
        None => today.with_day(1).expect("a first day"),
    };
    let account = id.clone();
    let (days, nodes, report) = blocking(&state.reader, move |s| {
        let days = crate::reports::usage::month_of_cores(s, &config, &account, month, now)?;
        let acct = s
            .accounts()
            .account(&account)?
            .ok_or_else(|| crate::store::StoreError::UnknownAccount(account.clone()))?;
        let since = (now - crate::reports::usage::GONE_AFTER).timestamp_millis();
        let nodes = s.reads().nodes_seen(&acct, since, NODES_LISTED)?;
        // Today's completeness (hours seen, missing seqs) of each node.
        let report = crate::reports::daily_report(s, &config, &account, today, now).ok();
        Ok((days, nodes, report))
    })
    .await?;
    let (silent_from, silent_to) = crate::reports::usage::silent_window(&state.config.billing, now);
    let today_of: std::collections::HashMap<(&str, &str), &crate::reports::NodeLine> = report
        .iter()
        .flat_map(|r| &r.nodes)
        .map(|n| ((n.cluster.as_str(), n.node.as_str()), n))
        .collect();
    let nodes: Vec<pages::NodeNow> = nodes
        .iter()
        .map(|n| {
            let seen = crate::store::from_ms(n.last_seen_ms);
            let line = today_of.get(&(n.cluster.as_str(), n.node.as_str()));
            pages::NodeNow {
                cluster: n.cluster.clone(),
                node: n.node.clone(),
                last_seen: seen,
                silent: (silent_from..silent_to).contains(&n.last_seen_ms),
                hours_today: line.map_or(0, |l| l.hours_observed),
                missing_seqs_today: line.map_or(0, |l| l.missing_seqs),
            }
        })
        .collect();
    let usage = pages::Usage {
        account: id,
        month,
        days,
        clusters: report.map(|r| r.clusters).unwrap_or_default(),
        nodes,
    };
    Ok(page(StatusCode::OK, pages::usage(&v, &usage)))
}

/// `GET /console/accounts/{id}/log-storage`.
pub async fn log_storage(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let (zone, now, account) = (state.config.billing.zone, state.clock.now(), id.clone());
    let view = blocking(&state.reader, move |s| {
        Ok(
            serde_json::to_value(s.log_storage().view(&account, &zone, now)?)
                .unwrap_or(Value::Null),
        )
    })
    .await?;
    Ok(page(StatusCode::OK, pages::log_storage(&v, &id, &view)))
}

/// `GET /console/accounts/{id}/bills`: the lines, newest first, and a
/// statement for each month since the account began (three years at most).
pub async fn bills(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let account = id.clone();
    let lines = blocking(&state.reader, move |s| {
        s.reads().bill_lines(Some(&account), None)
    })
    .await?;
    let zone = state.config.billing.zone;
    let this_month = zone
        .day_of(state.clock.now())
        .with_day(1)
        .expect("a first day");
    // A statement for each month since the first billed day.
    let first = lines
        .iter()
        .map(|l| l.day)
        .min()
        .unwrap_or(this_month)
        .with_day(1)
        .expect("a first day");
    let months: Vec<NaiveDate> = (0..36)
        .map(|k| this_month - Months::new(k))
        .take_while(|m| *m >= first)
        .collect();
    let mut lines = lines;
    lines.sort_by_key(|l| std::cmp::Reverse((l.day, l.seq)));
    lines.truncate(400);
    Ok(page(StatusCode::OK, pages::bills(&v, &id, &lines, &months)))
}

/// `GET /console/accounts/{id}/statements/{month}?format=`: the statement, as the API serves it.
pub async fn statement(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(params): ApiPath<(String, String)>,
    query: ApiQuery<super::statements::FormatQuery>,
) -> Result<Response, ApiError> {
    super::statements::monthly(Extract(state), ApiPath(params), query).await
}

/// `GET /console/accounts/{id}/reports/{day}`: the day's report page.
pub async fn report(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath((id, day)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let day = super::input::day("day", &day)?;
    super::admin::report_response(&state, id, day, Some("html".into())).await
}

/// `GET /console/accounts/{id}/notices`.
pub async fn notices(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let first = super::page::Page::parse(Some("200"), None)?;
    let (listed, _) = super::accounts::notices_page(&state, id.clone(), first).await?;
    Ok(page(StatusCode::OK, pages::notices(&v, &id, &listed)))
}

/// Entries the changes page shows: the newest.
const CHANGES_SHOWN: u32 = 200;

/// `GET /console/accounts/{id}/changes`: who changed what of the account,
/// newest first (the whole log: `GET /v1/accounts/{id}/audit`).
pub async fn changes(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let account = id.clone();
    let mut entries = blocking(&state.reader, move |s| {
        s.audit().latest(&account, CHANGES_SHOWN)
    })
    .await?;
    if caller.role != "admin" {
        entries = entries
            .into_iter()
            .map(super::audit::for_customer)
            .collect();
    }
    Ok(page(StatusCode::OK, pages::changes(&v, &id, &entries)))
}

#[derive(serde::Deserialize)]
pub struct AccountsQuery {
    q: Option<String>,
    flag: Option<String>,
    sort: Option<String>,
    page: Option<usize>,
}

/// Rows a page of the accounts list shows.
const ACCOUNTS_PER_PAGE: usize = 50;

/// The page numbers the accounts list takes (its INPUTS domain).
pub const MAX_PAGE: usize = 1_000_000;

/// The columns the accounts list sorts by.
pub const SORTS: &[&str] = &["id", "state", "licensed", "yesterday", "amount", "month"];

/// `GET /console/accounts?q=&flag=&sort=&page=`: every account, filtered,
/// sorted and paged; the service's panel.
pub async fn accounts(
    Extract(state): Extract<Arc<AppState>>,
    Extension(caller): Extension<ConsoleCaller>,
    ApiQuery(q): ApiQuery<AccountsQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = viewer(&state, &caller, &headers, &here(&uri));
    let (zone, now) = (state.config.billing.zone, state.clock.now());
    let today = zone.day_of(now);
    let yesterday = shared::zone::prev_day(today);
    let month_first = today.with_day(1).expect("a first day");
    let now_ms = now.timestamp_millis();
    let filter = match q.q {
        Some(text) if text.chars().count() > 64 => {
            return Err(ApiError::unprocessable(
                "q",
                "q must be at most 64 characters",
            ))
        }
        text => text.unwrap_or_default(),
    };
    for (field, value, allowed) in [
        ("flag", &q.flag, &pages::FLAGS[..]),
        ("sort", &q.sort, SORTS),
    ] {
        if let Some(v) = value {
            super::input::one_of(field, v, allowed)?;
        }
    }
    let flag = q.flag.unwrap_or_default();
    let sort = q.sort.unwrap_or_else(|| "id".into());
    let silent = crate::reports::usage::silent_window(&state.config.billing, now);
    let (facts, backlog, last_run) = blocking(&state.reader, move |s| {
        Ok((
            s.reads()
                .account_facts(now_ms, (yesterday, month_first), silent)?,
            s.reads().backlog()?,
            s.billing().last_billing_run()?,
        ))
    })
    .await?;
    let week_ms = TimeDelta::days(7).num_milliseconds();
    let mut rows: Vec<pages::AccountRow> = facts
        .into_iter()
        .filter(|f| filter.is_empty() || f.id.contains(filter.as_str()))
        .map(|f| {
            let mut flags = Vec::new();
            if f.yesterday.is_some_and(|(_, excess)| excess > 0) {
                flags.push("licence_short");
            }
            if f.licensed_until_ms
                .is_some_and(|end| end > now_ms && end - now_ms <= week_ms)
            {
                flags.push("expiring");
            }
            match f.state.as_str() {
                "grace" => flags.push("grace"),
                "stopped" => flags.push("stopped"),
                _ => {}
            }
            if f.silent_nodes > 0 {
                flags.push("silent");
            }
            let (bought, available) = f.authorizations;
            if bought > 0 && available * 100 <= bought * shared::images::LOW_PERCENT {
                flags.push("authorizations_low");
            }
            pages::AccountRow {
                id: f.id,
                state: f.state,
                licensed_cores: f.licensed_cores,
                yesterday_cores: f.yesterday.map(|y| y.0),
                yesterday_amount: f.yesterday_amount,
                month_to_date: f.month_to_date,
                flags,
            }
        })
        .filter(|r| flag.is_empty() || r.flags.contains(&flag.as_str()))
        .collect();
    match sort.as_str() {
        "state" => rows.sort_by(|a, b| a.state.cmp(&b.state).then(a.id.cmp(&b.id))),
        "licensed" => rows.sort_by(|a, b| {
            b.licensed_cores
                .cmp(&a.licensed_cores)
                .then(a.id.cmp(&b.id))
        }),
        "yesterday" => rows.sort_by(|a, b| {
            b.yesterday_cores
                .cmp(&a.yesterday_cores)
                .then(a.id.cmp(&b.id))
        }),
        "amount" => rows.sort_by(|a, b| {
            b.yesterday_amount
                .cmp(&a.yesterday_amount)
                .then(a.id.cmp(&b.id))
        }),
        "month" => rows.sort_by(|a, b| b.month_to_date.cmp(&a.month_to_date).then(a.id.cmp(&b.id))),
        _ => {}
    }
    let total = rows.len();
    let pages_count = total.div_ceil(ACCOUNTS_PER_PAGE);
    let at = match q.page {
        Some(p) if p == 0 || p > MAX_PAGE => {
            return Err(ApiError::unprocessable(
                "page",
                format!("page must be from 1 to {MAX_PAGE}, got {p}"),
            ))
        }
        p => p.unwrap_or(1).min(pages_count.max(1)),
    };
    let shown: Vec<pages::AccountRow> = rows
        .into_iter()
        .skip((at - 1) * ACCOUNTS_PER_PAGE)
        .take(ACCOUNTS_PER_PAGE)
        .collect();
    let view = pages::Accounts {
        rows: shown,
        total,
        page: at,
        pages: pages_count,
        filter,
        flag,
        sort,
        last_run,
        outbox_pending: backlog.outbox_pending,
        notices_pending: backlog.notices_pending,
        // Counted by this replica's ingest, not read from the samples
        // table: a count over it would scan millions of rows.
        samples_accepted: state
            .metrics
            .ingest_samples
            .get_or_create(&crate::metrics::SampleLabels {
                result: "accepted".into(),
                reason: String::new(),
            })
            .get(),
    };
    Ok(page(StatusCode::OK, pages::accounts(&v, &view)))
}
