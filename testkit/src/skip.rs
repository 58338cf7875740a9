//! What a test needs from the machine that it may go without.

/// A test that cannot run here for want of `need` (`ROOT`, `POSTGRES`,
/// `SMTP`, `CHROMIUM`, `KUBECTL`): it says why and passes, unless
/// `CORE_METER_REQUIRE_<need>=1` (as `.ci/run` sets), where that is a
/// failure naming the variable. The caller returns after it.
pub fn skip(need: &str, why: &str) {
    let var = format!("CORE_METER_REQUIRE_{need}");
    if std::env::var(&var).as_deref() == Ok("1") {
        panic!("{why}; {var}=1 requires this test to run");
    }
    eprintln!("skipped: {why} (with {var}=1 this is a failure)");
}
