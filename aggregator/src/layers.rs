//! The dependency rules of ARCHITECTURE.md, checked from the source: which
//! of the aggregator's top-level modules may use which, and which may name
//! the web framework or a database driver. Test modules (`#[cfg(test)]`)
//! are left out: a test may reach across layers to set up what it checks.
//! A failure prints the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates that make an HTTP server: only `http` and `app` name them.
const WEB: &[&str] = &["axum", "tower_http", "hyper", "hyper_util"];
/// The database drivers: only `store::db` names them.
const DRIVERS: &[&str] = &[
    "rusqlite",
    "postgres",
    "tokio_postgres",
    "tokio_postgres_rustls",
];

/// One top-level module: what it uses of the crate, and which external
/// crates each of its files names.
#[derive(Default)]
struct Module {
    uses: BTreeSet<String>,
    /// File (relative to `src/`) to the external crates it names.
    names: BTreeMap<String, BTreeSet<&'static str>>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, string and char literals, and test
/// modules: what is left is the code's own paths.
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('{', '\'', '\u{1F600}'), not a lifetime ('a).
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("' '");
            }
            _ => {
                let ch = text[i..].chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    without_test_modules(&out)
}

/// Removes every `#[cfg(test)]` item (a module or function) with its body.
fn without_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at its `;` (`mod tests;`) or its body's closing brace.
        let open = after.find('{');
        let semi = after.find(';');
        let end = match (open, semi) {
            (Some(o), Some(s)) if s < o => s + 1,
            (Some(o), _) => {
                let mut depth = 0;
                let mut end = after.len();
                for (k, c) in after[o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The top-level modules `crate::…` paths in `code` reach, grouped imports
/// (`crate::{a, b::c}`) included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

/// Whether `code` names the external crate `krate` (`krate::…` not inside
/// a longer path).
fn names_crate(code: &str, krate: &str) -> bool {
    let needle = format!("{krate}::");
    code.match_indices(&needle).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

fn modules() -> BTreeMap<String, Module> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut modules: BTreeMap<String, Module> = BTreeMap::new();
    for file in files {
        let relative = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // lib.rs declares the modules; main.rs, the binary, reaches them
        // as `aggregator::…` (checked for the crates it names below).
        if relative == "lib.rs" || relative == "layers.rs" || relative == "docs.rs" {
            continue;
        }
        let top = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let module = modules.entry(top.clone()).or_default();
        module
            .uses
            .extend(crate_paths(&code).into_iter().filter(|m| *m != top));
        let names: BTreeSet<&'static str> = WEB
            .iter()
            .chain(DRIVERS)
            .copied()
            .filter(|k| names_crate(&code, k))
            .collect();
        module.names.insert(relative, names);
    }
    // Paths to items of lib.rs itself (none today) are not modules.
    let tops: BTreeSet<String> = modules.keys().cloned().collect();
    for module in modules.values_mut() {
        module.uses.retain(|m| tops.contains(m));
    }
    modules
}

fn graph(modules: &BTreeMap<String, Module>) -> String {
    modules
        .iter()
        .map(|(name, m)| {
            let uses: Vec<&str> = m.uses.iter().map(String::as_str).collect();
            format!("  {name} -> {}\n", uses.join(" "))
        })
        .collect()
}

/// A cycle through `start`, if there is one.
fn cycle_from(modules: &BTreeMap<String, Module>, start: &str) -> Option<Vec<String>> {
    fn walk(
        modules: &BTreeMap<String, Module>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in &modules[at].uses {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(modules, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(modules, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_aggregator_s_modules_keep_their_dependency_rules() {
    let modules = modules();
    for expected in [
        "app", "billing", "commands", "config", "delivery", "http", "reports", "security", "store",
    ] {
        assert!(
            modules.contains_key(expected),
            "no module {expected}: the rules below would check nothing"
        );
    }
    let mut broken = Vec::new();
    for name in modules.keys() {
        if let Some(cycle) = cycle_from(&modules, name) {
            broken.push(format!("a cycle: {}", cycle.join(" -> ")));
            break;
        }
    }
    for (name, module) in &modules {
        for (file, names) in &module.names {
            for krate in names {
                if WEB.contains(krate) && name != "http" && name != "app" {
                    broken.push(format!(
                        "{file} names {krate}: only http/ and app/ serve HTTP"
                    ));
                }
                if DRIVERS.contains(krate) && file != "store/db.rs" {
                    broken.push(format!(
                        "{file} names {krate}: only store/db.rs names a database driver"
                    ));
                }
            }
        }
    }
    for low in ["billing", "delivery"] {
        if modules[low].uses.contains("http") {
            broken.push(format!(
                "{low} uses http: background work never imports the HTTP layer"
            ));
        }
    }
    if !modules["config"].uses.is_empty() {
        broken.push(format!(
            "config uses {:?}: config imports nothing from the rest of the app",
            modules["config"].uses
        ));
    }
    assert!(
        broken.is_empty(),
        "the dependency rules (ARCHITECTURE.md) are broken:\n  {}\nthe module graph:\n{}",
        broken.join("\n  "),
        graph(&modules)
    );
}

#[test]
fn the_checker_sees_through_comments_strings_and_test_modules() {
    let code = code_of(
        "use crate::store::Store; // crate::http\n\
         let s = \"crate::billing\"; let r = r#\"crate::app\"#; let c = '{';\n\
         use crate::{config::Config, metrics};\n\
         #[cfg(test)]\nmod tests { use crate::delivery::x; fn f() { if a { b } } }\n\
         fn after() { crate::reports::x(); postgres::Client::new(); }",
    );
    let paths = crate_paths(&code);
    assert_eq!(
        paths.into_iter().collect::<Vec<_>>(),
        ["config", "metrics", "reports", "store"]
    );
    assert!(names_crate(&code, "postgres"));
    assert!(!names_crate(&code, "axum"));
    assert!(!names_crate("tokio_postgres::Client", "postgres"));
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut modules = BTreeMap::new();
    for (name, uses) in [
        ("a", &["b"][..]),
        ("b", &["c"]),
        ("c", &["a"]),
        ("d", &["a"]),
    ] {
        modules.insert(
            name.to_string(),
            Module {
                uses: uses.iter().map(|u| u.to_string()).collect(),
                names: BTreeMap::new(),
            },
        );
    }
    assert_eq!(cycle_from(&modules, "a").unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(cycle_from(&modules, "d"), None);
}
