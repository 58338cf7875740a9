//! The console's pages as HTML, without HTTP: the languages and their one
//! message catalogue each (`messages/*.toml`), numbers, money, days and
//! instants written per language in the billing zone, the frame every page
//! shares, and each page (`pages.rs`). Templates are maud's: checked by the
//! compiler, every value escaped. `http::console` serves them.

pub mod pages;

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use rust_decimal::Decimal;
use shared::zone::BillingZone;

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    ZhCn,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::ZhCn];

    /// The BCP 47 tag: `en`, `zh-CN`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhCn => "zh-CN",
        }
    }

    /// The language's name in itself, for the switch.
    pub fn name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::ZhCn => "简体中文",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        Lang::ALL
            .into_iter()
            .find(|l| l.code().eq_ignore_ascii_case(code))
    }

    /// The first language of an `Accept-Language` header the console
    /// speaks, by weight (any `zh` is Simplified Chinese); English if none.
    pub fn from_accept_language(header: &str) -> Lang {
        let mut offers: Vec<(u16, Lang)> = header
            .split(',')
            .take(32)
            .filter_map(|part| {
                let mut bits = part.split(';');
                let tag = bits.next()?.trim().to_ascii_lowercase();
                let weight = bits
                    .find_map(|b| b.trim().strip_prefix("q="))
                    .map_or(Some(1000), |q| quality(q.trim()))?;
                let lang = if tag == "zh" || tag.starts_with("zh-") {
                    Lang::ZhCn
                } else if tag == "en" || tag.starts_with("en-") {
                    Lang::En
                } else {
                    return None;
                };
                (weight > 0).then_some((weight, lang))
            })
            .collect();
        offers.sort_by_key(|o| std::cmp::Reverse(o.0));
        offers.first().map_or(Lang::En, |o| o.1)
    }

    fn source(self) -> &'static str {
        match self {
            Lang::En => include_str!("messages/en.toml"),
            Lang::ZhCn => include_str!("messages/zh-CN.toml"),
        }
    }

    /// The language's catalogue: every key to its text.
    pub fn catalogue(self) -> &'static HashMap<String, String> {
        static CATALOGUES: OnceLock<[HashMap<String, String>; 2]> = OnceLock::new();
        let all = CATALOGUES.get_or_init(|| {
            Lang::ALL.map(|l| {
                toml::from_str(l.source()).unwrap_or_else(|e| {
                    panic!("the console's {} catalogue is not TOML: {e}", l.code())
                })
            })
        });
        &all[self as usize]
    }

    /// The text of `key`; the key itself where the catalogue lacks it (a
    /// test holds every key the code uses to both catalogues).
    pub fn t(self, key: &'static str) -> &'static str {
        self.catalogue().get(key).map_or(key, String::as_str)
    }

    /// The text of a key made at run time (an error code's), if the
    /// catalogue has it.
    pub fn lookup(self, key: &str) -> Option<&'static str> {
        self.catalogue().get(key).map(String::as_str)
    }

    /// The text of `key` with each `{name}` filled.
    pub fn tf(self, key: &'static str, values: &[(&str, &str)]) -> String {
        values
            .iter()
            .fold(self.t(key).to_string(), |text, (name, value)| {
                text.replace(&format!("{{{name}}}"), value)
            })
    }

    /// A whole number with its thousands grouped: `12,345`.
    pub fn int(self, n: u64) -> String {
        group(&n.to_string())
    }

    /// Money: `1,234.50 USD`, two places always.
    pub fn money(self, amount: Decimal, currency: &str) -> String {
        let rounded = amount.round_dp(2);
        let text = format!("{:.2}", rounded.abs());
        let (whole, cents) = text.split_once('.').unwrap_or((&text, "00"));
        let sign = if rounded.is_sign_negative() && !rounded.is_zero() {
            "-"
        } else {
            ""
        };
        format!("{sign}{}.{cents} {currency}", group(whole))
    }

    /// A decimal as it is (cores, say), its whole part grouped.
    pub fn decimal(self, d: Decimal) -> String {
        let text = d.to_string();
        let (whole, fraction) = text
            .split_once('.')
            .map_or((text.as_str(), None), |(w, f)| (w, Some(f)));
        let (sign, digits) = whole.strip_prefix('-').map_or(("", whole), |w| ("-", w));
        match fraction {
            Some(f) => format!("{sign}{}.{f}", group(digits)),
            None => format!("{sign}{}", group(digits)),
        }
    }

    /// Bytes in binary units, one place: `1.5 GiB`.
    pub fn bytes(self, n: u64) -> String {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut unit = 0;
        let mut tenths = u128::from(n) * 10;
        while tenths >= 10 * 1024 && unit < UNITS.len() - 1 {
            tenths /= 1024;
            unit += 1;
        }
        if unit == 0 {
            format!("{} B", self.int(n))
        } else {
            format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
        }
    }

    /// A day: `Dec 4, 2026`; `2026年12月4日`.
    pub fn day(self, d: NaiveDate) -> String {
        match self {
            Lang::En => d.format("%b %-d, %Y").to_string(),
            Lang::ZhCn => format!("{}年{}月{}日", d.year(), d.month(), d.day()),
        }
    }

    /// A month: `November 2026`; `2026年11月`.
    pub fn month(self, first: NaiveDate) -> String {
        match self {
            Lang::En => first.format("%B %Y").to_string(),
            Lang::ZhCn => format!("{}年{}月", first.year(), first.month()),
        }
    }

    /// An instant in the billing zone: `Dec 4, 2026 14:05`.
    pub fn instant(self, at: DateTime<Utc>, zone: &BillingZone) -> String {
        let local = zone.local(at);
        format!("{} {}", self.day(local.date()), local.format("%H:%M"))
    }
}

/// A quality value `0` to `1` with up to three places, in thousandths.
fn quality(q: &str) -> Option<u16> {
    let (whole, places) = q.split_once('.').unwrap_or((q, ""));
    if places.len() > 3 || !places.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{places:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn group(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Who is looking at a page, and how it is written for them.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub lang: Lang,
    pub zone: BillingZone,
    pub currency: String,
    /// `admin`, `reader` or `customer`.
    pub role: &'static str,
    /// The account of a reader or customer; none for an operator.
    pub own_account: Option<String>,
    /// The CSRF token every form of the session carries.
    pub csrf: String,
    /// The page's own path and query, where the language switch returns.
    pub here: String,
}

impl Viewer {
    /// Whether the viewer may act (forms) on `account`: an operator on any,
    /// a customer on its own, a reader never.
    pub fn acts_on(&self, account: &str) -> bool {
        match self.role {
            "admin" => true,
            "customer" => self.own_account.as_deref() == Some(account),
            _ => false,
        }
    }

    pub fn t(&self, key: &'static str) -> &'static str {
        self.lang.t(key)
    }

    pub fn tf(&self, key: &'static str, values: &[(&str, &str)]) -> String {
        self.lang.tf(key, values)
    }

    pub fn money(&self, amount: Decimal) -> String {
        self.lang.money(amount, &self.currency)
    }

    pub fn instant(&self, at: DateTime<Utc>) -> String {
        self.lang.instant(at, &self.zone)
    }
}

/// The pages' one style sheet: system fonts, contrast of at least 4.5:1
/// for text (WCAG AA), a visible focus ring, readable when printed.
const STYLE: &str = "*{box-sizing:border-box}body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:0;color:#1a1a1a;background:#fff;line-height:1.45}
a{color:#0b4f9c}a:focus,button:focus,input:focus,select:focus{outline:3px solid #b35c00;outline-offset:2px}
header{background:#10243e;color:#fff;padding:.5em 1em;display:flex;flex-wrap:wrap;gap:1em;align-items:center}
header a{color:#fff}header nav a{margin-right:.9em}header .who{margin-left:auto;font-size:.9em}
.skip{position:absolute;left:-999px}.skip:focus{left:1em;top:1em;background:#fff;color:#0b4f9c;padding:.3em}
main{padding:1em 1.5em;max-width:80em}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #8a8a8a;padding:3px 8px;text-align:left}
th{background:#e8ecf1}td.n,th.n{text-align:right}
.prompt{border:2px solid #a4000f;background:#fdecee;padding:.6em 1em;margin:1em 0}
.ok{border:2px solid #1b6e2b;background:#e9f6ec;padding:.5em 1em}
.error,.warn{color:#a4000f;font-weight:bold}
.note{color:#4a4a4a}
form.inline{display:inline}button,input,select{font:inherit;padding:.2em .5em}
label{display:block;margin:.4em 0 .1em}
svg text{font-size:11px;fill:#333}.avg{fill:none;stroke:#0b4f9c;stroke-width:2}.peak{fill:none;stroke:#6b3fa0;stroke-width:1.5;stroke-dasharray:4 2}
.lic{fill:none;stroke:#1b6e2b;stroke-width:2}.capl{fill:none;stroke:#a4000f;stroke-width:1.5;stroke-dasharray:2 3}.axis{stroke:#666}
.quota{fill:none;stroke:#a4000f;stroke-width:2}.used{fill:#0b4f9c;opacity:.75}
@media print{header,.skip,form{display:none}main{padding:0}}";

/// The frame of every page: the language, the skip link, the navigation of
/// the account in view, the language switch and the logout form.
pub fn frame(v: &Viewer, account: Option<&str>, title: &str, body: Markup) -> String {
    let page = html! {
        (DOCTYPE)
        html lang=(v.lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — " (v.t("app.name")) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { (v.t("nav.skip")) }
                header {
                    strong { (v.t("app.name")) }
                    nav aria-label=(v.t("nav.overview")) {
                        @if v.role == "admin" {
                            a href="/console/accounts" { (v.t("nav.accounts")) }
                        }
                        @if let Some(id) = account {
                            a href={ "/console/accounts/" (id) } { (v.t("nav.overview")) }
                            a href={ "/console/accounts/" (id) "/usage" } { (v.t("nav.usage")) }
                            a href={ "/console/accounts/" (id) "/purchase" } { (v.t("nav.purchase")) }
                            a href={ "/console/accounts/" (id) "/images" } { (v.t("nav.images")) }
                            a href={ "/console/accounts/" (id) "/log-storage" } { (v.t("nav.log_storage")) }
                            a href={ "/console/accounts/" (id) "/bills" } { (v.t("nav.bills")) }
                            a href={ "/console/accounts/" (id) "/notices" } { (v.t("nav.notices")) }
                            @if v.role != "reader" {
                                a href={ "/console/accounts/" (id) "/changes" } { (v.t("nav.changes")) }
                            }
                        }
                    }
                    span.who {
                        (who(v))
                        " · "
                        @for lang in Lang::ALL {
                            @if lang == v.lang {
                                span lang=(lang.code()) aria-current="true" { (lang.name()) }
                            } @else {
                                a lang=(lang.code()) hreflang=(lang.code()) href={ "/console/lang?to=" (lang.code()) "&next=" (urlencode(&v.here)) } { (lang.name()) }
                            }
                            " "
                        }
                        form.inline method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            button type="submit" { (v.t("nav.logout")) }
                        }
                    }
                }
                main #main { h1 { (title) } (body) }
            }
        }
    };
    page.into_string()
}

fn who(v: &Viewer) -> String {
    let account = v.own_account.as_deref().unwrap_or("");
    let role = match v.role {
        "admin" => v.t("role.admin").to_string(),
        "customer" => v.tf("role.customer", &[("account", account)]),
        _ => v.tf("role.reader", &[("account", account)]),
    };
    v.tf("nav.signed_in_as", &[("who", &role)])
}

/// A path and query made safe for a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A page of its own without the frame's navigation: the login form and
/// refusals, in the language chosen.
pub fn bare(lang: Lang, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — " (lang.t("app.name")) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header { strong { (lang.t("app.name")) } }
                main #main { h1 { (title) } (body) }
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn both_catalogues_hold_the_same_keys_and_every_key_the_code_uses() {
        let keys = |l: Lang| l.catalogue().keys().cloned().collect::<BTreeSet<String>>();
        let (en, zh) = (keys(Lang::En), keys(Lang::ZhCn));
        assert_eq!(
            en.difference(&zh).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in en.toml, not in zh-CN.toml"
        );
        assert_eq!(
            zh.difference(&en).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in zh-CN.toml, not in en.toml"
        );
        // Every key the console's code names: the argument of each .t("…")
        // and .tf("…"), and every other literal "section.name" of a section
        // the catalogues have (keys chosen at run time are such literals).
        let sections: BTreeSet<&str> = en.iter().filter_map(|k| k.split('.').next()).collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut used = BTreeSet::new();
        for file in [
            dir.join("console/mod.rs"),
            dir.join("console/pages.rs"),
            dir.join("http/console.rs"),
        ] {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for literal in code.split('"').skip(1).step_by(2) {
                let keyish = literal.contains('.')
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_');
                let called = code.contains(&format!(".t(\"{literal}\""))
                    || code.contains(&format!(".tf(\"{literal}\""));
                if called || (keyish && sections.contains(literal.split('.').next().unwrap())) {
                    used.insert(literal.to_string());
                }
            }
        }
        assert!(used.len() > 50, "the scan found {} keys", used.len());
        let missing: Vec<&String> = used.iter().filter(|k| !en.contains(*k)).collect();
        assert!(missing.is_empty(), "used but in no catalogue: {missing:?}");
        for lang in Lang::ALL {
            for (k, text) in lang.catalogue() {
                assert!(!text.trim().is_empty(), "{} {k} is empty", lang.code());
            }
        }
    }

    #[test]
    fn every_error_code_the_api_answers_has_a_sentence_in_both_catalogues() {
        // The codes as the source writes them: `ApiError::new(status, "code",`,
        // a store conflict's `code: "code"`, and the disk's codes.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut codes = BTreeSet::new();
        let mut files = vec![dir.join("http/mod.rs")];
        for sub in ["http", "store"] {
            for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
        for file in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "rs"))
        {
            let text = std::fs::read_to_string(file).unwrap();
            let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            for (at, _) in flat.match_indices("ApiError::new(") {
                // The first string of the call: its status is a constant.
                let rest = &flat[at..];
                let Some(open) = rest.find('"') else { continue };
                let code: String = rest[open + 1..].chars().take_while(|c| *c != '"').collect();
                codes.insert(code);
            }
            for (at, _) in flat.match_indices("code: \"") {
                let code: String = flat[at + 7..].chars().take_while(|c| *c != '"').collect();
                codes.insert(code);
            }
        }
        codes.extend(
            [
                "invalid_request",
                "invalid_value",
                "internal",
                "disk_full",
                "disk_error",
                "database_unreachable",
            ]
            .map(String::from),
        );
        codes.retain(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
        assert!(codes.len() > 20, "the scan found the codes: {codes:?}");
        for lang in Lang::ALL {
            let missing: Vec<&String> = codes
                .iter()
                .filter(|c| lang.lookup(&format!("error.{c}")).is_none())
                .collect();
            assert!(
                missing.is_empty(),
                "{}: no sentence for {missing:?}",
                lang.code()
            );
        }
    }

    #[test]
    fn numbers_money_and_days_are_written_per_language() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        assert_eq!(Lang::En.day(d), "Dec 4, 2026");
        assert_eq!(Lang::ZhCn.day(d), "2026年12月4日");
        assert_eq!(Lang::ZhCn.month(d), "2026年12月");
        assert_eq!(
            Lang::En.money(Decimal::new(1_234_567, 1), "USD"),
            "123,456.70 USD"
        );
        assert_eq!(Lang::En.money(Decimal::new(-5, 0), "USD"), "-5.00 USD");
        assert_eq!(Lang::En.int(1_000_000), "1,000,000");
        assert_eq!(
            Lang::En.decimal(Decimal::new(-12_345_675, 2)),
            "-123,456.75"
        );
        assert_eq!(Lang::En.bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(Lang::En.bytes(999), "999 B");
    }

    #[test]
    fn the_language_is_taken_from_accept_language_by_weight() {
        assert_eq!(
            Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"),
            Lang::ZhCn
        );
        assert_eq!(Lang::from_accept_language("en-US,en;q=0.9"), Lang::En);
        assert_eq!(Lang::from_accept_language("fr, zh-TW;q=0.5"), Lang::ZhCn);
        assert_eq!(Lang::from_accept_language("de, en;q=0.1, zh;q=0"), Lang::En);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(Lang::from_accept_language(&"x,".repeat(10_000)), Lang::En);
    }
}
