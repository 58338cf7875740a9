//! A real container runtime for tests and benches: Debian's containerd with
//! its own root, state and socket in a directory, and OCI image archives
//! built here (no registry is reachable), imported with `ctr`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

const PATIENCE: Duration = Duration::from_secs(60);

/// containerd with everything of its own under `dir`; killed when dropped.
pub struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Containerd {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn start(dir: &Path) -> Containerd {
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
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
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

    pub fn import(&self, archive: &Path) {
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
pub fn oci_archive(dir: &Path, name: &str, version: u32) -> (PathBuf, String) {
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

/// Whether this machine can run containerd here: root, with `containerd`
/// and `ctr` on the path.
pub fn available() -> bool {
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
    root && found("containerd") && found("ctr")
}

/// For a test: whether containerd can run; if not, the test says so (and
/// fails when `CORE_METER_REQUIRE_CONTAINERD=1`).
pub fn runnable() -> bool {
    if !available() {
        testkit::skip(
            "CONTAINERD",
            "the container runtime test needs root and Debian's containerd (apt-get install containerd)",
        );
        return false;
    }
    true
}
