//! The DaemonSet's spool, with real users and capabilities: the kubelet makes
//! the hostPath as root 0755; the init container (`agent prepare-spool`, root
//! with only CAP_CHOWN) hands it to uid 65532; the agent, as 65532 with no
//! capabilities, then keeps its samples there and delivers what an earlier
//! root-owned run left behind.
//!
//! It needs root and `setpriv` (util-linux). Elsewhere it says why and passes,
//! unless CORE_METER_REQUIRE_ROOT=1 (set by `.ci/run`, which runs as root).

use crate::support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{eventually, FakeAggregator, Mode, TOKEN};

const AGENT_USER: &str = "65532";

fn can_run() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && setpriv {
        return true;
    }
    let why = format!("needs root and setpriv (root: {root}, setpriv: {setpriv})");
    testkit::skip("ROOT", &format!("this test {why}"));
    false
}

/// `agent …` as root holding only the capabilities in `caps` (setpriv syntax).
fn agent_as_root_with(caps: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--bounding-set=-all{caps}"))
        .arg("--inh-caps=-all")
        .arg(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .output()
        .expect("run setpriv")
}

fn owner_of(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn the_init_container_hands_the_hostpath_to_the_agent_user_who_then_spools_and_delivers() {
    if !can_run() {
        return;
    }
    // A directory every user may walk through, like /var/lib on a node.
    let base = tempfile::tempdir().unwrap();
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // What `hostPath: {type: DirectoryOrCreate}` makes: root:root 0755.
    let host = base.path().join("core-meter");
    fs::create_dir(&host).unwrap();
    fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).unwrap();
    let spool = host.join("spool");
    let spool_arg = spool.to_str().unwrap();

    // An earlier agent ran as root and left a sample it could not deliver
    // to a port that refused it.
    let refusing = testkit::ports::HeldPort::new();
    let mut root_agent = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args([
            "run",
            "--aggregator",
            &format!("http://{}", refusing.addr()),
        ])
        .args([
            "--spool",
            spool_arg,
            "--interval-secs",
            "1",
            "--spread-secs",
            "0",
        ])
        .args(["--listen", "127.0.0.1:0", "--node", "node-a"])
        .env("CORE_METER_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the root agent spools a sample",
        || fs::read_dir(spool.join("pending")).is_ok_and(|d| d.count() > 0),
    );
    root_agent.kill().unwrap();
    root_agent.wait().unwrap();
    assert_eq!(owner_of(&spool.join("pending")), (0, 0));

    // A link planted in the host directory must not lend root's power.
    let victim = base.path().join("victim");
    fs::write(&victim, "a host file").unwrap();
    std::os::unix::fs::symlink(&victim, host.join("link")).unwrap();

    let owner = format!("{AGENT_USER}:{AGENT_USER}");
    let host_arg = host.to_str().unwrap();
    let refused = agent_as_root_with("", &["prepare-spool", "--owner", &owner, host_arg]);
    assert!(
        !refused.status.success(),
        "without CAP_CHOWN root cannot hand the directory over"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("core-meter"),
        "the error names the path: {said}"
    );

    let prepared = agent_as_root_with(",+chown", &["prepare-spool", "--owner", &owner, host_arg]);
    assert!(
        prepared.status.success(),
        "prepare-spool with CAP_CHOWN: {}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    let uid: u32 = AGENT_USER.parse().unwrap();
    for path in [host.clone(), spool.clone(), spool.join("pending")] {
        assert_eq!(
            owner_of(&path),
            (uid, uid),
            "{} is the agent's",
            path.display()
        );
    }
    assert_eq!(
        fs::metadata(&host).unwrap().permissions().mode() & 0o777,
        0o700,
        "the spool is private to the agent"
    );
    assert_eq!(
        owner_of(&victim),
        (0, 0),
        "the link's target was not touched"
    );
    assert_eq!(
        owner_of(&host.join("link")),
        (uid, uid),
        "the link itself was"
    );

    // Run again (a pod restart): nothing to do, nothing fails.
    let again = agent_as_root_with(",+chown", &["prepare-spool", "--owner", &owner, host_arg]);
    assert!(again.status.success());

    // The agent as 65532, no capabilities, no way to gain any.
    let aggregator = FakeAggregator::start(Mode::Normal);
    let mut agent = Command::new("setpriv")
        .args([
            &format!("--reuid={AGENT_USER}"),
            &format!("--regid={AGENT_USER}"),
            "--clear-groups",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--no-new-privs",
        ])
        .arg(env!("CARGO_BIN_EXE_agent"))
        .args(["run", "--aggregator", &aggregator.url()])
        .args([
            "--spool",
            spool_arg,
            "--interval-secs",
            "1",
            "--spread-secs",
            "0",
        ])
        .args(["--listen", "127.0.0.1:0", "--node", "node-a"])
        .args(["--max-backoff-secs", "1"])
        .env("CORE_METER_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the left-over sample and new ones arrive",
        || {
            let seqs = aggregator.stored_seqs();
            seqs.contains(&1) && seqs.len() >= 3
        },
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    let seqs = aggregator.stored_seqs();
    let expected: Vec<u64> = (1..=*seqs.iter().max().unwrap()).collect();
    assert_eq!(seqs, expected, "every seq once, the root-era one included");
    for entry in fs::read_dir(spool.join("pending")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            owner_of(&path),
            (uid, uid),
            "{} was written by the agent user",
            path.display()
        );
    }
}

#[test]
fn a_file_of_a_third_user_stops_the_hand_over_naming_it_and_changes_nothing() {
    if !can_run() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let host = base.path().join("core-meter");
    let spool = host.join("spool");
    fs::create_dir_all(&spool).unwrap();
    let stranger = spool.join("planted");
    fs::write(&stranger, "not ours").unwrap();
    std::os::unix::fs::chown(&stranger, Some(1000), Some(1000)).unwrap();
    let owner = format!("{AGENT_USER}:{AGENT_USER}");
    let out = agent_as_root_with(
        ",+chown",
        &["prepare-spool", "--owner", &owner, host.to_str().unwrap()],
    );
    assert!(
        !out.status.success(),
        "a third user's file is not taken over"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("planted") && said.contains("uid 1000"),
        "the error names the entry and its owner: {said}"
    );
    assert_eq!(owner_of(&stranger), (1000, 1000));
    assert_eq!(owner_of(&host), (0, 0), "nothing was changed");
}
