//! Amounts and durations as people write them, one grammar for every file, flag and scenario:
//! byte sizes and rates (`"10MB/s"`, `"2.5 MiB/s"`, `"80Mbit/s"`, `"4MiB"`, plain numbers of
//! bytes, `"unlimited"`) and durations (`"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"1h30m"`).
//!
//! Amounts are exact integer arithmetic (a decimal mantissa times a rational unit), so
//! `"0.1MB/s"` is exactly 100 000 bytes per second and no float rounding leaks into the limiter.

use std::time::Duration;

/// One accepted unit: its spellings and its value in bytes as a fraction `num / den`.
struct Unit {
    names: &'static [&'static str],
    num: u128,
    den: u128,
}

const UNITS: &[Unit] = &[
    Unit { names: &["", "B"], num: 1, den: 1 },
    Unit { names: &["KB", "kB"], num: 1_000, den: 1 },
    Unit { names: &["MB"], num: 1_000_000, den: 1 },
    Unit { names: &["GB"], num: 1_000_000_000, den: 1 },
    Unit { names: &["TB"], num: 1_000_000_000_000, den: 1 },
    Unit { names: &["KiB"], num: 1 << 10, den: 1 },
    Unit { names: &["MiB"], num: 1 << 20, den: 1 },
    Unit { names: &["GiB"], num: 1 << 30, den: 1 },
    Unit { names: &["TiB"], num: 1 << 40, den: 1 },
    Unit { names: &["bit"], num: 1, den: 8 },
    Unit { names: &["kbit", "Kbit"], num: 1_000, den: 8 },
    Unit { names: &["Mbit"], num: 1_000_000, den: 8 },
    Unit { names: &["Gbit"], num: 1_000_000_000, den: 8 },
];

const UNIT_HELP: &str = "units: B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB \
                         (powers of 1024), or kbit, Mbit, Gbit";

/// Parses a rate string. `Ok(None)` means `"unlimited"`. The trailing `/s` is optional.
/// `Err` holds the problem, phrased to follow the quoted value in an error message.
pub(crate) fn parse_rate_str(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let body = t.strip_suffix("/s").unwrap_or(t);
    let v = parse_amount(body).map_err(|p| {
        format!("is not a rate ({p}; write e.g. \"10MB/s\", \"80Mbit/s\" or \"unlimited\")")
    })?;
    if v == 0 {
        return Err("is zero: a rate of 0 would stall every transfer (write \"unlimited\" for \
                    no limit)"
            .to_string());
    }
    Ok(Some(v))
}

/// Parses a size string (`"4MiB"`, `"262144"`). A `/s` suffix is refused: a size is not a rate.
pub(crate) fn parse_size_str(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.ends_with("/s") {
        return Err("is a rate, but this key is a size in bytes (drop the \"/s\")".to_string());
    }
    if t.eq_ignore_ascii_case("unlimited") {
        return Err("cannot be unlimited: it is the token bucket's size in bytes".to_string());
    }
    let v = parse_amount(t).map_err(|p| format!("is not a size ({p}; write e.g. \"4MiB\")"))?;
    if v == 0 {
        return Err("is zero: the bucket must hold at least one byte".to_string());
    }
    Ok(v)
}

/// `"2.5 MiB"` → 2 621 440. Rounds to the nearest byte (only fractional bits can round).
/// `Err` holds the problem, to be put in brackets after the value ("it does not start with a
/// number", "unknown unit \"parsecs\"; units: ...").
pub fn parse_amount(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split =
        text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    if number.is_empty() {
        return Err("it does not start with a number".to_string());
    }
    if number.starts_with('_') || number.ends_with('_') || number.contains("__") {
        return Err("misplaced '_' in the number".to_string());
    }
    let digits: String = number.chars().filter(|&c| c != '_').collect();
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits.as_str(), ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(format!("\"{number}\" is not a number"));
    }
    if frac_part.len() > 18 || int_part.len() > 30 {
        return Err(format!("\"{number}\" has too many digits"));
    }
    let Some(u) = UNITS.iter().find(|u| u.names.contains(&unit)) else {
        if matches!(unit, "Kb" | "kb" | "Mb" | "mb" | "Gb" | "gb" | "Tb" | "tb") {
            return Err(format!(
                "\"{unit}\" is ambiguous: write {}B for bytes or {}bit for bits",
                &unit[..1].to_uppercase(),
                &unit[..1].to_uppercase()
            ));
        }
        return Err(format!("unknown unit \"{unit}\"; {UNIT_HELP}"));
    };
    // value = mantissa / 10^frac_len * num / den, all exact in u128.
    let mantissa: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| format!("\"{number}\" is not a number"))?;
    let scale = 10u128.pow(frac_part.len() as u32);
    let numer = mantissa.checked_mul(u.num).ok_or_else(|| "it is too large".to_string())?;
    let denom = scale * u.den;
    let rounded =
        numer.checked_add(denom / 2).ok_or_else(|| "it is too large".to_string())? / denom;
    u64::try_from(rounded).map_err(|_| "it is too large".to_string())
}

/// A duration: `"250ms"`, `"30s"` (or `"sec"`), `"5m"` (or `"min"`), `"2h"`, `"1d"`, decimals
/// (`"1.5h"`), sums (`"1h30m"`), and a bare number of seconds. `Err` holds the problem, as
/// [`parse_amount`]'s.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("it is empty".to_string());
    }
    let mut secs = 0.0;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(end);
        let n: f64 = number.parse().map_err(|_| {
            if number.is_empty() {
                format!("\"{rest}\" does not start with a number")
            } else {
                format!("\"{number}\" is not a number")
            }
        })?;
        let tail = tail.trim_start();
        let end = tail.find(|c: char| c.is_ascii_digit() || c == ' ').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(end);
        let unit_secs = match unit {
            "ms" => 0.001,
            "s" | "sec" | "" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            other => return Err(format!("unknown unit \"{other}\" (ms, s, m, h or d)")),
        };
        secs += n * unit_secs;
        rest = tail.trim_start();
    }
    if !secs.is_finite() || secs > 1e12 {
        return Err("it is too large".to_string());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A TOML float given for a rate or size (`rate = 2.5e6`): must be finite, positive, in range.
pub(crate) fn float_bytes(value: f64) -> Result<u64, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{value} is not a number of bytes"));
    }
    if value >= u64::MAX as f64 {
        return Err(format!("{value} is too large"));
    }
    Ok(value.round() as u64)
}

/// Human form of a byte count for notes and `Display`: exact binary or decimal unit if one fits.
pub fn fmt_bytes(bytes: u64) -> String {
    const BIN: [(u64, &str); 4] =
        [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    const DEC: [(u64, &str); 4] =
        [(1_000_000_000_000, "TB"), (1_000_000_000, "GB"), (1_000_000, "MB"), (1_000, "KB")];
    for (unit, name) in BIN.into_iter().chain(DEC) {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}

/// Human form of a rate (`None` = unlimited).
pub fn fmt_rate(rate: Option<u64>) -> String {
    match rate {
        Some(r) => format!("{}/s", fmt_bytes(r)),
        None => "unlimited".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate_str("10MB/s"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate_str("10 MB/s"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate_str("10MB"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate_str("2.5MiB/s"), Ok(Some(2_621_440)));
        assert_eq!(parse_rate_str("0.1MB/s"), Ok(Some(100_000)));
        assert_eq!(parse_rate_str("80Mbit/s"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate_str("1_000_000"), Ok(Some(1_000_000)));
        assert_eq!(parse_rate_str("1000 B/s"), Ok(Some(1000)));
        assert_eq!(parse_rate_str("Unlimited"), Ok(None));
        assert!(parse_rate_str("0MB/s").unwrap_err().contains("zero"));
        assert!(parse_rate_str("10Mb/s").unwrap_err().contains("ambiguous"));
        assert!(parse_rate_str("10 parsecs/s").unwrap_err().contains("unknown unit"));
        assert!(parse_rate_str("fast").unwrap_err().contains("number"));
        assert!(parse_rate_str("1.2.3MB/s").is_err());
        assert!(parse_rate_str("99999999999999999999TB/s").unwrap_err().contains("large"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_str("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size_str("262144"), Ok(262_144));
        assert!(parse_size_str("4MiB/s").unwrap_err().contains("rate"));
        assert!(parse_size_str("unlimited").is_err());
        assert!(parse_size_str("0").is_err());
    }

    #[test]
    fn amounts_and_durations() {
        assert_eq!(parse_amount(" 1.5 KiB "), Ok(1536));
        assert!(parse_amount("10 parsecs").unwrap_err().contains("unknown unit"));
        let max = "340282366920938463463374607431.768211455";
        assert!(parse_amount(max).unwrap_err().contains("too large"), "no overflow, no wrap");
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("soon").unwrap_err().contains("does not start with a number"));
        assert!(parse_duration("5 fortnights").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e300h").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_bytes(4 << 20), "4 MiB");
        assert_eq!(fmt_bytes(2_000_000), "2 MB");
        assert_eq!(fmt_bytes(1234), "1234 B");
        assert_eq!(fmt_rate(Some(20_000_000)), "20 MB/s");
        assert_eq!(fmt_rate(None), "unlimited");
    }
}
