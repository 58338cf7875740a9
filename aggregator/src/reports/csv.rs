//! CSV as the service writes it (bills, the report): every cell that a
//! spreadsheet would take for a formula is written as text.
//!
//! An account id or a node name may start with `=`, `+`, `-` or `@`; opened
//! in a spreadsheet, such a cell runs as a formula (CSV injection). Each
//! such cell, and one starting with a tab or a carriage return, gets a
//! leading `'` (OWASP's advice), except the service's own numbers: a plain
//! decimal such as `-0.25` stays a number.

use std::borrow::Cow;

/// `cell` as a spreadsheet cannot take it for a formula.
pub fn safe_cell(cell: &str) -> Cow<'_, str> {
    let risky = matches!(
        cell.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    );
    if risky && !is_plain_decimal(cell) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// An optional `-`, digits, and optionally `.` and digits: `-0.25`, `12`.
fn is_plain_decimal(cell: &str) -> bool {
    let unsigned = cell.strip_prefix('-').unwrap_or(cell);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

/// `header` and `rows` as CSV, every cell through [`safe_cell`].
pub fn write_csv<Row, Cell>(header: &[&str], rows: impl IntoIterator<Item = Row>) -> String
where
    Row: IntoIterator<Item = Cell>,
    Cell: AsRef<str>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    let memory = "writing CSV to memory cannot fail";
    w.write_record(header.iter().map(|h| safe_cell(h).into_owned()))
        .expect(memory);
    for row in rows {
        let cells: Vec<String> = row
            .into_iter()
            .map(|c| safe_cell(c.as_ref()).into_owned())
            .collect();
        w.write_record(&cells).expect(memory);
    }
    String::from_utf8(w.into_inner().expect(memory)).expect("CSV of UTF-8 cells is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_a_spreadsheet_would_run_as_a_formula_is_written_as_text() {
        for (cell, written) in [
            ("=2+3", "'=2+3"),
            ("+n1", "'+n1"),
            ("-cmd|' /C calc'!A0", "'-cmd|' /C calc'!A0"),
            ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("-", "'-"),
            ("-1.", "'-1."),
            ("-.5", "'-.5"),
            ("-1e3", "'-1e3"),
            ("-1.2.3", "'-1.2.3"),
            ("@ops/+n1 prod/n2", "'@ops/+n1 prod/n2"),
        ] {
            assert_eq!(safe_cell(cell), written, "{cell:?}");
        }
    }

    #[test]
    fn the_services_own_numbers_and_ordinary_text_stay_as_they_are() {
        for cell in [
            "-0.25",
            "-12",
            "0.25",
            "7.50",
            "acme",
            "2026-11-24",
            "2026-11-24T00:00:00+08:00",
            "a=b",
            "",
            "'quoted",
        ] {
            assert!(
                matches!(safe_cell(cell), Cow::Borrowed(c) if c == cell),
                "{cell:?}"
            );
        }
    }

    #[test]
    fn every_cell_of_a_written_csv_goes_through_the_check() {
        let csv = write_csv(
            &["account", "amount"],
            [["=2+3", "-0.25"], ["@acme", "1.00"]],
        );
        assert_eq!(csv, "account,amount\n'=2+3,-0.25\n'@acme,1.00\n");
    }
}
