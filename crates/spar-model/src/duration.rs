//! Durations as Istio writes them: protobuf (`"1.5s"`) and Go (`"1h2m"`, `"100ms"`) forms.

use std::time::Duration;

/// Parse `"2s"`, `"0.5s"`, `"100ms"`, `"1m30s"`, `"1h"`, `"250us"`. Zero is allowed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let bad = || format!("invalid duration {s:?}: use a number with a unit, e.g. 500ms, 2s, 1m");
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
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
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    if !total.is_finite() || total > 1e10 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("2s", 2000),
            ("0.5s", 500),
            ("100ms", 100),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("0s", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s).map(|d| d.as_millis()), Ok(ms), "{s}");
        }
        for s in ["", "5", "s", "1x", "-1s", "1.2.3s"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }
}
