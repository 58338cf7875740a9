//! The console in a real browser (Debian's chromium, driven through
//! chromedriver by fantoccini) against the service over real HTTP: a
//! customer logs in, sees the licence shortfall, is refused a cap of 499
//! next to the field, sets 500, authorizes three images and sees three
//! fewer available, reads the page in Chinese; a reader finds no form; a
//! logged-out browser is sent back to log in. Every page is screenshotted
//! under target/console-screenshots/ and checked for headings in order,
//! labelled fields, text contrast and keyboard reach. And without a
//! browser: the session cookie's attributes, CSRF, and a session ending
//! with its token.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{console_login as session, local, no_redirects, TestApp};

const ACME: &str = "acme";

/// An account short of licensed cores: 50 licensed, one node of 96 since
/// midnight; 20 image-scan authorizations and five images on its node; a
/// customer token and a reader token.
struct Shop {
    _dir: tempfile::TempDir,
    app: TestApp,
    customer: String,
    reader: String,
}

async fn ok(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Value {
    let (s, v) = app.admin(method, path, body).await;
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

async fn shop() -> Shop {
    let (dir, app) = TestApp::in_temp_dir(local("2026-11-24T12:30:00")).await;
    let cluster = app.account_with_cluster(ACME, "prod").await;
    let orders = format!("/v1/admin/accounts/{ACME}/orders");
    ok(
        &app,
        Method::POST,
        &orders,
        Some(json!({"cores": 50, "months": 12, "start": "2026-11-20"})),
    )
    .await;
    ok(
        &app,
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/credits"),
        Some(json!({"amount": "100.00", "reference": "wire-1"})),
    )
    .await;
    ok(
        &app,
        Method::POST,
        &orders,
        Some(json!({"product": "image_scan", "quantity": 20, "pay_from_balance": true})),
    )
    .await;
    app.push_day(&cluster, "node-1", 96, "2026-11-24", 1).await;
    let images: Vec<Value> = (1..=5)
        .map(|i| json!({"id": format!("sha256:{i:064x}"), "repo_tags": [format!("registry.example/app-{i}:1.0")], "repo_digests": [], "size_bytes": 1_000_000}))
        .collect();
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/images",
            Some(&cluster),
            Some(json!({"node": "node-1", "at": local("2026-11-24T12:00:00"), "images": images})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let token = |list: &'static str| {
        let app = &app;
        async move {
            ok(
                app,
                Method::POST,
                &format!("/v1/admin/accounts/{ACME}/{list}"),
                Some(json!({"name": "console test"})),
            )
            .await["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let customer = token("customer-tokens").await;
    let reader = token("reader-tokens").await;
    Shop {
        _dir: dir,
        app,
        customer,
        reader,
    }
}

/// chromedriver on a port of its own, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Option<Driver> {
    let (Some(chromedriver), Some(_)) = (
        ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists()),
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists()),
    ) else {
        testkit::skip(
            "CHROMIUM",
            "chromium and chromium-driver are not installed for the console's browser test",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { child, port })
}

async fn browser(driver: &Driver) -> Client {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1100", "--lang=en-US", "--accept-lang=en-US"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headings in order, a label on every field, text contrast of WCAG AA;
/// what is wrong, as sentences.
const ACCESSIBILITY: &str = r#"
const problems = [];
const levels = [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => +h.tagName[1]);
if (levels.filter(l => l === 1).length !== 1) problems.push('the page has ' + levels.filter(l => l === 1).length + ' h1');
for (let i = 1; i < levels.length; i++) if (levels[i] > levels[i - 1] + 1) problems.push('a heading skips from h' + levels[i - 1] + ' to h' + levels[i]);
for (const el of document.querySelectorAll('input:not([type=hidden]),select,textarea')) {
  const labelled = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
    || (el.id && document.querySelector('label[for="' + el.id + '"]')) || el.closest('label');
  if (!labelled) problems.push('no label: ' + el.outerHTML.slice(0, 100));
}
const lum = c => { const [r, g, b] = c.match(/[\d.]+/g).slice(0, 3).map(Number).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const background = el => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor; const p = c.match(/[\d.]+/g); if (p && (p.length < 4 || +p[3] > 0)) return c; } return 'rgb(255, 255, 255)'; };
for (const el of document.querySelectorAll('body *')) {
  if (el.closest('svg') || ![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
  const st = getComputedStyle(el); const box = el.getBoundingClientRect();
  if (st.display === 'none' || st.visibility === 'hidden' || box.width === 0 || box.right < 0) continue;
  const a = lum(st.color), b = lum(background(el));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(st.fontSize), large = size >= 24 || (size >= 18.66 && +st.fontWeight >= 700);
  if (ratio < (large ? 3 : 4.5)) problems.push('contrast ' + ratio.toFixed(2) + ' of ' + el.tagName + ' "' + el.textContent.trim().slice(0, 30) + '"');
}
return problems;
"#;

/// The page as it stands: its screenshot saved, its accessibility checked.
async fn look(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
    let problems = c.execute(ACCESSIBILITY, vec![]).await.unwrap();
    assert_eq!(
        problems,
        json!([]),
        "{name}: {}",
        c.current_url().await.unwrap()
    );
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap(),
        Err(e) => panic!(
            "{css}: {e}\n{}\n{}",
            c.current_url().await.unwrap(),
            c.source()
                .await
                .unwrap()
                .split("</style>")
                .last()
                .unwrap_or("")
        ),
    }
}

/// Clicks what leads to another page and waits until that page has loaded.
async fn follow(c: &Client, css: &str) {
    c.execute("window.__before_navigation = true", vec![])
        .await
        .unwrap();
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let loaded = c
            .execute(
                "return window.__before_navigation === undefined && document.readyState === 'complete'",
                vec![],
            )
            .await;
        if matches!(loaded, Ok(Value::Bool(true))) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{css}: no page loaded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn log_in(c: &Client, app: &TestApp, token: &str) {
    c.goto(&app.url("/console")).await.unwrap();
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    follow(c, "main form button").await;
}

async fn submit(c: &Client, form: &str) {
    follow(c, &format!("{form} button[type=submit]")).await;
}

fn available(s: &str) -> u64 {
    s.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_and_a_reader_use_the_console_in_a_real_browser() {
    let Some(driver) = driver() else { return };
    let shop = shop().await;
    let app = &shop.app;
    let c = browser(&driver).await;

    // The login form, then the customer's own account and its shortfall.
    c.goto(&app.url("/")).await.unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .starts_with("/console/login"));
    look(&c, "login").await;
    log_in(&c, app, &shop.customer).await;
    assert_eq!(
        c.current_url().await.unwrap().path(),
        "/console/accounts/acme",
        "{}",
        c.source()
            .await
            .unwrap()
            .split("</style>")
            .last()
            .unwrap_or("")
    );
    let prompt = text(&c, "#licence-short").await;
    assert!(prompt.contains("Licensed cores are short"), "{prompt}");
    assert!(
        prompt.contains("96") && prompt.contains("50") && prompt.contains("46"),
        "{prompt}"
    );
    look(&c, "overview").await;

    // The cap: 499 is refused next to its field, 500 is saved.
    c.goto(&app.url("/console/accounts/acme/purchase"))
        .await
        .unwrap();
    let cap = c.find(Locator::Css("#cap")).await.unwrap();
    cap.clear().await.unwrap();
    cap.send_keys("499").await.unwrap();
    // The browser's own check would stop 499 before it is sent; the
    // service's is the one under test.
    c.execute(
        "document.querySelector('#cap').removeAttribute('min')",
        vec![],
    )
    .await
    .unwrap();
    submit(&c, "form[action$='/cap']").await;
    let error = text(&c, "#cap-error").await;
    assert!(error.contains("500"), "{error}");
    let described = c
        .find(Locator::Css("#cap"))
        .await
        .unwrap()
        .attr("aria-describedby")
        .await
        .unwrap();
    assert_eq!(described.as_deref(), Some("cap-error"));
    look(&c, "purchase-refused").await;
    let cap = c.find(Locator::Css("#cap")).await.unwrap();
    cap.clear().await.unwrap();
    cap.send_keys("500").await.unwrap();
    submit(&c, "form[action$='/cap']").await;
    assert!(text(&c, ".ok").await.contains("500 cores a day"));
    assert_eq!(
        c.find(Locator::Css("#cap"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("500")
    );
    look(&c, "purchase").await;
    // Every field and button is reached from the keyboard, the skip link first.
    let reached = c
        .execute(
            "document.activeElement.blur(); window.focus(); return document.querySelectorAll('a[href],button,input:not([type=hidden]),select').length",
            vec![],
        )
        .await
        .unwrap();
    let focusable = reached.as_u64().unwrap();
    let body = c.find(Locator::Css("body")).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..focusable {
        body.send_keys("\u{e004}").await.unwrap_or(());
        let id = c
            .execute(
                "const e = document.activeElement; return e.tagName + (e.id ? '#' + e.id : '') + ':' + (e.getAttribute('href') || e.getAttribute('name') || e.textContent.trim().slice(0, 20));",
                vec![],
            )
            .await
            .unwrap();
        if i == 0 {
            assert!(
                id.as_str().unwrap().contains("#main"),
                "the skip link first: {id}"
            );
        }
        seen.insert(id.as_str().unwrap().to_string());
    }
    assert!(
        seen.len() as u64 >= focusable - 1,
        "Tab reached {} of {focusable}: {seen:?}",
        seen.len()
    );

    // Three images authorized after the confirmation: three fewer available.
    c.goto(&app.url("/console/accounts/acme/images?status=unauthorized"))
        .await
        .unwrap();
    let before = available(&text(&c, "#available").await);
    look(&c, "images").await;
    let boxes = c
        .find_all(Locator::Css("#inventory input[type=checkbox]"))
        .await
        .unwrap();
    assert_eq!(boxes.len(), 5);
    for b in &boxes[..3] {
        b.click().await.unwrap();
    }
    submit(&c, "#authorize").await;
    let consumes = text(&c, "#consumes").await;
    assert!(
        consumes.contains("consumes 3")
            && consumes.contains(&format!("{} will remain", before - 3)),
        "{consumes}"
    );
    look(&c, "images-confirm").await;
    follow(&c, "#confirm").await;
    assert_eq!(available(&text(&c, "#available").await), before - 3);
    assert!(text(&c, ".ok").await.contains("3 images authorized"));
    let receipts = c
        .find_all(Locator::Css("#receipts tbody tr"))
        .await
        .unwrap();
    assert_eq!(receipts.len(), 3, "a receipt for each");

    // The same page in Chinese.
    follow(&c, "a[hreflang='zh-CN']").await;
    let lang = c
        .execute("return document.documentElement.lang", vec![])
        .await
        .unwrap();
    assert_eq!(lang, "zh-CN");
    assert!(
        text(&c, "h1").await.contains("镜像"),
        "{}",
        text(&c, "h1").await
    );
    assert!(text(&c, "#available").await.contains("可用授权"));
    look(&c, "images-zh-CN").await;
    for page in [
        "",
        "/usage",
        "/purchase",
        "/log-storage",
        "/bills",
        "/notices",
        "/changes",
    ] {
        c.goto(&app.url(&format!("/console/accounts/acme{page}")))
            .await
            .unwrap();
        look(&c, &format!("zh-CN{}", page.replace('/', "-"))).await;
    }
    follow(&c, "a[hreflang='en']").await;

    // Every other page, in English.
    for page in ["/usage", "/log-storage", "/bills", "/notices", "/changes"] {
        c.goto(&app.url(&format!("/console/accounts/acme{page}")))
            .await
            .unwrap();
        look(&c, &page[1..]).await;
    }
    // Today on the usage page: the node's 96 cores from midnight to noon,
    // its peak, against 50 licensed.
    c.goto(&app.url("/console/accounts/acme/usage"))
        .await
        .unwrap();
    let today: Vec<String> = c
        .execute(
            "return [...document.querySelectorAll('#usage-days tbody tr')].pop().innerText.split('\\t')",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().trim().to_string())
        .collect();
    assert_eq!(
        (today[2].as_str(), today[3].as_str()),
        ("96", "50"),
        "{today:?}"
    );

    // Logged out: the pages send the browser back to the login form.
    submit(&c, "form[action='/console/logout']").await;
    c.goto(&app.url("/console/accounts/acme/purchase"))
        .await
        .unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .starts_with("/console/login"));

    // A reader finds no form that changes anything.
    log_in(&c, app, &shop.reader).await;
    for page in ["", "/purchase", "/images"] {
        c.goto(&app.url(&format!("/console/accounts/acme{page}")))
            .await
            .unwrap();
        let posts = c.find_all(Locator::Css("form[method=post]")).await.unwrap();
        let mut actions = Vec::new();
        for f in &posts {
            actions.push(f.attr("action").await.unwrap().unwrap_or_default());
        }
        assert_eq!(actions, ["/console/logout"], "{page}");
        assert!(c
            .find_all(Locator::Css("input[type=checkbox], input[type=number]"))
            .await
            .unwrap()
            .is_empty());
        look(&c, &format!("reader{}", page.replace('/', "-"))).await;
    }

    // The operator's accounts page.
    submit(&c, "form[action='/console/logout']").await;
    log_in(&c, app, crate::support::ADMIN).await;
    assert_eq!(
        c.current_url().await.unwrap().path(),
        "/console/accounts",
        "{}",
        c.source().await.unwrap()
    );
    assert!(text(&c, "#accounts").await.contains("acme"));
    look(&c, "accounts").await;
    c.close().await.unwrap();
    shop.app.stop().await;
}

#[tokio::test]
async fn a_session_cookie_is_http_only_strict_and_ends_with_its_token_and_forms_need_their_csrf() {
    let shop = shop().await;
    let app = &shop.app;
    let client = no_redirects();
    let (set, cookie) = session(app, &client, &shop.customer).await;
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=43200",
    ] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "no TLS here: {set}");
    let page = client
        .get(app.url("/console/accounts/acme/purchase"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();

    // A form without the session's CSRF token changes nothing.
    let post = |csrf: String| {
        let (client, cookie) = (&client, cookie.clone());
        async move {
            client
                .post(app.url("/console/accounts/acme/cap"))
                .header("cookie", cookie)
                .form(&[("cores", "700"), ("csrf", csrf.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post("csrf_forged".into()).await.status(), 403);
    let (_, account) = app
        .admin(Method::GET, &format!("/v1/admin/accounts/{ACME}"), None)
        .await;
    assert!(
        account["cap_history"].as_array().unwrap().is_empty(),
        "{account}"
    );
    let done = post(csrf).await;
    assert_eq!(done.status(), 303);
    let (_, account) = app
        .admin(Method::GET, &format!("/v1/admin/accounts/{ACME}"), None)
        .await;
    assert_eq!(account["cap_history"][0]["cores"], 700);

    // An unknown token opens nothing; a revoked one ends its sessions.
    let form = client.get(app.url("/console/login")).send().await.unwrap();
    let login_csrf = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let refused = client
        .post(app.url("/console/login"))
        .header("cookie", format!("cm_login={login_csrf}"))
        .form(&[
            ("token", format!("cmu_{}", "0".repeat(64)).as_str()),
            ("csrf", login_csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("unknown or revoked"));
    let (_, tokens) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/customer-tokens"),
            None,
        )
        .await;
    let id = tokens["customer_tokens"][0]["id"].as_i64().unwrap();
    app.admin(
        Method::DELETE,
        &format!("/v1/admin/accounts/{ACME}/customer-tokens/{id}"),
        None,
    )
    .await;
    let after = client
        .get(app.url("/console/accounts/acme"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303);
    assert!(after.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/console/login"));
    shop.app.stop().await;
}

/// A page's HTML as `token` and a reader of `lang` get it: status and body.
async fn html(app: &TestApp, token: &str, path: &str, lang: &str) -> (u16, String) {
    let answer = no_redirects()
        .get(app.url(path))
        .bearer_auth(token)
        .header("accept-language", lang)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let kind = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/html"), "{path}: {kind}");
    (status, answer.text().await.unwrap())
}

#[tokio::test]
async fn a_value_outside_its_domain_is_refused_by_name_in_the_readers_language() {
    let shop = shop().await;
    let app = &shop.app;
    let admin = crate::support::ADMIN;
    for (query, field) in [
        ("flag=bogus", "flag must be one of licence_short, expiring"),
        ("sort=size", "sort must be one of id, state"),
        ("page=0", "page must be from 1 to 1000000, got 0"),
        (
            &format!("q={}", "a".repeat(65)),
            "q must be at most 64 characters",
        ),
    ] {
        let (status, page) = html(app, admin, &format!("/console/accounts?{query}"), "en").await;
        assert_eq!(status, 422, "{query}: {page}");
        assert!(page.contains(field), "{query}: {page}");
    }
    // In Chinese: the gist translated, the API's precise words after it, marked as English.
    let (status, page) = html(app, admin, "/console/accounts?flag=bogus", "zh-CN").await;
    assert_eq!(status, 422);
    assert!(page.contains("有一个值超出了该字段允许的范围"), "{page}");
    assert!(
        page.contains("<span lang=\"en\">(flag must be one of"),
        "{page}"
    );
    let (status, page) = html(
        app,
        admin,
        "/console/accounts/acme/usage?month=2026-13",
        "zh-CN",
    )
    .await;
    assert_eq!(status, 422, "{page}");
    assert!(
        page.contains("<html lang=\"zh-CN\">") && page.contains("month"),
        "{page}"
    );

    // A form's refusal next to its field, in Chinese.
    let answer = no_redirects()
        .post(app.url("/console/accounts/acme/cap"))
        .bearer_auth(&shop.customer)
        .header("accept-language", "zh-CN")
        .form(&[("cores", "499")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422);
    let page = answer.text().await.unwrap();
    let error = page
        .split("id=\"cap-error\"")
        .nth(1)
        .expect("the error by the cap's field")
        .split("</p>")
        .next()
        .unwrap();
    assert!(
        error.contains("弹性上限须为每天 500 到 1,000,000 之间的整数核数"),
        "{error}"
    );
    assert!(
        error.contains("cap 499 is below the minimum of 500 cores"),
        "{error}"
    );
    shop.app.stop().await;
}

#[tokio::test]
async fn a_node_quiet_for_longer_than_bridging_reaches_shows_silent_and_flags_its_account() {
    let shop = shop().await;
    let app = &shop.app;
    let (_, cluster) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/clusters"),
            Some(json!({"name": "edge"})),
        )
        .await;
    let edge = cluster["token"].as_str().unwrap();
    // node-2 last pushed at 23:05 yesterday; node-1 at 12:05 today (now 12:30).
    app.push_day(edge, "node-2", 8, "2026-11-23", 1).await;
    let calm = app.account_with_cluster("calm", "prod").await;
    app.push_day(&calm, "node-1", 8, "2026-11-24", 1).await;
    let admin = crate::support::ADMIN;
    let (status, page) = html(app, admin, "/console/accounts?flag=silent", "en").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(">acme</a>") && !page.contains(">calm</a>"),
        "{page}"
    );
    let (_, page) = html(app, admin, "/console/accounts", "en").await;
    assert!(
        page.contains(">acme</a>") && page.contains(">calm</a>"),
        "{page}"
    );
    let (_, page) = html(app, admin, "/console/accounts/acme/usage", "en").await;
    let nodes = page
        .split("id=\"nodes\"")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    let row = |node: &str| {
        nodes
            .split("<tr>")
            .find(|r| r.contains(&format!("<td>{node}</td>")))
            .unwrap_or_else(|| panic!("{node} in {nodes}"))
            .to_string()
    };
    assert!(
        row("node-1").contains("Reporting") && row("node-1").contains("12:05"),
        "{}",
        row("node-1")
    );
    assert!(
        row("node-2").contains("Silent") && row("node-2").contains("23:05"),
        "{}",
        row("node-2")
    );
    shop.app.stop().await;
}

#[tokio::test]
async fn the_console_cannot_be_framed_redirected_away_flooded_or_logged_out_from_elsewhere() {
    let shop = shop().await;
    let app = &shop.app;
    let client = no_redirects();
    let answer = client
        .get(app.url("/console/accounts/acme"))
        .bearer_auth(&shop.customer)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(answer.headers()[name], value, "{name}");
    }
    assert!(answer.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));

    // A `next` with a control character, another host or a backslash goes to the console.
    for next in [
        "/console%7F",
        "/console%0d%0aSet-Cookie:%20x=1",
        "//evil.example",
        "/console/..%5C%5Cevil",
    ] {
        let answer = client
            .get(app.url(&format!("/console/lang?to=en&next={next}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 303, "{next}");
        assert_eq!(answer.headers()["location"], "/console", "{next}");
    }

    // A megabyte of empty fields is refused before it is read as a form.
    let flood = "a&".repeat(512 * 1024);
    let answer = client
        .post(app.url("/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(flood)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);

    // A logout posted from another site (no cookie, no token) clears nothing.
    let answer = client
        .post(app.url("/console/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    assert!(answer.headers().get("set-cookie").is_none());

    // Behind a TLS-terminating proxy the session cookie is Secure.
    let form = client
        .get(app.url("/console/login"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Secure"));

    // Two session cookies (one planted for a longer path) are none.
    let (_, cookie) = session(app, &client, &shop.customer).await;
    let page = |cookies: String| {
        let client = &client;
        async move {
            client
                .get(app.url("/console/accounts/acme"))
                .header("cookie", cookies)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(page(cookie.clone()).await, 200);
    assert_eq!(page(format!("cm_session=planted; {cookie}")).await, 303);
    shop.app.stop().await;
}
