//! Durations as Go prints them. The API server appends `?timeout=10s` to every
//! webhook call, and the command line's time flags take the same spelling, so
//! one reader serves both; it is a leaf that the server and the CLI both use.

use std::time::Duration;

/// Parses a duration as Go prints it (`10s`, `1m30s`, `500ms`, `1.5s`; units
/// `h`, `m`, `s`, `ms`, `us`, `µs`, `ns`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("invalid duration {text:?}: {why} (expected e.g. 10s, 500ms, 1m30s, or seconds)")
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad("out of range"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("a number without a unit"))?;
        if number_len == 0 {
            return Err(bad("a unit without a number"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| bad("not a number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        // Checked: `?timeout=` is client input, and a sum of in-range parts
        // can still overflow a Duration (a panic, HTTP 500, before this).
        total = Duration::try_from_secs_f64(number * scale)
            .ok()
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| bad("out of range"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_bare_seconds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "10x", "ten", "-1"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn huge_and_hostile_durations_are_errors_not_panics() {
        // Each part fits a Duration; their sum does not (was a panic: HTTP 500).
        let sum = "10000000000000000000s10000000000000000000s";
        let err = parse_duration(sum).unwrap_err();
        assert!(err.contains("out of range") && err.contains("10s"), "{err}");
        for bad in [
            "1e400",
            "1e400s",
            "99999999999999999999999h",
            "18446744073709551615s1ns",
            "NaN",
            "inf",
            "-inf",
            "1..2s",
            ".s",
            "1s.",
            "µ",
            "1µ",
            "\u{0}",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
