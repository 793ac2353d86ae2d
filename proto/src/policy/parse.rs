//! Policy file → [`BandwidthPolicy`], refusing anything doubtful with an error that names the
//! file, the line (from toml's spans), the key and the problem.
//!
//! The file is walked by hand over toml's spanned document tree rather than through serde, so
//! every message can name the full key path (`wan.window[1].start`) and the line it is on, and
//! unknown keys (typos like `wan.rat`) are refused instead of silently ignored.

use std::ops::Range;
use std::sync::Arc;

use jiff::tz::{Offset, TimeZone};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::schedule::{BandwidthPolicy, DaySet, SiteTimeZone, Window, DEFAULT_BURST};
use super::PolicyError;
use crate::units::{float_bytes, parse_rate_str, parse_size_str};

const ROOT_KEYS: &str = "timezone, wan";
const WAN_KEYS: &str = "rate, burst, background_share, window";
const WINDOW_KEYS: &str = "days, start, end, rate";

struct Cx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Cx<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        crate::file_errors::line_of(self.text, span.start)
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        problem: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            origin: self.origin.to_string(),
            line: span.map(|s| self.line_of(&s)),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    fn unknown(
        &self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        path: &str,
        known: &str,
    ) -> PolicyError {
        self.err(
            Some(key.span()),
            &join(path, key.get_ref()),
            format!("is not a known key (expected one of: {known})"),
        )
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a value looks like, for "… must be a string, not an integer" messages. Shared with
/// other TOML readers (the simulator's scenarios) so their messages read the same.
pub fn shown(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("\"{s}\""),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(x) => x.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

pub(crate) fn parse_policy(text: &str, origin: &str) -> Result<BandwidthPolicy, PolicyError> {
    let cx = Cx { origin, text };
    let root = DeTable::parse(text).map_err(|e| {
        let p = crate::file_errors::TomlProblem::of(text, &e);
        PolicyError::Syntax {
            origin: origin.to_string(),
            line: p.line,
            column: p.column,
            message: p.message,
        }
    })?;

    let mut tz_value: Option<&Spanned<DeValue<'_>>> = None;
    let mut wan: Option<&Spanned<DeValue<'_>>> = None;
    for (k, v) in root.get_ref().iter() {
        match k.get_ref().as_ref() {
            "timezone" => tz_value = Some(v),
            "wan" => wan = Some(v),
            _ => return Err(cx.unknown(k, "", ROOT_KEYS)),
        }
    }

    let Some(wan) = wan else {
        return Err(cx.err(
            None,
            "wan",
            "is missing: the file needs a [wan] table with at least `rate`",
        ));
    };
    let DeValue::Table(wan_table) = wan.get_ref() else {
        return Err(cx.err(
            Some(wan.span()),
            "wan",
            format!("must be a table ([wan]), not {}", shown(wan.get_ref())),
        ));
    };

    let mut rate: Option<Option<u64>> = None;
    let mut burst = DEFAULT_BURST;
    let mut background_share = 1.0;
    let mut windows = Vec::new();
    for (k, v) in wan_table.iter() {
        match k.get_ref().as_ref() {
            "rate" => rate = Some(rate_value(&cx, "wan.rate", v)?),
            "burst" => burst = size_value(&cx, "wan.burst", v)?,
            "background_share" => background_share = share_value(&cx, "wan.background_share", v)?,
            "window" => windows = windows_value(&cx, v)?,
            _ => return Err(cx.unknown(k, "wan", WAN_KEYS)),
        }
    }
    let Some(default_rate) = rate else {
        return Err(cx.err(
            Some(wan.span()),
            "wan.rate",
            "is missing (the rate when no window matches; write \"unlimited\" for no limit)",
        ));
    };

    let tz =
        match tz_value {
            Some(v) => timezone_value(&cx, v)?,
            None if windows.is_empty() => SiteTimeZone::utc(),
            None => return Err(cx.err(
                None,
                "timezone",
                "is missing: wan.window times are local times, so the site's time zone must be \
                 given (e.g. \"Europe/Berlin\", \"UTC\" or \"+02:00\")",
            )),
        };

    Ok(BandwidthPolicy {
        tz,
        default_rate,
        burst,
        burst_floor: 0,
        background_share,
        windows: Arc::from(windows),
    })
}

fn rate_value(
    cx: &Cx<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
) -> Result<Option<u64>, PolicyError> {
    let bad = |problem: String| cx.err(Some(v.span()), key, problem);
    match v.get_ref() {
        DeValue::String(s) => parse_rate_str(s).map_err(|p| bad(format!("\"{s}\" {p}"))),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n > 0 => Ok(Some(n as u64)),
            Ok(_) => Err(bad(format!(
                "{i} must be a positive number of bytes per second (write \"unlimited\" for no limit)"
            ))),
            Err(_) => Err(bad(format!("{i} is too large"))),
        },
        DeValue::Float(x) => match x.as_str().parse::<f64>().map_err(|e| e.to_string()).and_then(float_bytes) {
            Ok(n) if n > 0 => Ok(Some(n)),
            Ok(_) => Err(bad(format!("{x} must be a positive number of bytes per second"))),
            Err(p) => Err(bad(p)),
        },
        other => Err(bad(format!(
            "must be a rate like \"10MB/s\" or a number of bytes per second, not {}",
            shown(other)
        ))),
    }
}

fn size_value(cx: &Cx<'_>, key: &str, v: &Spanned<DeValue<'_>>) -> Result<u64, PolicyError> {
    let bad = |problem: String| cx.err(Some(v.span()), key, problem);
    match v.get_ref() {
        DeValue::String(s) => parse_size_str(s).map_err(|p| bad(format!("\"{s}\" {p}"))),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n > 0 => Ok(n as u64),
            Ok(_) => Err(bad(format!("{i} must be a positive number of bytes"))),
            Err(_) => Err(bad(format!("{i} is too large"))),
        },
        other => Err(bad(format!(
            "must be a size like \"4MiB\" or a number of bytes, not {}",
            shown(other)
        ))),
    }
}

fn share_value(cx: &Cx<'_>, key: &str, v: &Spanned<DeValue<'_>>) -> Result<f64, PolicyError> {
    let x = match v.get_ref() {
        DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok().map(|n| n as f64),
        _ => None,
    };
    match x {
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(cx.err(
            Some(v.span()),
            key,
            format!(
                "{} must be a number from 0 to 1 (the fraction of the rate prefetch may use)",
                shown(v.get_ref())
            ),
        )),
    }
}

fn timezone_value(cx: &Cx<'_>, v: &Spanned<DeValue<'_>>) -> Result<SiteTimeZone, PolicyError> {
    let DeValue::String(name) = v.get_ref() else {
        return Err(cx.err(
            Some(v.span()),
            "timezone",
            format!(
                "must be a string like \"Europe/Berlin\", \"UTC\" or \"+02:00\", not {}",
                shown(v.get_ref())
            ),
        ));
    };
    let name = name.trim();
    match time_zone(name) {
        Ok(tz) => Ok(SiteTimeZone { tz, name: Arc::from(name) }),
        Err(p) => Err(cx.err(Some(v.span()), "timezone", p)),
    }
}

/// A site's time zone as policy files, scenarios and the reflector's delivery windows name it:
/// `"UTC"` (or `"Z"`), a UTC offset (`"+02:00"`, `"-0530"`, `"+2"`) or an IANA name
/// (`"Europe/Berlin"`). `Err` holds the problem, to follow the quoted value's key.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("utc") || name == "Z" {
        Ok(TimeZone::UTC)
    } else if name.starts_with(['+', '-']) {
        fixed_offset(name).map(TimeZone::fixed).ok_or_else(|| {
            format!(
                "\"{name}\" is not a UTC offset (write \"+HH:MM\" or \"-HH:MM\", at most 25:59)"
            )
        })
    } else {
        TimeZone::get(name).map_err(|_| {
            format!(
                "\"{name}\" is not a known IANA time zone (write e.g. \"Europe/Berlin\", \"UTC\" or \
                 \"+02:00\")"
            )
        })
    }
}

/// `"+02:00"`, `"-0530"`, `"+2"` → an offset.
fn fixed_offset(text: &str) -> Option<Offset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    let all_digits =
        |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(h) || !all_digits(m) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 25 || m > 59 {
        return None;
    }
    Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

fn windows_value(cx: &Cx<'_>, v: &Spanned<DeValue<'_>>) -> Result<Vec<Window>, PolicyError> {
    let DeValue::Array(items) = v.get_ref() else {
        return Err(cx.err(
            Some(v.span()),
            "wan.window",
            format!(
                "must be an array of tables (write each one as [[wan.window]]), not {}",
                shown(v.get_ref())
            ),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("wan.window[{i}]");
        let DeValue::Table(t) = item.get_ref() else {
            return Err(cx.err(
                Some(item.span()),
                &path,
                format!(
                    "must be a table (write each window as [[wan.window]]), not {}",
                    shown(item.get_ref())
                ),
            ));
        };
        let (mut days, mut start, mut end, mut rate) = (None, None, None, None);
        for (k, val) in t.iter() {
            match k.get_ref().as_ref() {
                "days" => days = Some(days_value(cx, &format!("{path}.days"), val)?),
                "start" => {
                    start = Some((time_value(cx, &format!("{path}.start"), val, false)?, val))
                }
                "end" => end = Some((time_value(cx, &format!("{path}.end"), val, true)?, val)),
                "rate" => rate = Some(rate_value(cx, &format!("{path}.rate"), val)?),
                _ => return Err(cx.unknown(k, &path, WINDOW_KEYS)),
            }
        }
        let missing = |key: &str, what: &str| {
            cx.err(Some(item.span()), &format!("{path}.{key}"), format!("is missing ({what})"))
        };
        let days = days.ok_or_else(|| missing("days", "e.g. days = \"mon-fri\""))?;
        let (start, _) = start.ok_or_else(|| missing("start", "e.g. start = \"08:00\""))?;
        let (end, end_v) = end.ok_or_else(|| missing("end", "e.g. end = \"18:00\""))?;
        let rate = rate.ok_or_else(|| missing("rate", "e.g. rate = \"2MB/s\""))?;
        if start == end {
            return Err(cx.err(
                Some(end_v.span()),
                &format!("{path}.end"),
                format!(
                    "\"{}\" equals start: the window would be empty (for a whole day write \
                     start = \"00:00\", end = \"24:00\")",
                    hm(end)
                ),
            ));
        }
        out.push(Window { days, start, end, rate });
    }
    Ok(out)
}

fn hm(secs: u32) -> String {
    format!("{:02}:{:02}", secs / 3600, secs / 60 % 60)
}

fn days_value(cx: &Cx<'_>, key: &str, v: &Spanned<DeValue<'_>>) -> Result<DaySet, PolicyError> {
    let bad_type = || {
        cx.err(
            Some(v.span()),
            key,
            format!(
                "must be a string like \"mon-fri\" or an array like [\"mon\", \"wed\"], not {}",
                shown(v.get_ref())
            ),
        )
    };
    let mut set = 0u8;
    match v.get_ref() {
        DeValue::String(s) => {
            for part in s.split(',') {
                set |= day_token(part)
                    .map_err(|p| cx.err(Some(v.span()), key, format!("\"{s}\" {p}")))?;
            }
        }
        DeValue::Array(items) => {
            if items.is_empty() {
                return Err(cx.err(
                    Some(v.span()),
                    key,
                    "is empty: name at least one day (or \"all\")",
                ));
            }
            for item in items.iter() {
                let DeValue::String(s) = item.get_ref() else {
                    return Err(cx.err(
                        Some(item.span()),
                        key,
                        format!("{} is not a day name", shown(item.get_ref())),
                    ));
                };
                set |= day_token(s)
                    .map_err(|p| cx.err(Some(item.span()), key, format!("\"{s}\" {p}")))?;
            }
        }
        _ => return Err(bad_type()),
    }
    Ok(DaySet(set))
}

const DAY_HELP: &str =
    "use mon, tue, wed, thu, fri, sat, sun, ranges like \"mon-fri\", \"weekdays\", \
                        \"weekend\" or \"all\"";

/// One day token → bit mask.
fn day_token(token: &str) -> Result<u8, String> {
    let t = token.trim().to_ascii_lowercase();
    match t.as_str() {
        "all" | "daily" | "everyday" | "every day" => return Ok(DaySet::ALL.0),
        "weekdays" | "weekday" => return Ok(DaySet::WEEKDAYS.0),
        "weekend" | "weekends" => return Ok(DaySet::WEEKEND.0),
        _ => {}
    }
    if let Some((a, b)) = t.split_once('-') {
        let (a, b) = (day_index(a.trim()), day_index(b.trim()));
        let (Some(a), Some(b)) = (a, b) else {
            return Err(format!("is not a day range ({DAY_HELP})"));
        };
        // Ranges may wrap: "fri-mon" is fri, sat, sun, mon.
        let mut mask = 0u8;
        let mut d = a;
        loop {
            mask |= 1 << d;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
        return Ok(mask);
    }
    day_index(&t).map(|d| 1 << d).ok_or_else(|| format!("is not a day ({DAY_HELP})"))
}

fn day_index(name: &str) -> Option<u8> {
    Some(match name {
        "mon" | "monday" => 0,
        "tue" | "tues" | "tuesday" => 1,
        "wed" | "wednesday" => 2,
        "thu" | "thur" | "thurs" | "thursday" => 3,
        "fri" | "friday" => 4,
        "sat" | "saturday" => 5,
        "sun" | "sunday" => 6,
        _ => return None,
    })
}

/// `"HH:MM"` / `"HH:MM:SS"` (or a TOML local time, `08:00:00`) → seconds after midnight.
/// `"24:00"` is accepted only for `end`.
fn time_value(
    cx: &Cx<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    is_end: bool,
) -> Result<u32, PolicyError> {
    let bad = |problem: String| cx.err(Some(v.span()), key, problem);
    match v.get_ref() {
        DeValue::String(s) => match parse_hms(s.trim()) {
            Some(secs) if secs < 86_400 || (is_end && secs == 86_400) => Ok(secs),
            Some(_) => {
                Err(bad(format!("\"{s}\" is past the end of the day (only end may be \"24:00\")")))
            }
            None => Err(bad(format!("\"{s}\" is not a time (HH:MM)"))),
        },
        DeValue::Datetime(dt) => match (dt.date, dt.time, dt.offset) {
            (None, Some(t), None)
                if t.nanosecond.unwrap_or(0) == 0 && t.hour < 24 && t.minute < 60 =>
            {
                let s = u32::from(t.second.unwrap_or(0));
                if s > 59 {
                    return Err(bad(format!("{dt} is not a time (HH:MM)")));
                }
                Ok(u32::from(t.hour) * 3600 + u32::from(t.minute) * 60 + s)
            }
            _ => Err(bad(format!("{dt} is not a time of day (write \"HH:MM\")"))),
        },
        other => Err(bad(format!("{} is not a time (HH:MM)", shown(other)))),
    }
}

fn parse_hms(s: &str) -> Option<u32> {
    let mut parts = s.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    let field = |f: &str, max: u32| -> Option<u32> {
        if f.is_empty() || f.len() > 2 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        f.parse().ok().filter(|&n| n <= max)
    };
    let (h, m, sec) = (field(h, 24)?, field(m, 59)?, sec.map_or(Some(0), |x| field(x, 59))?);
    let total = h * 3600 + m * 60 + sec;
    (total <= 86_400).then_some(total)
}
