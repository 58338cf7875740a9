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
use crate::store::{Incoming, Outcome, Store};

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
    if let Some(case) = parse_case_quickly(text) {
        return Ok(case);
    }
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

/// A well-formed case parsed without reading its samples twice: parsed as
/// a whole, the samples (nearly all of a large case) would be scanned once
/// to find where they end and again to be split among threads. Here they
/// are found and split in one scan, and the rest of the case, with an empty
/// array in their place, goes to `serde_json`. `None` whenever anything is
/// unexpected (an escape in a member's name, `samples` twice, a malformed
/// sample): the case is then parsed as a whole, which also says what is wrong.
fn parse_case_quickly(bytes: &[u8]) -> Option<Case<'_>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (samples, elements) = find_samples(text)?;
    let rest = format!("{}[]{}", &text[..samples.start], &text[samples.end..]);
    let rest: Case<'_> = serde_json::from_str(&rest).ok()?;
    let samples = parse_samples_split(text, &elements).ok()?;
    Some(Case {
        name: rest.name,
        settings: rest.settings,
        accounts: rest.accounts,
        samples,
        runs: rest.runs,
    })
}

/// Byte ranges of a text.
type Spans = Vec<(usize, usize)>;

/// JSON's whitespace; `u8::is_ascii_whitespace` also takes a form feed.
fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where the value of the top-level member `samples` starts and ends, and
/// its elements: `None` unless the text is an object whose member names
/// have no escapes, with one `samples`, an array. The members are only
/// delimited here; `serde_json` checks them.
fn find_samples(text: &str) -> Option<(std::ops::Range<usize>, Spans)> {
    let bytes = text.as_bytes();
    let mut i = skip_space(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    i = skip_space(bytes, i + 1);
    if bytes.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        // A member's name, without escapes, then its value.
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let close = i + 1 + memchr::memchr2(b'"', b'\\', bytes.get(i + 1..)?)?;
        if bytes[close] != b'"' {
            return None;
        }
        let name = &text[i + 1..close];
        i = skip_space(bytes, close + 1);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i = skip_space(bytes, i + 1);
        let value = i;
        if name == "samples" {
            if found.is_some() {
                return None;
            }
            let (elements, end) = split_array(&text[value..], DEEPEST)?;
            let elements = elements
                .into_iter()
                .map(|(s, e)| (value + s, value + e))
                .collect();
            i = value + end;
            found = Some((value..i, elements));
        } else {
            i = value + value_end(&bytes[value..], usize::MAX)?;
        }
        i = skip_space(bytes, i);
        match bytes.get(i)? {
            b',' => i = skip_space(bytes, i + 1),
            b'}' => break,
            _ => return None,
        }
    }
    found
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|&b| is_json_space(b)) {
        i += 1;
    }
    i
}

/// Where the string starting at `bytes[0]` (a quote) ends: just past its
/// closing quote, escapes stepped over.
fn string_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// Samples nested deeper than this are left to the whole parse. A sample's
/// `cores` is read as a `serde_json::Value`, which `serde_json` refuses
/// past 127 levels of the whole case (its object and its samples' array
/// being two of them); parsed alone, a sample would have two more.
const DEEPEST: usize = 100;

/// Where the value starting at `bytes[0]` ends, by nesting outside strings:
/// a delimiter, not a check (`serde_json` checks it). `None` past
/// `deepest` levels.
fn value_end(bytes: &[u8], deepest: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    loop {
        match *bytes.get(i)? {
            b'"' => {
                i += string_end(&bytes[i..])?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'{' | b'[' if depth == deepest => return None,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return Some(i),
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            b if depth == 0 && is_json_space(b) => return Some(i),
            _ => {}
        }
        i += 1;
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
    let mut store = Store::in_memory()?;
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

    // Samples are processed in the order received, the order they are kept in.
    let pending = &case.samples.pending[..];
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
    /// `received_at` in nanoseconds (`i64::MIN` for the earliest instant,
    /// given to a sample with neither), the order samples are taken in:
    /// worked out once, not at each of a sort's 14 million comparisons.
    /// As precise as `received_at`, which the runs are compared with.
    received_ns: i64,
    index: usize,
    account: u32,
    cluster: u32,
    node: u32,
    cores: Option<u32>,
    at: Option<DateTime<Utc>>,
}

impl Pending {
    /// The order samples are taken in: as received, ties in the file's order.
    fn order(&self) -> (i64, usize) {
        (self.received_ns, self.index)
    }
}

/// The samples of a case, reduced to [`Pending`] records as they are parsed,
/// so a large case is never held twice in memory.
#[derive(Debug, Default)]
pub struct CaseSamples<'a> {
    names: Names<'a>,
    /// In the order received ([`Pending::order`]).
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
    let (elements, _) =
        split_array(text, usize::MAX).ok_or("samples: expected an array of samples")?;
    parse_samples_split(text, &elements)
}

/// Parses the samples at `elements`, byte ranges of `text`.
fn parse_samples_split<'a>(
    text: &'a str,
    elements: &[(usize, usize)],
) -> Result<CaseSamples<'a>, String> {
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
    let mut runs = Vec::with_capacity(parts.len());
    for part in parts {
        let part = part?;
        // Re-intern the part's names into the whole case's table.
        let ids: Vec<u32> = part
            .names
            .names
            .into_iter()
            .map(|n| out.names.intern(n))
            .collect();
        runs.push((part.pending.into_iter().peekable(), ids));
    }
    // Each part is in order of receipt: merged, so is the whole.
    loop {
        let mut first: Option<(usize, (i64, usize))> = None;
        for (k, (run, _)) in runs.iter_mut().enumerate() {
            if let Some(order) = run.peek().map(Pending::order) {
                if first.is_none_or(|(_, o)| order < o) {
                    first = Some((k, order));
                }
            }
        }
        let Some((k, _)) = first else { break };
        let (run, ids) = &mut runs[k];
        let mut p = run.next().expect("a run with a next sample");
        p.account = ids[p.account as usize];
        p.cluster = ids[p.cluster as usize];
        p.node = ids[p.node as usize];
        out.pending.push(p);
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
            received_ns: received_at.timestamp_nanos_opt().unwrap_or(i64::MIN),
            index,
            account: names.intern(s.account.0.unwrap_or_default()),
            cluster: names.intern(s.cluster.0.unwrap_or_default()),
            node: names.intern(s.node.0.unwrap_or_default()),
            cores: s.cores.as_ref().and_then(parse_cores),
            at,
        });
    }
    out.pending.sort_unstable_by_key(Pending::order);
    Ok(out)
}

/// The byte ranges of the elements of the JSON array at the start of
/// `text`, and where it ends (just past its `]`), by nesting outside
/// strings: `None` unless the elements are separated by single commas. The
/// elements themselves are checked when each is parsed. Most of a case's
/// bytes are inside strings, which are skipped to their end at once.
/// `None` also for an element nested past `deepest` levels.
fn split_array(text: &str, deepest: usize) -> Option<(Spans, usize)> {
    let bytes = text.as_bytes();
    let mut i = skip_space(bytes, 0);
    if bytes.get(i) != Some(&b'[') {
        return None;
    }
    let mut elements = Vec::new();
    i = skip_space(bytes, i + 1);
    if bytes.get(i) == Some(&b']') {
        return Some((elements, i + 1));
    }
    loop {
        let start = i;
        i += value_end(&bytes[i..], deepest)?;
        if i == start {
            return None;
        }
        elements.push((start, i));
        i = skip_space(bytes, i);
        match bytes.get(i)? {
            b',' => i = skip_space(bytes, i + 1),
            b']' => return Some((elements, i + 1)),
            _ => return None,
        }
    }
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
    chunk: &[Pending],
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a parsed case's samples say, in the order they are taken in.
    fn taken(case: &Case<'_>) -> Vec<String> {
        let names = &case.samples.names;
        case.samples
            .pending
            .iter()
            .map(|p| {
                format!(
                    "{} {} {:?} {:?} {:?} {:?} {:?} {:?}",
                    p.index,
                    p.received_ns,
                    p.received_at,
                    names.get(p.account),
                    names.get(p.cluster),
                    names.get(p.node),
                    p.cores,
                    p.at
                )
            })
            .collect()
    }

    /// The case parsed whole, the way a case the quick parse declines is.
    fn parsed_whole(text: &str) -> Case<'_> {
        serde_json::from_str(text).expect("a well-formed case")
    }

    fn sample(node: &str, at: &str, received: &str) -> String {
        serde_json::json!({
            "account": "acme", "cluster": "c", "node": node, "cores": 4, "at": at, "received": received,
        })
        .to_string()
    }

    #[test]
    fn a_case_parsed_quickly_takes_its_samples_in_the_order_received_as_a_whole_parse_does() {
        // Past PARALLEL_FROM, so that parts are parsed apart and merged;
        // names with quotes, escapes, brackets and commas in them.
        let names = ["n\"1", "n\\2", "n],{3", "n\u{e9}4", "n\\\"}5"];
        let samples: Vec<String> = (0..PARALLEL_FROM + 517)
            .map(|i| {
                let minute = (i * 7919) % 1440;
                sample(
                    names[i % names.len()],
                    &format!("2026-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60),
                    &format!("2026-01-02T{:02}:{:02}:00Z", minute / 60, minute % 60),
                )
            })
            .collect();
        let text = format!(
            "{{\"name\": \"x\",\r\n \"samples\" :\t[ {} ] ,\n \"runs\": [\"2026-01-03T00:00:00Z\"],\"accounts\":[{{\"id\":\"acme\"}}]}}\n",
            samples.join(" ,\n")
        );
        let quick = parse_case_quickly(text.as_bytes()).expect("taken quickly");
        let whole = parsed_whole(&text);
        assert_eq!(taken(&quick), taken(&whole));
        assert_eq!(quick.runs, whole.runs);
        assert_eq!(quick.accounts.len(), 1);
        let order: Vec<(i64, usize)> = quick.samples.pending.iter().map(Pending::order).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "in the order received, ties in the file's order"
        );
        assert_eq!(order.len(), PARALLEL_FROM + 517);
    }

    #[test]
    fn a_case_the_quick_parse_cannot_vouch_for_is_parsed_whole() {
        let one = sample("n", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        for (text, why) in [
            (
                format!("{{\"samples\":[{one}],\"samples\":[]}}"),
                "samples twice",
            ),
            (
                format!("{{\"sam\\u0070les\":[{one}]}}"),
                "an escape in a member's name",
            ),
            (
                format!("{{\"samples\":[{one},]}}"),
                "a comma after the last sample",
            ),
            (format!("{{\"samples\":[{one},,{one}]}}"), "two commas"),
            (format!("{{\"samples\":[{one}\u{c},{one}]}}"), "a form feed"),
            (format!("{{\"samples\":[{one} {one}]}}"), "no comma"),
            (format!("{{\"samples\":[{one}]}} x"), "text after the case"),
            (format!("{{\"samples\":{one}}}"), "samples not an array"),
            (
                format!("{{\"samples\":[{}]}}", "[".repeat(150) + &"]".repeat(150)),
                "deep nesting",
            ),
            (
                "{\"samples\":[{\"node\":[}]}".to_string(),
                "brackets that do not match",
            ),
            ("[]".to_string(), "not an object"),
        ] {
            assert!(
                parse_case_quickly(text.as_bytes()).is_none(),
                "{why}: declined"
            );
        }
        // Declined, then parsed whole: the escaped name is `samples`.
        let escaped = format!("{{\"sam\\u0070les\":[{one}]}}");
        let case = parse_case(escaped.as_bytes()).unwrap();
        assert_eq!(case.samples.pending.len(), 1);
        // And a malformed case is still an error naming where.
        let err = parse_case(format!("{{\"samples\":[{one},]}}").as_bytes()).unwrap_err();
        assert!(format!("{err:#}").contains("malformed case"), "{err:#}");
        let err =
            parse_case(format!("{{\"samples\":[{one}],\"samples\":[]}}").as_bytes()).unwrap_err();
        assert!(format!("{err:#}").contains("samples"), "{err:#}");
    }

    #[test]
    fn samples_received_within_one_millisecond_are_taken_in_the_order_received() {
        let text = format!(
            "{{\"samples\":[{},{}]}}",
            sample("a", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.0009Z"),
            sample("b", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.0001Z"),
        );
        for case in [
            parse_case_quickly(text.as_bytes()).unwrap(),
            parsed_whole(&text),
        ] {
            let order: Vec<usize> = case.samples.pending.iter().map(|p| p.index).collect();
            assert_eq!(order, [1, 0]);
        }
    }

    #[test]
    fn a_deeply_nested_field_the_service_ignores_is_read_by_the_whole_parse() {
        // Past DEEPEST: declined quickly, taken whole as before.
        let deep = format!("{}{}", "[".repeat(110), "]".repeat(110));
        let one = format!(
            "{{\"node\":\"n\",\"cores\":2,\"at\":\"2026-01-01T00:00:00Z\",\"notes\":{deep}}}"
        );
        let text = format!("{{\"samples\":[{one}]}}");
        assert!(parse_case_quickly(text.as_bytes()).is_none());
        let case = parse_case(text.as_bytes()).expect("the whole parse reads it");
        assert_eq!(case.samples.pending.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any names, any order of receipt, any spacing JSON allows: the
        /// quick parse says what the whole parse says.
        #[test]
        fn the_quick_parse_agrees_with_the_whole_parse(
            rows in proptest::collection::vec(("\\PC{0,12}", 0u32..3600, any::<bool>()), 0..40),
            space in "[ \t\r\n]{0,3}",
        ) {
            let samples: Vec<String> = rows
                .iter()
                .map(|(node, second, has_received)| {
                    let at = format!("2026-01-01T00:{:02}:{:02}Z", second / 60, second % 60);
                    let mut v = serde_json::json!({"node": node, "cores": 2, "at": at});
                    if *has_received {
                        v["received"] = serde_json::json!(format!("2026-01-01T01:{:02}:00Z", second % 60));
                    }
                    v.to_string()
                })
                .collect();
            let text = format!(
                "{space}{{{space}\"samples\"{space}:{space}[{space}{}{space}]{space},\"runs\":[]{space}}}{space}",
                samples.join(&format!("{space},{space}"))
            );
            let quick = parse_case_quickly(text.as_bytes()).expect("taken quickly");
            prop_assert_eq!(taken(&quick), taken(&parsed_whole(&text)));
        }
    }
}
