//! The service's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SampleLabels {
    pub result: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

pub struct ServiceMetrics {
    /// Log-storage usage reports, by result (`stored`, `stale`).
    pub log_storage_reports: Family<ResultLabels, Counter>,
    /// Purges decided from usage reports, the days and bytes they named.
    pub log_storage_purges: Counter,
    pub log_storage_purged_days: Counter,
    pub log_storage_purged_bytes: Counter,
    /// Over every account's last report: the quotas and the bytes used
    /// (totals only: no label per account).
    pub log_storage_quota_bytes: Gauge,
    pub log_storage_used_bytes: Gauge,
    pub ingest_samples: Family<SampleLabels, Counter>,
    pub ingest_commits: Counter,
    pub ingest_commit_samples: Histogram,
    pub requests: Family<RouteLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram>,
    pub billing_runs: Counter,
    pub billing_lines: Family<KindLabels, Counter>,
    pub outbox_pending: Gauge,
    pub outbox_delivered: Counter,
    pub outbox_failures: Counter,
    pub last_billing_run: Gauge<f64, AtomicU64>,
    pub retention_pruned_rows: Family<TableLabels, Counter>,
    pub notices_delivered: Family<ChannelLabels, Counter>,
    pub notice_delivery_failures: Family<ChannelLabels, Counter>,
    pub notice_outbox_pending: Gauge,
    pub notices_issued: Family<KindLabels, Counter>,
    pub account_state_changes: Family<StateLabels, Counter>,
    pub licence_renewals: Counter,
    pub lifecycle_step_failures: Counter,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub tls_handshake_failures: Counter,
    pub client_certificate_refusals: Counter,
    /// Panics caught, by where: `request` (a handler), or the store
    /// connection held (`writer`, `reader`, `tokens`).
    pub panics: Family<PlaceLabels, Counter>,
    /// Image lists and registry images, by status (`stored`, `stale`, `rejected`).
    pub image_lists: Family<ResultLabels, Counter>,
    /// Images the inventory had never seen.
    pub images_new: Counter,
    /// Image-scan authorizations consumed, by how (`manual`, `auto`).
    pub image_authorizations: Family<HowLabels, Counter>,
    /// Authorizations refused: a batch refused whole (`insufficient`), or
    /// an image first seen that automatic authorization left unauthorized
    /// (`reach_limit`, `insufficient`).
    pub image_authorization_refusals: Family<HowLabels, Counter>,
}

/// How an authorization was consumed or why it was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabels {
    pub how: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaceLabels {
    pub place: String,
}

/// How an attempt ended: `ok` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// An account state a change led to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        ServiceMetrics {
            log_storage_reports: Family::default(),
            log_storage_purges: Counter::default(),
            log_storage_purged_days: Counter::default(),
            log_storage_purged_bytes: Counter::default(),
            log_storage_quota_bytes: Gauge::default(),
            log_storage_used_bytes: Gauge::default(),
            ingest_samples: Family::default(),
            ingest_commits: Counter::default(),
            ingest_commit_samples: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 4.0, 9))
            }),
            billing_runs: Counter::default(),
            billing_lines: Family::default(),
            outbox_pending: Gauge::default(),
            outbox_delivered: Counter::default(),
            outbox_failures: Counter::default(),
            last_billing_run: Gauge::default(),
            retention_pruned_rows: Family::default(),
            notice_outbox_pending: Gauge::default(),
            notices_issued: Family::default(),
            account_state_changes: Family::default(),
            licence_renewals: Counter::default(),
            lifecycle_step_failures: Counter::default(),
            notices_delivered: Family::default(),
            notice_delivery_failures: Family::default(),
            tls_reloads: Family::default(),
            tls_handshake_failures: Counter::default(),
            client_certificate_refusals: Counter::default(),
            panics: Family::default(),
            image_lists: Family::default(),
            images_new: Counter::default(),
            image_authorizations: Family::default(),
            image_authorization_refusals: Family::default(),
        }
    }
}

impl ServiceMetrics {
    /// Counts a node's list or a registry batch (`status`: stored, stale,
    /// rejected), the images it brought and what automatic authorization did.
    pub fn images_pushed(&self, status: &str, new: u64, auto_authorized: u64, auto_refused: u64) {
        self.image_lists
            .get_or_create(&ResultLabels {
                result: status.to_string(),
            })
            .inc();
        self.images_new.inc_by(new);
        self.images_authorized("auto", auto_authorized);
        if auto_refused > 0 {
            self.images_refused("auto", auto_refused);
        }
    }

    /// Counts `n` authorizations consumed `how`.
    pub fn images_authorized(&self, how: &str, n: u64) {
        if n > 0 {
            self.image_authorizations
                .get_or_create(&HowLabels {
                    how: how.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Counts `n` refusals of `how`.
    pub fn images_refused(&self, how: &str, n: u64) {
        self.image_authorization_refusals
            .get_or_create(&HowLabels {
                how: how.to_string(),
            })
            .inc_by(n);
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("core_meter");
        r.register(
            "log_storage_reports",
            "Log-storage usage reports, by result (stored, stale)",
            self.log_storage_reports.clone(),
        );
        r.register(
            "log_storage_purges",
            "Purges decided from log-storage usage reports",
            self.log_storage_purges.clone(),
        );
        r.register(
            "log_storage_purged_days",
            "Log days the purges named",
            self.log_storage_purged_days.clone(),
        );
        r.register(
            "log_storage_purged_bytes",
            "Bytes of the log days the purges named",
            self.log_storage_purged_bytes.clone(),
        );
        r.register(
            "log_storage_quota_bytes",
            "The log-storage quotas of every account's last usage report, summed",
            self.log_storage_quota_bytes.clone(),
        );
        r.register(
            "log_storage_used_bytes",
            "The log-storage bytes used in every account's last usage report, summed",
            self.log_storage_used_bytes.clone(),
        );
        r.register(
            "image_lists",
            "Image lists from nodes and registry batches, by result (stored, stale, rejected)",
            self.image_lists.clone(),
        );
        r.register(
            "images_new",
            "Image IDs the inventory had never seen",
            self.images_new.clone(),
        );
        r.register(
            "image_authorizations",
            "Image-scan authorizations consumed, by how (manual, auto)",
            self.image_authorizations.clone(),
        );
        r.register(
            "image_authorization_refusals",
            "Authorizations refused: a manual batch refused whole (manual), or images first seen left unauthorized by automatic authorization (auto)",
            self.image_authorization_refusals.clone(),
        );
        r.register(
            "ingest_samples",
            "Samples received, by result (accepted, duplicate, rejected) and rejection reason",
            self.ingest_samples.clone(),
        );
        r.register(
            "ingest_commits",
            "Ingest transactions committed (one per group of requests)",
            self.ingest_commits.clone(),
        );
        r.register(
            "ingest_commit_samples",
            "Samples per ingest commit: more than one request's worth means commits are shared",
            self.ingest_commit_samples.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests, by route and status",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route and status",
            self.request_seconds.clone(),
        );
        r.register(
            "billing_runs",
            "Billing runs finished",
            self.billing_runs.clone(),
        );
        r.register(
            "billing_lines",
            "Bill lines issued, by kind",
            self.billing_lines.clone(),
        );
        r.register(
            "outbox_pending",
            "Bill lines not yet taken by the billing backend",
            self.outbox_pending.clone(),
        );
        r.register(
            "outbox_delivered",
            "Bill lines the billing backend took",
            self.outbox_delivered.clone(),
        );
        r.register(
            "outbox_failures",
            "Failed deliveries of bill lines",
            self.outbox_failures.clone(),
        );
        r.register(
            "last_billing_run_timestamp_seconds",
            "Unix time of the last finished billing run",
            self.last_billing_run.clone(),
        );
        r.register(
            "retention_pruned_rows",
            "Rows retention pruned, by table (samples, rejections)",
            self.retention_pruned_rows.clone(),
        );
        r.register(
            "notices_delivered",
            "Notice deliveries their channel took, by channel (webhook, email)",
            self.notices_delivered.clone(),
        );
        r.register(
            "notice_delivery_failures",
            "Failed attempts to deliver a notice, by channel (webhook, email)",
            self.notice_delivery_failures.clone(),
        );
        r.register(
            "notice_outbox_pending",
            "Notice deliveries (one per notice and channel) not yet taken",
            self.notice_outbox_pending.clone(),
        );
        r.register(
            "notices_issued",
            "Notices the 02:00 runs issued to account contacts, by kind (licence_short, issued with bills, is not counted here)",
            self.notices_issued.clone(),
        );
        r.register(
            "account_state_changes",
            "Account state changes the 02:00 runs recorded, by the state reached",
            self.account_state_changes.clone(),
        );
        r.register(
            "licence_renewals",
            "Licences auto-renewed from a prepaid balance",
            self.licence_renewals.clone(),
        );
        r.register(
            "lifecycle_step_failures",
            "Accounts whose lifecycle step failed in a run (undone, tried again at the next)",
            self.lifecycle_step_failures.clone(),
        );
        r.register(
            "tls_reloads",
            "Changes of the TLS files taken (ok) or refused, keeping the certificate in force (failed)",
            self.tls_reloads.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Connections closed before or during the TLS handshake (plain HTTP sent to the TLS port, a client that does not trust the certificate, a client certificate the client CA did not sign, a timeout)",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "client_certificate_refusals",
            "Pushes refused because the connection presented no client certificate while tls_client_ca is set",
            self.client_certificate_refusals.clone(),
        );
        r.register(
            "panics_caught",
            "Panics caught and answered 500 while the service went on: in a request handler (place=request) or while holding a store connection (place=writer, reader, tokens); each is a bug to report",
            self.panics.clone(),
        );
    }
}
