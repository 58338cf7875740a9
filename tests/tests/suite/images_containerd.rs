//! The node's images through a real container runtime (issue 20): Debian's
//! containerd, started by the test with its own root, state and socket,
//! holding OCI image archives the test builds itself (no registry is
//! reachable), and the real agent listing them through the CRI and pushing
//! them to the real aggregator.
//!
//! Needs root and containerd (`ctr` beside it); without them the test says
//! so and passes, unless `CORE_METER_REQUIRE_CONTAINERD=1` (as in CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::procs::{AgentOptions, AgentProc, Service, ServiceOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADMIN: &str = "images-e2e-admin-token";
const PATIENCE: Duration = Duration::from_secs(60);

/// containerd with everything of its own under `dir`; killed when dropped.
struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Containerd {
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn start(dir: &Path) -> Containerd {
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 [grpc]\n  address = \"{0}/containerd.sock\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = \"native\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Containerd {
            child,
            dir: dir.to_path_buf(),
        };
        testkit::eventually(PATIENCE, "containerd answers", || {
            containerd.ctr(&["version"]).is_ok()
        });
        containerd
    }

    /// `ctr` in the CRI's namespace.
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn import(&self, archive: &Path) {
        self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            &archive.display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("import {}: {e}", archive.display()));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` as a blob of the layout; its descriptor's digest.
fn blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&digest), bytes).unwrap();
    format!("sha256:{digest}")
}

/// An OCI image archive of one layer holding one file, tagged `name`;
/// `version` goes into the file and the config, so each version is a new
/// image ID. Answers the archive and the image ID (its config's digest).
fn oci_archive(dir: &Path, name: &str, version: u32) -> (PathBuf, String) {
    let work = dir.join(format!("{}-{version}", name.replace(['/', ':'], "_")));
    let files = work.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("version"), format!("{name} {version}\n")).unwrap();
    let layer_tar = work.join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=2026-01-01",
            "--owner=0",
            "--group=0",
            "-cf",
        ])
        .arg(&layer_tar)
        .arg("-C")
        .arg(&files)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let layer = std::fs::read(&layer_tar).unwrap();
    let layout = work.join("layout");
    let layer_digest = blob(&layout, &layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("VERSION={version}")], "Cmd": ["/version"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let config_digest = blob(&layout, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .unwrap();
    let manifest_digest = blob(&layout, &manifest);
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = work.join("image.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    (archive, config_digest)
}

fn runnable() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let found = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !(root && found("containerd") && found("ctr")) {
        testkit::skip(
            "CONTAINERD",
            "the container runtime test needs root and Debian's containerd (apt-get install containerd)",
        );
        return false;
    }
    true
}

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
