//! Value parsers shared by the components' flags.

use std::time::Duration;

/// A count that must not be zero (no limit means "unbounded").
pub(crate) fn nonzero_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 is not allowed: every limit must be bounded".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// A duration like `500ms` or `10s`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|err| format!("{err} (write durations like 0s, 500ms, 10s)"))
}

/// A duration that must not be zero (no timeout means "never").
pub(crate) fn nonzero_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("0 is not allowed: every timeout must be bounded".into()),
        Ok(d) => Ok(d),
        Err(err) => Err(format!("{err} (write durations like 500ms, 10s, 24h)")),
    }
}
