//! The node's images through a real container runtime (issue 20): Debian's
//! containerd, started by the test with its own root, state and socket,
//! holding OCI image archives the test builds itself (no registry is
//! reachable), and the real agent listing them through the CRI and pushing
//! them to the real aggregator.
//!
//! Needs root and containerd (`ctr` beside it); without them the test says
//! so and passes, unless `CORE_METER_REQUIRE_CONTAINERD=1` (as in CI).

use std::process::Command;
use std::time::Duration;

use e2e::containerd::{oci_archive, runnable, Containerd};
use e2e::procs::{AgentOptions, AgentProc, Service, ServiceOptions};
use serde_json::{json, Value};

const ADMIN: &str = "images-e2e-admin-token";
const PATIENCE: Duration = Duration::from_secs(60);

/// The image IDs the aggregator's inventory holds for `account`.
fn inventory(service: &Service, account: &str) -> Vec<Value> {
    let (s, v) = service.admin("GET", &format!("/v1/admin/accounts/{account}/images"), None);
    assert_eq!(s, 200, "{v}");
    v["images"].as_array().cloned().unwrap_or_default()
}

fn ids(images: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = images
        .iter()
        .map(|i| i["image_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_agent_lists_a_real_runtimes_images_and_the_aggregator_sees_exactly_those() {
    if !runnable() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("cm-ctd-")
        .tempdir_in("/tmp")
        .unwrap();
    let containerd = Containerd::start(dir.path());
    let (app_v1, app_v1_id) = oci_archive(dir.path(), "example.test/app:1", 1);
    let (tool, tool_id) = oci_archive(dir.path(), "example.test/tool:1", 1);
    containerd.import(&app_v1);
    containerd.import(&tool);

    // `agent images --print` sees exactly the two.
    let out = Command::new(e2e::procs::binary("agent"))
        .args(["images", "--print", "--cri-socket"])
        .arg(containerd.socket())
        .env("NODE_NAME", "node-ctd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut expected = vec![app_v1_id.clone(), tool_id.clone()];
    expected.sort();
    let mut printed_ids: Vec<&str> = printed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    printed_ids.sort();
    assert_eq!(printed_ids, expected, "{printed}");

    // The daemon pushes them to the real aggregator.
    let service = Service::start_with(
        &dir.path().join("core-meter.sqlite"),
        ADMIN,
        &ServiceOptions::default(),
    );
    let token = service.account_with_cluster("acme", "prod");
    let mut options = AgentOptions::new(
        dir.path(),
        "node-ctd",
        &format!("http://{}", service.addr),
        &token,
    );
    options.extra = vec![
        "--images".into(),
        "on".into(),
        "--cri-socket".into(),
        containerd.socket().display().to_string(),
    ];
    let mut agent = AgentProc::start(&options);
    testkit::eventually(PATIENCE, "the two images reach the inventory", || {
        ids(&inventory(&service, "acme")) == expected
    });
    let held = inventory(&service, "acme");
    assert!(
        held.iter()
            .all(|i| i["nodes"] == json!([{"cluster": "prod", "node": "node-ctd"}])),
        "{held:?}"
    );

    // A new version of the app under the same tag: one new ID. A retag of
    // the tool: no new ID.
    let (app_v2, app_v2_id) = oci_archive(dir.path(), "example.test/app:1", 2);
    containerd.import(&app_v2);
    containerd
        .ctr(&[
            "images",
            "tag",
            "example.test/tool:1",
            "example.test/tool:stable",
        ])
        .unwrap();
    testkit::eventually(PATIENCE, "the new version reaches the inventory", || {
        ids(&inventory(&service, "acme")).contains(&app_v2_id)
    });
    let after = inventory(&service, "acme");
    let mut all = vec![app_v1_id.clone(), app_v2_id.clone(), tool_id.clone()];
    all.sort();
    assert_eq!(ids(&after), all, "one new ID, and none for the retag");
    testkit::eventually(PATIENCE, "the retag is the tool's description", || {
        let images = inventory(&service, "acme");
        let tool = images
            .iter()
            .find(|i| i["image_id"] == tool_id.as_str())
            .unwrap();
        tool["repo_tags"].as_array().is_some_and(|t| t.len() == 2)
    });
    agent.kill_hard();
}
