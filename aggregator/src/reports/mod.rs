//! The daily overage report: what was billed for an account's day and why, hour by hour and node by node, from the stored data through the same rules code as the bill.

pub mod csv;
pub mod export;
pub mod html;
pub mod statement;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use shared::bill::BillLine;
use shared::overage::{
    buckets_overlapping, licensed_per_bucket, node_hours, overage_with, NodeSample,
};
use shared::zone::Timeline;

use crate::config::BillingConfig;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct DailyReport {
    pub account: String,
    pub day: NaiveDate,
    pub timezone: String,
    /// The day is not yet due: a preview of the coming 02:00 bill.
    pub provisional: bool,
    pub generated_at: DateTime<Utc>,
    pub figures: Figures,
    /// Every line issued for the day: the daily line and the adjustments since.
    pub lines: Vec<BillLine>,
    pub billed_amount: Decimal,
    pub hours: Vec<Hour>,
    pub clusters: Vec<ClusterShare>,
    pub nodes: Vec<NodeLine>,
    /// Samples of the day the service refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Hours in which total cores exceeded licensed cores.
    pub licence_short_hours: u32,
    /// When licensed cores stayed above total cores all day: the smallest surplus (a refund hint).
    pub surplus_cores: Option<u64>,
    /// The image-scan add-on's day (SPEC 10.2, 10.3).
    pub images: crate::store::ImagesDay,
    /// Log storage's day (SPEC 10.4): its quota, the bytes used, the purges.
    pub log_storage: crate::store::LogStorageDay,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub hours: u32,
    pub excess_core_hours: u64,
    pub average_excess_cores: Decimal,
    pub cap_cores: u32,
    pub billable_cores: Decimal,
    pub amount: Decimal,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hour {
    /// The local wall-clock start of the hour, with its offset.
    pub start: String,
    pub total_cores: u64,
    pub licensed_cores: u64,
    pub excess_cores: u64,
    /// A trial's hour, or one while the service was stopped: never billed (SPEC section 8).
    pub unbilled: bool,
    /// Nodes counted in this hour by gap bridging, as `cluster/node`.
    pub bridged: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterShare {
    pub cluster: String,
    /// The cluster's share of the day's excess core-hours (each hour's excess
    /// split in proportion to the cores each node held), two places.
    pub excess_core_hours: Decimal,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeLine {
    pub cluster: String,
    pub node: String,
    pub hours_observed: u32,
    pub hours_bridged: u32,
    /// Hours without a sample between the node's first and last of the day.
    pub gap_hours: u32,
    /// Reported earlier in the day but not in its last hours: since when.
    pub silent_since: Option<DateTime<Utc>>,
    /// Seqs between the node's lowest and highest of the day that never arrived.
    pub missing_seqs: u64,
    pub excess_core_hours: Decimal,
}

/// Builds the report of `account` for `day` as the stored data stand at `now`;
/// [`StoreError::SamplesPruned`] when retention pruned samples the day reads.
pub fn daily_report(
    store: &mut Store,
    config: &BillingConfig,
    account: &str,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<DailyReport, StoreError> {
    let zone = &config.zone;
    let acct = store
        .accounts()
        .account(account)?
        .ok_or_else(|| StoreError::UnknownAccount(account.to_string()))?;
    // A day whose samples retention pruned would show as a day without
    // nodes; it is refused, naming the first day kept, instead.
    store
        .billing()
        .require_kept(zone, day, config.rules.reach_hours())?;
    store.accounts().require_not_deleted(account, zone, day)?;
    let timeline = Timeline::new(zone, day, day, config.rules.reach_hours());
    let (from, to) = timeline.span_ms();
    let stored = store.reads().audit_samples(
        account,
        DateTime::from_timestamp_millis(from).expect("in range"),
        DateTime::from_timestamp_millis(to).expect("in range"),
    )?;
    let mut ids: HashMap<(String, String), u64> = HashMap::new();
    let mut names: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::with_capacity(stored.len());
    let mut seqs: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    let (day_start, day_end) = (zone.day_start(day), zone.day_end(day));
    for s in &stored {
        let key = (s.cluster.clone(), s.node.clone());
        let id = *ids.entry(key.clone()).or_insert_with(|| {
            names.push(key);
            names.len() as u64 - 1
        });
        samples.push(NodeSample {
            node: id,
            at_ms: s.at.timestamp_millis(),
            cores: s.cores,
        });
        if let Some(seq) = s.seq.filter(|_| s.at >= day_start && s.at < day_end) {
            seqs.entry(id).or_default().push(seq);
        }
    }
    let licences = store.accounts().licences(&acct)?;
    let caps = store.accounts().caps(&acct)?;
    let unbilled = store.billing().unbilled_periods(&acct)?;
    let free = buckets_overlapping(&timeline, &unbilled);
    // The figures come from the bill's own function on the same samples.
    let figures = overage_with(
        zone,
        &timeline,
        &samples,
        &licences,
        &caps,
        &unbilled,
        &config.rules,
    )
    .into_iter()
    .find(|f| f.day == day)
    .expect("the timeline holds the day");
    let (_, range) = timeline
        .days()
        .find(|(d, _)| *d == day)
        .expect("the timeline holds the day");
    let hours_of_nodes = node_hours(&timeline, &samples, config.rules.gap_bridge_hours);
    let licensed = licensed_per_bucket(&timeline, &licences);
    let mut total = vec![0u64; timeline.len()];
    for h in &hours_of_nodes {
        total[h.bucket] += u64::from(h.cores);
    }
    let label = |id: u64| format!("{}/{}", names[id as usize].0, names[id as usize].1);

    let mut hours: Vec<Hour> = range
        .clone()
        .map(|b| {
            let (start, _) = timeline.bucket_bounds_ms(b);
            let start = DateTime::from_timestamp_millis(start).expect("in range");
            Hour {
                start: start
                    .with_timezone(&zone.tz())
                    .to_rfc3339_opts(SecondsFormat::Secs, false),
                total_cores: total[b],
                licensed_cores: licensed[b],
                excess_cores: if free[b] {
                    0
                } else {
                    total[b].saturating_sub(licensed[b])
                },
                unbilled: free[b],
                bridged: Vec::new(),
            }
        })
        .collect();
    // Per node: observed, bridged, share of the excess.
    let mut per_node: BTreeMap<u64, NodeLine> = BTreeMap::new();
    let mut sampled_buckets: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for h in hours_of_nodes.iter().filter(|h| range.contains(&h.bucket)) {
        let line = per_node.entry(h.node).or_insert_with(|| NodeLine {
            cluster: names[h.node as usize].0.clone(),
            node: names[h.node as usize].1.clone(),
            hours_observed: 0,
            hours_bridged: 0,
            gap_hours: 0,
            silent_since: None,
            missing_seqs: 0,
            excess_core_hours: Decimal::ZERO,
        });
        let row = &mut hours[h.bucket - range.start];
        if h.bridged {
            line.hours_bridged += 1;
            row.bridged.push(label(h.node));
        } else {
            line.hours_observed += 1;
            sampled_buckets.entry(h.node).or_default().push(h.bucket);
        }
        if row.excess_cores > 0 && row.total_cores > 0 {
            line.excess_core_hours += Decimal::from(h.cores) * Decimal::from(row.excess_cores)
                / Decimal::from(row.total_cores);
        }
    }
    // Completeness: gaps, silence, missing seqs.
    let observed_until = now.min(day_end);
    let quiet = TimeDelta::hours(i64::from(config.rules.reach_hours()));
    for (node, line) in per_node.iter_mut() {
        if let Some(buckets) = sampled_buckets.get(node) {
            let (first, last) = (buckets[0], buckets[buckets.len() - 1]);
            line.gap_hours = u32::try_from(last - first + 1 - buckets.len()).unwrap_or(u32::MAX);
            let last_end = DateTime::from_timestamp_millis(timeline.bucket_bounds_ms(last).1)
                .expect("in range");
            if observed_until - last_end >= quiet {
                line.silent_since = Some(last_end);
            }
        }
        if let Some(list) = seqs.get_mut(node) {
            list.sort_unstable();
            list.dedup();
            let span = (list[list.len() - 1] - list[0] + 1) as u64;
            line.missing_seqs = span - list.len() as u64;
        }
        line.excess_core_hours = line.excess_core_hours.round_dp(2);
    }
    let mut clusters: BTreeMap<String, Decimal> = BTreeMap::new();
    for line in per_node.values() {
        *clusters.entry(line.cluster.clone()).or_default() += line.excess_core_hours;
    }
    let lines = store.reads().bill_lines(Some(account), Some(day))?;
    let rejected: BTreeMap<String, u64> = store
        .reads()
        .rejections(account, day_start, day_end)?
        .into_iter()
        .collect();
    let licence_short_hours = hours
        .iter()
        .filter(|h| h.total_cores > h.licensed_cores)
        .count() as u32;
    let surplus_cores = hours
        .iter()
        .map(|h| {
            h.licensed_cores
                .checked_sub(h.total_cores)
                .filter(|s| *s > 0)
        })
        .collect::<Option<Vec<u64>>>()
        .and_then(|s| s.into_iter().min());
    Ok(DailyReport {
        account: account.to_string(),
        day,
        timezone: zone.name().to_string(),
        provisional: now < zone.due_at(day),
        generated_at: now,
        billed_amount: lines.iter().map(|l| l.amount).sum(),
        figures: Figures {
            hours: figures.hours,
            excess_core_hours: figures.excess_core_hours,
            average_excess_cores: figures.average_excess_cores,
            cap_cores: figures.cap_cores,
            billable_cores: figures.billable_cores,
            amount: figures.amount,
            currency: config.currency.clone(),
        },
        lines,
        hours,
        clusters: clusters
            .into_iter()
            .map(|(cluster, excess_core_hours)| ClusterShare {
                cluster,
                excess_core_hours,
            })
            .collect(),
        nodes: {
            let mut nodes: Vec<NodeLine> = per_node.into_values().collect();
            nodes.sort_by(|a, b| (&a.cluster, &a.node).cmp(&(&b.cluster, &b.node)));
            nodes
        },
        rejected,
        licence_short_hours,
        surplus_cores,
        images: store.images().day(account, day_start, day_end)?,
        log_storage: store
            .log_storage()
            .day(account, day, (day_start, day_end))?,
    })
}

/// The report as text for a terminal.
pub fn render_table(r: &DailyReport) -> String {
    let mut out = String::new();
    let f = &r.figures;
    let _ = writeln!(
        out,
        "Daily overage: account {}, {} ({}){}",
        r.account,
        r.day,
        r.timezone,
        if r.provisional {
            "  [PROVISIONAL: not yet billed]"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "excess {} core-hours over {} h, average {} cores, cap {}, billable {} cores, amount {} {}",
        f.excess_core_hours,
        f.hours,
        f.average_excess_cores,
        f.cap_cores,
        f.billable_cores,
        f.amount,
        f.currency
    );
    for l in &r.lines {
        let _ = writeln!(
            out,
            "  {:<10} {:>10} {}  issued {}  key {}",
            l.kind.as_str(),
            l.amount,
            l.currency,
            l.issued_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            l.idempotency_key
        );
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:>8} {:>9} {:>7}  bridged",
        "hour", "total", "licensed", "excess"
    );
    for h in &r.hours {
        let _ = writeln!(
            out,
            "{:<26} {:>8} {:>9} {:>7}  {}",
            h.start,
            h.total_cores,
            h.licensed_cores,
            h.excess_cores,
            h.bridged.join(" ")
        );
    }
    let _ = writeln!(out, "\n{:<20} {:>12}", "cluster", "excess c-h");
    for c in &r.clusters {
        let _ = writeln!(out, "{:<20} {:>12}", c.cluster, c.excess_core_hours);
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:<24} {:>5} {:>7} {:>4} {:>8} {:>10}  silent since",
        "cluster", "node", "seen", "bridged", "gaps", "missing", "excess c-h"
    );
    for n in &r.nodes {
        let silent = n
            .silent_since
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:>5} {:>7} {:>4} {:>8} {:>10}  {}",
            n.cluster,
            n.node,
            n.hours_observed,
            n.hours_bridged,
            n.gap_hours,
            n.missing_seqs,
            n.excess_core_hours,
            silent
        );
    }
    if !r.rejected.is_empty() {
        let list: Vec<String> = r
            .rejected
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(out, "\nrejected samples: {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "\nlicence short in {} of {} hours",
        r.licence_short_hours, f.hours
    );
    if let Some(s) = r.surplus_cores {
        let _ = writeln!(
            out,
            "refund hint: at least {s} licensed cores stayed unused all day"
        );
    }
    let i = &r.images;
    let _ = writeln!(
        out,
        "images: {} seen ({} new), {} authorized, {} unauthorized; {} authorizations consumed, {} automatic ones refused",
        i.seen, i.new, i.authorized, i.unauthorized, i.consumed, i.refused
    );
    let l = &r.log_storage;
    let _ = writeln!(
        out,
        "log storage: {}, quota {} bytes, {} used; {} purges of {} bytes",
        l.state.map_or("never ordered", |s| s.as_str()),
        l.quota_bytes,
        l.used_bytes
            .map_or_else(|| "no report".to_string(), |u| format!("{u} bytes")),
        l.purges,
        l.purged_bytes
    );
    out
}

/// The hour-by-hour table as CSV; no cell a spreadsheet would run as a
/// formula (`csv_out`).
pub fn render_csv(r: &DailyReport) -> String {
    crate::reports::csv::write_csv(
        &[
            "account",
            "day",
            "hour_start",
            "total_cores",
            "licensed_cores",
            "excess_cores",
            "bridged_nodes",
            "provisional",
        ],
        r.hours.iter().map(|h| {
            [
                r.account.clone(),
                r.day.to_string(),
                h.start.clone(),
                h.total_cores.to_string(),
                h.licensed_cores.to_string(),
                h.excess_cores.to_string(),
                h.bridged.join(" "),
                r.provisional.to_string(),
            ]
        }),
    )
}
