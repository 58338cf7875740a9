//! The real agent process against an HTTPS aggregator: its own CA, mutual TLS, a CA it does not trust, plain HTTP only to loopback, and the token file's rules.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::tls::Pki;
use support::{
    eventually, spool_listing, start_refused, Agent, AgentOptions, FakeAggregator, Mode,
};

fn options<'a>(
    aggregator: String,
    spool: &'a Path,
    node: &'a str,
    extra: &[&str],
) -> AgentOptions<'a> {
    AgentOptions {
        aggregator,
        spool,
        node,
        interval_secs: 1,
        extra: extra.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A file only its owner can read, as a Secret with `defaultMode: 0400`.
fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
}

/// Replaces a token file the way the kubelet rotates a Secret: a new file
/// moved into place, never a rewrite of the old one.
fn rotate(path: &Path, text: &str) {
    let next = path.with_extension("next");
    private_file(&next, text);
    std::fs::rename(&next, path).unwrap();
}

#[test]
fn an_agent_given_the_clusters_ca_pushes_over_tls_and_its_samples_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start_tls(Mode::Normal, pki.server_config(false));
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let agent = Agent::start(&options(
        server.url(),
        &spool,
        "node-tls",
        &["--ca-file", path(&pki.ca_file)],
    ));
    eventually(
        Duration::from_secs(15),
        "three samples arrived over TLS",
        || server.stored_seqs().len() >= 3,
    );
    eventually(Duration::from_secs(10), "the spool emptied", || {
        spool_listing(&spool).is_empty()
    });
    assert_eq!(
        agent.metric("core_meter_agent_tls_errors_total", ""),
        Some(0.0)
    );
    assert!(agent
        .log_text()
        .contains(&format!("the CA file {}", pki.ca_file.display())));
}

#[test]
fn with_mutual_tls_an_agent_with_the_client_certificate_pushes_and_one_without_is_refused_and_keeps_its_samples(
) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let server = FakeAggregator::start_tls(Mode::Normal, pki.server_config(true));

    let without = dir.path().join("spool-without");
    let refused = Agent::start(&options(
        server.url(),
        &without,
        "node-without",
        &["--ca-file", path(&pki.ca_file)],
    ));
    eventually(
        Duration::from_secs(15),
        "the server refused two handshakes",
        || server.handshake_failures() >= 2,
    );
    assert_eq!(
        server.requests(),
        0,
        "no request got through without a client certificate"
    );
    assert!(
        !spool_listing(&without).is_empty(),
        "the refused agent keeps its samples"
    );
    eventually(Duration::from_secs(10), "the refusal was counted", || {
        refused
            .metric("core_meter_agent_tls_errors_total", "")
            .unwrap_or(0.0)
            >= 1.0
    });
    assert!(
        refused.log_text().contains(
            "the aggregator wants a client certificate: give --client-cert and --client-key"
        ),
        "the log says what is missing:\n{}",
        refused.log_text()
    );
    assert_eq!(
        refused.metric("core_meter_agent_samples_pushed_total", ""),
        Some(0.0)
    );

    let with = dir.path().join("spool-with");
    let agent = Agent::start(&options(
        server.url(),
        &with,
        "node-with",
        &[
            "--ca-file",
            path(&pki.ca_file),
            "--client-cert",
            path(&pki.client_cert),
            "--client-key",
            path(&pki.client_key),
        ],
    ));
    eventually(
        Duration::from_secs(15),
        "the agent with the client certificate pushed",
        || server.stored_seqs().len() >= 2,
    );
    eventually(Duration::from_secs(10), "its spool emptied", || {
        spool_listing(&with).is_empty()
    });
    assert_eq!(
        agent.metric("core_meter_agent_tls_errors_total", ""),
        Some(0.0)
    );
    let stored = server.received.lock().unwrap().stored.clone();
    assert!(
        stored.keys().all(|(node, _)| node == "node-with"),
        "only the agent with the certificate was stored: {stored:?}"
    );
    assert!(
        !spool_listing(&without).is_empty(),
        "still kept, never lost"
    );
}

#[test]
fn an_agent_given_the_wrong_ca_refuses_the_aggregator_counts_it_and_keeps_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Pki::new(dir.path(), "cluster");
    let other = Pki::new(dir.path(), "other");
    let server = FakeAggregator::start_tls(Mode::Normal, cluster.server_config(false));
    let spool = dir.path().join("spool");
    let agent = Agent::start(&options(
        server.url(),
        &spool,
        "node-wrong-ca",
        &["--ca-file", path(&other.ca_file)],
    ));
    eventually(
        Duration::from_secs(15),
        "two TLS errors were counted",
        || {
            agent
                .metric("core_meter_agent_tls_errors_total", "")
                .unwrap_or(0.0)
                >= 2.0
        },
    );
    assert!(
        agent
            .metric("core_meter_agent_push_errors_total", "kind=\"tls\"")
            .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(
        server.requests(),
        0,
        "nothing was sent to an aggregator it cannot verify"
    );
    assert_eq!(
        agent.metric("core_meter_agent_samples_pushed_total", ""),
        Some(0.0)
    );
    eventually(
        Duration::from_secs(15),
        "three samples wait in the spool",
        || spool_listing(&spool).len() >= 3,
    );
    let log = agent.log_text();
    let expected = format!(
        "the aggregator's certificate could not be verified against the CA file {}",
        other.ca_file.display()
    );
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&expected) && l.contains("UnknownIssuer")),
        "an error-level line says why:\n{log}"
    );

    // Without --ca-file the system's roots do not know a private CA either.
    let plain = dir.path().join("spool-system-roots");
    let system = Agent::start(&options(server.url(), &plain, "node-system-roots", &[]));
    eventually(Duration::from_secs(15), "a TLS error was counted", || {
        system
            .metric("core_meter_agent_tls_errors_total", "")
            .unwrap_or(0.0)
            >= 1.0
    });
    assert!(system
        .log_text()
        .contains("could not be verified against the system's and Mozilla's roots"));
    assert_eq!(server.requests(), 0);
}

#[test]
fn plain_http_to_another_host_is_refused_at_start_unless_insecure_plaintext_is_given() {
    let e = start_refused(&[
        "--aggregator".into(),
        "http://core-meter-aggregator:8080".into(),
    ]);
    assert!(
        e.contains("http://core-meter-aggregator:8080") && e.contains("--insecure-plaintext"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // TEST-NET-1: nothing answers there; the agent only has to start.
    let agent = Agent::start(&options(
        "http://192.0.2.1:8080".into(),
        &spool,
        "node-plaintext",
        &["--insecure-plaintext"],
    ));
    assert!(
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("--insecure-plaintext")),
        "a warning at start:\n{}",
        agent.log_text()
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("https://core-meter-aggregator:8443"));
}

#[test]
fn a_bad_pem_file_is_refused_at_start_naming_the_flag_the_path_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    // Private, so that as a --client-key it is refused for what it holds.
    std::fs::set_permissions(
        &garbage,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.path().join("missing.pem");
    let https = |extra: &[&Path], flags: &[&str]| {
        let mut args = vec![
            "--aggregator".to_string(),
            "https://127.0.0.1:1".to_string(),
        ];
        for (flag, file) in flags.iter().zip(extra) {
            args.push(flag.to_string());
            args.push(path(file).to_string());
        }
        start_refused(&args)
    };
    let e = https(&[&garbage], &["--ca-file"]);
    assert!(
        e.contains("--ca-file") && e.contains(path(&garbage)) && e.contains("no certificate"),
        "{e}"
    );
    let e = https(&[&empty], &["--ca-file"]);
    assert!(
        e.contains("--ca-file") && e.contains(path(&empty)) && e.contains("empty"),
        "{e}"
    );
    let open_key = dir.path().join("open-key.pem");
    std::fs::copy(&pki.client_key, &open_key).unwrap();
    std::fs::set_permissions(
        &open_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let e = https(
        &[&pki.client_cert, &open_key],
        &["--client-cert", "--client-key"],
    );
    assert!(
        e.contains("--client-key")
            && e.contains(path(&open_key))
            && e.contains("readable by everyone"),
        "{e}"
    );
    let e = https(&[&missing], &["--ca-file"]);
    assert!(
        e.contains("--ca-file") && e.contains(path(&missing)) && e.contains("No such file"),
        "{e}"
    );
    let e = https(
        &[&pki.client_cert, &garbage],
        &["--client-cert", "--client-key"],
    );
    assert!(
        e.contains("--client-key") && e.contains(path(&garbage)) && e.contains("no private key"),
        "{e}"
    );
    let e = https(&[&pki.client_cert], &["--client-cert"]);
    assert!(
        e.contains("--client-cert") && e.contains("--client-key") && e.contains("both or neither"),
        "{e}"
    );
}

#[test]
fn a_world_readable_token_file_is_refused_at_start_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, support::TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = start_refused(&[
        "--aggregator".into(),
        "http://127.0.0.1:1".into(),
        "--token-file".into(),
        path(&token_file).into(),
    ]);
    assert!(e.contains(path(&token_file)), "{e}");
    assert!(
        e.contains("chmod o-r") && e.contains("defaultMode: 0400"),
        "{e}"
    );
    assert!(
        !e.contains(support::TOKEN),
        "the token itself is not shown: {e}"
    );
}

#[test]
fn a_rotated_token_file_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let server = FakeAggregator::start_tls(Mode::Normal, pki.server_config(false));
    server.set_token("first-token");
    let token_file = dir.path().join("token");
    private_file(&token_file, "first-token\n");
    let spool = dir.path().join("spool");
    let agent = Agent::start(&options(
        server.url(),
        &spool,
        "node-rotating",
        &[
            "--ca-file",
            path(&pki.ca_file),
            "--token-file",
            path(&token_file),
        ],
    ));
    eventually(
        Duration::from_secs(15),
        "samples arrived with the first token",
        || !server.stored_seqs().is_empty(),
    );
    let before = server.stored_seqs().len();

    server.set_token("second-token");
    rotate(&token_file, "second-token\n");
    eventually(
        Duration::from_secs(15),
        "samples arrived with the rotated token",
        || {
            server.tokens_seen().contains(&"second-token".to_string())
                && server.stored_seqs().len() > before + 1
        },
    );
    assert_eq!(server.tokens_seen(), ["first-token", "second-token"]);
    drop(agent);
}

#[test]
fn the_token_never_appears_in_the_agents_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let other = Pki::new(dir.path(), "other");
    let secret = "tok-5ecret-never-logged";
    let token_file = dir.path().join("token");
    private_file(&token_file, secret);

    // Refused (401), then unverifiable, then stored: every path logs something.
    let server = FakeAggregator::start_tls(Mode::Normal, pki.server_config(false));
    server.set_token("another-token");
    let spool = dir.path().join("spool");
    let mut o = options(
        server.url(),
        &spool,
        "node-secret",
        &[
            "--ca-file",
            path(&pki.ca_file),
            "--token-file",
            path(&token_file),
        ],
    );
    o.env = vec![("RUST_LOG".into(), "trace".into())];
    let agent = Agent::start(&o);
    eventually(Duration::from_secs(15), "a push was refused", || {
        server.unauthorized() >= 1
    });
    server.set_token(secret);
    eventually(Duration::from_secs(15), "a push was stored", || {
        !server.stored_seqs().is_empty()
    });
    let mut log = agent.log_text();
    drop(agent);

    let mut o = options(
        server.url(),
        &spool,
        "node-secret",
        &["--ca-file", path(&other.ca_file), "--token", secret],
    );
    o.env = vec![("RUST_LOG".into(), "trace".into())];
    let agent = Agent::start(&o);
    eventually(Duration::from_secs(15), "a TLS error was counted", || {
        agent.metric("core_meter_agent_tls_errors_total", "") >= Some(1.0)
    });
    log.push_str(&agent.log_text());
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is verbose"
    );
    assert!(!log.contains(secret), "the token is in the log:\n{log}");
}
