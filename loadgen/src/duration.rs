//! Parsing of human durations for `--duration` and `--warmup`: an integer followed by `ms`, `s`,
//! `m` or `h` (`10s`, `1m`, `500ms`); a bare integer means seconds. Fractions are not accepted, so
//! a value means exactly one thing.

use crate::error::ArgError;
use std::time::Duration;

/// Parses `10s`, `1m`, `250ms`, `2h` or a bare number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, ArgError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(ArgError::DurationEmpty);
    }
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(ArgError::DurationSyntax { input: input.to_string() });
    }
    let value: u64 = digits.parse().map_err(|_| ArgError::DurationOverflow { input: input.to_string() })?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(ArgError::DurationSyntax { input: input.to_string() }),
    };
    let millis = value
        .checked_mul(millis_per_unit)
        .ok_or_else(|| ArgError::DurationOverflow { input: input.to_string() })?;
    Ok(Duration::from_millis(millis))
}

/// Renders a duration the way `parse_duration` reads it back (for the report).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1_000) {
        format!("{millis}ms")
    } else if !millis.is_multiple_of(60_000) || millis == 0 {
        format!("{}s", millis / 1_000)
    } else {
        format!("{}m", millis / 60_000)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn t01_units_parse() {
        // Proves every accepted unit, and a bare number, maps to the intended length.
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration(" 0s ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn t02_bad_durations_are_rejected_with_a_message() {
        // Proves malformed input fails, and the message says what a valid value looks like.
        for bad in ["", "s", "10x", "1.5s", "-1s", "10 sec", "ten"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        assert!(parse_duration("10x").unwrap_err().to_string().contains("10s"));
        assert!(matches!(parse_duration("99999999999999999999s"), Err(ArgError::DurationOverflow { .. })));
        assert!(matches!(parse_duration("18446744073709551615h"), Err(ArgError::DurationOverflow { .. })));
    }

    #[test]
    fn t03_format_round_trips() {
        // Proves the report's rendering parses back to the same duration.
        for d in
            [Duration::from_millis(1500), Duration::from_secs(10), Duration::from_secs(120), Duration::ZERO]
        {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
