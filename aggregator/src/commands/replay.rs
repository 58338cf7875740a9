//! `aggregator replay`: runs a conformance case (SPEC section 7) through the service's own validation, store and billing.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::bill::{BillLine, DEFAULT_CURRENCY};
use shared::overage::{check_cap, CoreRounding, Licence, CAP_MIN_CORES};
use shared::sample::{parse_cores, parse_instant, AgeLimits, Rejection};
use shared::zone::BillingZone;

use crate::billing::run_billing;
use crate::config::BillingConfig;
use crate::store::{Durability, Incoming, Outcome, Store};

/// Samples stored per transaction while replaying.
const INGEST_CHUNK: usize = 10_000;

/// A replay case. Unknown fields are ignored so cases can carry notes.
#[derive(Debug, Deserialize)]
pub struct Case<'a> {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub accounts: Vec<CaseAccount>,
    #[serde(default, borrow)]
    pub samples: CaseSamples<'a>,
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
    /// How far past its receipt a sample's `at` may lie (default 5); an
    /// addition to SPEC section 7 that `export` writes.
    pub max_future_minutes: Option<u32>,
    pub currency: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CaseAccount {
    pub id: String,
    #[serde(default, alias = "licences")]
    pub licenses: Vec<CaseLicence>,
    #[serde(default)]
    pub caps: Vec<CaseCap>,
    /// Beyond SPEC section 7, written by `export` for an account that had
    /// them (SPEC section 8): its trial, whose hours are free, and its
    /// stops, whose hours are not billed and whose samples are refused.
    #[serde(default)]
    pub trial: Option<CasePeriod>,
    #[serde(default)]
    pub stopped: Vec<CaseStop>,
}

#[derive(Debug, Deserialize)]
pub struct CasePeriod {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Deserialize)]
pub struct CaseStop {
    pub from: String,
    /// When the account came back; absent while it stays stopped.
    pub to: Option<String>,
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
/// is rejected by validation rather than failing the case; text is borrowed
/// from the case file, which keeps parsing a large case cheap.
#[derive(Debug, Deserialize)]
struct CaseSample<'a> {
    #[serde(default, borrow)]
    pub account: Loose<'a>,
    #[serde(default, borrow)]
    pub cluster: Loose<'a>,
    #[serde(default, borrow)]
    pub node: Loose<'a>,
    #[serde(default)]
    pub cores: Option<Value>,
    #[serde(default, borrow)]
    pub at: Loose<'a>,
    #[serde(default, borrow)]
    pub received: Option<Cow<'a, str>>,
}

/// A JSON value where a string is expected: the string, or nothing if the
/// field is missing or holds something else.
#[derive(Debug, Default)]
pub struct Loose<'a>(pub Option<Cow<'a, str>>);

impl Loose<'_> {
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Loose(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Loose(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Loose(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Loose(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Loose(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Loose(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Loose(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Loose(None))
            }
        }
        d.deserialize_any(V)
    }
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
pub fn parse_case(text: &[u8]) -> anyhow::Result<Case<'_>> {
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
    if let Some(m) = settings.max_future_minutes {
        config.limits.max_future = TimeDelta::minutes(i64::from(m));
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
    shared::domain::parse_money(&text).map_err(|e| anyhow!("{e}"))
}

/// An instant of the case (a licence's, a cap's, a run's) within its domain.
fn instant(s: &str, what: &str) -> anyhow::Result<DateTime<Utc>> {
    shared::domain::parse_instant(s).map_err(|e| anyhow!("{what}: {e}"))
}

/// Replays a case on a temporary database.
pub fn replay(case: &Case<'_>) -> anyhow::Result<Output> {
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
        for (j, c) in a.caps.iter().enumerate() {
            if check_cap(c.cores).is_err() {
                bail!(
                    "cap below {CAP_MIN_CORES} for account {}: accounts[{i}].caps[{j}] is {} cores",
                    a.id,
                    c.cores
                );
            }
        }
    }
    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let mut store = Store::open(&dir.path().join("replay.sqlite"), Durability::Scratch)?;
    // Thrown away once the bills are printed: no console reads its nodes.
    store.ingest().keep_last_seen(false);
    replay_into(case, &config, &runs, &mut store)
}

/// Replays a checked case into `store`, which keeps what it stored (the
/// export round-trip tests read it back).
pub fn replay_into(
    case: &Case<'_>,
    config: &BillingConfig,
    runs: &[DateTime<Utc>],
    store: &mut Store,
) -> anyhow::Result<Output> {
    let created = runs.first().copied().unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    for (i, a) in case.accounts.iter().enumerate() {
        store
            .accounts()
            .create_account(&a.id, created)
            .with_context(|| format!("accounts[{i}]"))?;
        for (j, l) in a.licenses.iter().enumerate() {
            let what = format!("accounts[{i}].licenses[{j}]");
            let licence = Licence::new(l.cores, instant(&l.start, &what)?, instant(&l.end, &what)?)
                .with_context(|| what.clone())?;
            store.accounts().add_licence(&a.id, &licence, created)?;
        }
        for (j, c) in a.caps.iter().enumerate() {
            let from = instant(&c.from, &format!("accounts[{i}].caps[{j}]"))?;
            store.accounts().set_cap(&a.id, c.cores, from, created)?;
        }
        if a.trial.is_some() || !a.stopped.is_empty() {
            let trial = match &a.trial {
                Some(t) => {
                    let what = format!("accounts[{i}].trial");
                    Some(shared::lifecycle::Trial {
                        start: instant(&t.start, &what)?,
                        end: instant(&t.end, &what)?,
                    })
                }
                None => None,
            };
            let mut stops = Vec::new();
            for (j, p) in a.stopped.iter().enumerate() {
                let what = format!("accounts[{i}].stopped[{j}]");
                let to = p.to.as_deref().map(|t| instant(t, &what)).transpose()?;
                stops.push((instant(&p.from, &what)?, to));
            }
            store.billing().replay_life(&a.id, trial, &stops, created)?;
        }
    }

    // Samples are processed in the order received.
    let mut pending: Vec<&Pending> = case.samples.pending.iter().collect();
    pending.sort_unstable_by_key(|p| (p.received_ms, p.index));
    let mut bills = Vec::new();
    let mut rejected = Vec::new();
    let mut next = 0;
    for run in runs.iter().copied().map(Some).chain([None]) {
        let upto = match run {
            Some(r) => pending.partition_point(|p| p.received_at <= r),
            None => pending.len(),
        };
        for chunk in pending[next..upto].chunks(INGEST_CHUNK) {
            ingest_chunk(
                store,
                &case.samples.names,
                chunk,
                &config.limits,
                &mut rejected,
            )?;
        }
        next = upto;
        if let Some(r) = run {
            bills.extend(run_billing(store, r, config)?);
        }
    }
    rejected.sort_by_key(|r| r.index);
    Ok(Output { bills, rejected })
}

/// A case sample reduced to what ingest needs, its names interned. Ingest
/// walks these in order of receipt, which is not the file's order; compact
/// records keep that walk in cache.
#[derive(Debug)]
pub struct Pending {
    received_at: DateTime<Utc>,
    /// `received_at` in milliseconds, the order samples are taken in:
    /// worked out once, not at each of a sort's 14 million comparisons.
    received_ms: i64,
    index: usize,
    account: u32,
    cluster: u32,
    node: u32,
    cores: Option<u32>,
    at: Option<DateTime<Utc>>,
}

/// The samples of a case, reduced to [`Pending`] records as they are parsed,
/// so a large case is never held twice in memory.
#[derive(Debug, Default)]
pub struct CaseSamples<'a> {
    names: Names<'a>,
    pending: Vec<Pending>,
}

impl<'de: 'a, 'a> Deserialize<'de> for CaseSamples<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &'de serde_json::value::RawValue = Deserialize::deserialize(d)?;
        parse_samples(raw.get()).map_err(serde::de::Error::custom)
    }
}

/// Cases with fewer samples are parsed on one thread.
const PARALLEL_FROM: usize = 20_000;

/// Parses the text of the `samples` array into [`Pending`] records, on as
/// many threads as the machine has (up to 4): the elements are found by a
/// scan that knows JSON strings, then each thread parses its share.
fn parse_samples(text: &str) -> Result<CaseSamples<'_>, String> {
    let elements = split_array(text).ok_or("samples: expected an array of samples")?;
    let threads = if elements.len() < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    let per = elements.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<CaseSamples<'_>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = elements
            .chunks(per)
            .enumerate()
            .map(|(i, chunk)| scope.spawn(move || parse_elements(text, chunk, i * per)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a parser thread panicked"))
            .collect()
    });
    let mut out = CaseSamples::default();
    out.pending.reserve(elements.len());
    for part in parts {
        let part = part?;
        // Re-intern the part's names into the whole case's table.
        let ids: Vec<u32> = part
            .names
            .names
            .into_iter()
            .map(|n| out.names.intern(n))
            .collect();
        out.pending.extend(part.pending.into_iter().map(|mut p| {
            p.account = ids[p.account as usize];
            p.cluster = ids[p.cluster as usize];
            p.node = ids[p.node as usize];
            p
        }));
    }
    Ok(out)
}

fn parse_elements<'a>(
    text: &'a str,
    elements: &[(usize, usize)],
    first_index: usize,
) -> Result<CaseSamples<'a>, String> {
    let mut out = CaseSamples::default();
    out.pending.reserve(elements.len());
    for (k, &(start, end)) in elements.iter().enumerate() {
        let index = first_index + k;
        let s: CaseSample<'a> = serde_json::from_str(&text[start..end])
            .map_err(|e| format!("samples[{index}]: {e}"))?;
        let at = s.at.as_str().and_then(parse_instant);
        let received_at = match &s.received {
            Some(r) => shared::domain::parse_instant(r)
                .map_err(|e| format!("samples[{index}].received: {e}"))?,
            // `received` defaults to `at`; without a valid `at` the sample
            // is rejected whenever it comes.
            None => at.unwrap_or(DateTime::<Utc>::MIN_UTC),
        };
        let names = &mut out.names;
        out.pending.push(Pending {
            received_at,
            received_ms: received_at.timestamp_millis(),
            index,
            account: names.intern(s.account.0.unwrap_or_default()),
            cluster: names.intern(s.cluster.0.unwrap_or_default()),
            node: names.intern(s.node.0.unwrap_or_default()),
            cores: s.cores.as_ref().and_then(parse_cores),
            at,
        });
    }
    Ok(out)
}

/// The byte ranges of the elements of a JSON array (already known to be
/// valid JSON), found by tracking nesting outside strings.
fn split_array(text: &str) -> Option<Vec<(usize, usize)>> {
    let bytes = text.as_bytes();
    let open = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    if bytes[open] != b'[' {
        return None;
    }
    let mut elements = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start: Option<usize> = None;
    for (i, &b) in bytes.iter().enumerate().skip(open + 1) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                start.get_or_insert(i);
            }
            b'{' | b'[' => {
                depth += 1;
                start.get_or_insert(i);
            }
            b'}' | b']' if depth > 0 => depth -= 1,
            b']' => {
                if let Some(s) = start.take() {
                    elements.push((s, i));
                }
                return Some(elements);
            }
            b',' if depth == 0 => {
                elements.push((start.take()?, i));
            }
            _ if b.is_ascii_whitespace() => {}
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    None
}

#[derive(Debug, Default)]
struct Names<'a> {
    ids: FxHashMap<Cow<'a, str>, u32>,
    names: Vec<Cow<'a, str>>,
}

impl<'a> Names<'a> {
    fn intern(&mut self, name: Cow<'a, str>) -> u32 {
        if let Some(id) = self.ids.get(name.as_ref()) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 4 billion names");
        // A copy of its own, next to the others: ingest reads every
        // sample's names, and read where they first appear in a 67 MB case
        // each was a cache miss (a fifth of ingest's time, measured).
        self.names.push(Cow::Owned(name.to_string()));
        self.ids.insert(name, id);
        id
    }

    fn get(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

fn ingest_chunk(
    store: &mut Store,
    names: &Names<'_>,
    chunk: &[&Pending],
    limits: &AgeLimits,
    rejected: &mut Vec<RejectedSample>,
) -> anyhow::Result<()> {
    let incoming: Vec<Incoming<'_>> = chunk
        .iter()
        .map(|p| Incoming {
            account: names.get(p.account),
            cluster: names.get(p.cluster),
            node: names.get(p.node),
            cores: p.cores,
            at: p.at,
            seq: None,
            agent_version: None,
            received_at: p.received_at,
        })
        .collect();
    let outcomes = store.ingest().insert(&incoming, limits)?;
    for (p, outcome) in chunk.iter().zip(outcomes) {
        if let Outcome::Rejected(reason) = outcome {
            rejected.push(RejectedSample {
                index: p.index,
                reason,
            });
        }
    }
    Ok(())
}
/// Replays the case at `case` and prints its result as one line of JSON.
pub fn print(case: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let output = replay_file(case)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer(&mut out, &output)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}
