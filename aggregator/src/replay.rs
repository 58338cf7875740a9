//! `aggregator replay`: runs a conformance case (SPEC section 7) through the service's own validation, store and billing.

use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::bill::{BillLine, DEFAULT_CURRENCY};
use shared::overage::{check_cap, CoreRounding, Licence};
use shared::sample::{parse_instant, AgeLimits, Rejection};
use shared::zone::BillingZone;

use crate::billing::{run_billing, BillingConfig};
use crate::store::{Durability, Incoming, Outcome, Store};

/// Samples stored per transaction while replaying.
const INGEST_CHUNK: usize = 10_000;

/// A replay case. Unknown fields are ignored so cases can carry notes.
#[derive(Debug, Deserialize)]
pub struct Case {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub accounts: Vec<CaseAccount>,
    #[serde(default)]
    pub samples: Vec<CaseSample>,
    #[serde(default)]
    pub runs: Vec<String>,
}

/// Every field is optional; SPEC section 2 gives the defaults.
#[derive(Debug, Default, Deserialize)]
pub struct Settings {
    pub timezone: Option<String>,
    /// A decimal, as a JSON string ("0.25") or number.
    pub price_per_core_day: Option<Value>,
    pub billable_core_rounding: Option<String>,
    pub gap_bridge_hours: Option<u32>,
    pub max_sample_age_hours: Option<u32>,
    pub currency: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CaseAccount {
    pub id: String,
    #[serde(default)]
    pub licenses: Vec<CaseLicence>,
    #[serde(default)]
    pub caps: Vec<CaseCap>,
}

#[derive(Debug, Deserialize)]
pub struct CaseLicence {
    pub cores: u32,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Deserialize)]
pub struct CaseCap {
    pub cores: u32,
    pub from: String,
}

/// A sample of a case. Its fields are taken as they come, so that a bad one
/// is rejected by validation rather than failing the case.
#[derive(Debug, Deserialize)]
pub struct CaseSample {
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub cores: Option<Value>,
    #[serde(default)]
    pub at: Option<Value>,
    #[serde(default)]
    pub received: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    pub bills: Vec<BillLine>,
    pub rejected: Vec<RejectedSample>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RejectedSample {
    pub index: usize,
    pub reason: Rejection,
}

/// Reads and replays a case file.
pub fn replay_file(path: &Path) -> anyhow::Result<Output> {
    let text = std::fs::read(path).with_context(|| format!("read case {}", path.display()))?;
    let case = parse_case(&text).with_context(|| format!("case {}", path.display()))?;
    replay(&case)
}

/// Parses a case; a malformed one is an error naming the field.
pub fn parse_case(text: &[u8]) -> anyhow::Result<Case> {
    match serde_json::from_slice(text) {
        Ok(case) => Ok(case),
        // Parse again, slower, only to say where the problem is.
        Err(e) => {
            let de = &mut serde_json::Deserializer::from_slice(text);
            match serde_path_to_error::deserialize::<_, Case>(de) {
                Err(pe) => Err(anyhow!("malformed case at {}: {}", pe.path(), pe.inner())),
                Ok(_) => Err(anyhow!("malformed case: {e}")),
            }
        }
    }
}

/// The billing configuration a case's settings describe.
pub fn config_from(settings: &Settings) -> anyhow::Result<BillingConfig> {
    let mut config = BillingConfig::default();
    if let Some(tz) = &settings.timezone {
        config.zone = BillingZone::from_str(tz).context("settings.timezone")?;
    }
    if let Some(price) = &settings.price_per_core_day {
        config.rules.price_per_core_day = decimal(price).context("settings.price_per_core_day")?;
    }
    if let Some(r) = &settings.billable_core_rounding {
        config.rules.rounding =
            CoreRounding::from_str(r).context("settings.billable_core_rounding")?;
    }
    if let Some(g) = settings.gap_bridge_hours {
        config.rules.gap_bridge_hours = g;
    }
    if let Some(h) = settings.max_sample_age_hours {
        config.limits.max_age = TimeDelta::hours(i64::from(h));
    }
    config.currency = settings
        .currency
        .clone()
        .unwrap_or_else(|| DEFAULT_CURRENCY.to_string());
    config.rules.check().context("settings")?;
    Ok(config)
}

fn decimal(v: &Value) -> anyhow::Result<Decimal> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => bail!("expected a decimal, got {other}"),
    };
    Decimal::from_str(&text).map_err(|e| anyhow!("{text:?} is not a decimal: {e}"))
}

fn instant(s: &str, what: &str) -> anyhow::Result<DateTime<Utc>> {
    parse_instant(s)
        .ok_or_else(|| anyhow!("{what}: {s:?} is not an RFC 3339 instant with an offset"))
}

/// Replays a case on a temporary database.
pub fn replay(case: &Case) -> anyhow::Result<Output> {
    let config = config_from(&case.settings)?;
    let mut runs = case
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| instant(r, &format!("runs[{i}]")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    runs.sort();

    // Check the whole case before doing any work.
    let mut seen = std::collections::HashSet::new();
    for (i, a) in case.accounts.iter().enumerate() {
        if !seen.insert(a.id.as_str()) {
            bail!("accounts[{i}]: account {} appears twice", a.id);
        }
        for c in &a.caps {
            check_cap(c.cores).map_err(|e| anyhow!("cap below 500 for account {}: {e}", a.id))?;
        }
    }
    // Samples are processed in the order received; `received` defaults to `at`.
    let mut order = Vec::with_capacity(case.samples.len());
    for (i, s) in case.samples.iter().enumerate() {
        let received = match (&s.received, s.at.as_ref().and_then(Value::as_str)) {
            (Some(r), _) => Some(instant(r, &format!("samples[{i}].received"))?),
            (None, Some(at)) => parse_instant(at),
            // Without a valid `at` the sample is rejected whenever it comes.
            (None, None) => None,
        };
        order.push((received.unwrap_or(DateTime::<Utc>::MIN_UTC), i));
    }
    order.sort();

    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let mut store = Store::open(&dir.path().join("replay.sqlite"), Durability::Scratch)?;
    let created = runs.first().copied().unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    for (i, a) in case.accounts.iter().enumerate() {
        store
            .create_account(&a.id, created)
            .with_context(|| format!("accounts[{i}]"))?;
        for (j, l) in a.licenses.iter().enumerate() {
            let what = format!("accounts[{i}].licenses[{j}]");
            let licence = Licence::new(l.cores, instant(&l.start, &what)?, instant(&l.end, &what)?)
                .with_context(|| what.clone())?;
            store.add_licence(&a.id, &licence, created)?;
        }
        for (j, c) in a.caps.iter().enumerate() {
            let from = instant(&c.from, &format!("accounts[{i}].caps[{j}]"))?;
            store.set_cap(&a.id, c.cores, from, created)?;
        }
    }

    let mut bills = Vec::new();
    let mut rejected = Vec::new();
    let mut next = 0;
    for run in runs.iter().copied().map(Some).chain([None]) {
        let upto = match run {
            Some(r) => order.partition_point(|(received, _)| *received <= r),
            None => order.len(),
        };
        for chunk in order[next..upto].chunks(INGEST_CHUNK) {
            ingest_chunk(&mut store, case, chunk, &config.limits, &mut rejected)?;
        }
        next = upto;
        if let Some(r) = run {
            bills.extend(run_billing(&mut store, r, &config)?);
        }
    }
    rejected.sort_by_key(|r| r.index);
    Ok(Output { bills, rejected })
}

fn ingest_chunk(
    store: &mut Store,
    case: &Case,
    chunk: &[(DateTime<Utc>, usize)],
    limits: &AgeLimits,
    rejected: &mut Vec<RejectedSample>,
) -> anyhow::Result<()> {
    let incoming: Vec<Incoming<'_>> = chunk
        .iter()
        .map(|&(received_at, i)| {
            let s = &case.samples[i];
            Incoming {
                account: s.account.as_deref().unwrap_or(""),
                cluster: s.cluster.as_deref().unwrap_or(""),
                node: s.node.as_deref().unwrap_or(""),
                cores: s.cores.as_ref(),
                at: s.at.as_ref().and_then(Value::as_str),
                seq: None,
                agent_version: None,
                received_at,
            }
        })
        .collect();
    let outcomes = store.ingest(&incoming, limits)?;
    for (&(_, index), outcome) in chunk.iter().zip(outcomes) {
        if let Outcome::Rejected(reason) = outcome {
            rejected.push(RejectedSample { index, reason });
        }
    }
    Ok(())
}
