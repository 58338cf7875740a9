//! The image-scan add-on (SPEC 10.1 to 10.3): image IDs, the price of a
//! pack, the stock of authorizations, and what a batch or an arrival
//! consumes. Pure: the store holds the counts and asks these rules.

use std::collections::BTreeSet;

use rust_decimal::Decimal;

use crate::domain::OutOfDomain;

/// The default price of one authorization (0.25 USD).
pub fn default_price_per_authorization() -> Decimal {
    Decimal::new(25, 2)
}

/// The most authorizations one order buys.
pub const MAX_PACK_QUANTITY: u32 = 100_000;
/// Authorizations a trial may use without buying (the default).
pub const TRIAL_AUTHORIZATIONS: u32 = 100;
/// The most images one node's list holds.
pub const MAX_IMAGES_PER_NODE: usize = 5_000;
/// The most image IDs one authorization batch names.
pub const MAX_BATCH_IDS: usize = 10_000;
/// `image_authorizations_low` goes out when what is available falls to
/// this share of what was purchased, in percent, or less.
pub const LOW_PERCENT: u64 = 10;

/// An image ID: `sha256:` and 64 lowercase hex digits (the digest of the
/// image's config). Tags and repository digests only describe an image.
pub fn check_image_id(id: &str) -> Result<(), OutOfDomain> {
    let hex = id.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(OutOfDomain {
            expected: "must be an image ID: sha256: and 64 lowercase hex digits".into(),
            got: crate::domain::quote(id),
        })
    }
}

/// The price of `quantity` authorizations at `each`, to the cent.
pub fn pack_price(quantity: u32, each: Decimal) -> Decimal {
    crate::money::cents(Decimal::from(quantity) * each)
}

/// An account's authorizations. Purchased ones are drawn on first by
/// nothing but consumption and refunds; the trial's allowance counts only
/// while the trial runs, and what the trial consumed is its own: it never
/// takes from what was bought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stock {
    pub purchased: u64,
    /// Consumed from purchases.
    pub consumed: u64,
    pub refunded: u64,
    /// The trial's allowance, 0 outside a trial.
    pub trial_allowance: u64,
    /// Consumed from the trial's allowance.
    pub trial_consumed: u64,
}

impl Stock {
    /// Purchased, not consumed and not refunded: what a refund may return.
    pub fn unused_purchased(&self) -> u64 {
        self.purchased
            .saturating_sub(self.consumed)
            .saturating_sub(self.refunded)
    }

    /// What is left of the trial's allowance.
    pub fn trial_left(&self) -> u64 {
        self.trial_allowance.saturating_sub(self.trial_consumed)
    }

    /// available = purchased + trial allowance (in a trial) - consumed - refunded.
    pub fn available(&self) -> u64 {
        self.unused_purchased() + self.trial_left()
    }

    /// Whether what is available is low: at most [`LOW_PERCENT`] of what
    /// was purchased (never, with nothing purchased).
    pub fn is_low(&self) -> bool {
        self.purchased > 0 && self.available() * 100 <= self.purchased * LOW_PERCENT
    }

    /// Where `n` consumptions come from: the trial's allowance first (it
    /// ends with the trial), then purchases. None when fewer are available.
    pub fn draw(&self, n: u64) -> Option<Draw> {
        if n > self.available() {
            return None;
        }
        let trial = n.min(self.trial_left());
        Some(Draw {
            trial,
            purchased: n - trial,
        })
    }
}

/// How many consumptions come from the trial and from purchases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub trial: u64,
    pub purchased: u64,
}

/// What an authorization batch does: the IDs it consumes one authorization
/// for (each once, in the batch's order) and those already authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub authorize: Vec<String>,
    pub already_authorized: Vec<String>,
}

/// A batch needs more than is available: it is refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch needs {needed} authorizations and {available} are available")]
pub struct Insufficient {
    pub needed: u64,
    pub available: u64,
}

/// Plans a batch: one authorization for each ID not yet authorized (an ID
/// named twice counts once), nothing for the others, and nothing at all
/// when it needs more than `available`.
pub fn plan_batch(
    ids: &[String],
    is_authorized: impl Fn(&str) -> bool,
    available: u64,
) -> Result<Plan, Insufficient> {
    let mut seen = BTreeSet::new();
    let mut plan = Plan {
        authorize: Vec::new(),
        already_authorized: Vec::new(),
    };
    for id in ids {
        if !seen.insert(id.as_str()) {
            continue;
        }
        if is_authorized(id) {
            plan.already_authorized.push(id.clone());
        } else {
            plan.authorize.push(id.clone());
        }
    }
    let needed = plan.authorize.len() as u64;
    if needed > available {
        return Err(Insufficient { needed, available });
    }
    Ok(plan)
}

/// Why an image first seen was not authorized automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The day's automatic count reached `max_daily`.
    ReachLimit,
    /// No authorization was left.
    Insufficient,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ReachLimit => "reach_limit",
            Refusal::Insufficient => "insufficient",
        }
    }
}

/// The fate of images first seen while `auto_authorize` is on, in arrival
/// order: each is authorized while one is available and the day's
/// automatic count (`auto_today` so far) is under `max_daily` (0: no
/// limit); the rest are refused, saying why.
pub fn plan_auto(
    arrivals: usize,
    available: u64,
    auto_today: u64,
    max_daily: u64,
) -> Vec<Result<(), Refusal>> {
    let mut left = available;
    let mut today = auto_today;
    (0..arrivals)
        .map(|_| {
            if max_daily > 0 && today >= max_daily {
                Err(Refusal::ReachLimit)
            } else if left == 0 {
                Err(Refusal::Insufficient)
            } else {
                left -= 1;
                today += 1;
                Ok(())
            }
        })
        .collect()
}

/// Which purchases `n` consumptions draw from, oldest first: `remaining`
/// lists each purchase (oldest first) with what it has left; the answer
/// gives each purchase drawn on and how many.
pub fn draw_oldest_first(remaining: &[(i64, u64)], n: u64) -> Vec<(i64, u64)> {
    let mut left = n;
    let mut out = Vec::new();
    for &(purchase, has) in remaining {
        if left == 0 {
            break;
        }
        let take = has.min(left);
        if take > 0 {
            out.push((purchase, take));
            left -= take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn an_image_id_is_sha256_and_64_lowercase_hex_digits() {
        assert!(check_image_id(&id(7)).is_ok());
        for bad in [
            "",
            "sha256:",
            "sha256:ABCDEF0000000000000000000000000000000000000000000000000000000000",
            "sha512:0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "sha256:00000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(check_image_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pack_costs_a_quarter_each_to_the_cent() {
        let each = default_price_per_authorization();
        assert_eq!(pack_price(20, each).to_string(), "5.00");
        assert_eq!(pack_price(1, each).to_string(), "0.25");
        assert_eq!(pack_price(MAX_PACK_QUANTITY, each).to_string(), "25000.00");
    }

    #[test]
    fn a_batch_consumes_one_per_id_not_yet_authorized_and_once_per_id() {
        let done = [id(1)];
        let batch = vec![id(1), id(2), id(2), id(3)];
        let plan = plan_batch(&batch, |i| done.iter().any(|d| d == i), 2).unwrap();
        assert_eq!(plan.authorize, vec![id(2), id(3)]);
        assert_eq!(plan.already_authorized, vec![id(1)]);
    }

    #[test]
    fn a_batch_needing_more_than_is_available_is_refused_whole() {
        let batch: Vec<String> = (1..=3).map(id).collect();
        assert_eq!(
            plan_batch(&batch, |_| false, 2),
            Err(Insufficient {
                needed: 3,
                available: 2
            })
        );
    }

    #[test]
    fn the_trial_allowance_is_used_first_and_never_takes_from_purchases() {
        let stock = Stock {
            purchased: 20,
            trial_allowance: 100,
            trial_consumed: 95,
            ..Stock::default()
        };
        assert_eq!(stock.available(), 25);
        assert_eq!(
            stock.draw(7),
            Some(Draw {
                trial: 5,
                purchased: 2
            })
        );
        assert_eq!(stock.draw(26), None);
        // The trial over: its allowance is gone, its consumption with it.
        let after = Stock {
            trial_allowance: 0,
            ..stock
        };
        assert_eq!(after.available(), 20);
    }

    #[test]
    fn low_is_at_most_a_tenth_of_what_was_purchased() {
        let stock = |consumed| Stock {
            purchased: 20,
            consumed,
            ..Stock::default()
        };
        assert!(!stock(17).is_low());
        assert!(stock(18).is_low());
        assert!(!Stock::default().is_low());
    }

    #[test]
    fn arrivals_are_authorized_until_the_daily_limit_or_the_stock_runs_out() {
        use Refusal::*;
        assert_eq!(
            plan_auto(4, 10, 1, 3),
            vec![Ok(()), Ok(()), Err(ReachLimit), Err(ReachLimit)]
        );
        assert_eq!(
            plan_auto(3, 1, 0, 0),
            vec![Ok(()), Err(Insufficient), Err(Insufficient)]
        );
    }

    #[test]
    fn consumption_draws_on_the_oldest_purchase_first() {
        assert_eq!(
            draw_oldest_first(&[(1, 0), (2, 3), (3, 5)], 4),
            vec![(2, 3), (3, 1)]
        );
        assert!(draw_oldest_first(&[(1, 5)], 0).is_empty());
    }
}
