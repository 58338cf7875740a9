//! The Kubernetes manifests, as `kubectl kustomize` renders them: every setting
//! the agent's DaemonSet must keep (issue 6, item 2), the aggregator's lock-down,
//! its store (one replica on a SQLite volume, or several on PostgreSQL with the
//! URL from a Secret, issue 10), TLS on the agents' hop (issue 11: HTTPS from a
//! Secret mounted as a directory, the agents verifying against a mounted CA,
//! no secret file anyone may read), and the names that tie the objects together.
//! An edit that drops a setting fails here, naming it.
//!
//! Needs `kubectl` (with its built-in kustomize). Without it the tests say so
//! and pass, unless CORE_METER_REQUIRE_KUBECTL=1 (set by `.ci/run`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;
use serde_yaml_ng::Deserializer;

/// The agent's peak resident memory, measured pushing a 720-sample backlog
/// (`/usr/bin/time -v`, docs/agent.md).
const AGENT_PEAK_RSS_BYTES: u64 = 6_224 * 1024;
/// The agent's `--shutdown-grace-secs` when the manifest does not set it.
const AGENT_DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The deploy/ tree under test: the repo's, or the one CORE_METER_DEPLOY_DIR
/// names (tests/tools/deploy-mutations points it at edited copies).
fn deploy_source() -> PathBuf {
    std::env::var_os("CORE_METER_DEPLOY_DIR").map_or_else(|| repo().join("deploy"), PathBuf::from)
}

/// Each kustomization's directory under deploy/ and the objects it renders.
type Renderings = Vec<(String, Vec<Value>)>;

/// Every kustomization under deploy/, rendered from a copy of the tree with
/// stand-ins for the secret files the overlays read (never committed).
/// `None` when kubectl is missing and not required.
fn rendered() -> Option<&'static Renderings> {
    static RENDERED: OnceLock<Option<Renderings>> = OnceLock::new();
    RENDERED.get_or_init(render_all).as_ref()
}

fn render_all() -> Option<Renderings> {
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    if !kubectl.is_ok_and(|o| o.status.success()) {
        testkit::skip("KUBECTL", "kubectl does not run here");
        return None;
    }
    let copy = tempfile::tempdir().unwrap();
    let deploy = copy.path().join("deploy");
    copy_tree(&deploy_source(), &deploy);
    stand_in_secrets(&deploy);
    let mut out = Vec::new();
    for dir in kustomizations(&deploy) {
        let name = dir
            .strip_prefix(&deploy)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let render = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            render.status.success(),
            "kubectl kustomize deploy/{name}: {}",
            String::from_utf8_lossy(&render.stderr)
        );
        let text = String::from_utf8(render.stdout).unwrap();
        let objects = Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .collect();
        out.push((name, objects));
    }
    assert!(
        out.iter().any(|(n, _)| n == "base") && out.iter().any(|(n, _)| n == "overlays/example"),
        "deploy/ has a base and an example overlay; found {:?}",
        out.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    Some(out)
}

/// Fills each overlay's `secrets/` as an operator would, as `deploy/validate`
/// does: fresh tokens from deploy/new-tokens, and for every other secret file
/// its committed placeholder `NAME.example`.
fn stand_in_secrets(deploy: &Path) {
    let Ok(overlays) = std::fs::read_dir(deploy.join("overlays")) else {
        return;
    };
    for overlay in overlays.flatten() {
        let secrets = overlay.path().join("secrets");
        if !secrets.is_dir() {
            continue;
        }
        let made = Command::new(deploy.join("new-tokens"))
            .arg(&secrets)
            .output()
            .unwrap();
        assert!(made.status.success(), "deploy/new-tokens failed: {made:?}");
        for entry in std::fs::read_dir(&secrets).unwrap().flatten() {
            let example = entry.path();
            if example.extension().is_some_and(|e| e == "example") {
                let file = example.with_extension("");
                if !file.exists() {
                    std::fs::copy(&example, &file).unwrap();
                }
            }
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn kustomizations(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if dir.join("kustomization.yaml").is_file() {
        found.push(dir.to_path_buf());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_type().unwrap().is_dir() {
            found.extend(kustomizations(&entry.path()));
        }
    }
    found
}

/// Runs `check` on every rendering (base and overlays), naming it on failure.
fn in_every_rendering(check: impl Fn(&Rendering)) {
    let Some(all) = rendered() else { return };
    for (name, objects) in all {
        let r = Rendering { name, objects };
        check(&r);
    }
}

struct Rendering<'a> {
    name: &'a str,
    objects: &'a [Value],
}

impl Rendering<'_> {
    fn object(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("deploy/{}: no {kind} {name}", self.name))
    }

    fn objects_of(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn agent(&self) -> &Value {
        self.object("DaemonSet", "core-meter-agent")
    }

    fn agent_pod(&self) -> &Value {
        &self.agent()["spec"]["template"]["spec"]
    }

    fn agent_container(&self) -> &Value {
        container(self.agent_pod(), "agent")
    }

    /// The aggregator's workload: a StatefulSet (SQLite) or a Deployment
    /// (PostgreSQL), never both.
    fn aggregator(&self) -> &Value {
        let found: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| o["kind"] == "StatefulSet" || o["kind"] == "Deployment")
            .filter(|o| o["metadata"]["name"] == "core-meter-aggregator")
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}",
            self.says("one StatefulSet or Deployment core-meter-aggregator")
        );
        found[0]
    }

    fn aggregator_pod(&self) -> &Value {
        &self.aggregator()["spec"]["template"]["spec"]
    }

    fn aggregator_pod_labels(&self) -> &Value {
        &self.aggregator()["spec"]["template"]["metadata"]["labels"]
    }

    fn aggregator_container(&self) -> &Value {
        container(self.aggregator_pod(), "aggregator")
    }

    /// The value the container's environment variable `name` takes: its
    /// literal, or the key of a Secret of this rendering that it refers to.
    fn env_value_of(&self, container: &Value, name: &str) -> Option<String> {
        let e = env(container, name)?;
        if let Some(v) = e["value"].as_str() {
            return Some(v.to_string());
        }
        let r = &e["valueFrom"]["secretKeyRef"];
        let secret = self
            .objects_of("Secret")
            .into_iter()
            .find(|s| s["metadata"]["name"] == r["name"])?;
        secret_value(secret, r["key"].as_str()?)
    }

    /// The aggregator's settings as it loads them: its ConfigMap's
    /// aggregator.toml, with the admin token's and the webhook secrets' files
    /// pointed at stand-ins (the Secrets are not mounted here), and the environment its container
    /// is given, Secrets included.
    fn aggregator_settings(&self) -> aggregator::config::Config {
        let toml = self.aggregator_toml();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "cma_stand-in").unwrap();
        // As the Secret's file: the aggregator refuses one anyone may read.
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o400)).unwrap();
        let mut toml = toml.replace("/etc/core-meter/admin-token/token", token.to_str().unwrap());
        // The webhooks' signing secrets likewise, private as the mount makes them.
        for key in ["bill-lines", "notices"] {
            let secret = dir.path().join(key);
            std::fs::write(&secret, "0123456789abcdef".repeat(4)).unwrap();
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o440)).unwrap();
            toml = toml.replace(
                &format!("/etc/core-meter/webhook-secrets/{key}"),
                secret.to_str().unwrap(),
            );
        }
        let file = dir.path().join("aggregator.toml");
        std::fs::write(&file, &toml).unwrap();
        let c = self.aggregator_container();
        let flags = aggregator::config::Flags {
            config: Some(file),
            listen: flag(c, "--listen"),
            database: flag(c, "--database"),
            tls_cert: flag(c, "--tls-cert").map(PathBuf::from),
            tls_key: flag(c, "--tls-key").map(PathBuf::from),
            tls_client_ca: flag(c, "--client-ca").map(PathBuf::from),
            insecure_plaintext: has_flag(c, "--insecure-plaintext"),
        };
        aggregator::app::load_config(&flags, &|name| self.env_value_of(c, name)).unwrap_or_else(
            |e| {
                panic!(
                    "{}",
                    self.says(&format!("the aggregator refuses its settings: {e:#}"))
                )
            },
        )
    }

    /// The text of the aggregator's aggregator.toml, from its ConfigMap.
    fn aggregator_toml(&self) -> &str {
        let map = self
            .objects_of("ConfigMap")
            .into_iter()
            .find(|m| {
                m["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("core-meter-aggregator"))
            })
            .unwrap_or_else(|| panic!("{}", self.says("the aggregator's ConfigMap")));
        map["data"]["aggregator.toml"].as_str().unwrap()
    }

    fn service(&self) -> &Value {
        self.object("Service", "core-meter-aggregator")
    }

    /// The container port the Service's `https` port sends to.
    fn service_target_port(&self) -> u64 {
        let port = self.service()["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "https")
            .unwrap_or_else(|| panic!("{}", self.says("the Service has a port named https")));
        match &port["targetPort"] {
            Value::String(name) => self.aggregator_container()["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| &p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| {
                    panic!(
                        "{}",
                        self.says(&format!("the aggregator has a port {name}"))
                    )
                }),
            Value::Null => port["port"].as_u64().unwrap(),
            other => other.as_u64().unwrap(),
        }
    }

    /// Whether the Secret `name` is in this rendering, or a cert-manager
    /// Certificate of it writes the Secret.
    fn secret_is_provided(&self, name: &str) -> bool {
        self.objects_of("Secret")
            .iter()
            .any(|s| s["metadata"]["name"] == name)
            || self.certificate_of(name).is_some()
    }

    /// The cert-manager Certificate that writes the Secret `secret`.
    fn certificate_of(&self, secret: &str) -> Option<&Value> {
        self.objects
            .iter()
            .filter(|o| o["kind"] == "Certificate" && is_cert_manager(o))
            .find(|c| c["spec"]["secretName"] == secret)
    }

    /// `what` and where it was looked for, for assertion messages.
    fn says(&self, what: &str) -> String {
        format!("deploy/{}: {what}", self.name)
    }
}

fn is_cert_manager(object: &Value) -> bool {
    object["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("cert-manager.io/"))
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env(container, name)?["value"].as_str()
}

/// The text a Secret holds under `key`, from `stringData` or base64 `data`.
fn secret_value(secret: &Value, key: &str) -> Option<String> {
    if let Some(text) = secret["stringData"][key].as_str() {
        return Some(text.to_string());
    }
    secret["data"][key].as_str().map(base64_text)
}

/// Standard base64, as a Secret's `data` holds it, decoded to UTF-8 text.
fn base64_text(encoded: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut held, mut out) = (0u32, 0u32, Vec::new());
    // kubectl kustomize folds long values over lines.
    for c in encoded
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let six = ALPHABET
            .iter()
            .position(|a| *a == c)
            .unwrap_or_else(|| panic!("{encoded:?} is not base64"));
        bits = (bits << 6) | u32::try_from(six).unwrap();
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push(u8::try_from(bits >> held).unwrap());
            bits &= (1 << held) - 1;
        }
    }
    String::from_utf8(out).expect("a Secret's text is UTF-8")
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The container's mount of the volume whose hostPath is `host_path`.
fn host_mount<'a>(pod: &'a Value, container: &'a Value, host_path: &str) -> (&'a Value, &'a Value) {
    let vol = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["hostPath"]["path"] == host_path)
        .unwrap_or_else(|| panic!("no hostPath volume of {host_path}"));
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == vol["name"])
        .unwrap_or_else(|| panic!("the hostPath {host_path} is not mounted"));
    (vol, mount)
}

/// A container's effective security setting: its own, else the pod's.
fn security<'a>(pod: &'a Value, container: &'a Value, key: &str) -> &'a Value {
    let own = &container["securityContext"][key];
    if own.is_null() {
        &pod["securityContext"][key]
    } else {
        own
    }
}

/// The value of `--flag=N` (or `--flag N`) among a container's arguments.
fn flag(container: &Value, flag: &str) -> Option<String> {
    let args: Vec<&str> = container["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{flag}="))
            .map(str::to_string)
            .or_else(|| (*a == flag).then(|| args.get(i + 1).map(|s| s.to_string()))?)
    })
}

/// Whether a container's arguments hold `--flag` (or `--flag=true`).
fn has_flag(container: &Value, flag: &str) -> bool {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|a| a == flag || a == format!("{flag}=true"))
}

/// A Kubernetes quantity of bytes ("32Mi", "16M", "1Gi", "1000") as bytes.
fn bytes(quantity: &Value) -> u64 {
    let q = quantity
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| quantity.to_string());
    let units: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a whole number") * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("{q} is not a byte quantity"))
}

/// A CPU quantity ("5m", "1", "0.5") in millicores.
fn millicores(quantity: &Value) -> u64 {
    let q = quantity
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| quantity.to_string());
    match q.strip_suffix('m') {
        Some(n) => n.parse().expect("whole millicores"),
        None => {
            let (whole, frac) = q.split_once('.').unwrap_or((&q, ""));
            let frac = format!("{frac:0<3}");
            whole.parse::<u64>().unwrap() * 1000 + frac[..3].parse::<u64>().unwrap()
        }
    }
}

/// Whether `container` can read the file at `path` from a mounted Secret named
/// `secret`: the path is the Secret's key `key` under its mount, and a mode
/// that others may not read comes with an fsGroup that gives the file to the pod.
fn reads_secret_file(
    pod: &Value,
    container: &Value,
    secret: &str,
    path: &str,
    key: &str,
) -> Result<(), String> {
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["secret"]["secretName"] == secret)
        .ok_or(format!("no volume of the Secret {secret}"))?;
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume["name"])
        .ok_or(format!("the Secret {secret} is not mounted"))?;
    let dir = mount["mountPath"].as_str().unwrap();
    let named = Path::new(path)
        .strip_prefix(dir)
        .map_err(|_| format!("{path} is not under the Secret's mount {dir}"))?;
    if named.to_str() != Some(key) {
        return Err(format!(
            "{path} names key {named:?} of the Secret, not {key}"
        ));
    }
    if !mount["subPath"].is_null() {
        return Err(format!(
            "the Secret {secret} is mounted with a subPath, which the kubelet never updates"
        ));
    }
    let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
    if mode & 0o004 == 0 && pod["securityContext"]["fsGroup"].is_null() {
        return Err(format!(
            "mode {mode:o} without an fsGroup: only root may read {path}"
        ));
    }
    Ok(())
}

/// The mount of the volume (or volume claim template) named `volume`.
fn mount_of<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)?["mountPath"]
        .as_str()
}

/// The container port a probe's `port` (a name or a number) means.
fn probe_port(container: &Value, probe: &str) -> Option<u64> {
    match &container[probe]["httpGet"]["port"] {
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| &p["name"] == name)?["containerPort"]
            .as_u64(),
        other => other.as_u64(),
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector.as_object() else {
        return false;
    };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[k] == v)
}

// --- The agent's DaemonSet (issue 6, item 2) ---

#[test]
fn the_agent_tolerates_every_taint_so_it_runs_on_every_node() {
    in_every_rendering(|r| {
        let tolerations = r.agent_pod()["tolerations"].as_array();
        let tolerates_all = tolerations
            .into_iter()
            .flatten()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null());
        assert!(
            tolerates_all,
            "{}",
            r.says("the agent must tolerate every taint: tolerations [{operator: Exists}]")
        );
    });
}

#[test]
fn the_agent_runs_on_linux_nodes() {
    in_every_rendering(|r| {
        assert_eq!(
            r.agent_pod()["nodeSelector"]["kubernetes.io/os"],
            "linux",
            "{}",
            r.says("nodeSelector kubernetes.io/os: linux")
        );
    });
}

#[test]
fn the_agent_learns_its_node_name_from_the_downward_api() {
    in_every_rendering(|r| {
        let node = env(r.agent_container(), "NODE_NAME");
        assert_eq!(
            node.map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]),
            Some(&Value::from("spec.nodeName")),
            "{}",
            r.says("env NODE_NAME from fieldRef spec.nodeName")
        );
    });
}

#[test]
fn the_agent_reaches_the_container_runtime_read_only_where_it_looks_for_its_socket() {
    in_every_rendering(|r| {
        let pod = r.agent_pod();
        // The agent looks for these sockets (agent::images::KNOWN_SOCKETS).
        for socket in agent::images::KNOWN_SOCKETS {
            let dir = Path::new(socket).parent().unwrap().to_str().unwrap();
            let (_, mount) = host_mount(pod, r.agent_container(), dir);
            assert_eq!(
                mount["mountPath"].as_str(),
                Some(dir),
                "{}",
                r.says(&format!(
                    "the host's {dir} is mounted where the agent looks"
                ))
            );
            assert_eq!(
                mount["readOnly"],
                true,
                "{}",
                r.says(&format!("the host's {dir} is mounted readOnly"))
            );
        }
        let groups = &pod["securityContext"]["supplementalGroups"];
        assert!(
            groups
                .as_array()
                .is_some_and(|g| g.contains(&serde_json::json!(0))),
            "{}",
            r.says("the pod is in group 0, which may use the runtime's root:root 0660 socket")
        );
        assert_ne!(
            flag(r.agent_container(), "--images").as_deref(),
            Some("off"),
            "{}",
            r.says("the agent lists the node's images")
        );
    });
}

#[test]
fn the_agent_reads_the_hosts_sys_read_only_where_it_looks_for_it() {
    in_every_rendering(|r| {
        let (_, mount) = host_mount(r.agent_pod(), r.agent_container(), "/sys");
        assert_eq!(
            mount["readOnly"],
            true,
            "{}",
            r.says("the host's /sys is mounted readOnly")
        );
        let at = mount["mountPath"].as_str().unwrap();
        // The agent reads CORE_METER_SYS_ROOT, else /host/sys when it exists.
        let looks_at = env_value(r.agent_container(), "CORE_METER_SYS_ROOT").unwrap_or("/host/sys");
        assert_eq!(
            at,
            looks_at,
            "{}",
            r.says("the host's /sys is mounted where the agent reads it")
        );
    });
}

#[test]
fn the_agent_spools_in_a_host_directory_created_if_missing() {
    in_every_rendering(|r| {
        let pod = r.agent_pod();
        let spool = volume(pod, "spool");
        assert_eq!(
            spool["hostPath"]["type"],
            "DirectoryOrCreate",
            "{}",
            r.says("the spool is a hostPath of type DirectoryOrCreate")
        );
        let host_path = spool["hostPath"]["path"].as_str().unwrap();
        let (_, mount) = host_mount(pod, r.agent_container(), host_path);
        let mounted_at = mount["mountPath"].as_str().unwrap();
        let spool_dir = env_value(r.agent_container(), "CORE_METER_SPOOL")
            .map(str::to_string)
            .or_else(|| flag(r.agent_container(), "--spool"))
            .unwrap_or_else(|| "/var/lib/core-meter/spool".to_string());
        assert!(
            Path::new(&spool_dir).starts_with(mounted_at),
            "{}",
            r.says(&format!(
                "the spool {spool_dir} lies in the hostPath mount {mounted_at}"
            ))
        );
        assert_ne!(
            mount["readOnly"],
            true,
            "{}",
            r.says("the spool is writable")
        );
    });
}

#[test]
fn the_agent_is_node_critical() {
    in_every_rendering(|r| {
        assert_eq!(
            r.agent_pod()["priorityClassName"],
            "system-node-critical",
            "{}",
            r.says("priorityClassName: system-node-critical")
        );
    });
}

#[test]
fn the_agent_gets_no_service_account_token() {
    in_every_rendering(|r| {
        assert_eq!(
            r.agent_pod()["automountServiceAccountToken"],
            false,
            "{}",
            r.says("the agent's pod sets automountServiceAccountToken: false")
        );
    });
}

#[test]
fn the_agent_runs_as_a_user_other_than_root() {
    in_every_rendering(|r| {
        let (pod, c) = (r.agent_pod(), r.agent_container());
        assert_eq!(
            security(pod, c, "runAsNonRoot"),
            true,
            "{}",
            r.says("the agent runs with runAsNonRoot: true")
        );
        let uid = security(pod, c, "runAsUser").as_u64();
        assert!(
            uid.is_some_and(|u| u != 0),
            "{}",
            r.says("the agent runs as a numeric non-zero runAsUser")
        );
    });
}

#[test]
fn the_agent_has_a_read_only_root_filesystem() {
    in_every_rendering(|r| {
        assert_eq!(
            security(r.agent_pod(), r.agent_container(), "readOnlyRootFilesystem"),
            true,
            "{}",
            r.says("the agent's container sets readOnlyRootFilesystem: true")
        );
    });
}

#[test]
fn the_agent_cannot_gain_privileges() {
    in_every_rendering(|r| {
        let c = r.agent_container();
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"],
            false,
            "{}",
            r.says("the agent's container sets allowPrivilegeEscalation: false")
        );
        assert_ne!(
            c["securityContext"]["privileged"],
            true,
            "{}",
            r.says("not privileged")
        );
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert_ne!(
                r.agent_pod()[host],
                true,
                "{}",
                r.says(&format!("no {host}"))
            );
        }
    });
}

#[test]
fn the_agent_drops_every_capability() {
    in_every_rendering(|r| {
        let caps = &r.agent_container()["securityContext"]["capabilities"];
        assert!(
            caps["drop"]
                .as_array()
                .is_some_and(|d| d.contains(&Value::from("ALL"))),
            "{}",
            r.says("the agent's container drops ALL capabilities")
        );
        assert!(
            caps["add"].as_array().is_none_or(Vec::is_empty),
            "{}",
            r.says("the agent's container adds no capability")
        );
    });
}

#[test]
fn the_agent_uses_the_runtimes_default_seccomp_profile() {
    in_every_rendering(|r| {
        assert_eq!(
            security(r.agent_pod(), r.agent_container(), "seccompProfile")["type"],
            "RuntimeDefault",
            "{}",
            r.says("the agent uses seccompProfile RuntimeDefault")
        );
    });
}

#[test]
fn the_init_container_only_may_change_owners_and_nothing_else() {
    in_every_rendering(|r| {
        let pod = r.agent_pod();
        for c in pod["initContainers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("?");
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", r.says(name));
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", r.says(name));
            assert_ne!(sc["privileged"], true, "{}", r.says(name));
            assert_eq!(
                security(pod, c, "seccompProfile")["type"],
                "RuntimeDefault",
                "{}",
                r.says(name)
            );
            assert!(
                sc["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.contains(&Value::from("ALL"))),
                "{}",
                r.says(&format!("init container {name} drops ALL capabilities"))
            );
            let added: Vec<&Value> = sc["capabilities"]["add"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            assert!(
                added.iter().all(|c| *c == "CHOWN"),
                "{}",
                r.says(&format!(
                    "init container {name} adds at most CHOWN, not {added:?}"
                ))
            );
        }
    });
}

#[test]
fn the_agent_asks_for_and_is_limited_to_what_it_was_measured_to_use() {
    in_every_rendering(|r| {
        let res = &r.agent_container()["resources"];
        for (kind, key) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            assert!(
                !res[kind][key].is_null(),
                "{}",
                r.says(&format!("the agent sets resources.{kind}.{key}"))
            );
        }
        let request = bytes(&res["requests"]["memory"]);
        let limit = bytes(&res["limits"]["memory"]);
        assert!(
            request >= AGENT_PEAK_RSS_BYTES,
            "{}",
            r.says(&format!("the memory request ({request} B) covers the measured peak ({AGENT_PEAK_RSS_BYTES} B)"))
        );
        assert!(
            (4 * AGENT_PEAK_RSS_BYTES..=16 * AGENT_PEAK_RSS_BYTES).contains(&limit),
            "{}",
            r.says(&format!(
                "the memory limit ({limit} B) is 4 to 16 times the measured peak"
            ))
        );
        let (cpu_request, cpu_limit) = (
            millicores(&res["requests"]["cpu"]),
            millicores(&res["limits"]["cpu"]),
        );
        assert!(
            cpu_request >= 1 && cpu_request <= cpu_limit && cpu_limit <= 500,
            "{}",
            r.says(&format!(
                "CPU: 1m <= request ({cpu_request}m) <= limit ({cpu_limit}m) <= 500m"
            ))
        );
    });
}

#[test]
fn the_agent_is_probed_on_its_health_port() {
    in_every_rendering(|r| {
        let c = r.agent_container();
        let listen = env_value(c, "CORE_METER_LISTEN").unwrap_or("0.0.0.0:9464");
        let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(
                get["path"],
                path,
                "{}",
                r.says(&format!("{probe} GETs {path}"))
            );
            let probed = probe_port(c, probe);
            assert_eq!(
                probed,
                Some(port),
                "{}",
                r.says(&format!(
                    "{probe} probes the port the agent listens on ({port})"
                ))
            );
        }
    });
}

#[test]
fn the_agent_rolls_out_a_tenth_of_the_nodes_at_a_time() {
    in_every_rendering(|r| {
        let strategy = &r.agent()["spec"]["updateStrategy"];
        assert_eq!(
            strategy["type"],
            "RollingUpdate",
            "{}",
            r.says("updateStrategy RollingUpdate")
        );
        assert_eq!(
            strategy["rollingUpdate"]["maxUnavailable"],
            "10%",
            "{}",
            r.says("rollingUpdate.maxUnavailable: 10%")
        );
    });
}

#[test]
fn the_agent_has_time_for_its_last_push_when_stopped() {
    in_every_rendering(|r| {
        let grace: u64 = flag(r.agent_container(), "--shutdown-grace-secs")
            .map_or(AGENT_DEFAULT_SHUTDOWN_GRACE_SECS, |v| v.parse().unwrap());
        let period = r.agent_pod()["terminationGracePeriodSeconds"].as_u64();
        assert!(
            period.is_some_and(|p| p >= grace + 5),
            "{}",
            r.says(&format!(
                "terminationGracePeriodSeconds ({period:?}) is at least the last push's {grace} s plus 5 s to exit"
            ))
        );
    });
}

#[test]
fn the_agent_can_read_its_cluster_token() {
    in_every_rendering(|r| {
        let path = env_value(r.agent_container(), "CORE_METER_TOKEN_FILE")
            .unwrap_or_else(|| panic!("{}", r.says("CORE_METER_TOKEN_FILE is set")));
        if let Err(why) = reads_secret_file(
            r.agent_pod(),
            r.agent_container(),
            "core-meter-cluster-token",
            path,
            "token",
        ) {
            panic!(
                "{}",
                r.says(&format!("the agent cannot read its token: {why}"))
            );
        }
    });
}

#[test]
fn the_init_container_hands_the_spool_to_the_user_the_agent_runs_as() {
    in_every_rendering(|r| {
        let pod = r.agent_pod();
        let init = pod["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["args"]
                    .as_array()
                    .is_some_and(|a| a.contains(&Value::from("prepare-spool")))
            })
            .unwrap_or_else(|| panic!("{}", r.says("an init container runs agent prepare-spool")));
        let agent = r.agent_container();
        let user = format!(
            "{}:{}",
            security(pod, agent, "runAsUser"),
            security(pod, agent, "runAsGroup")
        );
        assert_eq!(
            flag(init, "--owner").as_deref(),
            Some(user.as_str()),
            "{}",
            r.says("prepare-spool --owner is the agent's runAsUser:runAsGroup")
        );
        let dir = init["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .rfind(|a| !a.starts_with("--") && *a != "prepare-spool")
            .unwrap_or("/var/lib/core-meter");
        let spool_host = volume(pod, "spool")["hostPath"]["path"].as_str().unwrap();
        let (_, agent_mount) = host_mount(pod, agent, spool_host);
        assert_eq!(
            mount_of(init, "spool"),
            agent_mount["mountPath"].as_str(),
            "{}",
            r.says("the init container mounts the spool where the agent does")
        );
        assert_eq!(
            Some(dir),
            mount_of(init, "spool"),
            "{}",
            r.says("prepare-spool is given the spool's mount point")
        );
    });
}

#[test]
fn every_object_is_in_the_core_meter_namespace() {
    in_every_rendering(|r| {
        for o in r.objects {
            if o["kind"] == "Namespace" {
                continue;
            }
            assert_eq!(
                o["metadata"]["namespace"],
                "core-meter",
                "{}",
                r.says(&format!(
                    "{} {} is in namespace core-meter",
                    o["kind"], o["metadata"]["name"]
                ))
            );
        }
    });
}

#[test]
fn every_environment_variable_given_to_the_agent_is_one_it_reads() {
    let main = std::fs::read_to_string(repo().join("agent/src/main.rs")).unwrap();
    in_every_rendering(|r| {
        for e in r.agent_container()["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            assert!(
                main.contains(&format!("env = \"{name}\"")),
                "{}",
                r.says(&format!("the agent reads no environment variable {name}"))
            );
        }
    });
}

// --- The aggregator ---

#[test]
fn the_aggregator_is_locked_down() {
    in_every_rendering(|r| {
        let (pod, c) = (r.aggregator_pod(), r.aggregator_container());
        assert_eq!(
            pod["automountServiceAccountToken"],
            false,
            "{}",
            r.says("no service account token")
        );
        assert_eq!(
            security(pod, c, "runAsNonRoot"),
            true,
            "{}",
            r.says("runAsNonRoot")
        );
        assert_eq!(
            security(pod, c, "readOnlyRootFilesystem"),
            true,
            "{}",
            r.says("read-only root")
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"],
            false,
            "{}",
            r.says("no escalation")
        );
        assert!(
            c["securityContext"]["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.contains(&Value::from("ALL"))),
            "{}",
            r.says("the aggregator drops ALL capabilities")
        );
        assert_eq!(
            security(pod, c, "seccompProfile")["type"],
            "RuntimeDefault",
            "{}",
            r.says("seccomp RuntimeDefault")
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"],
            "/healthz",
            "{}",
            r.says("liveness")
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"],
            "/readyz",
            "{}",
            r.says("readiness")
        );
        for (kind, key) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            assert!(
                !c["resources"][kind][key].is_null(),
                "{}",
                r.says(&format!("the aggregator sets resources.{kind}.{key}"))
            );
        }
    });
}

#[test]
fn the_aggregator_on_sqlite_is_one_replica_with_its_own_volume() {
    in_every_rendering(|r| {
        if r.aggregator_settings().database.is_postgres() {
            return;
        }
        let set = r.aggregator();
        assert_eq!(
            set["kind"],
            "StatefulSet",
            "{}",
            r.says("a StatefulSet: it never runs two pods of one ordinal, so never two writers")
        );
        assert_eq!(
            set["spec"]["replicas"],
            1,
            "{}",
            r.says("one replica: SQLite has one writer")
        );
        let claims = set["spec"]["volumeClaimTemplates"].as_array();
        assert!(
            claims.is_some_and(|c| !c.is_empty()),
            "{}",
            r.says("a PersistentVolumeClaim for SQLite")
        );
    });
}

#[test]
fn the_sqlite_store_is_backed_up_daily_onto_a_second_volume_beside_the_aggregator() {
    in_every_rendering(|r| {
        let jobs = r.objects_of("CronJob");
        let settings = r.aggregator_settings();
        let aggregator::config::Database::Sqlite(database) = &settings.database else {
            assert!(
                jobs.is_empty(),
                "{}",
                r.says("no SQLite backup job: PostgreSQL has its own backups")
            );
            return;
        };
        let job = r.object("CronJob", "core-meter-aggregator-backup");
        assert_eq!(
            job["spec"]["concurrencyPolicy"],
            "Forbid",
            "{}",
            r.says("one backup at a time")
        );
        let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        let backup = container(pod, "backup");
        assert_eq!(
            backup["args"][0],
            "backup",
            "{}",
            r.says("the backup command")
        );
        assert_eq!(
            flag(backup, "--database").as_deref(),
            database.to_str(),
            "{}",
            r.says("the database the aggregator serves")
        );
        let keep: u32 = flag(backup, "--keep")
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        assert!(
            (1..=1000).contains(&keep),
            "{}",
            r.says("--keep of 1 to 1000")
        );
        // The store's volume is the StatefulSet's claim of pod 0, mounted where
        // the aggregator mounts it; the backups go to another claim.
        let set = r.aggregator();
        let template = set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
            .as_str()
            .unwrap();
        let claim_of = |volume: &str| volume_claim(pod, volume);
        let data_mount = mount_of(r.aggregator_container(), template).unwrap();
        let data_volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| {
                v["persistentVolumeClaim"]["claimName"]
                    == format!("{template}-{}-0", set["metadata"]["name"].as_str().unwrap())
            })
            .unwrap_or_else(|| panic!("{}", r.says("the StatefulSet's data claim mounted")));
        let data_name = data_volume["name"].as_str().unwrap();
        assert_eq!(
            mount_of(backup, data_name),
            Some(data_mount),
            "{}",
            r.says("the store's mount")
        );
        assert!(
            database.starts_with(data_mount),
            "{}",
            r.says("the database on that volume")
        );
        let into = flag(backup, "--into").unwrap();
        let shelf = backup["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == into.as_str())
            .unwrap_or_else(|| panic!("{}", r.says("--into on a volume of its own")));
        let shelf_claim = claim_of(shelf["name"].as_str().unwrap());
        assert_ne!(
            Some(data_name.to_string()),
            shelf["name"].as_str().map(str::to_string)
        );
        r.object("PersistentVolumeClaim", &shelf_claim);
        // A ReadWriteOnce volume is mounted on one node: the aggregator's.
        let affinity =
            &pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(
            affinity["topologyKey"],
            "kubernetes.io/hostname",
            "{}",
            r.says("the same node")
        );
        for (k, v) in affinity["labelSelector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(
                &r.aggregator_pod_labels()[k],
                v,
                "{}",
                r.says("the aggregator's pods")
            );
        }
        assert_eq!(
            security(pod, backup, "runAsNonRoot"),
            true,
            "{}",
            r.says("not root")
        );
        assert_eq!(backup["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["automountServiceAccountToken"], false);
    });
}

/// The claim a pod's volume `name` is.
fn volume_claim(pod: &Value, name: &str) -> String {
    volume(pod, name)["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap_or_else(|| panic!("volume {name} is no claim"))
        .to_string()
}

#[test]
fn the_aggregator_on_postgres_runs_several_replicas_on_several_nodes_without_a_volume() {
    in_every_rendering(|r| {
        if !r.aggregator_settings().database.is_postgres() {
            return;
        }
        let workload = r.aggregator();
        assert_eq!(
            workload["kind"],
            "Deployment",
            "{}",
            r.says("a Deployment: its replicas are alike and keep nothing of their own")
        );
        let replicas = workload["spec"]["replicas"].as_u64().unwrap_or(1);
        assert!(
            replicas >= 2,
            "{}",
            r.says(&format!(
                "{replicas} replica(s): at least two, so one serves while another stops"
            ))
        );
        let pod = r.aggregator_pod();
        for v in pod["volumes"].as_array().into_iter().flatten() {
            assert!(
                v["persistentVolumeClaim"].is_null() && v["hostPath"].is_null(),
                "{}",
                r.says(&format!(
                    "no volume that outlives the pod: {} (the data is in PostgreSQL)",
                    v["name"]
                ))
            );
        }
        let strategy = &workload["spec"]["strategy"];
        assert!(
            strategy["type"] != "Recreate"
                && [Value::from(0), Value::from("0%")]
                    .contains(&strategy["rollingUpdate"]["maxUnavailable"]),
            "{}",
            r.says("a rolling update with maxUnavailable: 0, so ingest never pauses")
        );
        let labels = r.aggregator_pod_labels();
        let spread = pod["topologySpreadConstraints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["topologyKey"] == "kubernetes.io/hostname"
                    && t["maxSkew"] == 1
                    && t["whenUnsatisfiable"] == "DoNotSchedule"
                    && labels_match(&t["labelSelector"]["matchLabels"], labels)
            });
        let apart = pod["affinity"]["podAntiAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["topologyKey"] == "kubernetes.io/hostname"
                    && labels_match(&t["labelSelector"]["matchLabels"], labels)
            });
        assert!(
            spread || apart,
            "{}",
            r.says(
                "the replicas are kept on different nodes: a topologySpreadConstraint \
                 (maxSkew 1, DoNotSchedule) or a required podAntiAffinity on \
                 kubernetes.io/hostname that selects them"
            )
        );
    });
}

#[test]
fn the_postgres_overlay_runs_the_aggregator_on_postgres() {
    let Some(all) = rendered() else { return };
    let (name, objects) = all
        .iter()
        .find(|(n, _)| n == "overlays/postgres")
        .expect("deploy/overlays/postgres exists");
    let r = Rendering { name, objects };
    assert!(
        r.aggregator_settings().database.is_postgres(),
        "{}",
        r.says("the aggregator's database is a postgres:// URL")
    );
}

#[test]
fn the_agents_reach_the_aggregator_through_its_service() {
    in_every_rendering(|r| {
        let service = r.object("Service", "core-meter-aggregator");
        assert!(
            labels_match(&service["spec"]["selector"], r.aggregator_pod_labels()),
            "{}",
            r.says("the Service selects the aggregator's pods")
        );
        let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
        let namespace = service["metadata"]["namespace"].as_str().unwrap();
        let url = env_value(r.agent_container(), "CORE_METER_AGGREGATOR").unwrap();
        assert_eq!(
            url,
            format!("https://core-meter-aggregator.{namespace}.svc:{port}"),
            "{}",
            r.says(
                "the agent's aggregator URL names the Service, its namespace and its port \
                 (the name the certificate holds)"
            )
        );
    });
}

#[test]
fn only_the_agents_and_the_billing_namespace_may_reach_the_aggregator() {
    in_every_rendering(|r| {
        let policies = r.objects_of("NetworkPolicy");
        let aggregator_labels = r.aggregator_pod_labels();
        let policy = policies
            .iter()
            .find(|p| labels_match(&p["spec"]["podSelector"]["matchLabels"], aggregator_labels))
            .unwrap_or_else(|| panic!("{}", r.says("a NetworkPolicy selects the aggregator")));
        assert!(
            policy["spec"]["policyTypes"]
                .as_array()
                .is_some_and(|t| t.contains(&Value::from("Ingress"))),
            "{}",
            r.says("the policy restricts ingress")
        );
        let peers: Vec<&Value> = policy["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| rule["from"].as_array().into_iter().flatten())
            .collect();
        let agent_labels = &r.agent()["spec"]["template"]["metadata"]["labels"];
        let agents = peers
            .iter()
            .filter(|p| p["namespaceSelector"].is_null())
            .collect::<Vec<_>>();
        assert!(
            !agents.is_empty()
                && agents
                    .iter()
                    .all(|p| labels_match(&p["podSelector"]["matchLabels"], agent_labels)),
            "{}",
            r.says("the pods of this namespace let in are the agents, and only they")
        );
        let namespaces: Vec<&Value> = peers
            .iter()
            .filter(|p| !p["namespaceSelector"].is_null())
            .map(|p| &p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
            .collect();
        assert!(
            namespaces.iter().all(|n| n.is_string()),
            "{}",
            r.says(&format!(
                "other namespaces are let in by name only: {namespaces:?}"
            ))
        );
        assert!(
            namespaces.contains(&&Value::from("billing")),
            "{}",
            r.says("the billing namespace is let in")
        );
        assert!(
            peers.iter().all(|p| p["ipBlock"].is_null()),
            "{}",
            r.says("no address range is let in")
        );
    });
}

#[test]
fn the_disruption_budget_covers_the_aggregator_without_blocking_drains() {
    in_every_rendering(|r| {
        let pdb = r.object("PodDisruptionBudget", "core-meter-aggregator");
        assert!(
            labels_match(
                &pdb["spec"]["selector"]["matchLabels"],
                r.aggregator_pod_labels()
            ),
            "{}",
            r.says("selects the aggregator")
        );
        // How many of the aggregator's pods a drain may take at once.
        let replicas = r.aggregator()["spec"]["replicas"].as_u64().unwrap_or(1);
        let (min, max) = (&pdb["spec"]["minAvailable"], &pdb["spec"]["maxUnavailable"]);
        let down = match (min.as_u64(), max.as_u64()) {
            (None, Some(max)) if min.is_null() => max,
            (Some(min), None) if max.is_null() => replicas.saturating_sub(min),
            _ => panic!(
                "{}",
                r.says("one whole number, minAvailable or maxUnavailable")
            ),
        };
        assert!(
            down >= 1,
            "{}",
            r.says(&format!(
                "a drain of the aggregator's node can finish: {down} of {replicas} may be evicted"
            ))
        );
        assert!(
            replicas == 1 || down < replicas,
            "{}",
            r.says(&format!(
                "one replica keeps serving through drains: {down} of {replicas} may be evicted"
            ))
        );
    });
}

#[test]
fn every_secret_and_config_map_a_pod_mounts_or_reads_is_in_the_overlay() {
    let Some(all) = rendered() else { return };
    for (name, objects) in all.iter().filter(|(n, _)| n.starts_with("overlays/")) {
        let r = Rendering { name, objects };
        for (pod, c) in [
            (r.agent_pod(), r.agent_container()),
            (r.aggregator_pod(), r.aggregator_container()),
        ] {
            for v in pod["volumes"].as_array().into_iter().flatten() {
                if let Some(secret) = v["secret"]["secretName"].as_str() {
                    assert!(
                        r.secret_is_provided(secret),
                        "{}",
                        r.says(&format!(
                            "the Secret {secret} is in the overlay, or a Certificate makes it"
                        ))
                    );
                }
                if let Some(map) = v["configMap"]["name"].as_str() {
                    r.object("ConfigMap", map);
                }
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let reference = &e["valueFrom"]["secretKeyRef"];
                if let Some(secret) = reference["name"].as_str() {
                    let key = reference["key"].as_str().unwrap_or_default();
                    assert!(
                        secret_value(r.object("Secret", secret), key).is_some(),
                        "{}",
                        r.says(&format!("the Secret {secret} has the key {key}"))
                    );
                }
            }
        }
    }
}

#[test]
fn the_aggregator_accepts_its_settings_and_has_the_store_secret_and_port_they_name() {
    in_every_rendering(|r| {
        let config = r.aggregator_settings();
        assert_eq!(
            u64::from(config.listen.port()),
            r.service_target_port(),
            "{}",
            r.says("listens on the port the Service sends to")
        );
        assert!(
            !config.listen.ip().is_loopback(),
            "{}",
            r.says("listens beyond loopback")
        );
        assert_eq!(
            config.admin_token.as_ref().map(|t| t.expose()),
            Some("cma_stand-in"),
            "{}",
            r.says("the admin token is read from its file")
        );
        let (pod, c) = (r.aggregator_pod(), r.aggregator_container());
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                probe_port(c, probe),
                Some(u64::from(config.listen.port())),
                "{}",
                r.says(&format!(
                    "{probe} probes the port the aggregator listens on"
                ))
            );
        }
        let raw: toml::Table = toml::from_str(r.aggregator_toml()).unwrap();
        let token_file = raw["admin_token_file"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", r.says("admin_token_file is set")));
        if let Err(why) = reads_secret_file(pod, c, "core-meter-admin-token", token_file, "token") {
            panic!(
                "{}",
                r.says(&format!(
                    "the aggregator cannot read its admin token: {why}"
                ))
            );
        }
        the_webhook_secrets_are_read_from_their_secret(r, &raw);
        match &config.database {
            aggregator::config::Database::Sqlite(database) => {
                the_sqlite_file_is_on_the_volume(r, database);
            }
            aggregator::config::Database::Postgres(_) => the_postgres_url_is_read_from_a_secret(r),
        }
    });
}

/// Each webhook's signing secret file is a key of the Secret
/// core-meter-webhook-secrets, mounted readable by the pod's group only (the
/// aggregator refuses a secret file every user may read).
fn the_webhook_secrets_are_read_from_their_secret(r: &Rendering, raw: &toml::Table) {
    let (pod, c) = (r.aggregator_pod(), r.aggregator_container());
    for (table, setting, key) in [
        ("webhook", "secret_file", "bill-lines"),
        ("notices", "webhook_secret_file", "notices"),
    ] {
        let Some(path) = raw
            .get(table)
            .and_then(|t| t.get(setting))
            .and_then(|p| p.as_str())
        else {
            continue;
        };
        if let Err(why) = reads_secret_file(pod, c, "core-meter-webhook-secrets", path, key) {
            panic!(
                "{}",
                r.says(&format!(
                    "the aggregator cannot read {table}.{setting}: {why}"
                ))
            );
        }
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["secret"]["secretName"] == "core-meter-webhook-secrets")
            .unwrap();
        let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
        assert_eq!(
            mode & 0o004,
            0,
            "{}",
            r.says(&format!("{table}.{setting} is not readable by every user"))
        );
    }
}

fn the_sqlite_file_is_on_the_volume(r: &Rendering, database: &Path) {
    let (pod, c) = (r.aggregator_pod(), r.aggregator_container());
    assert!(
        database.starts_with("/var/lib/core-meter"),
        "{}",
        r.says("the database is on the volume")
    );
    let data = mount_of(c, "data")
        .unwrap_or_else(|| panic!("{}", r.says("the volume claim data is mounted")));
    assert!(
        database.starts_with(data),
        "{}",
        r.says(&format!(
            "the database {} is on the volume mounted at {data}",
            database.display()
        ))
    );
    assert!(
        !pod["securityContext"]["fsGroup"].is_null(),
        "{}",
        r.says("an fsGroup makes the volume writable by the aggregator's user")
    );
    let tmp = env_value(c, "SQLITE_TMPDIR")
        .unwrap_or_else(|| panic!("{}", r.says("SQLITE_TMPDIR is set: the root is read-only")));
    let scratch = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| !v["emptyDir"].is_null())
        .filter_map(|v| mount_of(c, v["name"].as_str().unwrap()))
        .any(|m| Path::new(tmp).starts_with(m));
    assert!(
        scratch,
        "{}",
        r.says(&format!("SQLITE_TMPDIR {tmp} is on a writable emptyDir"))
    );
}

/// The URL holds the database's password: it is in a Secret, and in no
/// manifest, flag or settings file.
fn the_postgres_url_is_read_from_a_secret(r: &Rendering) {
    let c = r.aggregator_container();
    let e = env(c, "CORE_METER_DATABASE")
        .unwrap_or_else(|| panic!("{}", r.says("CORE_METER_DATABASE is set")));
    let reference = &e["valueFrom"]["secretKeyRef"];
    assert!(
        e["value"].is_null() && reference["name"].is_string() && reference["key"].is_string(),
        "{}",
        r.says("CORE_METER_DATABASE comes from a Secret (secretKeyRef), not a literal")
    );
    assert_ne!(
        reference["optional"],
        true,
        "{}",
        r.says("the database's Secret is not optional: without it the aggregator would open a SQLite file")
    );
    assert!(
        flag(c, "--database").is_none(),
        "{}",
        r.says("no --database flag: the URL would be in the manifest")
    );
    let raw: toml::Table = toml::from_str(r.aggregator_toml()).unwrap();
    assert!(
        !raw.contains_key("database"),
        "{}",
        r.says("aggregator.toml names no database: the URL is in the Secret alone")
    );
    let url = r.env_value_of(c, "CORE_METER_DATABASE").unwrap();
    assert_eq!(
        url.trim(),
        url,
        "{}",
        r.says(
            "the Secret's URL has no newline or space around it: the aggregator takes it as it is"
        )
    );
}

// --- TLS on the agents' hop (issue 11) ---

/// The Secret the aggregator's certificate and key are in (made by the
/// overlay, or by cert-manager from a Certificate).
const AGGREGATOR_TLS_SECRET: &str = "core-meter-aggregator-tls";

#[test]
fn the_aggregator_serves_https_from_the_tls_secret_mounted_as_a_directory() {
    in_every_rendering(|r| {
        let config = r.aggregator_settings();
        let tls = config.tls.as_ref().unwrap_or_else(|| {
            panic!(
                "{}",
                r.says("the aggregator serves HTTPS: tls_cert and tls_key are set")
            )
        });
        let (pod, c) = (r.aggregator_pod(), r.aggregator_container());
        for (path, key) in [(&tls.cert, "tls.crt"), (&tls.key, "tls.key")] {
            let path = path.to_str().unwrap();
            if let Err(why) = reads_secret_file(pod, c, AGGREGATOR_TLS_SECRET, path, key) {
                panic!(
                    "{}",
                    r.says(&format!(
                        "the aggregator cannot read {path} from the Secret {AGGREGATOR_TLS_SECRET}: {why}"
                    ))
                );
            }
        }
        if !r.name.starts_with("overlays/") {
            return;
        }
        match r
            .objects_of("Secret")
            .into_iter()
            .find(|s| s["metadata"]["name"] == AGGREGATOR_TLS_SECRET)
        {
            Some(secret) => {
                assert_eq!(
                    secret["type"],
                    "kubernetes.io/tls",
                    "{}",
                    r.says(&format!(
                        "{AGGREGATOR_TLS_SECRET} is of type kubernetes.io/tls"
                    ))
                );
                for key in ["tls.crt", "tls.key"] {
                    assert!(
                        secret_value(secret, key).is_some(),
                        "{}",
                        r.says(&format!("{AGGREGATOR_TLS_SECRET} holds {key}"))
                    );
                }
            }
            None => assert!(
                r.certificate_of(AGGREGATOR_TLS_SECRET).is_some(),
                "{}",
                r.says(&format!(
                    "the overlay makes the Secret {AGGREGATOR_TLS_SECRET}, or a Certificate does"
                ))
            ),
        }
    });
}

#[test]
fn secret_volumes_holding_keys_or_tokens_are_not_world_readable() {
    in_every_rendering(|r| {
        for (who, pod) in [("agent", r.agent_pod()), ("aggregator", r.aggregator_pod())] {
            for v in pod["volumes"].as_array().into_iter().flatten() {
                let secret = &v["secret"];
                if secret.is_null() {
                    continue;
                }
                let name = &v["name"];
                let mode = secret["defaultMode"].as_u64().unwrap_or(0o644);
                assert_eq!(
                    mode & 0o004,
                    0,
                    "{}",
                    r.says(&format!(
                        "the {who}'s Secret volume {name} has defaultMode {mode:o}: anyone may \
                         read it, and the programs refuse such a key or token (0400)"
                    ))
                );
                for item in secret["items"].as_array().into_iter().flatten() {
                    let mode = item["mode"].as_u64().unwrap_or(mode);
                    assert_eq!(
                        mode & 0o004,
                        0,
                        "{}",
                        r.says(&format!(
                            "the {who}'s Secret volume {name} gives {} mode {mode:o}",
                            item["path"]
                        ))
                    );
                }
                assert!(
                    !pod["securityContext"]["fsGroup"].is_null(),
                    "{}",
                    r.says(&format!(
                        "the {who}'s pod has an fsGroup, so its user can read the Secret \
                         volume {name} that others may not"
                    ))
                );
            }
        }
    });
}

#[test]
fn the_agent_pushes_over_https_and_verifies_against_the_mounted_ca() {
    in_every_rendering(|r| {
        let (pod, c) = (r.agent_pod(), r.agent_container());
        let url = env_value(c, "CORE_METER_AGGREGATOR")
            .map(str::to_string)
            .or_else(|| flag(c, "--aggregator"))
            .unwrap_or_else(|| panic!("{}", r.says("the agent is given the aggregator's URL")));
        assert!(
            url.starts_with("https://"),
            "{}",
            r.says(&format!("the agent pushes over HTTPS, not to {url}"))
        );
        let ca = env_value(c, "CORE_METER_CA_FILE")
            .map(str::to_string)
            .or_else(|| flag(c, "--ca-file"))
            .unwrap_or_else(|| {
                panic!(
                    "{}",
                    r.says("CORE_METER_CA_FILE is set: the agent trusts the installation's CA, not every public one")
                )
            });
        let mount = mount_holding(c, &ca).unwrap_or_else(|| {
            panic!(
                "{}",
                r.says(&format!("the CA file {ca} is on a mounted volume"))
            )
        });
        assert!(
            mount["readOnly"] == true && mount["subPath"].is_null(),
            "{}",
            r.says("the CA is mounted read-only, as a directory")
        );
        let dir = mount["mountPath"].as_str().unwrap();
        let key = Path::new(&ca).strip_prefix(dir).unwrap().to_str().unwrap();
        let v = volume(pod, mount["name"].as_str().unwrap());
        let holds = if let Some(map) = v["configMap"]["name"].as_str() {
            r.objects_of("ConfigMap")
                .into_iter()
                .find(|m| m["metadata"]["name"] == map)
                .map(|m| m["data"][key].is_string())
        } else if let Some(secret) = v["secret"]["secretName"].as_str() {
            r.objects_of("Secret")
                .into_iter()
                .find(|s| s["metadata"]["name"] == secret)
                .map(|s| secret_value(s, key).is_some())
        } else {
            panic!(
                "{}",
                r.says("the CA comes from a ConfigMap or a Secret, not from the node")
            )
        };
        if r.name.starts_with("overlays/") {
            assert_eq!(
                holds,
                Some(true),
                "{}",
                r.says(&format!(
                    "the volume {} holds the CA file's key {key}",
                    v["name"]
                ))
            );
        }
    });
}

#[test]
fn probes_speak_https_to_the_tls_port() {
    in_every_rendering(|r| {
        let config = r.aggregator_settings();
        let c = r.aggregator_container();
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                c[probe]["httpGet"]["scheme"],
                "HTTPS",
                "{}",
                r.says(&format!(
                    "{probe} uses scheme HTTPS: the aggregator speaks nothing else"
                ))
            );
            assert_eq!(
                probe_port(c, probe),
                Some(u64::from(config.listen.port())),
                "{}",
                r.says(&format!(
                    "{probe} probes the port the aggregator serves HTTPS on"
                ))
            );
        }
    });
}

#[test]
fn the_network_policy_opens_the_port_the_aggregator_serves() {
    in_every_rendering(|r| {
        let listen = u64::from(r.aggregator_settings().listen.port());
        let c = r.aggregator_container();
        let policy = r.object("NetworkPolicy", "core-meter-aggregator");
        for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
            let ports: Vec<Option<u64>> = rule["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match &p["port"] {
                    Value::String(name) => c["ports"]
                        .as_array()?
                        .iter()
                        .find(|cp| &cp["name"] == name)?["containerPort"]
                        .as_u64(),
                    other => other.as_u64(),
                })
                .collect();
            assert!(
                ports.contains(&Some(listen)),
                "{}",
                r.says(&format!(
                    "the NetworkPolicy's rule lets in port {listen}, where the aggregator \
                     listens, not only {ports:?}"
                ))
            );
        }
    });
}

#[test]
fn no_manifest_sets_insecure_plaintext() {
    in_every_rendering(|r| {
        for pod in [r.agent_pod(), r.aggregator_pod()] {
            for c in ["initContainers", "containers"]
                .iter()
                .flat_map(|k| pod[k].as_array().into_iter().flatten())
            {
                let name = &c["name"];
                assert!(
                    env(c, "CORE_METER_INSECURE_PLAINTEXT").is_none(),
                    "{}",
                    r.says(&format!(
                        "{name} is not given CORE_METER_INSECURE_PLAINTEXT"
                    ))
                );
                let args = c["args"].as_array().into_iter().flatten();
                assert!(
                    !args
                        .filter_map(Value::as_str)
                        .any(|a| a.starts_with("--insecure-plaintext")),
                    "{}",
                    r.says(&format!("{name} is not given --insecure-plaintext"))
                );
            }
        }
        let raw: toml::Table = toml::from_str(r.aggregator_toml()).unwrap();
        assert!(
            !raw.contains_key("insecure_plaintext"),
            "{}",
            r.says("aggregator.toml does not set insecure_plaintext")
        );
        assert!(
            !r.aggregator_settings().insecure_plaintext,
            "{}",
            r.says("the aggregator does not take plain HTTP")
        );
    });
}

#[test]
fn the_certificate_names_the_address_the_agents_use_and_is_renewed_with_a_new_key() {
    let Some(all) = rendered() else { return };
    assert!(
        all.iter().any(|(n, _)| n == "overlays/cert-manager"),
        "deploy/overlays/cert-manager exists"
    );
    for (name, objects) in all {
        let r = Rendering { name, objects };
        let Some(cert) = r.certificate_of(AGGREGATOR_TLS_SECRET) else {
            continue;
        };
        let spec = &cert["spec"];
        let url = env_value(r.agent_container(), "CORE_METER_AGGREGATOR").unwrap();
        let host = url
            .strip_prefix("https://")
            .and_then(|rest| rest.split([':', '/']).next())
            .unwrap_or_default();
        let names: Vec<&str> = spec["dnsNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            names.contains(&host),
            "{}",
            r.says(&format!(
                "the Certificate's dnsNames {names:?} hold {host}, the name the agents use"
            ))
        );
        assert_eq!(
            spec["privateKey"]["rotationPolicy"],
            "Always",
            "{}",
            r.says(
                "the Certificate's privateKey.rotationPolicy is Always: a new key at each renewal"
            )
        );
        let (duration, renew) = (
            go_duration_secs(&spec["duration"]),
            go_duration_secs(&spec["renewBefore"]),
        );
        assert!(
            duration.zip(renew).is_some_and(|(d, b)| b > 0 && b < d),
            "{}",
            r.says("the Certificate sets a duration, and a renewBefore shorter than it")
        );
        if let Some(usages) = spec["usages"].as_array() {
            assert!(
                usages.contains(&Value::from("server auth")),
                "{}",
                r.says("the Certificate may serve: its usages hold server auth")
            );
        }
        let issuer = &spec["issuerRef"];
        if issuer["kind"] == "Issuer" || issuer["kind"].is_null() {
            let issuer = r.object("Issuer", issuer["name"].as_str().unwrap());
            if let Some(secret) = issuer["spec"]["ca"]["secretName"].as_str() {
                r.object("Secret", secret);
            }
        }
    }
}

/// A Go duration as cert-manager takes it ("2160h", "720h0m0s") in seconds.
fn go_duration_secs(value: &Value) -> Option<u64> {
    let text = value.as_str()?;
    let (mut total, mut number) = (0u64, String::new());
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total += number.parse::<u64>().ok()? * unit;
        number.clear();
    }
    number.is_empty().then_some(total)
}

/// The container's mount under which `path` lies (the deepest such).
fn mount_holding<'a>(container: &'a Value, path: &str) -> Option<&'a Value> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|at| Path::new(path).starts_with(at))
        })
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
}

// --- The images ---

#[test]
fn each_image_is_built_in_stages_and_runs_distroless_as_a_user_without_a_shell() {
    for binary in ["agent", "aggregator"] {
        let path = repo().join(binary).join("Dockerfile");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let stages: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("FROM "))
            .map(|(i, _)| i)
            .collect();
        assert!(
            stages.len() >= 2,
            "{binary}/Dockerfile builds in one stage and runs in another"
        );
        let last = &lines[*stages.last().unwrap()..];
        assert!(
            last[0].contains("gcr.io/distroless/"),
            "{binary}/Dockerfile's runtime is distroless, not {}",
            last[0]
        );
        assert!(
            !last.iter().any(|l| l.starts_with("RUN ")),
            "{binary}/Dockerfile's runtime stage runs nothing: it has no shell"
        );
        let user = last
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{binary}/Dockerfile sets a USER"));
        let uid = user.split(':').next().unwrap();
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u != 0),
            "{binary}/Dockerfile runs as a numeric non-root user, not {user}"
        );
        assert!(
            last.iter().any(|l| l.starts_with("ENTRYPOINT [")),
            "{binary}/Dockerfile's entrypoint is exec form (no shell)"
        );
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for must in ["target", ".git", "**/secrets"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore keeps {must} out of the build context"
        );
    }
}
