//! Hostile bodies for `POST /v1/samples`: arbitrary bytes, arbitrary JSON and mutated batches go through the decoder and the validator the route and the store use, never panic, and end as a refusal naming its field and reason or as one result per sample.
//!
//! CI runs a few thousand cases of each property (about 15 s in a debug
//! build). A longer run, `PROPTEST_CASES` cases of each property:
//! `PROPTEST_CASES=1000000 cargo test -p aggregator --test ingest_fuzz --release -- --nocapture`
//! (each property prints what its cases came to). 200,000 of each took 82 s
//! in release on a 2-vCPU machine, so a million takes about 7 minutes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use shared::sample::{validate, AgeLimits, Rejection, CORES_MAX, CORES_MIN};
use shared::wire::{
    decode_batch, BatchError, DecodedSample, AGENT_VERSION_MAX_CHARS, MAX_BATCH_BYTES,
    MAX_BATCH_SAMPLES,
};

/// Cases per property: `PROPTEST_CASES`, else a CI-sized run.
fn config(ci_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci_cases);
    ProptestConfig {
        cases,
        // A failure prints its smallest case; there is no source file to keep it next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What the cases of one property came to, printed when it ends.
#[derive(Default)]
struct Tally {
    cases: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    results: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn refused(&self, what: &'static str) {
        *self.refused.lock().unwrap().entry(what).or_default() += 1;
    }

    fn result(&self, what: &'static str) {
        *self.results.lock().unwrap().entry(what).or_default() += 1;
    }

    fn print(&self, property: &str) {
        eprintln!(
            "ingest_fuzz: {property}: cases={} refused={:?} samples={:?} panics=0",
            self.cases.load(Ordering::Relaxed),
            self.refused.lock().unwrap(),
            self.results.lock().unwrap()
        );
    }
}

/// The identity and instant a body is decoded and validated with.
#[derive(Debug, Clone)]
struct Context {
    account_known: bool,
    cluster: &'static str,
    received_at: DateTime<Utc>,
}

fn context() -> impl Strategy<Value = Context> {
    (
        prop::bool::weighted(0.9),
        prop_oneof![8 => Just("prod"), 1 => Just(""), 1 => Just(" \t")],
        // 1970 to 2100, to the millisecond.
        0i64..4_102_444_800_000,
    )
        .prop_map(|(account_known, cluster, ms)| Context {
            account_known,
            cluster,
            received_at: Utc.timestamp_millis_opt(ms).unwrap(),
        })
}

/// The one path the route takes, checked for a clean outcome: a refusal of
/// the whole body that names its field and reason, or one result per sample
/// whose reason is the first check of SPEC section 3 that fails. Returns the
/// per-sample results (`None` for a refused body).
fn decode_and_validate(
    body: &[u8],
    cx: &Context,
    tally: &Tally,
) -> Option<Vec<Result<(), Rejection>>> {
    let limits = AgeLimits::default();
    let decoded = match decode_batch(body) {
        Ok(d) => d,
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
            match &e {
                BatchError::TooLarge { bytes } => {
                    assert!(*bytes > MAX_BATCH_BYTES && body.len() == *bytes);
                    assert_eq!(e.field(), None);
                    tally.refused("too_large");
                }
                BatchError::TooManySamples { count } => {
                    assert!(*count > MAX_BATCH_SAMPLES, "{message}");
                    assert_eq!(e.field(), Some("samples"));
                    tally.refused("too_many_samples");
                }
                BatchError::Malformed(reason) => {
                    assert_eq!(e.field(), Some("samples"));
                    assert!(!reason.is_empty(), "a refusal says why");
                    assert!(message.starts_with("expected {\"samples\": [...]}: "));
                    tally.refused("malformed");
                }
            }
            return None;
        }
    };
    assert!(decoded.len() <= MAX_BATCH_SAMPLES);
    let results = decoded
        .iter()
        .map(|s| {
            let outcome = match s {
                Err(r) => {
                    assert_eq!(*r, Rejection::InvalidSeq, "decoding rejects only a bad seq");
                    Err(*r)
                }
                Ok(d) => validated(d, cx, &limits),
            };
            tally.result(match outcome {
                Ok(()) => "accepted",
                Err(r) => r.as_str(),
            });
            outcome
        })
        .collect();
    Some(results)
}

/// `validate` on a decoded sample, checked against the order of SPEC section 3.
fn validated(d: &DecodedSample, cx: &Context, limits: &AgeLimits) -> Result<(), Rejection> {
    if let Some(v) = &d.agent_version {
        assert!(v.chars().count() <= AGENT_VERSION_MAX_CHARS);
    }
    assert!(d.seq.is_none_or(|s| s >= 0));
    let outcome = validate(
        &d.unchecked(cx.account_known, cx.cluster),
        cx.received_at,
        limits,
    );
    let first_failing = if !cx.account_known {
        Some(Rejection::UnknownAccount)
    } else if d.cores.is_none() {
        Some(Rejection::InvalidCores)
    } else if cx.cluster.trim().is_empty() || d.node.trim().is_empty() {
        Some(Rejection::MissingIdentity)
    } else if !node_name_in_domain(&d.node) {
        Some(Rejection::InvalidNode)
    } else if let Some(at) = d.at {
        if at > cx.received_at + limits.max_future {
            Some(Rejection::InFuture)
        } else if at < cx.received_at - limits.max_age {
            Some(Rejection::TooOld)
        } else {
            None
        }
    } else {
        Some(Rejection::InvalidAt)
    };
    match outcome {
        Ok(c) => {
            assert_eq!(first_failing, None, "{d:?} passed");
            assert!((CORES_MIN..=CORES_MAX).contains(&c.cores));
            assert_eq!((Some(c.cores), Some(c.at)), (d.cores, d.at));
            Ok(())
        }
        Err(r) => {
            assert_eq!(Some(r), first_failing, "{d:?}");
            Err(r)
        }
    }
}

/// The node names of docs/api.md ("What each input may be"), written here
/// again as the oracle: 1 to 253 ASCII letters, digits, `-`, `_` and `.`,
/// not starting with `.` or `-`.
fn node_name_in_domain(node: &str) -> bool {
    (1..=253).contains(&node.chars().count())
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !matches!(node.chars().next(), Some('.' | '-'))
}

// ---- Structured batches: each field drawn from values whose fate is known.

/// A JSON fragment, as raw bytes so it can be what a `Value` cannot hold
/// (`1e400`, invalid UTF-8, a lone surrogate), with what it should come to.
#[derive(Debug, Clone)]
struct Fragment<T> {
    json: Vec<u8>,
    /// What the field decodes to; `None` when it is no valid value.
    expect: T,
    /// The fragment makes the whole body unreadable (a 400 naming `samples`).
    breaks_batch: bool,
}

fn frag<T>(json: impl Into<Vec<u8>>, expect: T) -> Fragment<T> {
    Fragment {
        json: json.into(),
        expect,
        breaks_batch: false,
    }
}

fn breaking<T>(json: impl Into<Vec<u8>>, expect: T) -> Fragment<T> {
    Fragment {
        json: json.into(),
        expect,
        breaks_batch: true,
    }
}

/// Values that are JSON but of the wrong kind for any field.
fn wrong_kind() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "null",
        "true",
        "false",
        "{}",
        "[]",
        "[1,2]",
        "{\"a\":1}",
        "\"\"",
        "[[[[[]]]]]",
    ])
}

/// `cores`: `Some(n)` when it must be taken as n cores.
fn cores() -> impl Strategy<Value = Option<Fragment<Option<u32>>>> {
    let some = prop_oneof![
        40 => (CORES_MIN..=CORES_MAX).prop_map(|n| frag(n.to_string(), Some(n))),
        4 => (CORES_MIN..=CORES_MAX).prop_map(|n| frag(format!("{n}.0"), Some(n))),
        2 => (CORES_MIN..=CORES_MAX).prop_map(|n| frag(format!("{n}e0"), Some(n))),
        2 => Just(frag("1e4", Some(10_000))),
        2 => prop::sample::select(vec![
            "0", "-0", "-0.0", "10001", "-1", "8.5", "1e300", "-1e300", "18446744073709551615",
            "18446744073709551616", "123456789012345678901234567890", "-9223372036854775808",
            "4294967297", "0.0000001", "10000.000001",
        ])
        .prop_map(|s| frag(s, None)),
        1 => (CORES_MAX as u64 + 1..u64::MAX).prop_map(|n| frag(n.to_string(), None)),
        1 => any::<i64>().prop_filter("negative", |n| *n < 0).prop_map(|n| frag(n.to_string(), None)),
        1 => (1u32..=CORES_MAX).prop_map(|n| frag(format!("\"{n}\""), None)),
        1 => wrong_kind().prop_map(|s| frag(s, None)),
        1 => prop::sample::select(vec!["1e400", "-1e400", "NaN", "Infinity", "01", "+1", "1.", ".5", "0x10"])
            .prop_map(|s| breaking(s, None)),
    ];
    prop::option::weighted(0.98, some)
}

/// `node`: the name it decodes to (`""` for anything but a string).
fn node() -> impl Strategy<Value = Option<Fragment<String>>> {
    fn named(s: String) -> Fragment<String> {
        frag(serde_json::to_string(&s).unwrap(), s)
    }
    let some = prop_oneof![
        60 => "[a-z][a-z0-9-]{0,30}".prop_map(named),
        4 => any::<String>().prop_map(named),
        4 => prop::sample::select(vec![
            "", " ", "\t\n", "\u{3000}", "\u{0}", "ノード-1", "\u{202e}evil", "../../etc/passwd",
            "n1\r\nSet-Cookie: x", "<script>", "'; DROP TABLE samples; --",
        ])
        .prop_map(|s| named(s.to_string())),
        2 => (1usize..5000).prop_map(|n| named("n".repeat(n))),
        2 => wrong_kind().prop_map(|s| frag(s, String::new())),
        1 => Just(frag("5", String::new())),
        1 => prop::sample::select(vec![
            &b"\"\xff\xfe\""[..], b"\"\\ud800\"", b"\"\\x41\"", b"\"unterminated", b"\"\x01\"",
        ])
        .prop_map(|s| breaking(s.to_vec(), String::new())),
    ];
    prop::option::weighted(0.98, some)
}

/// `at`: the instant it decodes to.
fn at(
    received_at: DateTime<Utc>,
) -> impl Strategy<Value = Option<Fragment<Option<DateTime<Utc>>>>> {
    let limits = AgeLimits::default();
    let (future, age) = (
        limits.max_future.num_milliseconds(),
        limits.max_age.num_milliseconds(),
    );
    let offsets = prop_oneof![
        6 => -age..=future,
        1 => prop::sample::select(vec![future, future + 1, future + 1000, -age, -age - 1, -age - 1000, 0]),
        1 => -10 * age..10 * age,
    ];
    let rendered = (offsets, -(23 * 60 + 59)..=(23 * 60 + 59), any::<bool>()).prop_map(
        move |(offset_ms, zone_minutes, use_z)| {
            let at = received_at + TimeDelta::milliseconds(offset_ms);
            let zone = FixedOffset::east_opt(zone_minutes * 60).unwrap();
            let text = at
                .with_timezone(&zone)
                .to_rfc3339_opts(SecondsFormat::AutoSi, use_z);
            frag(format!("\"{text}\""), Some(at))
        },
    );
    let extreme = |s: &'static str| {
        let at = DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        frag(format!("\"{s}\""), Some(at))
    };
    let some = prop_oneof![
        60 => rendered,
        2 => prop::sample::select(vec![
            "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59",
            "0000-01-01T00:00:00+23:59", "1970-01-01T00:00:00Z",
        ])
        .prop_map(extreme),
        4 => prop::sample::select(vec![
            "\"2026-11-24T12:00:00\"", "\"2026-11-24\"", "\"yesterday\"", "\"\"",
            "\"2026-13-01T00:00:00Z\"", "\"2026-11-24T25:00:00Z\"", "\"2026-02-30T00:00:00Z\"",
            "\"+10000-01-01T00:00:00Z\"", "\"2026-11-24T12:00:00+24:00\"", "1732449600",
            "\"1732449600\"", "\"2026-11-24T12:00:00Z \"",
        ])
        .prop_map(|s| frag(s, None)),
        2 => wrong_kind().prop_map(|s| frag(s, None)),
    ];
    prop::option::weighted(0.98, some)
}

/// `seq`: `Ok(seq)` (`None` when absent), or `Err` when it must be `invalid_seq`.
fn seq() -> impl Strategy<Value = Option<Fragment<Result<Option<i64>, ()>>>> {
    let some = prop_oneof![
        60 => (0..=i64::MAX).prop_map(|n| frag(n.to_string(), Ok(Some(n)))),
        2 => Just(frag("null", Ok(None))),
        2 => Just(frag("0", Ok(Some(0)))),
        2 => Just(frag(i64::MAX.to_string(), Ok(Some(i64::MAX)))),
        4 => prop::sample::select(vec![
            "-1", "9223372036854775808", "18446744073709551615", "18446744073709551616",
            "1.5", "1.0", "1e3", "\"7\"", "true", "{}", "[]", "-9223372036854775808",
        ])
        .prop_map(|s| frag(s, Err(()))),
        1 => prop::sample::select(vec!["1e999", "-", "07"]).prop_map(|s| breaking(s, Err(()))),
    ];
    prop::option::weighted(0.8, some)
}

fn agent_version() -> impl Strategy<Value = Option<Fragment<()>>> {
    let some = prop_oneof![
        Just(frag("\"0.1.0\"", ())),
        (0usize..500).prop_map(|n| frag(format!("\"{}\"", "é".repeat(n)), ())),
        wrong_kind().prop_map(|s| frag(s, ())),
    ];
    prop::option::of(some)
}

/// What a sample must decode to: node, cores, at, seq.
type Decoded = (String, Option<u32>, Option<DateTime<Utc>>, Option<i64>);

/// One sample's object, or something that is no object at all.
#[derive(Debug, Clone)]
enum SampleSpec {
    Object {
        fields: Vec<(&'static str, Vec<u8>)>,
        breaks_batch: bool,
        /// `Err(())` for `invalid_seq`; otherwise what decoding must give.
        expect: Result<Decoded, ()>,
    },
    NotAnObject(&'static str),
}

fn unknown_fields() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "x_extra", "account", "cluster", "x_nested", "Cores", "NODE",
            ]),
            prop_oneof![
                wrong_kind().prop_map(|s| s.as_bytes().to_vec()),
                Just(b"\"rival\"".to_vec()),
                Just(b"12345".to_vec()),
            ],
        ),
        0..3,
    )
}

fn sample(received_at: DateTime<Utc>) -> impl Strategy<Value = SampleSpec> {
    let object = (
        node(),
        cores(),
        at(received_at),
        seq(),
        agent_version(),
        unknown_fields(),
        any::<bool>(),
    )
        .prop_map(|(node, cores, at, seq, version, extra, duplicate_cores)| {
            let mut fields = Vec::new();
            let mut breaks_batch = false;
            if duplicate_cores {
                // A key given twice: the last one counts.
                fields.push(("cores", b"\"first\"".to_vec()));
            }
            if let Some(f) = &node {
                fields.push(("node", f.json.clone()));
                breaks_batch |= f.breaks_batch;
            }
            if let Some(f) = &cores {
                fields.push(("cores", f.json.clone()));
                breaks_batch |= f.breaks_batch;
            } else if duplicate_cores {
                // Only the "first" remains: not a number.
            }
            if let Some(f) = &at {
                fields.push(("at", f.json.clone()));
                breaks_batch |= f.breaks_batch;
            }
            if let Some(f) = &seq {
                fields.push(("seq", f.json.clone()));
                breaks_batch |= f.breaks_batch;
            }
            if let Some(f) = &version {
                fields.push(("agent_version", f.json.clone()));
                breaks_batch |= f.breaks_batch;
            }
            fields.extend(extra);
            let seq = seq.map_or(Ok(None), |f| f.expect);
            let expect = seq.map(|seq| {
                (
                    node.map(|f| f.expect).unwrap_or_default(),
                    cores.and_then(|f| f.expect),
                    at.and_then(|f| f.expect),
                    seq,
                )
            });
            SampleSpec::Object {
                fields,
                breaks_batch,
                expect,
            }
        });
    prop_oneof![
        20 => object,
        1 => prop::sample::select(vec!["3", "\"n1\"", "null", "[]", "[{\"cores\": 8}]", "true"])
            .prop_map(SampleSpec::NotAnObject),
    ]
}

/// How the samples are wrapped.
#[derive(Debug, Clone, Copy)]
enum Envelope {
    Plain,
    /// Unknown top-level fields around `samples`, which are ignored.
    WithUnknownFields,
    /// Whitespace and a UTF-8 byte order mark's absence: padding only.
    Padded,
}

fn render(samples: &[SampleSpec], envelope: Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    match envelope {
        Envelope::Plain => out.extend_from_slice(b"{\"samples\":["),
        Envelope::WithUnknownFields => {
            out.extend_from_slice(b"{\"account\":\"rival\",\"cluster\":{\"x\":[1]},\"samples\":[")
        }
        Envelope::Padded => out.extend_from_slice(b" \n\t{ \"samples\" :\r\n [ "),
    }
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match s {
            SampleSpec::NotAnObject(raw) => out.extend_from_slice(raw.as_bytes()),
            SampleSpec::Object { fields, .. } => {
                out.push(b'{');
                for (j, (key, value)) in fields.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(format!("\"{key}\":").as_bytes());
                    out.extend_from_slice(value);
                }
                out.push(b'}');
            }
        }
    }
    out.extend_from_slice(b"]");
    if matches!(envelope, Envelope::WithUnknownFields) {
        out.extend_from_slice(b",\"zz\":null");
    }
    out.extend_from_slice(b"}");
    out
}

fn batch() -> impl Strategy<Value = (Context, Vec<SampleSpec>, Envelope)> {
    context().prop_flat_map(|cx| {
        let received_at = cx.received_at;
        (
            Just(cx),
            prop::collection::vec(sample(received_at), 0..12),
            prop_oneof![
                Just(Envelope::Plain),
                Just(Envelope::WithUnknownFields),
                Just(Envelope::Padded)
            ],
        )
    })
}

/// One edit of a body's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..8),
        prop::sample::select(vec![
            b"\xff".to_vec(),
            b"\xc0\x80".to_vec(),
            b"\"".to_vec(),
            b"\\".to_vec(),
            b"{".to_vec(),
            b"[".to_vec(),
            b"]".to_vec(),
            b",".to_vec(),
            b"1e400".to_vec(),
            b"-".to_vec(),
            b"99999999999999999999999".to_vec(),
            b"\\u0000".to_vec(),
            b"\\ud800".to_vec(),
            b"\"samples\":[]".to_vec(),
            b"null".to_vec(),
            vec![b'['; 200],
        ]),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = body.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !body.is_empty() {
                    body[i % len] ^= b | 1;
                }
            }
            Mutation::Insert(i, bytes) => {
                let at = i % (body.len() + 1);
                body.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = i % len;
                let end = (at + n).min(body.len());
                body.drain(at.min(end)..end);
            }
            Mutation::Truncate(i) => body.truncate(i % len),
            Mutation::Duplicate(i, n) => {
                let at = i % len;
                let end = (at + n).min(body.len());
                let copy = body[at.min(end)..end].to_vec();
                body.splice(end..end, copy);
            }
        }
    }
    body
}

/// Arbitrary JSON values, nested.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec!["node", "cores", "at", "seq", "2026-11-24T12:00:00Z"])
            .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "node",
                        "cores",
                        "at",
                        "seq",
                        "agent_version",
                        "samples"
                    ])
                    .prop_map(str::to_string),
                    any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

impl Tally {
    fn new() -> Tally {
        Tally::default()
    }
}

/// Runs `cases` of `test` over `strategy` (shrinking a failure, a panic
/// included, to its smallest case), then prints the tally.
fn run<S: Strategy>(
    name: &str,
    ci_cases: u32,
    strategy: S,
    test: impl Fn(S::Value, &Tally) -> Result<(), TestCaseError>,
) {
    let tally = Tally::new();
    let started = std::time::Instant::now();
    let mut runner = proptest::test_runner::TestRunner::new(config(ci_cases));
    let outcome = runner.run(&strategy, |value| {
        tally.cases.fetch_add(1, Ordering::Relaxed);
        test(value, &tally)
    });
    if let Err(e) = outcome {
        panic!("{name}: {e}");
    }
    tally.print(&format!(
        "{name} ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
}

/// A batch built from known pieces decodes to exactly what the pieces say,
/// and each sample gets the first reason that applies.
#[test]
fn a_structured_batch_comes_to_what_its_fields_say() {
    run(
        "structured",
        3_000,
        batch(),
        |(cx, samples, envelope), tally| {
            let body = render(&samples, envelope);
            let breaks = samples.iter().any(|s| {
                matches!(
                    s,
                    SampleSpec::Object {
                        breaks_batch: true,
                        ..
                    }
                )
            });
            let results = decode_and_validate(&body, &cx, tally);
            let decoded = decode_batch(&body);
            if breaks {
                prop_assert!(
                    matches!(decoded, Err(BatchError::Malformed(_))),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
                return Ok(());
            }
            let decoded = match decoded {
                Ok(d) => d,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{e}: {}",
                        String::from_utf8_lossy(&body)
                    )))
                }
            };
            prop_assert_eq!(decoded.len(), samples.len());
            prop_assert_eq!(results.map(|r| r.len()), Some(samples.len()));
            for (spec, got) in samples.iter().zip(&decoded) {
                match spec {
                    SampleSpec::NotAnObject(_) => {
                        let d = got.as_ref().unwrap();
                        prop_assert_eq!(
                            (d.node.as_str(), d.cores, d.at, d.seq),
                            ("", None, None, None)
                        );
                    }
                    SampleSpec::Object {
                        expect: Err(()), ..
                    } => {
                        prop_assert_eq!(got, &Err(Rejection::InvalidSeq));
                    }
                    SampleSpec::Object {
                        expect: Ok((node, cores, at, seq)),
                        ..
                    } => {
                        let d = got.as_ref().unwrap();
                        prop_assert_eq!(&d.node, node);
                        prop_assert_eq!(d.cores, *cores);
                        prop_assert_eq!(d.at, *at);
                        prop_assert_eq!(d.seq, *seq);
                    }
                }
            }
            Ok(())
        },
    );
}

/// The same batches with their bytes edited: never a panic, always a clean outcome.
#[test]
fn a_mutated_batch_is_refused_cleanly_or_answered_sample_by_sample() {
    let strategy = (batch(), prop::collection::vec(mutation(), 1..4));
    run(
        "mutated",
        3_000,
        strategy,
        |((cx, samples, envelope), mutations), tally| {
            let body = mutate(render(&samples, envelope), &mutations);
            decode_and_validate(&body, &cx, tally);
            Ok(())
        },
    );
}

/// Any bytes at all, alone or after the start of a batch.
#[test]
fn arbitrary_bytes_are_refused_cleanly_or_answered_sample_by_sample() {
    let prefixes = vec![
        &b""[..],
        b"{\"samples\":[",
        b"{\"samples\":[{\"node\":",
        b"{\"samples\":[{\"cores\":",
    ];
    let strategy = (
        context(),
        prop::sample::select(prefixes),
        prop::collection::vec(any::<u8>(), 0..2048),
    );
    run("bytes", 3_000, strategy, |(cx, prefix, bytes), tally| {
        let mut body = prefix.to_vec();
        body.extend_from_slice(&bytes);
        decode_and_validate(&body, &cx, tally);
        Ok(())
    });
}

/// Any JSON value as the body, and any values as the samples.
#[test]
fn arbitrary_json_is_refused_cleanly_or_answered_sample_by_sample() {
    let strategy = (
        context(),
        json_value(),
        prop::collection::vec(json_value(), 0..8),
    );
    run("json", 2_000, strategy, |(cx, top, samples), tally| {
        decode_and_validate(&serde_json::to_vec(&top).unwrap(), &cx, tally);
        let body = serde_json::to_vec(&serde_json::json!({ "samples": samples })).unwrap();
        let results = decode_and_validate(&body, &cx, tally);
        prop_assert_eq!(results.map(|r| r.len()), Some(samples.len()));
        Ok(())
    });
}

/// More than 1,000 samples is refused whole with their count, however small
/// they are; up to 1,000 is answered one by one.
#[test]
fn over_a_thousand_samples_are_refused_with_their_count() {
    let elements = vec!["0", "{}", "null", "{\"cores\":8}"];
    let counts = prop_oneof![
        Just(MAX_BATCH_SAMPLES),
        Just(MAX_BATCH_SAMPLES + 1),
        990usize..1_010,
        1_010usize..5_000,
    ];
    let strategy = (counts, prop::sample::select(elements));
    run("count", 64, strategy, |(n, element), tally| {
        let body = format!("{{\"samples\":[{}]}}", vec![element; n].join(","));
        match decode_batch(body.as_bytes()) {
            Ok(samples) => {
                tally.result("answered");
                prop_assert!(n <= MAX_BATCH_SAMPLES && samples.len() == n)
            }
            Err(e) => {
                tally.refused("too_many_samples");
                prop_assert_eq!(e, BatchError::TooManySamples { count: n })
            }
        }
        Ok(())
    });
}

#[test]
fn a_body_of_every_kind_at_the_size_limit_is_decoded_or_refused_quickly() {
    let limits_cx = Context {
        account_known: true,
        cluster: "prod",
        received_at: Utc::now(),
    };
    let tally = Tally::new();
    let just_under = {
        let mut b = b"{\"samples\":[".to_vec();
        b.extend(std::iter::repeat_n(b' ', MAX_BATCH_BYTES - b.len() - 2));
        b.extend_from_slice(b"]}");
        b
    };
    assert_eq!(just_under.len(), MAX_BATCH_BYTES);
    let deep = {
        let mut b = b"{\"samples\":[".to_vec();
        b.extend(std::iter::repeat_n(b'[', MAX_BATCH_BYTES - 100));
        b
    };
    let long_node = format!(
        "{{\"samples\":[{{\"node\":\"{}\",\"cores\":8}}]}}",
        "n".repeat(MAX_BATCH_BYTES - 100)
    );
    let many_keys = format!(
        "{{\"samples\":[{{{}\"cores\":8}}]}}",
        (0..40_000)
            .map(|i| format!("\"k{i}\":0,"))
            .collect::<String>()
    );
    for body in [
        just_under,
        deep,
        long_node.into_bytes(),
        many_keys.into_bytes(),
        vec![b'0'; MAX_BATCH_BYTES],
        vec![b'"'; MAX_BATCH_BYTES + 1],
    ] {
        let started = std::time::Instant::now();
        tally.cases.fetch_add(1, Ordering::Relaxed);
        decode_and_validate(&body, &limits_cx, &tally);
        assert!(
            started.elapsed().as_secs() < 5,
            "{} bytes took {:?}",
            body.len(),
            started.elapsed()
        );
    }
    tally.print("at_the_limit");
}
