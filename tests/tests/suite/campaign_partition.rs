//! Campaign scenario 3 (issue 7), partition: agents in their own network namespaces lose the link to the aggregator for several intervals, three times over, and every sample they took still arrives exactly once.
//!
//! Each namespace hangs off one bridge in the root namespace by a veth pair;
//! the aggregator listens on the bridge's address only, so the traffic stays
//! on the test's own interfaces. The three partitions:
//!
//! 1. the host takes half the namespaces' ports down (`ip link set VETH
//!    down`) while the other half keep delivering;
//! 2. every namespace takes its own end down, and its route with it;
//! 3. every namespace's requests still arrive but the answers are lost (the
//!    host's neighbour entry for it names a MAC address nobody has), so the
//!    aggregator stores samples the agents never hear acknowledged, and the
//!    resends after healing must be answered `duplicate`, not stored again.
//!
//! It needs root, `ip` (iproute2) and `setpriv` (util-linux), and `bash` and
//! `timeout` to read an agent's metrics from inside its namespace. Elsewhere
//! it says why and passes, unless CORE_METER_REQUIRE_ROOT=1 (set by
//! `.ci/run`, which runs as root).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use e2e::procs::{request, AgentOptions, AgentProc, Service, ServiceOptions};

const ADMIN: &str = "admin-campaign-partition";
const NAMESPACES: usize = 4;
const AGENTS_PER_NAMESPACE: usize = 2;
/// How long each partition lasts: eight of the agents' one-second intervals,
/// and longer than their five-second push timeout after the next interval, so
/// that an answer lost in the third partition is given up on before the link
/// heals.
const PARTITION: Duration = Duration::from_secs(8);
/// The whole file finishes well within two minutes.
const BUDGET: Duration = Duration::from_secs(110);
/// A MAC address no interface has: frames sent to it are lost.
const NOWHERE_MAC: &str = "02:00:5e:00:de:ad";
/// Runs a binary so that it is killed when the test that started it dies,
/// even by SIGKILL, and no agent goes on pushing from a namespace nobody
/// removes.
const DIE_WITH_THE_TEST: [&str; 3] = ["setpriv", "--pdeathsig", "KILL"];
/// The prefix of every namespace this test makes, followed by the test's pid.
const NAMESPACE_PREFIX: &str = "core-meter-partition-";

/// Runs `ip` with `args`; its stderr on failure.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// How the link between a namespace and the aggregator is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The host takes the namespace's port on the bridge down.
    HostLinkDown,
    /// The namespace takes its own end down, and its route to the aggregator goes with it.
    NamespaceLinkDown,
    /// Requests still arrive, but the host sends the answers to a MAC address nobody has.
    AnswersLost,
}

impl Cut {
    fn name(self) -> &'static str {
        match self {
            Cut::HostLinkDown => "host link down",
            Cut::NamespaceLinkDown => "namespace link down",
            Cut::AnswersLost => "answers lost",
        }
    }
}

/// One network namespace joined to the bridge.
struct Namespace {
    name: String,
    /// The veth end on the bridge, in the root namespace.
    host_veth: String,
    /// The veth end inside the namespace.
    inner_veth: String,
    addr: Ipv4Addr,
}

/// The test's network: a bridge in the root namespace holding the
/// aggregator's address, and namespaces joined to it by veth pairs. Dropping
/// it removes them all, also when the test panics.
struct Network {
    bridge: String,
    host: Ipv4Addr,
    namespaces: Vec<Namespace>,
}

impl Network {
    /// Makes the bridge and `count` namespaces, or says why it cannot.
    fn make(count: usize) -> Result<Network, String> {
        ip(&["-V"])?;
        Command::new(DIE_WITH_THE_TEST[0])
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run setpriv (util-linux): {e}"))?;
        remove_leftovers();
        let pid = std::process::id();
        let subnet = free_subnet()?;
        let mut net = Network {
            bridge: format!("cmp{pid}br"),
            host: Ipv4Addr::new(10, 231, subnet, 1),
            namespaces: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..count {
            let ns = Namespace {
                name: format!("{NAMESPACE_PREFIX}{pid}-{i}"),
                host_veth: format!("cmp{pid}h{i}"),
                inner_veth: format!("cmp{pid}n{i}"),
                addr: Ipv4Addr::new(10, 231, subnet, 10 + u8::try_from(i).unwrap()),
            };
            ip(&["netns", "add", &ns.name])?;
            net.namespaces.push(ns);
            let ns = net.namespaces.last().unwrap();
            ip(&[
                "link",
                "add",
                &ns.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &ns.inner_veth,
                "netns",
                &ns.name,
            ])?;
            ip(&["link", "set", &ns.host_veth, "master", &net.bridge, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["-n", ns.name.as_str()];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&[
                "addr",
                "add",
                &format!("{}/24", ns.addr),
                "dev",
                &ns.inner_veth,
            ])?;
            inside(&["link", "set", &ns.inner_veth, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Cuts namespace `i` off the aggregator.
    fn cut(&self, i: usize, how: Cut) {
        let ns = &self.namespaces[i];
        let done = match how {
            Cut::HostLinkDown => ip(&["link", "set", &ns.host_veth, "down"]),
            Cut::NamespaceLinkDown => ip(&["-n", &ns.name, "link", "set", &ns.inner_veth, "down"]),
            Cut::AnswersLost => ip(&[
                "neigh",
                "replace",
                &ns.addr.to_string(),
                "lladdr",
                NOWHERE_MAC,
                "dev",
                &self.bridge,
                "nud",
                "permanent",
            ]),
        };
        done.unwrap_or_else(|e| panic!("cut {} ({}): {e}", ns.name, how.name()));
    }

    /// Gives namespace `i` its link back.
    fn heal(&self, i: usize, how: Cut) {
        let ns = &self.namespaces[i];
        let done = match how {
            Cut::HostLinkDown => ip(&["link", "set", &ns.host_veth, "up"]),
            Cut::NamespaceLinkDown => ip(&["-n", &ns.name, "link", "set", &ns.inner_veth, "up"]),
            Cut::AnswersLost => ip(&["neigh", "del", &ns.addr.to_string(), "dev", &self.bridge]),
        };
        done.unwrap_or_else(|e| panic!("heal {} ({}): {e}", ns.name, how.name()));
    }

    /// `ip netns exec NS`, to run a binary inside namespace `i`, dying with the test.
    fn wrapper(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.namespaces[i].name]
            .into_iter()
            .chain(DIE_WITH_THE_TEST)
            .map(String::from)
            .collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; the namespace goes
        // once its agents are gone (they are dropped before the network).
        for ns in &self.namespaces {
            let _ = ip(&["link", "del", &ns.host_veth]);
            let _ = ip(&["netns", "del", &ns.name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Removes the namespaces and bridges of earlier runs of this test that were
/// killed before they could clean up (their pid is gone). Their agents and
/// aggregator died with them (`DIE_WITH_THE_TEST`).
fn remove_leftovers() {
    let dead = |pid: &str| !std::path::Path::new("/proc").join(pid).exists();
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NAMESPACE_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !dead(pid) {
            continue;
        }
        let _ = ip(&["netns", "del", name]);
    }
    for line in ip(&["-o", "link", "show", "type", "bridge"])
        .unwrap_or_default()
        .lines()
    {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if let Some(pid) = name.strip_prefix("cmp").and_then(|r| r.strip_suffix("br")) {
            if pid.bytes().all(|b| b.is_ascii_digit()) && dead(pid) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A third octet `x` such that 10.231.x.0/24 overlaps no address or route on the machine.
fn free_subnet() -> Result<u8, String> {
    let mut in_use: Vec<(u32, u32)> = Vec::new();
    for text in [
        ip(&["-4", "-o", "addr", "show"])?,
        ip(&["-4", "route", "show", "table", "all"])?,
    ] {
        for word in text.split_whitespace() {
            let (addr, len) = word.split_once('/').unwrap_or((word, "32"));
            if let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) {
                in_use.push((u32::from(addr), len.min(32)));
            }
        }
    }
    let overlaps = |net: u32, len: u32| {
        in_use.iter().any(|&(other, other_len)| {
            let common = len.min(other_len);
            let mask = if common == 0 {
                0
            } else {
                u32::MAX << (32 - common)
            };
            net & mask == other & mask
        })
    };
    // Start from the pid so that runs side by side try different ones first.
    let start = std::process::id() % 100;
    (0..100)
        .map(|k| 128 + u8::try_from((start + k) % 100).unwrap())
        .find(|&x| !overlaps(u32::from(Ipv4Addr::new(10, 231, x, 0)), 24))
        .ok_or_else(|| "every 10.231.x.0/24 (x 128 to 227) is in use on this machine".to_string())
}

/// The network, or None after saying why it cannot be made here.
fn network_or_skip() -> Option<Network> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let made = if root {
        Network::make(NAMESPACES)
    } else {
        Err("not root".to_string())
    };
    match made {
        Ok(net) => Some(net),
        Err(why) => {
            let why = format!(
                "needs network namespaces (root, iproute2's ip, util-linux's setpriv): {why}"
            );
            testkit::skip("ROOT", &format!("this test {why}"));
            None
        }
    }
}

/// One agent in its namespace.
struct Node {
    agent: AgentProc,
    namespace: usize,
    /// Its metrics address, inside its namespace.
    metrics: String,
}

impl Node {
    /// Its `/metrics`, read from inside its namespace.
    fn metrics_text(&self, net: &Network) -> String {
        let (host, port) = self.metrics.rsplit_once(':').unwrap();
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{port} || exit 1; printf 'GET /metrics HTTP/1.0\\r\\nHost: agent\\r\\n\\r\\n' >&3; cat <&3"
        );
        let out = Command::new("timeout")
            .args(["10", "ip", "netns", "exec"])
            .arg(&net.namespaces[self.namespace].name)
            .args(["bash", "-c", &script])
            .output()
            .expect("run bash in the namespace");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("HTTP/1.") && text.split_whitespace().nth(1) == Some("200"),
            "{}: GET /metrics inside {} answered {:?} (stderr {})",
            self.agent.node,
            net.namespaces[self.namespace].name,
            text.lines().next(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        text.split_once("\r\n\r\n")
            .map_or(text.clone(), |(_, b)| b.to_string())
    }

    fn log_tail(&self) -> String {
        let log = self.agent.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            let rest = key.strip_prefix(name).unwrap_or("!");
            (rest.is_empty() || rest.starts_with('{')) && labels.iter().all(|w| rest.contains(w))
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// One stored sample, as the audit trail shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    node: String,
    seq: u64,
    cores: u32,
    at: DateTime<Utc>,
}

/// Every sample stored for the account on the days the test spans.
fn stored(service: &Service, days: &BTreeSet<String>) -> Vec<Stored> {
    days.iter()
        .flat_map(|day| service.stored("acme", day))
        .map(|s| Stored {
            node: s["node"].as_str().unwrap().to_string(),
            seq: s["seq"].as_u64().expect("the agent's samples carry a seq"),
            cores: u32::try_from(s["cores"].as_u64().unwrap()).unwrap(),
            at: s["at"].as_str().unwrap().parse().unwrap(),
        })
        .collect()
}

/// Every sample the nodes' logs say was taken, as (node, seq) → (cores, at).
fn taken(nodes: &[Node]) -> BTreeMap<(String, u64), (u32, DateTime<Utc>)> {
    let mut all = BTreeMap::new();
    for n in nodes {
        for t in n.agent.taken() {
            let at: DateTime<Utc> = t.at.parse().expect("the log's instant is RFC 3339");
            let again = all.insert((n.agent.node.clone(), t.seq), (t.cores, at));
            assert!(
                again.is_none(),
                "{} logged seq {} twice",
                n.agent.node,
                t.seq
            );
        }
    }
    all
}

fn days(from: DateTime<Utc>) -> BTreeSet<String> {
    let zone = shared::zone::BillingZone::default();
    [from, Utc::now()]
        .iter()
        .map(|t| zone.day_of(*t).to_string())
        .collect()
}

/// Waits for `done`, polling, until `within` or the file's budget runs out.
fn wait_for(what: &str, started: Instant, within: Duration, done: impl FnMut() -> bool) {
    // No wait outlasts the test's budget.
    let within = within.min(BUDGET.saturating_sub(started.elapsed()));
    let what = format!("{what} (from {:.1?} into the test)", started.elapsed());
    testkit::eventually(within, &what, done);
}

/// The service's count of samples answered with `result`.
fn ingested(service: &Service, result: &str) -> u64 {
    let (status, text) =
        request(service.addr, "GET", "/metrics", None, None).expect("the service answers");
    assert_eq!(status, 200);
    metric(
        &text,
        "core_meter_ingest_samples_total",
        &[&format!("result=\"{result}\"")],
    )
}

#[test]
fn agents_cut_off_for_several_intervals_three_times_deliver_every_sample_exactly_once() {
    let started = Instant::now();
    let began = Utc::now();
    let Some(net) = network_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::ports::HeldPort::on(net.host);
    let listen = port.addr();
    let service = Service::start_on(
        port,
        &dir.path().join("core-meter.sqlite"),
        ADMIN,
        &ServiceOptions {
            wrapper: DIE_WITH_THE_TEST.map(String::from).to_vec(),
            // Plain HTTP on the test's own bridge, which no other machine reaches.
            env: vec![("CORE_METER_INSECURE_PLAINTEXT".into(), "true".into())],
            ..ServiceOptions::default()
        },
    );
    let token = service.account_with_cluster("acme", "prod");
    let mut nodes: Vec<Node> = Vec::new();
    for namespace in 0..NAMESPACES {
        for k in 0..AGENTS_PER_NAMESPACE {
            let mut o = AgentOptions::new(
                dir.path(),
                &format!("ns{namespace}-agent{k}"),
                &format!("http://{listen}"),
                &token,
            );
            o.wrapper = net.wrapper(namespace);
            o.extra.push("--insecure-plaintext".into());
            nodes.push(Node {
                agent: AgentProc::start(&o),
                namespace,
                metrics: String::new(),
            });
        }
    }
    for n in &mut nodes {
        let log = &n.agent.log;
        wait_for(
            "every agent serves its metrics",
            started,
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let listen = text.lines().find_map(|l| {
                    l.split(" listen=")
                        .nth(1)?
                        .split_whitespace()
                        .next()
                        .map(String::from)
                });
                listen.map(|a| n.metrics = a).is_some()
            },
        );
    }
    let delivered_all = |nodes: &[Node]| {
        let stored: BTreeSet<(String, u64)> = stored(&service, &days(began))
            .into_iter()
            .map(|s| (s.node, s.seq))
            .collect();
        nodes.iter().all(|n| n.agent.pending() == 0)
            && taken(nodes).keys().all(|k| stored.contains(k))
    };
    wait_for(
        "every agent has delivered two samples",
        started,
        Duration::from_secs(30),
        || {
            let stored = stored(&service, &days(began));
            nodes
                .iter()
                .all(|n| stored.iter().filter(|s| s.node == n.agent.node).count() >= 2)
        },
    );

    let cycles: [(Cut, Vec<usize>); 3] = [
        (Cut::HostLinkDown, (0..NAMESPACES / 2).collect()),
        (Cut::NamespaceLinkDown, (0..NAMESPACES).collect()),
        (Cut::AnswersLost, (0..NAMESPACES).collect()),
    ];
    let (mut partitions, mut healed) = (0, 0);
    let mut figures = Vec::new();
    for (how, cut_off) in &cycles {
        let (inside, outside): (Vec<&Node>, Vec<&Node>) =
            nodes.iter().partition(|n| cut_off.contains(&n.namespace));
        let errors_before: Vec<u64> = inside
            .iter()
            .map(|n| {
                metric(
                    &n.metrics_text(&net),
                    "core_meter_agent_push_errors_total",
                    &[],
                )
            })
            .collect();
        let taken_before: Vec<usize> = inside.iter().map(|n| n.agent.taken().len()).collect();
        let pending_before: Vec<usize> = inside.iter().map(|n| n.agent.pending()).collect();
        let count_stored = |n: &Node| {
            stored(&service, &days(began))
                .iter()
                .filter(|s| s.node == n.agent.node)
                .count()
        };
        let outside_before: Vec<usize> = outside.iter().map(|n| count_stored(n)).collect();
        let duplicates_before = ingested(&service, "duplicate");

        for &i in cut_off {
            net.cut(i, *how);
        }
        partitions += 1;
        let cut_at = Instant::now();
        wait_for(
            &format!("the partition ({}) has lasted {PARTITION:?}", how.name()),
            started,
            PARTITION + Duration::from_secs(5),
            || cut_at.elapsed() >= PARTITION,
        );
        // Nothing an agent took while cut off has been acknowledged, so its
        // spool and its pending gauge grew by at least that much, and its
        // pushes failed.
        let (mut took_min, mut took_max, mut pending_min) = (usize::MAX, 0, usize::MAX);
        for (((n, &errors), &taken_then), &pending_then) in inside
            .iter()
            .zip(&errors_before)
            .zip(&taken_before)
            .zip(&pending_before)
        {
            let took = n.agent.taken().len() - taken_then;
            let pending = n.agent.pending();
            (took_min, took_max) = (took_min.min(took), took_max.max(took));
            pending_min = pending_min.min(pending);
            assert!(
                took >= 1 && pending >= pending_then + took,
                "{} ({}): took {took} samples in {:.1?} cut off, but {pending} are pending (were {pending_then})\n{}",
                n.agent.node,
                how.name(),
                cut_at.elapsed(),
                n.log_tail()
            );
            let text = n.metrics_text(&net);
            let errors_now = metric(&text, "core_meter_agent_push_errors_total", &[]);
            assert!(
                errors_now > errors,
                "{} ({}): push errors stayed at {errors}\n{text}",
                n.agent.node,
                how.name()
            );
            let gauge = metric(&text, "core_meter_agent_samples_pending", &[]);
            assert!(
                gauge >= u64::try_from(pending_then + took).unwrap(),
                "{} ({}): the pending gauge says {gauge}, the spool holds {pending}",
                n.agent.node,
                how.name()
            );
        }
        // The namespaces left connected kept delivering all along.
        for (n, &before) in outside.iter().zip(&outside_before) {
            let now = count_stored(n);
            assert!(
                now >= before + 4,
                "{} was not cut off but only {} of its samples arrived during the partition\n{}",
                n.agent.node,
                now - before,
                n.log_tail()
            );
        }
        let cut_for = cut_at.elapsed();

        for &i in cut_off {
            net.heal(i, *how);
        }
        let healed_at = Instant::now();
        wait_for(
            &format!("every sample taken arrived after healing ({})", how.name()),
            started,
            Duration::from_secs(40),
            || delivered_all(&nodes),
        );
        healed += 1;
        let catch_up = healed_at.elapsed();
        let duplicates = ingested(&service, "duplicate") - duplicates_before;
        if *how == Cut::AnswersLost {
            // The first push into the partition reached the aggregator on the
            // agent's open connection; only its answer was lost.
            assert!(
                duplicates > 0,
                "no push was answered duplicate after the answers were lost"
            );
        }
        figures.push(format!(
            "{}: {} namespaces cut for {:.1}s, each agent took {took_min} to {took_max} samples meanwhile, pending >= {pending_min}, caught up in {:.1}s, {duplicates} answered duplicate",
            how.name(),
            cut_off.len(),
            cut_for.as_secs_f64(),
            catch_up.as_secs_f64()
        ));
        // Let the connections settle before the next cut.
        std::thread::sleep(Duration::from_secs(2));
    }

    for n in &mut nodes {
        let status = n.agent.terminate(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly on SIGTERM: {status:?}\n{}",
            n.agent.node,
            n.log_tail()
        );
        assert_eq!(
            n.agent.pending(),
            0,
            "{} stopped with samples pending",
            n.agent.node
        );
    }

    // Every sample taken is stored exactly once, as it was taken.
    let taken = taken(&nodes);
    let stored = stored(&service, &days(began));
    let mut by_key: BTreeMap<(String, u64), Vec<&Stored>> = BTreeMap::new();
    for s in &stored {
        by_key.entry((s.node.clone(), s.seq)).or_default().push(s);
    }
    let duplicates: usize = by_key.values().map(|v| v.len() - 1).sum();
    let lost: Vec<_> = taken.keys().filter(|k| !by_key.contains_key(*k)).collect();
    let unknown: Vec<_> = by_key.keys().filter(|k| !taken.contains_key(*k)).collect();
    let altered: Vec<_> = by_key
        .iter()
        .filter_map(|(k, v)| {
            let (cores, at) = taken.get(k)?;
            v.iter()
                .any(|s| (s.cores, s.at) != (*cores, *at))
                .then(|| (k, (cores, at), v.clone()))
        })
        .collect();
    assert_eq!(duplicates, 0, "samples stored twice");
    assert!(
        lost.is_empty(),
        "{} samples taken but never stored: {lost:?}",
        lost.len()
    );
    assert!(unknown.is_empty(), "stored but never taken: {unknown:?}");
    assert!(altered.is_empty(), "stored unlike taken: {altered:?}");
    for n in &nodes {
        let seqs: Vec<u64> = by_key
            .keys()
            .filter(|(node, _)| *node == n.agent.node)
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{}: stored seqs are not 1..=max",
            n.agent.node
        );
    }
    let answered_duplicate = ingested(&service, "duplicate");
    for f in &figures {
        eprintln!("campaign: partition cycle: {f}");
    }
    eprintln!(
        "campaign: partition: namespaces={NAMESPACES} agents={} partitions={partitions} healed={healed} taken={} stored={} lost={} duplicates={duplicates} answered_duplicate={answered_duplicate} secs={}",
        nodes.len(),
        taken.len(),
        stored.len(),
        lost.len(),
        started.elapsed().as_secs()
    );
    // The agents go before the network that holds them.
    drop(nodes);
    drop(net);
}

/// Found by the partition above: a push that waits out `--push-timeout-secs`
/// (5 s here) for an answer that never comes (a dropped route, lost answers)
/// held the next sample back, so an agent sampling every second took one
/// sample per push timeout. The sample now falls due on time during a push.
#[test]
fn an_agent_whose_pushes_go_unanswered_still_samples_every_interval() {
    // The kernel completes connections to a listener nobody accepts from,
    // and nothing ever answers the requests sent on them.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = AgentOptions::new(
        dir.path(),
        "unanswered",
        &format!("http://{}", silent.local_addr().unwrap()),
        "cmc_unused",
    );
    let agent = AgentProc::start(&o);
    // One per second while its pushes go unanswered: ten within 12 s.
    let started = Instant::now();
    testkit::eventually(Duration::from_secs(12), "ten samples taken", || {
        agent.taken().len() >= 10
    });
    eprintln!("ten samples taken in {:?}", started.elapsed());
}
