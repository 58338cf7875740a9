//! The domain of every input: what an account id, a cluster or node name, a
//! day, an instant, an amount of money, a count of cores and a piece of free
//! text may be. The service checks each at its edge (routes, settings, case
//! files, the command line) through these functions, one per kind, so a rule
//! is written once and every error names the rule and quotes the value the
//! same bounded way.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

/// The first day any input may name.
pub const FIRST_DAY: NaiveDate = match NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(d) => d,
    None => panic!("2000-01-01 is a day"),
};
/// The last day any input may name.
pub const LAST_DAY: NaiveDate = match NaiveDate::from_ymd_opt(2199, 12, 31) {
    Some(d) => d,
    None => panic!("2199-12-31 is a day"),
};
/// The most characters of a bad value an error message quotes.
pub const QUOTE_MAX_CHARS: usize = 64;
/// The longest RFC 3339 instant read (`2026-11-24T10:03:00.123456789+08:00` is 35).
const INSTANT_MAX_BYTES: usize = 64;
/// The fewest and most cores a licence, an order or an elastic cap may name.
pub const TOTAL_CORES_MIN: u64 = 1;
pub const TOTAL_CORES_MAX: u64 = 1_000_000;
/// The most digits before the point of an amount of money (under 10^15).
const MONEY_INTEGER_DIGITS: usize = 15;
/// The most digits after the point of an amount of money.
const MONEY_FRACTION_DIGITS: usize = 6;

/// A value outside its domain: what it must be, and the value, quoted and cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expected}, got {got}")]
pub struct OutOfDomain {
    /// The rule, as a sentence fragment: "must be a day from 2000-01-01 to 2199-12-31".
    pub expected: String,
    /// The value as [`quote`] shows it.
    pub got: String,
}

impl OutOfDomain {
    fn new(expected: impl Into<String>, value: &str) -> OutOfDomain {
        OutOfDomain {
            expected: expected.into(),
            got: quote(value),
        }
    }
}

/// A value for a message: in double quotes with escapes, at most
/// [`QUOTE_MAX_CHARS`] characters of it, then how long it was.
pub fn quote(value: &str) -> String {
    let chars = value.chars().count();
    if chars <= QUOTE_MAX_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(QUOTE_MAX_CHARS).collect();
    format!("{head:?}… ({chars} characters)")
}

/// The kinds of name, each with its length; one alphabet for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    AccountId,
    ClusterName,
    NodeName,
}

impl NameKind {
    /// The most characters a name of this kind may have: 64, or 253 for a
    /// node (a Kubernetes node name is a DNS subdomain of up to 253).
    pub fn max_chars(self) -> usize {
        match self {
            NameKind::AccountId | NameKind::ClusterName => 64,
            NameKind::NodeName => 253,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::AccountId => "account id",
            NameKind::ClusterName => "cluster name",
            NameKind::NodeName => "node name",
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` is in the domain of its kind: 1 to `max_chars` ASCII
/// letters, digits, `-`, `_` and `.`, not starting with `.`, `-` or `+`.
/// Such a name is safe in a URL path, a CSV cell, a log line and an
/// idempotency key, and looks like nothing else.
pub fn check_name(kind: NameKind, name: &str) -> Result<(), OutOfDomain> {
    let fits = (1..=kind.max_chars()).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with(['.', '-', '+']);
    if fits {
        Ok(())
    } else {
        Err(OutOfDomain::new(
            format!(
                "{kind} must be 1 to {} characters of ASCII letters, digits, '-', '_' and '.', not starting with '.' or '-'",
                kind.max_chars()
            ),
            name,
        ))
    }
}

/// A day `YYYY-MM-DD` from [`FIRST_DAY`] to [`LAST_DAY`].
pub fn parse_day(text: &str) -> Result<NaiveDate, OutOfDomain> {
    let expected = || format!("must be a day YYYY-MM-DD from {FIRST_DAY} to {LAST_DAY}");
    // Exactly four digits of year: chrono alone takes `+262142-12-31`.
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    let day = shaped
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| OutOfDomain::new(expected(), text))?;
    check_day(day).map_err(|_| OutOfDomain::new(expected(), text))
}

/// A month `YYYY-MM` whose days lie from [`FIRST_DAY`] to [`LAST_DAY`]:
/// its first day.
pub fn parse_month(text: &str) -> Result<NaiveDate, OutOfDomain> {
    let expected = || "must be a month YYYY-MM from 2000-01 to 2199-12".to_string();
    let shaped = text.len() == 7
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    let first = shaped
        .then(|| NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| OutOfDomain::new(expected(), text))?;
    check_day(first).map_err(|_| OutOfDomain::new(expected(), text))
}

/// A day already parsed (from a typed source) within the domain.
pub fn check_day(day: NaiveDate) -> Result<NaiveDate, OutOfDomain> {
    if (FIRST_DAY..=LAST_DAY).contains(&day) {
        Ok(day)
    } else {
        Err(OutOfDomain::new(
            format!("must be a day from {FIRST_DAY} to {LAST_DAY}"),
            &day.to_string(),
        ))
    }
}

/// The first instant any input may name (2000-01-01T00:00:00Z).
pub fn first_instant() -> DateTime<Utc> {
    FIRST_DAY.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

/// The first instant past the domain (2200-01-01T00:00:00Z).
pub fn instant_limit() -> DateTime<Utc> {
    LAST_DAY
        .succ_opt()
        .expect("2200-01-01 is a day")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
}

/// An RFC 3339 instant with an offset (or `Z`), from 2000-01-01T00:00:00Z
/// up to, not including, 2200-01-01T00:00:00Z.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, OutOfDomain> {
    let expected = || {
        format!("must be an RFC 3339 instant with an offset, such as 2026-11-24T10:03:00+08:00, from {FIRST_DAY} to {LAST_DAY}")
    };
    let at = (text.len() <= INSTANT_MAX_BYTES)
        .then(|| DateTime::parse_from_rfc3339(text).ok())
        .flatten()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| OutOfDomain::new(expected(), text))?;
    check_instant(at).map_err(|_| OutOfDomain::new(expected(), text))
}

/// An instant already parsed within the domain.
pub fn check_instant(at: DateTime<Utc>) -> Result<DateTime<Utc>, OutOfDomain> {
    if first_instant() <= at && at < instant_limit() {
        Ok(at)
    } else {
        Err(OutOfDomain::new(
            format!("must be an instant from {FIRST_DAY} to {LAST_DAY}"),
            &at.to_rfc3339(),
        ))
    }
}

/// An amount of money written as a plain decimal: digits, and optionally a
/// point and up to six more digits (`123`, `123.45`). No sign, exponent,
/// separator, blank, or a point without digits on both sides: a typo must
/// not credit ten or a hundred times the amount.
pub fn parse_money(text: &str) -> Result<Decimal, OutOfDomain> {
    let expected = || {
        format!("must be a plain decimal amount such as \"123\" or \"123.45\" (digits, and up to {MONEY_FRACTION_DIGITS} after a point; no sign or exponent)")
    };
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str, most: usize| {
        (1..=most).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    let plain = digits(whole, MONEY_INTEGER_DIGITS)
        && fraction.is_none_or(|f| digits(f, MONEY_FRACTION_DIGITS));
    if !plain {
        return Err(OutOfDomain::new(expected(), text));
    }
    text.parse::<Decimal>()
        .map_err(|_| OutOfDomain::new(expected(), text))
}

/// Cores of a licence, an order or a cap: a whole number from 1 to 1,000,000.
pub fn check_total_cores(cores: u64) -> Result<u32, OutOfDomain> {
    if (TOTAL_CORES_MIN..=TOTAL_CORES_MAX).contains(&cores) {
        Ok(u32::try_from(cores).expect("at most 1,000,000"))
    } else {
        Err(OutOfDomain::new(
            format!("must be a whole number of cores from {TOTAL_CORES_MIN} to 1,000,000"),
            &cores.to_string(),
        ))
    }
}

/// Whether a character prints: not a control character (C0, DEL, C1), not
/// a line or paragraph separator, and not an invisible format character
/// (zero-width spaces and joiners, direction marks and overrides, the byte
/// order mark, tags), which would make two texts look alike or reorder a
/// line.
pub fn is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        ))
}

/// Free text (a reference, a label, a contact's name): 1 to `max_chars`
/// printable characters, not only blanks.
pub fn check_text(text: &str, max_chars: usize) -> Result<(), OutOfDomain> {
    let chars = text.chars().count();
    if (1..=max_chars).contains(&chars) && text.chars().all(is_printable) && !text.trim().is_empty()
    {
        Ok(())
    } else {
        Err(OutOfDomain::new(
            format!("must be 1 to {max_chars} printable characters, not only blanks, without control, format or separator characters"),
            text,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_yyyy_mm_within_the_days_domain_and_reads_as_its_first_day() {
        assert_eq!(
            parse_month("2026-11"),
            Ok(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())
        );
        assert_eq!(
            parse_month("2199-12"),
            Ok(NaiveDate::from_ymd_opt(2199, 12, 1).unwrap())
        );
        for bad in [
            "",
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "1999-12",
            "2200-01",
            "2026-11-01",
            "+202-11",
            "２026-11",
        ] {
            let e = parse_month(bad).unwrap_err();
            assert!(e.expected.contains("YYYY-MM"), "{bad}: {e:?}");
        }
    }

    #[test]
    fn names_take_ascii_letters_digits_dash_underscore_and_dot_only() {
        for good in ["acme", "a", "Acme-2_prod.eu", "0day", &"a".repeat(64)] {
            assert_eq!(check_name(NameKind::AccountId, good), Ok(()), "{good}");
        }
        for bad in [
            "",
            " acme",
            "ac me",
            "acme\u{3000}",
            "ac\u{200B}me",
            "\u{202E}emca",
            "аcme", // Cyrillic а
            ".",
            "..",
            ".hidden",
            "-x",
            "+x",
            "=2+3",
            "a?b#c",
            "a/b",
            "a\nb",
            &"a".repeat(65),
        ] {
            assert!(check_name(NameKind::AccountId, bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_name(NameKind::NodeName, &"n".repeat(253)), Ok(()));
        assert!(check_name(NameKind::NodeName, &"n".repeat(254)).is_err());
    }

    #[test]
    fn an_error_quotes_at_most_64_characters_of_the_value() {
        let e = check_name(NameKind::ClusterName, &"é".repeat(1_000_000)).unwrap_err();
        assert!(e.got.len() < 200, "{}", e.got);
        assert!(e.got.ends_with("(1000000 characters)"), "{}", e.got);
        assert_eq!(quote("a\"b\n"), r#""a\"b\n""#);
        assert!(e.to_string().starts_with("cluster name must be 1 to 64"));
    }

    #[test]
    fn days_are_yyyy_mm_dd_from_2000_to_2199() {
        assert_eq!(parse_day("2000-01-01"), Ok(FIRST_DAY));
        assert_eq!(parse_day("2199-12-31"), Ok(LAST_DAY));
        for bad in [
            "1999-12-31",
            "2200-01-01",
            "+262142-12-31",
            "-262143-01-01",
            "+2026-11-24",
            "2026-11-24 ",
            "2026-02-30",
            "20261124",
            "2026-1-24",
            "",
        ] {
            assert!(parse_day(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instants_carry_an_offset_and_stay_within_the_days() {
        assert!(parse_instant("2026-11-24T10:03:00+08:00").is_ok());
        assert!(parse_instant("2000-01-01T00:00:00Z").is_ok());
        assert!(parse_instant("2199-12-31T23:59:59.999Z").is_ok());
        for bad in [
            "1999-12-31T23:59:59Z",
            "2200-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "+10000-01-01T00:00:00Z",
            "2026-11-24T10:03:00",
            "2026-11-24",
            &format!("2026-11-24T10:03:00.{}Z", "1".repeat(100)),
        ] {
            assert!(parse_instant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn money_is_a_plain_decimal_and_nothing_else() {
        assert_eq!(parse_money("123"), Ok(Decimal::new(123, 0)));
        assert_eq!(parse_money("123.45"), Ok(Decimal::new(12345, 2)));
        assert_eq!(parse_money("0.25"), Ok(Decimal::new(25, 2)));
        for bad in [
            "1e3", "1_000", "+5", "-5", ".5", "5.", "", " 5", "5 ", "1,000", "0x10", "NaN", "inf",
            "5..0", "1.2.3", "١٢٣", // Arabic-Indic digits
        ] {
            assert!(parse_money(bad).is_err(), "{bad:?}");
        }
        assert!(parse_money(&"9".repeat(16)).is_err());
        assert!(parse_money("1.1234567").is_err());
    }

    #[test]
    fn licence_order_and_cap_cores_run_from_1_to_a_million() {
        assert_eq!(check_total_cores(1), Ok(1));
        assert_eq!(check_total_cores(1_000_000), Ok(1_000_000));
        assert!(check_total_cores(0).is_err());
        assert!(check_total_cores(1_000_001).is_err());
        assert!(check_total_cores(u64::from(u32::MAX)).is_err());
    }

    #[test]
    fn free_text_is_printable_bounded_and_not_blank() {
        assert_eq!(check_text("payment 2026-11 №7 (wire)", 200), Ok(()));
        assert_eq!(check_text("北京的付款", 200), Ok(()));
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\rb",
            "a\0b",
            "a\u{7f}",
            "a\u{85}",
            "a\u{200B}",
            "a\u{202E}",
            "a\u{2028}",
            "\u{FEFF}a",
        ] {
            assert!(check_text(bad, 200).is_err(), "{bad:?}");
        }
        assert!(check_text(&"x".repeat(201), 200).is_err());
    }
}
