//! `aggregator demo`: the real service on a temporary database, a simulated fleet pushing a day of samples through the agent's own push code over HTTP, the 02:00 bill, and the report.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{Days, TimeDelta};
use shared::clock::{Clock, ManualClock, SystemClock};
use shared::wire::AgentSample;

use crate::app::{Application, Timing};
use crate::config::Flags;

const ADMIN: &str = "demo-admin-token";
const NODES: u64 = 300;

/// How many cores node `n` holds in local hour `h`: a base fleet all day, a
/// daytime autoscaling group, and an evening batch burst.
fn cores(n: u64, h: u32) -> Option<u32> {
    let size = [4u32, 8, 16, 32][(n % 4) as usize];
    match n {
        0..=149 => Some(size),
        150..=249 if (8..20).contains(&h) && !(n * 7 + u64::from(h)).is_multiple_of(10) => {
            Some(size)
        }
        250.. if (19..23).contains(&h) => Some(size * 2),
        _ => None,
    }
}

pub fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(demo())
}

async fn demo() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("core-meter-demo-")
        .tempdir()?
        .keep();
    let mut config = crate::app::load_config(&Flags::default(), &|_| None)?;
    config.listen = "127.0.0.1:0".parse()?;
    config.database = dir.join("core-meter.sqlite").into();
    config.admin_token = Some(ADMIN.into());
    let zone = config.billing.zone;
    // Yesterday, local time, so the bill is for a real date.
    let day = zone
        .day_of(SystemClock.now())
        .checked_sub_days(Days::new(1))
        .context("a date")?;
    let clock = Arc::new(ManualClock::new(zone.day_start(day)));
    let timing = Timing {
        billing_poll: Duration::from_millis(100),
        outbox_poll: Duration::from_secs(1),
        ..Timing::default()
    };
    let app = Application::build(config, clock.clone(), timing).await?;
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    println!(
        "core-meter demo: the aggregator service runs at {base} on {}",
        dir.join("core-meter.sqlite").display()
    );

    let http = reqwest::Client::new();
    let admin = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    admin("/v1/admin/accounts", serde_json::json!({"id": "acme"}))
        .await?
        .error_for_status()?;
    let licence_end = zone.day_start(day) + TimeDelta::days(30);
    admin(
        "/v1/admin/accounts/acme/licenses",
        serde_json::json!({"cores": 3200, "start": zone.day_start(day) - TimeDelta::days(1), "end": licence_end}),
    )
    .await?
    .error_for_status()?;
    admin(
        "/v1/admin/accounts/acme/contacts",
        serde_json::json!({"name": "Acme operations", "role": "creator", "email": "ops@acme.example"}),
    )
    .await?
    .error_for_status()?;
    let mut tokens = Vec::new();
    for cluster in ["prod", "batch"] {
        let v: serde_json::Value = admin(
            "/v1/admin/accounts/acme/clusters",
            serde_json::json!({"name": cluster}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
        tokens.push(v["token"].as_str().context("a token")?.to_string());
    }
    println!("account acme: 3,200 licensed cores; clusters prod and batch; {NODES} nodes");

    // The agent's own push code, over real HTTP.
    let pusher = agent::pusher::Pusher::new(&base, Duration::from_secs(10))?;
    let hours = zone.hours_in_day(day) as u32;
    let mut pushed = 0usize;
    for (i, hour) in zone
        .buckets(zone.day_start(day), zone.day_end(day))
        .into_iter()
        .enumerate()
    {
        let local_hour = zone
            .local(hour)
            .time()
            .format("%H")
            .to_string()
            .parse::<u32>()
            .unwrap_or(0);
        for (c, token) in tokens.iter().enumerate() {
            let batch: Vec<AgentSample> = (0..NODES)
                .filter(|n| (*n >= 250) == (c == 1))
                .filter_map(|n| {
                    cores(n, local_hour).map(|k| AgentSample {
                        node: format!("node-{n:03}"),
                        cores: k,
                        at: hour + TimeDelta::seconds((n * 7 % 600) as i64),
                        seq: i as u64 + 1,
                        agent_version: concat!("demo-", env!("CARGO_PKG_VERSION")).to_string(),
                    })
                })
                .collect();
            clock.set(hour + TimeDelta::minutes(10));
            if !batch.is_empty() {
                pusher
                    .push(&batch, token)
                    .await
                    .map_err(|e| anyhow::anyhow!("push: {e}"))?;
                pushed += batch.len();
            }
        }
        let done = (i + 1) * 30 / hours as usize;
        eprint!(
            "\r  simulating {day} [{}{}] {:>2}/{hours} h, {pushed} samples",
            "#".repeat(done),
            " ".repeat(30 - done),
            i + 1
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();

    // 02:00 the next day: the billing job wakes and bills the day.
    let due = zone.due_at(day);
    clock.set(due);
    println!(
        "the clock passes {} local: billing",
        zone.local(due).time().format("%H:%M")
    );
    let mut lines = serde_json::Value::Null;
    for _ in 0..100 {
        lines = http
            .get(format!("{base}/v1/admin/bills?account=acme&day={day}"))
            .bearer_auth(ADMIN)
            .send()
            .await?
            .json()
            .await?;
        if lines["bills"].as_array().is_some_and(|b| !b.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        lines["bills"].as_array().is_some_and(|b| !b.is_empty()),
        "the day was not billed"
    );
    // The notice that went with the bill, and where the account stands.
    let get = |path: String| {
        let request = http.get(format!("{base}{path}")).bearer_auth(ADMIN);
        async move { anyhow::Ok(request.send().await?.json::<serde_json::Value>().await?) }
    };
    let notices = get("/v1/admin/accounts/acme/notices".into()).await?;
    for n in notices["notices"].as_array().into_iter().flatten() {
        let to: Vec<&str> = n["recipients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["address"].as_str())
            .collect();
        println!(
            "notice {} for {} to {}: {}",
            n["kind"].as_str().unwrap_or(""),
            n["day"].as_str().unwrap_or(""),
            to.join(", "),
            n["details"]
        );
    }
    let account = get("/v1/admin/accounts/acme".into()).await?;
    println!(
        "account acme is {}; next, if nothing is bought: {} at {}",
        account["state"].as_str().unwrap_or("?"),
        account["next_change"]["state"]
            .as_str()
            .unwrap_or("nothing"),
        account["next_change"]["at"].as_str().unwrap_or("-")
    );
    // The report, as `aggregator report` builds it: from the database, by the bill's own rules.
    let mut store = crate::store::Store::open(
        &dir.join("core-meter.sqlite"),
        crate::store::Durability::Durable,
    )?;
    let billing = crate::config::BillingConfig::default();
    let report = crate::reports::daily_report(&mut store, &billing, "acme", day, clock.now())?;
    println!("\n{}", crate::reports::render_table(&report));
    let page = dir.join(format!("report-acme-{day}.html"));
    std::fs::write(&page, crate::reports::html::render_html(&report))?;
    let _ = stop.send(());
    service.await??;
    println!("The report as a page: {}", page.display());
    println!(
        "Done in {:.1} s. To run the real thing: `aggregator serve` (see README), and the agent as a DaemonSet on every node.",
        started.elapsed().as_secs_f32()
    );
    Ok(())
}
