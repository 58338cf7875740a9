//! The agent's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Cause {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Default)]
pub struct Metrics {
    pub samples_taken: Counter,
    pub samples_pushed: Counter,
    pub samples_pending: Gauge,
    pub samples_dropped: Family<Cause, Counter>,
    pub samples_rejected: Family<Reason, Counter>,
    pub push_errors: Family<Kind, Counter>,
    pub tls_errors: Counter,
    pub last_push_success: Gauge<f64, AtomicU64>,
    pub spool_bytes: Gauge,
    pub spool_write_errors: Counter,
    pub node_cores: Gauge,
    pub offset_seconds: Gauge,
    pub next_push: Gauge,
    /// Images in the node's last list.
    pub images_listed: Gauge,
    /// Image lists, by result: listed, then the aggregator's answer.
    pub image_lists: Family<Kind, Counter>,
    /// Failures listing or delivering the images, by kind.
    pub images_errors: Family<Kind, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("core_meter_agent");
        r.register(
            "samples_taken",
            "Samples taken of the node's cores",
            self.samples_taken.clone(),
        );
        r.register(
            "samples_pushed",
            "Samples the aggregator acknowledged (accepted or duplicate)",
            self.samples_pushed.clone(),
        );
        r.register(
            "samples_pending",
            "Samples waiting to be acknowledged",
            self.samples_pending.clone(),
        );
        r.register(
            "samples_dropped",
            "Samples given up, by cause (spool_full, rejected, corrupt, memory_full)",
            self.samples_dropped.clone(),
        );
        r.register(
            "samples_rejected",
            "Samples the aggregator rejected, by its reason (in_future and too_old mean this node's clock is likely wrong); also counted in samples_dropped{cause=\"rejected\"}",
            self.samples_rejected.clone(),
        );
        r.register(
            "push_errors",
            "Failed pushes, by kind",
            self.push_errors.clone(),
        );
        r.register(
            "tls_errors",
            "Pushes that failed in TLS: the aggregator's certificate could not be verified, or it refused the handshake (also counted in push_errors{kind=\"tls\"})",
            self.tls_errors.clone(),
        );
        r.register(
            "last_push_success_timestamp_seconds",
            "Unix time of the last acknowledged push",
            self.last_push_success.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of pending samples on disk",
            self.spool_bytes.clone(),
        );
        r.register(
            "spool_write_errors",
            "Samples that could not be written to the spool (kept in memory instead)",
            self.spool_write_errors.clone(),
        );
        r.register(
            "node_cores",
            "The node's cores at the last sample",
            self.node_cores.clone(),
        );
        r.register(
            "images_listed",
            "Images in the node's last list from the container runtime",
            self.images_listed.clone(),
        );
        r.register(
            "image_lists",
            "Image lists, by result: listed from the runtime, then what the aggregator answered (stored, stale, rejected)",
            self.image_lists.clone(),
        );
        r.register(
            "images_errors",
            "Failures listing the node's images (no_socket, connect, list, timeout) or delivering them (push)",
            self.images_errors.clone(),
        );
        r.register(
            "next_push_timestamp_seconds",
            "Unix time of the next planned push: the next sample, or sooner a retry after a failed push (a refused one waits for the next sample)",
            self.next_push.clone(),
        );
        r.register(
            "schedule_offset_seconds",
            "This node's offset into each sampling interval",
            self.offset_seconds.clone(),
        );
    }

    pub fn image_lists(&self, result: &str) {
        self.image_lists
            .get_or_create(&Kind {
                kind: result.to_string(),
            })
            .inc();
    }

    pub fn images_error(&self, kind: &str) {
        self.images_errors
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn dropped(&self, cause: &str, n: u64) {
        self.samples_dropped
            .get_or_create(&Cause {
                cause: cause.to_string(),
            })
            .inc_by(n);
    }

    pub fn rejected(&self, reason: &str, n: u64) {
        self.samples_rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    pub fn push_error(&self, kind: &str) {
        self.push_errors
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }
}
