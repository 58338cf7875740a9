//! Exact decimal rounding for money and averages: half up, to a number of places, never through a float.

use rust_decimal::Decimal;

/// `numerator / denominator` rounded half away from zero to `places` decimal
/// places, computed exactly on integers (no 28-digit intermediate rounding).
pub fn div_round_half_up(numerator: Decimal, denominator: u64, places: u32) -> Decimal {
    assert!(denominator > 0, "division by zero");
    assert!(places <= 10, "at most 10 decimal places");
    let mantissa = numerator.mantissa();
    let negative = mantissa < 0;
    let n = mantissa.unsigned_abs() * 10u128.pow(places);
    let d = 10u128.pow(numerator.scale()) * u128::from(denominator);
    let q = (2 * n + d) / (2 * d);
    let q = i128::try_from(q).expect("quotient fits");
    Decimal::from_i128_with_scale(if negative { -q } else { q }, places)
}

/// A decimal shown with exactly two places (`5` as `5.00`), after half-up rounding.
pub fn cents(value: Decimal) -> Decimal {
    let mut v =
        value.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    v.rescale(2);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn halves_round_up_to_the_cent() {
        assert_eq!(cents(d("0.125")), d("0.13"));
        assert_eq!(cents(d("0.124999")), d("0.12"));
        assert_eq!(cents(d("5")).to_string(), "5.00");
    }

    #[test]
    fn exact_division_rounds_half_up() {
        assert_eq!(div_round_half_up(d("484"), 24, 2), d("20.17"));
        assert_eq!(div_round_half_up(d("3"), 24, 2), d("0.13"));
        assert_eq!(div_round_half_up(d("121"), 24, 0), d("5"));
        assert_eq!(div_round_half_up(d("-3"), 24, 2), d("-0.13"));
        assert_eq!(div_round_half_up(d("121.0000"), 1, 2).to_string(), "121.00");
    }
}
