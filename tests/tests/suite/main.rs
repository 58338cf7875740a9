//! The end-to-end tests, one binary: the conformance cases, the real
//! binaries together (crashes, SIGTERM, TLS on every hop), the PostgreSQL
//! harness, and the campaign (crashes, partitions, full disks, hostile
//! input, clocks and an old spool). The deploy policy test stays a binary
//! of its own: `tests/tools/deploy-mutations` runs it once per edit.

mod campaign_clocks_upgrade;
mod campaign_crashes;
mod campaign_full_disk;
mod campaign_hostile;
mod campaign_partition;
mod conformance;
mod images_containerd;
mod postgres_harness;
mod secure_e2e;
mod service_e2e;
