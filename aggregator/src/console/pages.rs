//! Each page of the console: what it shows (a view the server fills from
//! the store) and its template. Forms appear only where the viewer may act
//! (`Viewer::acts_on`); each carries the session's CSRF token and labels
//! every field.

// Chart geometry is pixels, not money: floats are the right tool here.
#![allow(clippy::float_arithmetic)]

use chrono::{DateTime, NaiveDate, Utc};
use maud::{html, Markup};
use rust_decimal::Decimal;
use serde_json::Value;

use super::{bare, frame, Lang, Viewer};

fn csrf(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

/// A value of a JSON view as text.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn state_name(v: &Viewer, state: &str) -> &'static str {
    match state {
        "trial" => v.t("state.trial"),
        "active" => v.t("state.active"),
        "grace" => v.t("state.grace"),
        "stopped" => v.t("state.stopped"),
        "deleted" => v.t("state.deleted"),
        "unlicensed" => v.t("state.unlicensed"),
        _ => v.t("state.none"),
    }
}

/// A message above a page's content: what was just done, or why not.
#[derive(Debug, Clone, Default)]
pub struct Flash {
    pub ok: Option<String>,
    pub error: Option<Refusal>,
}

/// A form's action, refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The form (its action's last part: `cap`, `orders`, `authorize`,
    /// `auto`, `auto-renew`).
    pub form: &'static str,
    pub field: String,
    /// The API's error code; empty when `message` is the console's own,
    /// already in the page's language.
    pub code: &'static str,
    /// Why, as the API says it (in English).
    pub message: String,
}

/// Why something was refused, in the page's language: the catalogue's
/// sentence for the form's code (or the code's), with the API's own
/// precise message after it, marked as English; the API's message alone in
/// English or where the catalogue has no sentence.
pub fn why(lang: Lang, form: &str, code: &str, message: &str) -> Markup {
    let said = (lang != Lang::En && !code.is_empty())
        .then(|| {
            lang.lookup(&format!("error.{form}.{code}"))
                .or_else(|| lang.lookup(&format!("error.{code}")))
        })
        .flatten();
    match (said, code.is_empty()) {
        (Some(text), _) => html! { (text) " " span lang="en" { "(" (message) ")" } },
        (None, true) => html! { (message) },
        (None, false) => html! { span lang="en" { (message) } },
    }
}

/// The fields a form shows its refusal next to; a refusal naming another
/// field (the account, an order) shows above the page.
const PLACED: &[(&str, &str)] = &[
    ("cap", "cores"),
    ("orders", "quantity"),
    ("orders", "cores"),
    ("orders", "gb"),
    ("orders", "months"),
    ("orders", "pay_from_balance"),
    ("orders", "product"),
    ("authorize", "image_ids"),
    ("auto", "max_daily"),
];

fn flash(v: &Viewer, f: &Flash) -> Markup {
    html! {
        @if let Some(ok) = &f.ok { p.ok role="status" { (ok) } }
        @if let Some(r) = &f.error {
            @if !PLACED.contains(&(r.form, r.field.as_str())) {
                p.error role="alert" { (why(v.lang, r.form, r.code, &r.message)) }
            }
        }
    }
}

/// The error next to `field` of `form`, if it is the one refused.
fn field_error(v: &Viewer, f: &Flash, form: &str, field: &str, id: &str) -> Markup {
    html! {
        @if let Some(r) = &f.error {
            @if r.form == form && r.field == field {
                p.error id=(id) role="alert" { (why(v.lang, r.form, r.code, &r.message)) }
            }
        }
    }
}

pub fn login(lang: Lang, form_csrf: &str, message: Option<&str>, next: &str) -> String {
    bare(
        lang,
        lang.t("login.title"),
        html! {
            @if let Some(m) = message { p.error role="alert" { (m) } }
            form method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(form_csrf);
                input type="hidden" name="next" value=(next);
                label for="token" { (lang.t("login.token")) }
                input #token type="password" name="token" autocomplete="current-password" required aria-describedby="token-hint" size="72";
                p.note #token-hint { (lang.t("login.token_hint")) }
                button type="submit" { (lang.t("login.submit")) }
            }
            p { @for l in Lang::ALL { a lang=(l.code()) href={ "/console/lang?to=" (l.code()) "&next=/console/login" } { (l.name()) } " " } }
        },
    )
}

pub fn refused(lang: Lang, title: &str, message: Markup) -> String {
    bare(
        lang,
        title,
        html! {
            p role="alert" { (message) }
            p { a href="/console" { (lang.t("refused.back")) } }
        },
    )
}

/// The overview of one account.
#[derive(Debug, Clone)]
pub struct Overview {
    pub account: String,
    /// The account view as `GET /v1/admin/accounts/{id}` answers it.
    pub view: Value,
    pub licensed_cores: u64,
    pub total_cores_now: Option<u64>,
    /// Total cores above licensed cores now: by how many, since when.
    pub short: Option<(u64, DateTime<Utc>)>,
    /// Today so far (provisional).
    pub today: Option<Today>,
}

#[derive(Debug, Clone)]
pub struct Today {
    pub excess_core_hours: u64,
    pub billable_cores: Decimal,
    pub amount: Decimal,
}

pub fn overview(v: &Viewer, o: &Overview) -> String {
    let id = o.account.as_str();
    let products = &o.view["products"];
    let next = |p: &Value| -> String {
        match p["next_change"].as_object() {
            Some(n) => v.tf(
                "overview.next_change_at",
                &[
                    (
                        "state",
                        state_name(v, n.get("state").and_then(Value::as_str).unwrap_or("")),
                    ),
                    (
                        "at",
                        &n.get("at")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                            .map(|at| v.instant(at))
                            .unwrap_or_default(),
                    ),
                ],
            ),
            None => v.t("overview.no_change").to_string(),
        }
    };
    let body = html! {
        @if let Some((short, since)) = o.short {
            section.prompt #licence-short role="alert" aria-labelledby="short-title" {
                h2 #short-title { (v.t("overview.short.title")) }
                p { (v.tf("overview.short.body", &[
                    ("total", &v.lang.int(o.total_cores_now.unwrap_or(0))),
                    ("licensed", &v.lang.int(o.licensed_cores)),
                    ("short", &v.lang.int(short)),
                    ("since", &v.instant(since)),
                ])) }
                @if v.acts_on(id) {
                    p { a href={ "/console/accounts/" (id) "/purchase#order" } { (v.t("overview.short.buy")) } }
                }
            }
        }
        h2 { (v.t("overview.products")) }
        table #products {
            thead { tr { th scope="col" { (v.t("overview.product")) } th scope="col" { (v.t("overview.state")) } th scope="col" { (v.t("overview.next_change")) } } }
            tbody {
                tr {
                    th scope="row" { (v.t("product.pro")) }
                    td { (state_name(v, products["pro"]["state"].as_str().unwrap_or(""))) }
                    td { (next(&products["pro"])) }
                }
                tr {
                    th scope="row" { (v.t("product.image_scan")) }
                    td { (v.tf("overview.available", &[("n", &v.lang.int(products["image_scan"]["available"].as_u64().unwrap_or(0)))])) }
                    td { "—" }
                }
                tr {
                    th scope="row" { (v.t("product.log_storage")) }
                    td { (state_name(v, products["log_storage"]["state"].as_str().unwrap_or(""))) }
                    td { (next(&products["log_storage"])) }
                }
            }
        }
        table.facts {
            tr { th scope="row" { (v.t("overview.licensed_cores")) } td.n #licensed { (v.lang.int(o.licensed_cores)) } }
            tr { th scope="row" { (v.t("overview.total_cores_now")) } td.n { (o.total_cores_now.map(|n| v.lang.int(n)).unwrap_or_else(|| "—".into())) } }
            tr { th scope="row" { (v.t("overview.cap")) } td.n #cap { (text(&o.view["cap_cores"])) } }
        }
        @if let Some(t) = &o.today {
            h2 { (v.t("overview.today")) }
            p.note { (v.t("overview.today_note")) }
            table #today {
                tr { th scope="row" { (v.t("overview.excess_core_hours")) } td.n { (v.lang.int(t.excess_core_hours)) } }
                tr { th scope="row" { (v.t("overview.billable_cores")) } td.n { (v.lang.decimal(t.billable_cores)) } }
                tr { th scope="row" { (v.t("overview.amount")) } td.n { (v.money(t.amount)) } }
            }
        }
    };
    frame(
        v,
        Some(id),
        &v.tf("overview.title", &[("account", id)]),
        body,
    )
}

/// The purchase page.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub account: String,
    pub cap_cores: u64,
    /// Pro orders, as the account view lists them.
    pub orders: Value,
    /// Log storage orders, as its view lists them.
    pub log_orders: Value,
    pub balance: Decimal,
    /// The ledger, newest first.
    pub ledger: Vec<crate::store::BalanceEntry>,
}

pub fn purchase(v: &Viewer, p: &Purchase, f: &Flash) -> String {
    let id = p.account.as_str();
    let acts = v.acts_on(id);
    let orders: Vec<(&str, &Value)> = p
        .orders
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| ("pro", o))
        .chain(
            p.log_orders
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| ("log_storage", o)),
        )
        .collect();
    let body = html! {
        (flash(v, f))
        h2 #cap-title { (v.t("purchase.cap")) }
        @if acts {
            form method="post" action={ "/console/accounts/" (id) "/cap" } aria-labelledby="cap-title" {
                (csrf(v))
                label for="cap" { (v.t("purchase.cap_label")) }
                input #cap type="number" name="cores" min="500" max="1000000" step="1" required value=(p.cap_cores)
                    aria-describedby="cap-error" aria-invalid=(f.error.as_ref().is_some_and(|e| e.form == "cap"));
                (field_error(v, f, "cap", "cores", "cap-error"))
                button type="submit" { (v.t("purchase.cap_submit")) }
            }
        } @else {
            p #cap-value { (v.lang.int(p.cap_cores)) }
        }
        h2 #order { (v.t("purchase.order")) }
        @if acts {
            form method="post" action={ "/console/accounts/" (id) "/orders" } {
                (csrf(v))
                label for="product" { (v.t("purchase.order_product")) }
                select #product name="product" {
                    option value="pro" { (v.t("product.pro")) }
                    option value="image_scan" { (v.t("product.image_scan")) }
                    option value="log_storage" { (v.t("product.log_storage")) }
                }
                label for="quantity" { (v.t("purchase.order_quantity")) }
                input #quantity type="number" name="quantity" min="1" max="1000000" required aria-describedby="quantity-error";
                (field_error(v, f, "orders", "quantity", "quantity-error"))
                (field_error(v, f, "orders", "cores", "quantity-error"))
                (field_error(v, f, "orders", "gb", "quantity-error"))
                label for="months" { (v.t("purchase.order_months")) }
                input #months type="number" name="months" min="1" max="120" value="12" aria-describedby="months-error";
                (field_error(v, f, "orders", "months", "months-error"))
                (field_error(v, f, "orders", "pay_from_balance", "months-error"))
                (field_error(v, f, "orders", "product", "months-error"))
                button type="submit" { (v.t("purchase.order_submit")) }
            }
        }
        h2 { (v.t("purchase.orders")) }
        table #orders {
            thead { tr {
                th scope="col" { (v.t("purchase.order_product")) } th scope="col" { (v.t("purchase.kind")) }
                th scope="col" class="n" { (v.t("purchase.quantity")) } th scope="col" { (v.t("purchase.term")) }
                th scope="col" class="n" { (v.t("purchase.price")) } th scope="col" { (v.t("purchase.paid_from")) }
                th scope="col" { (v.t("purchase.auto_renew")) }
            } }
            tbody {
                @for (product, o) in &orders {
                    @let on = o["auto_renew"].as_bool().unwrap_or(false);
                    tr {
                        td { (v.t(if *product == "pro" { "product.pro" } else { "product.log_storage" })) " " (text(&o["id"])) }
                        td { (text(&o["kind"])) }
                        td.n { (text(if *product == "pro" { &o["cores"] } else { &o["gb"] })) }
                        td { (text(&o["start_day"])) " – " (text(&o["end_day"])) }
                        td.n { (o["price"].as_str().and_then(|s| s.parse::<Decimal>().ok()).map(|d| v.money(d)).unwrap_or_default()) }
                        td { (text(&o["paid_from"])) }
                        td {
                            (if on { "✓ " } else { "" })
                            @if acts {
                                form.inline method="post" action={ "/console/accounts/" (id) "/auto-renew" } {
                                    (csrf(v))
                                    input type="hidden" name="product" value=(product);
                                    input type="hidden" name="order" value=(text(&o["id"]));
                                    input type="hidden" name="auto_renew" value=(!on);
                                    button type="submit" aria-label={ (v.t("purchase.auto_renew")) " " (text(&o["id"])) } {
                                        (v.t(if on { "purchase.turn_off" } else { "purchase.turn_on" }))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 #balance { (v.tf("purchase.balance", &[("balance", &v.money(p.balance))])) }
        h2 { (v.t("purchase.ledger")) }
        table #ledger {
            thead { tr {
                th scope="col" { (v.t("purchase.when")) } th scope="col" { (v.t("purchase.entry")) }
                th scope="col" { (v.t("purchase.reference")) } th scope="col" class="n" { (v.t("overview.amount")) }
                th scope="col" class="n" { (v.t("purchase.balance_after")) }
            } }
            tbody {
                @for e in &p.ledger {
                    tr {
                        td { (v.instant(e.at)) } td { (e.kind) } td { (e.reference.as_deref().unwrap_or("")) }
                        td.n { (v.money(if e.kind == "debit" { -e.amount } else { e.amount })) }
                        td.n { (v.money(e.balance_after)) }
                    }
                }
            }
        }
    };
    frame(
        v,
        Some(id),
        &v.tf("purchase.title", &[("account", id)]),
        body,
    )
}

/// The images page.
#[derive(Debug, Clone)]
pub struct Images {
    pub account: String,
    pub available: u64,
    pub auto_authorize: bool,
    pub max_daily: u64,
    /// `all`, `unauthorized` or `authorized`.
    pub filter: String,
    pub images: Vec<crate::store::InventoryImage>,
    /// The next page's query, if there is one.
    pub next_cursor: Option<String>,
    /// The first receipts: each consumption and refused automatic attempt.
    pub receipts: Vec<crate::store::Receipt>,
}

pub fn images(v: &Viewer, i: &Images, f: &Flash) -> String {
    let id = i.account.as_str();
    let acts = v.acts_on(id);
    let body = html! {
        (flash(v, f))
        p #available { (v.tf("images.available", &[("n", &v.lang.int(i.available))])) }
        form method="get" action={ "/console/accounts/" (id) "/images" } {
            label for="status" { (v.t("images.filter")) }
            select #status name="status" {
                @for (value, key) in [("all", "images.filter_all"), ("unauthorized", "images.filter_unauthorized"), ("authorized", "images.filter_authorized")] {
                    option value=(value) selected[i.filter == value] { (v.t(key)) }
                }
            }
            button type="submit" { (v.t("images.filter_submit")) }
        }
        (field_error(v, f, "authorize", "image_ids", "images-error"))
        @let inventory = html! {
            table #inventory {
                thead { tr {
                    @if acts { th scope="col" { (v.t("images.choose")) } }
                    th scope="col" { (v.t("images.image")) } th scope="col" { (v.t("images.tags")) }
                    th scope="col" { (v.t("images.first_seen")) } th scope="col" { (v.t("images.status")) }
                } }
                tbody {
                    @for (n, img) in i.images.iter().enumerate() {
                        tr {
                            @if acts {
                                td {
                                    @if !img.authorized {
                                        input type="checkbox" name="image" value=(img.image_id) id={ "img-" (n) } aria-label={ (v.t("images.choose")) " " (img.image_id) };
                                    }
                                }
                            }
                            td { code { (img.image_id.get(..19).unwrap_or(&img.image_id)) "…" } }
                            td { (img.repo_tags.join(", ")) }
                            td { (v.instant(img.first_seen)) }
                            td { (v.t(if img.authorized { "images.authorized" } else { "images.unauthorized" })) }
                        }
                    }
                }
            }
        };
        @if acts {
            form #authorize method="post" action={ "/console/accounts/" (id) "/images/authorize" } {
                (csrf(v))
                (inventory)
                button type="submit" { (v.t("images.authorize")) }
            }
        } @else {
            (inventory)
        }
        @if let Some(cursor) = &i.next_cursor {
            p { a href={ "/console/accounts/" (id) "/images?status=" (i.filter) "&after=" (cursor) } { (v.t("images.more")) } }
        }
        h2 #auto-title { (v.t("images.auto")) }
        @if acts {
            form method="post" action={ "/console/accounts/" (id) "/images/auto" } aria-labelledby="auto-title" {
                (csrf(v))
                label for="auto" {
                    input #auto type="checkbox" name="auto_authorize" value="true" checked[i.auto_authorize];
                    " " (v.t("images.auto_label"))
                }
                label for="max_daily" { (v.t("images.max_daily")) }
                input #max_daily type="number" name="max_daily" min="0" max="100000" value=(i.max_daily) aria-describedby="max-daily-error";
                (field_error(v, f, "auto", "max_daily", "max-daily-error"))
                button type="submit" { (v.t("images.auto_submit")) }
            }
        } @else {
            p { (v.t("images.auto_label")) ": " (if i.auto_authorize { "✓" } else { "—" }) }
        }
        h2 { (v.t("images.receipts")) }
        table #receipts {
            thead { tr { th scope="col" { (v.t("purchase.when")) } th scope="col" { (v.t("images.image")) } th scope="col" { (v.t("images.how")) } } }
            tbody {
                @for r in &i.receipts {
                    tr { td { (v.instant(r.at)) } td { code { (r.image_id.get(..19).unwrap_or(&r.image_id)) "…" } } td { (r.how) } }
                }
            }
        }
    };
    frame(v, Some(id), &v.tf("images.title", &[("account", id)]), body)
}

/// The confirmation of a batch: how many it consumes, how many remain.
pub fn images_confirm(v: &Viewer, account: &str, ids: &[String], available: u64) -> String {
    let n = ids.len() as u64;
    let body = html! {
        @if n > available {
            p.error role="alert" { (v.tf("images.confirm_short", &[("available", &v.lang.int(available))])) }
        } @else {
            p #consumes { (v.tf("images.confirm_body", &[("n", &v.lang.int(n)), ("remaining", &v.lang.int(available - n))])) }
            form method="post" action={ "/console/accounts/" (account) "/images/authorize" } {
                (csrf(v))
                input type="hidden" name="confirm" value="yes";
                @for image in ids { input type="hidden" name="image" value=(image); }
                ul { @for image in ids { li { code { (image) } } } }
                button #confirm type="submit" { (v.t("images.confirm")) }
            }
        }
        p { a href={ "/console/accounts/" (account) "/images" } { (v.t("images.cancel")) } }
    };
    frame(
        v,
        Some(account),
        &v.tf("images.confirm_title", &[("n", &v.lang.int(n))]),
        body,
    )
}

pub use crate::reports::usage::DayOfCores as UsageDay;

/// A node as the usage page lists it: when it was last seen, and today's
/// completeness.
#[derive(Debug, Clone)]
pub struct NodeNow {
    pub cluster: String,
    pub node: String,
    pub last_seen: chrono::DateTime<chrono::Utc>,
    /// No sample for as long as gap bridging reaches.
    pub silent: bool,
    pub hours_today: u32,
    pub missing_seqs_today: u64,
}

#[derive(Debug, Clone)]
pub struct Usage {
    pub account: String,
    pub month: NaiveDate,
    pub days: Vec<UsageDay>,
    /// Nodes seen in the last seven days, the most recently seen first.
    pub nodes: Vec<NodeNow>,
    /// Today's share of the excess by cluster.
    pub clusters: Vec<crate::reports::ClusterShare>,
}

fn usage_chart(v: &Viewer, u: &Usage) -> Markup {
    let (w, h, left, bottom, top) = (900.0_f64, 260.0_f64, 56.0_f64, 30.0_f64, 12.0_f64);
    let max = u
        .days
        .iter()
        .map(|d| d.peak_cores.max(d.licensed_cores + d.cap_cores))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let n = u.days.len().max(1) as f64;
    let step = (w - left - 10.0) / n;
    let x = |i: usize| left + step * (i as f64 + 0.5);
    let y = |c: f64| top + (h - top - bottom) * (1.0 - c / max);
    let line = |value: &dyn Fn(&UsageDay) -> f64| -> String {
        u.days
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{:.1},{:.1}", x(i), y(value(d))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let avg = |d: &UsageDay| d.average_cores.to_string().parse::<f64>().unwrap_or(0.0);
    html! {
        svg #usage-chart width=(w) height=(h) viewBox={ "0 0 " (w) " " (h) } role="img" aria-label=(v.t("usage.chart")) {
            title { (v.t("usage.chart")) }
            line.axis x1=(left) x2=(left) y1=(top) y2=(h - bottom) {}
            line.axis x1=(left) x2=(w - 10.0) y1=(h - bottom) y2=(h - bottom) {}
            text x=(left - 4.0) y=(top + 4.0) text-anchor="end" { (v.lang.int(max as u64)) }
            text x=(left - 4.0) y=(h - bottom) text-anchor="end" { "0" }
            polyline.capl points=(line(&|d| (d.licensed_cores + d.cap_cores) as f64)) {}
            polyline.lic points=(line(&|d| d.licensed_cores as f64)) {}
            polyline.peak points=(line(&|d| d.peak_cores as f64)) {}
            polyline.avg points=(line(&avg)) {}
            @for (i, d) in u.days.iter().enumerate() {
                a href={ "/console/accounts/" (u.account) "/reports/" (d.day) } {
                    rect x=(x(i) - step / 2.0) y=(top) width=(step) height=(h - top - bottom) fill="transparent" {
                        title { (v.lang.day(d.day)) }
                    }
                }
                @if i % 5 == 0 { text x=(x(i)) y=(h - bottom + 14.0) text-anchor="middle" { (d.day.format("%d")) } }
            }
        }
        p.note {
            span style="color:#0b4f9c" { "━ " (v.t("usage.average")) } " · "
            span style="color:#6b3fa0" { "┅ " (v.t("usage.peak")) } " · "
            span style="color:#1b6e2b" { "━ " (v.t("usage.licensed")) } " · "
            span style="color:#a4000f" { "┈ " (v.t("usage.licensed_cap")) }
        }
    }
}

pub fn usage(v: &Viewer, u: &Usage) -> String {
    let id = u.account.as_str();
    let prev = u.month - chrono::Months::new(1);
    let next = u.month + chrono::Months::new(1);
    let body = html! {
        p {
            a href={ "/console/accounts/" (id) "/usage?month=" (prev.format("%Y-%m")) } { "← " (v.t("usage.previous")) }
            " · "
            a href={ "/console/accounts/" (id) "/usage?month=" (next.format("%Y-%m")) } { (v.t("usage.next")) " →" }
        }
        (usage_chart(v, u))
        table #usage-days {
            thead { tr {
                th scope="col" { (v.t("usage.day")) } th scope="col" class="n" { (v.t("usage.average")) }
                th scope="col" class="n" { (v.t("usage.peak")) } th scope="col" class="n" { (v.t("usage.licensed")) }
                th scope="col" class="n" { (v.t("usage.licensed_cap")) } th scope="col" class="n" { (v.t("usage.billed")) }
            } }
            tbody {
                @for d in &u.days {
                    tr {
                        td { a href={ "/console/accounts/" (id) "/reports/" (d.day) } { (v.lang.day(d.day)) } }
                        td.n { (v.lang.decimal(d.average_cores)) } td.n { (v.lang.int(d.peak_cores)) }
                        td.n { (v.lang.int(d.licensed_cores)) } td.n { (v.lang.int(d.licensed_cores + d.cap_cores)) }
                        td.n { (d.billed.map(|b| v.money(b)).unwrap_or_else(|| "—".into())) }
                    }
                }
            }
        }
        h2 { (v.t("usage.nodes")) }
        table #nodes {
            thead { tr {
                th scope="col" { (v.t("usage.cluster")) } th scope="col" { (v.t("usage.node")) }
                th scope="col" { (v.t("usage.last_seen")) } th scope="col" { (v.t("usage.status")) }
                th scope="col" class="n" { (v.t("usage.hours")) } th scope="col" class="n" { (v.t("usage.missing_seqs")) }
            } }
            tbody {
                @for n in &u.nodes {
                    tr {
                        td { (n.cluster) } td { (n.node) } td { (v.instant(n.last_seen)) }
                        td { @if n.silent { strong.warn { (v.t("usage.silent")) } } @else { (v.t("usage.reporting")) } }
                        td.n { (n.hours_today) } td.n { (n.missing_seqs_today) }
                    }
                }
            }
        }
        h2 { (v.t("usage.clusters")) }
        table #clusters {
            thead { tr { th scope="col" { (v.t("usage.cluster")) } th scope="col" class="n" { (v.t("usage.excess_share")) } } }
            tbody {
                @for c in &u.clusters {
                    tr { td { (c.cluster) } td.n { (v.lang.decimal(c.excess_core_hours)) } }
                }
            }
        }
    };
    frame(
        v,
        Some(id),
        &v.tf(
            "usage.title",
            &[("account", id), ("month", &v.lang.month(u.month))],
        ),
        body,
    )
}

/// The log storage page, from its view (`GET …/log-storage`).
pub fn log_storage(v: &Viewer, account: &str, view: &Value) -> String {
    let quota = view["quota_bytes"].as_u64().unwrap_or(0);
    let days: Vec<&Value> = view["days"].as_array().into_iter().flatten().collect();
    let body = html! {
        @if view["state"].is_null() && quota == 0 {
            p { (v.t("logs.none")) }
        }
        table {
            tr { th scope="row" { (v.t("overview.state")) } td { (state_name(v, view["state"].as_str().unwrap_or(""))) } }
            tr { th scope="row" { (v.t("logs.quota")) } td.n #quota { (v.lang.bytes(quota)) } }
            tr { th scope="row" { (v.t("logs.used")) } td.n { (view["usage"]["used_bytes"].as_u64().map(|b| v.lang.bytes(b)).unwrap_or_else(|| "—".into())) } }
        }
        @if !days.is_empty() {
            @let max = days.iter().map(|d| d["used_bytes"].as_u64().unwrap_or(0).max(d["quota_bytes"].as_u64().unwrap_or(0))).max().unwrap_or(1).max(1) as f64;
            @let step = 860.0 / days.len() as f64;
            svg width="900" height="200" viewBox="0 0 900 200" role="img" aria-label=(v.t("logs.chart")) {
                title { (v.t("logs.chart")) }
                @for (i, d) in days.iter().enumerate() {
                    @let used = d["used_bytes"].as_u64().unwrap_or(0) as f64;
                    rect.used x=(30.0 + step * i as f64) y=(180.0 - 170.0 * used / max) width=(step.max(1.0) * 0.8) height=(170.0 * used / max) {
                        title { (text(&d["day"])) ": " (v.lang.bytes(used as u64)) }
                    }
                }
                polyline.quota points=(days.iter().enumerate().map(|(i, d)| format!("{:.1},{:.1}", 30.0 + step * (i as f64 + 0.4), 180.0 - 170.0 * d["quota_bytes"].as_u64().unwrap_or(0) as f64 / max)).collect::<Vec<_>>().join(" ")) {}
            }
        }
        h2 { (v.t("logs.purges")) }
        table #purges {
            thead { tr { th scope="col" { (v.t("purchase.when")) } th scope="col" { (v.t("logs.days")) } th scope="col" class="n" { (v.t("logs.bytes")) } th scope="col" { (v.t("logs.reason")) } } }
            tbody {
                @for p in view["purges"].as_array().into_iter().flatten() {
                    tr {
                        td { (text(&p["decided_at"])) }
                        td { (p["days"].as_array().map(|d| d.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_else(|| text(&p["days"]))) }
                        td.n { (v.lang.bytes(p["bytes"].as_u64().unwrap_or(0))) }
                        td { (text(&p["reason"])) }
                    }
                }
            }
        }
    };
    frame(
        v,
        Some(account),
        &v.tf("logs.title", &[("account", account)]),
        body,
    )
}

/// Bill lines and the months with a statement.
pub fn bills(
    v: &Viewer,
    account: &str,
    lines: &[shared::bill::BillLine],
    months: &[NaiveDate],
) -> String {
    let body = html! {
        h2 { (v.t("bills.statements")) }
        ul #statements {
            @for m in months {
                li {
                    (v.lang.month(*m)) ": "
                    a href={ "/console/accounts/" (account) "/statements/" (m.format("%Y-%m")) "?format=html" } { (v.t("bills.statement_html")) }
                    " · "
                    a href={ "/console/accounts/" (account) "/statements/" (m.format("%Y-%m")) "?format=csv" } { (v.t("bills.statement_csv")) }
                    " · "
                    a href={ "/console/accounts/" (account) "/statements/" (m.format("%Y-%m")) } { (v.t("bills.statement_json")) }
                }
            }
        }
        h2 { (v.t("bills.lines")) }
        table #bill-lines {
            thead { tr {
                th scope="col" { (v.t("bills.day")) } th scope="col" class="n" { (v.t("bills.line")) } th scope="col" { (v.t("bills.kind")) }
                th scope="col" class="n" { (v.t("overview.billable_cores")) } th scope="col" class="n" { (v.t("overview.amount")) }
                th scope="col" { (v.t("bills.issued")) }
            } }
            tbody {
                @for l in lines {
                    tr {
                        td { (v.lang.day(l.day)) } td.n { (l.seq) } td { (l.kind.as_str()) }
                        td.n { (v.lang.decimal(l.billable_cores)) } td.n { (v.money(l.amount)) }
                        td { (v.instant(l.issued_at)) }
                    }
                }
            }
        }
    };
    frame(
        v,
        Some(account),
        &v.tf("bills.title", &[("account", account)]),
        body,
    )
}

/// Notices, as the customer's notices route lists them.
pub fn notices(v: &Viewer, account: &str, listed: &Value) -> String {
    let body = html! {
        table #notices {
            thead { tr {
                th scope="col" { (v.t("notices.kind")) } th scope="col" { (v.t("overview.product")) } th scope="col" { (v.t("notices.day")) }
                th scope="col" { (v.t("notices.sent_to")) } th scope="col" { (v.t("notices.delivered")) }
            } }
            tbody {
                @for n in listed["notices"].as_array().into_iter().flatten() {
                    tr {
                        td { (text(&n["kind"])) } td { (text(&n["product"])) } td { (text(&n["day"])) }
                        td { @for d in n["deliveries"].as_array().into_iter().flatten() { (text(&d["channel"])) ": " (text(&d["address"])) br; } }
                        td { @for d in n["deliveries"].as_array().into_iter().flatten() {
                            @if d["delivered_at"].is_null() { (v.t("notices.pending")) } @else { (text(&d["delivered_at"])) } br;
                        } }
                    }
                }
            }
        }
    };
    frame(
        v,
        Some(account),
        &v.tf("notices.title", &[("account", account)]),
        body,
    )
}

/// The account's newest entries of the audit log, newest first: when, by
/// whom, from where, through what, and each value before and after.
pub fn changes(v: &Viewer, account: &str, entries: &[crate::store::audit::Entry]) -> String {
    let body = html! {
        p { (v.tf("changes.intro", &[("n", &v.lang.int(entries.len() as u64))])) }
        table #changes {
            thead { tr {
                th scope="col" { (v.t("changes.at")) } th scope="col" { (v.t("changes.by")) }
                th scope="col" { (v.t("changes.from")) } th scope="col" { (v.t("changes.action")) }
                th scope="col" { (v.t("changes.what")) }
            } }
            tbody {
                @for e in entries {
                    tr {
                        td { (v.instant(e.at)) }
                        td { (e.actor.role) " " (e.actor.id) }
                        td { (e.source) }
                        td { code { (e.action) } }
                        td {
                            @for (field, values) in e.change.as_object().into_iter().flatten() {
                                code { (field) } ": " (text(&values["before"])) " → " (text(&values["after"])) br;
                            }
                        }
                    }
                }
            }
        }
    };
    frame(
        v,
        Some(account),
        &v.tf("changes.title", &[("account", account)]),
        body,
    )
}

/// One row of the accounts page.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: String,
    pub state: String,
    pub licensed_cores: u64,
    pub yesterday_cores: Option<Decimal>,
    pub yesterday_amount: Option<Decimal>,
    pub month_to_date: Decimal,
    pub flags: Vec<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Accounts {
    pub rows: Vec<AccountRow>,
    pub total: usize,
    pub page: usize,
    pub pages: usize,
    pub filter: String,
    pub flag: String,
    pub sort: String,
    pub last_run: Option<DateTime<Utc>>,
    pub outbox_pending: u64,
    pub notices_pending: u64,
    /// Samples this replica accepted since it started.
    pub samples_accepted: u64,
}

pub const FLAGS: [&str; 6] = [
    "licence_short",
    "expiring",
    "grace",
    "stopped",
    "silent",
    "authorizations_low",
];

fn flag_name(v: &Viewer, flag: &str) -> &'static str {
    match flag {
        "licence_short" => v.t("flag.licence_short"),
        "expiring" => v.t("flag.expiring"),
        "grace" => v.t("flag.grace"),
        "stopped" => v.t("flag.stopped"),
        "silent" => v.t("flag.silent"),
        _ => v.t("flag.authorizations_low"),
    }
}

pub fn accounts(v: &Viewer, a: &Accounts) -> String {
    let query = |sort: &str, page: usize| {
        format!(
            "/console/accounts?q={}&flag={}&sort={}&page={page}",
            super::urlencode(&a.filter),
            a.flag,
            sort
        )
    };
    let column = |key: &'static str, sort: &'static str| {
        html! {
            th scope="col" aria-sort=(if a.sort == sort { "ascending" } else { "none" }) {
                a href=(query(sort, 1)) aria-label=(v.tf("accounts.sort", &[("column", v.t(key))])) { (v.t(key)) }
            }
        }
    };
    let body = html! {
        section #service aria-labelledby="service-title" {
            h2 #service-title { (v.t("service.title")) }
            table {
                tr { th scope="row" { (v.t("service.last_run")) } td { (a.last_run.map(|r| v.instant(r)).unwrap_or_else(|| v.t("service.never").to_string())) } }
                tr { th scope="row" { (v.t("service.outbox")) } td.n { (v.lang.int(a.outbox_pending)) } }
                tr { th scope="row" { (v.t("service.notices")) } td.n { (v.lang.int(a.notices_pending)) } }
                tr { th scope="row" { (v.t("service.ingest")) } td.n { (v.lang.int(a.samples_accepted)) } }
            }
        }
        form method="get" action="/console/accounts" {
            label for="q" { (v.t("accounts.filter")) }
            input #q type="search" name="q" value=(a.filter) maxlength="64";
            label for="flag" { (v.t("accounts.flag_filter")) }
            select #flag name="flag" {
                option value="" { (v.t("accounts.any_flag")) }
                @for f in FLAGS { option value=(f) selected[a.flag == f] { (flag_name(v, f)) } }
            }
            input type="hidden" name="sort" value=(a.sort);
            button type="submit" { (v.t("accounts.filter_submit")) }
        }
        table #accounts {
            thead { tr {
                (column("accounts.account", "id")) (column("accounts.state", "state"))
                (column("accounts.licensed", "licensed")) (column("accounts.yesterday", "yesterday"))
                (column("accounts.yesterday_amount", "amount")) (column("accounts.month", "month"))
                th scope="col" { (v.t("accounts.flags")) }
            } }
            tbody {
                @for r in &a.rows {
                    tr {
                        td { a href={ "/console/accounts/" (r.id) } { (r.id) } }
                        td { (state_name(v, &r.state)) }
                        td.n { (v.lang.int(r.licensed_cores)) }
                        td.n { (r.yesterday_cores.map(|c| v.lang.decimal(c)).unwrap_or_else(|| "—".into())) }
                        td.n { (r.yesterday_amount.map(|m| v.money(m)).unwrap_or_else(|| "—".into())) }
                        td.n { (v.money(r.month_to_date)) }
                        td { (r.flags.iter().map(|f| flag_name(v, f)).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
        p {
            (v.tf("accounts.page", &[("n", &a.page.to_string()), ("of", &a.pages.max(1).to_string())]))
            @if a.page > 1 { " · " a rel="prev" href=(query(&a.sort, a.page - 1)) { (v.t("accounts.previous")) } }
            @if a.page < a.pages { " · " a rel="next" href=(query(&a.sort, a.page + 1)) { (v.t("accounts.next")) } }
        }
    };
    frame(v, None, v.t("accounts.title"), body)
}
