//! Tests for the bandwidth policy: parsing and errors, schedule evaluation in local time, the
//! token bucket's guarantees (property tests on a virtual clock). Reading files and the async
//! shell are tested in `oasis_core::policy`.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

const EXAMPLE: &str = include_str!("../../../config/bandwidth-policy.example.toml");
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const NS: u64 = 1_000_000_000;

/// Unix seconds of an RFC 3339 instant, e.g. `"2025-06-02T08:00:00+02:00"`.
fn ts(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_second()
}

fn parse(text: &str) -> BandwidthPolicy {
    BandwidthPolicy::from_toml_str(text, "policy.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> PolicyError {
    match BandwidthPolicy::from_toml_str(text, "policy.toml") {
        Ok(p) => panic!("expected an error, got {p}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// The example file and local-time windows
// ---------------------------------------------------------------------------------------------

#[test]
fn example_file_parses() {
    let p = parse(EXAMPLE);
    assert_eq!(p.timezone(), "Europe/Berlin");
    assert_eq!(p.default_rate(), Some(10_000_000));
    assert_eq!(p.burst_bytes(), 4 * MIB);
    assert_eq!(p.background_share(), 1.0);
    assert_eq!(p.windows().len(), 2);
    assert_eq!(p.windows()[0].days(), DaySet::WEEKDAYS);
    assert_eq!((p.windows()[0].start_secs(), p.windows()[0].end_secs()), (8 * 3600, 18 * 3600));
    assert_eq!(p.windows()[1].days(), DaySet::ALL);
    assert_eq!(p.windows()[1].rate(), Some(20_000_000));
    assert_eq!(
        p.to_string(),
        "timezone Europe/Berlin; rate 10 MB/s; burst 4 MiB; background_share 1; \
         window[0] mon-fri 08:00-18:00 2 MB/s; window[1] all 22:00-06:00 20 MB/s"
    );
}

#[test]
fn example_windows_apply_at_berlin_local_time() {
    let p = parse(EXAMPLE);
    let (day, biz, night) = (Some(10_000_000), Some(2_000_000), Some(20_000_000));
    // Summer (CEST, UTC+2). 2025-06-02 is a Monday.
    for (at, want) in [
        ("2025-06-02T07:59:59+02:00", day),
        ("2025-06-02T08:00:00+02:00", biz),
        ("2025-06-02T06:00:00Z", biz), // the same instant written in UTC
        ("2025-06-02T17:59:59+02:00", biz),
        ("2025-06-02T18:00:00+02:00", day),
        ("2025-06-02T21:59:59+02:00", day),
        ("2025-06-02T22:00:00+02:00", night),
        ("2025-06-03T00:00:00+02:00", night), // wraps past midnight
        ("2025-06-03T05:59:59+02:00", night),
        ("2025-06-03T06:00:00+02:00", day),
        ("2025-06-07T10:00:00+02:00", day), // Saturday: no business hours
        ("2025-06-07T23:30:00+02:00", night),
        ("2025-06-08T03:00:00+02:00", night), // Sunday morning, Saturday's night window
        ("2025-06-09T08:00:00+02:00", biz),   // next Monday
    ] {
        assert_eq!(p.rate_at(ts(at)), want, "at {at}");
    }
    // Winter (CET, UTC+1): 08:00 local is 07:00 UTC.
    assert_eq!(p.rate_at(ts("2025-01-06T06:59:59Z")), day);
    assert_eq!(p.rate_at(ts("2025-01-06T07:00:00Z")), biz);
    assert_eq!(p.rate_at(ts("2025-01-06T16:59:59Z")), biz);
    assert_eq!(p.rate_at(ts("2025-01-06T17:00:00Z")), day);

    // next_change_after walks the edges in order.
    let mut t = ts("2025-06-02T07:00:00+02:00");
    let mut edges = Vec::new();
    for _ in 0..4 {
        t = p.next_change_after(t).unwrap();
        edges.push(t);
    }
    assert_eq!(
        edges,
        [
            ts("2025-06-02T08:00:00+02:00"),
            ts("2025-06-02T18:00:00+02:00"),
            ts("2025-06-02T22:00:00+02:00"),
            ts("2025-06-03T06:00:00+02:00"),
        ]
    );
    // Friday night runs into Saturday, and Saturday has no business-hours edge.
    assert_eq!(
        p.next_change_after(ts("2025-06-06T23:00:00+02:00")),
        Some(ts("2025-06-07T06:00:00+02:00"))
    );
    assert_eq!(
        p.next_change_after(ts("2025-06-07T06:00:00+02:00")),
        Some(ts("2025-06-07T22:00:00+02:00"))
    );
}

#[test]
fn windows_across_dst_changes() {
    let p = parse(
        r#"
        timezone = "Europe/Berlin"
        [wan]
        rate = "1MB/s"
        [[wan.window]]
        days = "all"
        start = "02:30"
        end = "04:00"
        rate = "5MB/s"
        "#,
    );
    // Spring forward, Sunday 2025-03-30: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 never
    // happens, so the window opens at the change.
    assert_eq!(p.rate_at(ts("2025-03-30T00:59:59Z")), Some(1_000_000));
    assert_eq!(p.rate_at(ts("2025-03-30T01:00:00Z")), Some(5_000_000));
    assert_eq!(p.next_change_after(ts("2025-03-30T00:00:00Z")), Some(ts("2025-03-30T01:00:00Z")));
    assert_eq!(
        p.next_change_after(ts("2025-03-30T01:00:00Z")),
        Some(ts("2025-03-30T04:00:00+02:00"))
    );
    // Fall back, Sunday 2025-10-26: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:30 happens
    // twice, and the window opens both times.
    let mut t = ts("2025-10-26T00:00:00Z");
    let mut edges = Vec::new();
    for _ in 0..4 {
        t = p.next_change_after(t).unwrap();
        edges.push((t, p.rate_at(t)));
    }
    assert_eq!(
        edges,
        [
            (ts("2025-10-26T00:30:00Z"), Some(5_000_000)), // 02:30 CEST
            (ts("2025-10-26T01:00:00Z"), Some(1_000_000)), // back to 02:00 CET
            (ts("2025-10-26T01:30:00Z"), Some(5_000_000)), // 02:30 CET
            (ts("2025-10-26T03:00:00Z"), Some(1_000_000)), // 04:00 CET
        ]
    );
}

#[test]
fn fixed_offset_and_utc_zones() {
    let text = |tz: &str| {
        format!(
            "timezone = \"{tz}\"\n[wan]\nrate = \"unlimited\"\n[[wan.window]]\ndays = \"mon-fri\"\n\
             start = \"09:00\"\nend = \"17:30\"\nrate = 1000000\n"
        )
    };
    let ist = parse(&text("+05:30"));
    assert_eq!(ist.rate_at(ts("2025-06-02T03:29:59Z")), None);
    assert_eq!(ist.rate_at(ts("2025-06-02T03:30:00Z")), Some(1_000_000));
    assert_eq!(ist.next_change_after(ts("2025-06-02T03:30:00Z")), Some(ts("2025-06-02T12:00:00Z")));
    let utc = parse(&text("UTC"));
    assert_eq!(utc.rate_at(ts("2025-06-02T09:00:00Z")), Some(1_000_000));
    assert_eq!(utc.rate_at(ts("2025-06-01T09:00:00Z")), None); // Sunday
    assert_eq!(parse(&text("-0300")).rate_at(ts("2025-06-02T12:00:00Z")), Some(1_000_000));
}

#[test]
fn day_spellings_and_whole_day_windows() {
    let p = parse(
        r#"
        timezone = "UTC"
        [wan]
        rate = 100
        [[wan.window]]
        days = "fri-mon"
        start = 00:00:00
        end = "24:00"
        rate = "1KB/s"
        [[wan.window]]
        days = ["Wednesday", "thu"]
        start = "12:00:30"
        end = "00:00"
        rate = "2KB/s"
        "#,
    );
    assert_eq!(p.windows()[0].days(), DaySet(0b111_0001));
    assert_eq!(p.windows()[1].days(), DaySet(0b000_1100));
    assert_eq!(p.rate_at(ts("2025-06-02T23:59:59Z")), Some(1000)); // Monday
    assert_eq!(p.rate_at(ts("2025-06-03T00:00:00Z")), Some(100)); // Tuesday
    assert_eq!(p.rate_at(ts("2025-06-04T12:00:29Z")), Some(100)); // Wednesday
    assert_eq!(p.rate_at(ts("2025-06-04T12:00:30Z")), Some(2000));
    assert_eq!(p.rate_at(ts("2025-06-04T23:59:59Z")), Some(2000));
    assert_eq!(p.rate_at(ts("2025-06-05T00:00:00Z")), Some(100)); // "00:00" end = midnight
    assert_eq!(p.next_change_after(ts("2025-06-03T12:00:00Z")), Some(ts("2025-06-04T12:00:30Z")));
}

#[test]
fn flat_and_unlimited() {
    let p = BandwidthPolicy::flat(5_000_000);
    assert_eq!(p.rate_at(0), Some(5_000_000));
    assert_eq!(p.next_change_after(0), None);
    assert_eq!(p.burst_bytes(), DEFAULT_BURST);
    assert_eq!(BandwidthPolicy::unlimited().rate_at(i64::MAX), None);
    assert_eq!(BandwidthPolicy::flat(0).rate_at(0), None);
    // Without windows the time zone may be left out.
    assert_eq!(parse("[wan]\nrate = \"1MB/s\"").timezone(), "UTC");
    assert_eq!(rate_metric_value(None), f64::INFINITY);
    assert_eq!(rate_metric_value(Some(7)), 7.0);
}

#[test]
fn burst_is_raised_to_cover_the_largest_chunk() {
    let mut p = parse("[wan]\nrate = \"1MB/s\"\nburst = \"64KiB\"");
    let note = p.ensure_burst_covers(256 * KIB).expect("a note");
    assert!(
        note.contains("64 KiB") && note.contains("256 KiB") && note.contains("raised"),
        "{note}"
    );
    assert_eq!(p.burst_bytes(), 256 * KIB);
    assert_eq!(p.ensure_burst_covers(256 * KIB), None);
    assert_eq!(p.ensure_burst_covers(1000), None);
    assert_eq!(p.burst_bytes(), 256 * KIB);
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn error_names_file_line_key_and_problem() {
    let text = r#"timezone = "Europe/Berlin"
[wan]
rate = "10MB/s"
[[wan.window]]
days = "mon-fri"
start = "08:00"
end = "18:00"
rate = "2MB/s"
[[wan.window]]
days = "all"
start = "25:00"
end = "06:00"
rate = "20MB/s"
"#;
    let e = parse_err(text);
    assert_eq!(
        e.to_string(),
        r#"policy.toml line 11: wan.window[1].start "25:00" is not a time (HH:MM)"#
    );
    assert_eq!(e.key(), Some("wan.window[1].start"));
    assert_eq!(e.line(), Some(11));
}

#[test]
fn bad_files_are_refused_with_clear_errors() {
    let w = |body: &str| {
        format!("timezone = \"UTC\"\n[wan]\nrate = \"1MB/s\"\n[[wan.window]]\n{body}\n")
    };
    let good = "days = \"all\"\nstart = \"01:00\"\nend = \"02:00\"\nrate = \"2MB/s\"";
    parse(&w(good));
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "[wan]\nrat = \"1MB/s\"".into(),
            "policy.toml line 2: wan.rat is not a known key",
            "wan.rat",
        ),
        ("rate = 5\n[wan]\nrate = 1".into(), "line 1: rate is not a known key", "rate"),
        ("[wan]\nburst = \"1MiB\"".into(), "wan.rate is missing", "wan.rate"),
        ("timezone = \"UTC\"".into(), "wan is missing", "wan"),
        ("[wan]\nrate = \"0MB/s\"".into(), "line 2: wan.rate \"0MB/s\" is zero", "wan.rate"),
        ("[wan]\nrate = 0".into(), "wan.rate 0 must be a positive number", "wan.rate"),
        ("[wan]\nrate = -5".into(), "wan.rate -5 must be a positive number", "wan.rate"),
        ("[wan]\nrate = \"10Mb/s\"".into(), "\"Mb\" is ambiguous", "wan.rate"),
        ("[wan]\nrate = \"ten\"".into(), "wan.rate \"ten\" is not a rate", "wan.rate"),
        ("[wan]\nrate = true".into(), "wan.rate must be a rate", "wan.rate"),
        (
            "[wan]\nrate = 1\nburst = \"4MiB/s\"".into(),
            "wan.burst \"4MiB/s\" is a rate",
            "wan.burst",
        ),
        (
            "[wan]\nrate = 1\nbackground_share = 1.5".into(),
            "wan.background_share 1.5 must be",
            "wan.background_share",
        ),
        (
            "[wan]\nrate = 1\nbackground_share = \"all\"".into(),
            "wan.background_share",
            "wan.background_share",
        ),
        (
            "timezone = \"Europe/Berln\"\n[wan]\nrate = 1".into(),
            "timezone \"Europe/Berln\" is not a known IANA",
            "timezone",
        ),
        ("timezone = \"+27:00\"\n[wan]\nrate = 1".into(), "is not a UTC offset", "timezone"),
        ("wan = 5".into(), "wan must be a table", "wan"),
        (
            "[wan]\nrate = 1\nwindow = 3".into(),
            "wan.window must be an array of tables",
            "wan.window",
        ),
        (
            "[wan]\nrate = 1\n[[wan.window]]\ndays=\"all\"\nstart=\"01:00\"\nend=\"02:00\"\nrate=1"
                .into(),
            "timezone is missing",
            "timezone",
        ),
        (
            w("days = \"all\"\nstart = \"01:00\"\nend = \"02:00\"\nrat = 1"),
            "line 8: wan.window[0].rat is not a known key",
            "wan.window[0].rat",
        ),
        (
            w("days = \"all\"\nstart = \"01:00\"\nend = \"02:00\""),
            "wan.window[0].rate is missing",
            "wan.window[0].rate",
        ),
        (
            w("start = \"01:00\"\nend = \"02:00\"\nrate = 1"),
            "wan.window[0].days is missing",
            "wan.window[0].days",
        ),
        (
            w("days = \"mo\"\nstart = \"01:00\"\nend = \"02:00\"\nrate = 1"),
            "line 5: wan.window[0].days \"mo\" is not a day",
            "wan.window[0].days",
        ),
        (
            w("days = [\"mon\", \"funday\"]\nstart = \"01:00\"\nend = \"02:00\"\nrate = 1"),
            "\"funday\" is not a day",
            "wan.window[0].days",
        ),
        (
            w("days = []\nstart = \"01:00\"\nend = \"02:00\"\nrate = 1"),
            "days is empty",
            "wan.window[0].days",
        ),
        (
            w("days = \"mon-xyz\"\nstart = \"01:00\"\nend = \"02:00\"\nrate = 1"),
            "is not a day range",
            "wan.window[0].days",
        ),
        (
            w("days = \"all\"\nstart = \"8am\"\nend = \"02:00\"\nrate = 1"),
            "line 6: wan.window[0].start \"8am\" is not a time (HH:MM)",
            "wan.window[0].start",
        ),
        (
            w("days = \"all\"\nstart = \"24:00\"\nend = \"02:00\"\nrate = 1"),
            "\"24:00\" is past the end of the day",
            "wan.window[0].start",
        ),
        (
            w("days = \"all\"\nstart = \"01:00\"\nend = \"12:60\"\nrate = 1"),
            "wan.window[0].end \"12:60\" is not a time",
            "wan.window[0].end",
        ),
        (
            w("days = \"all\"\nstart = 800\nend = \"02:00\"\nrate = 1"),
            "start 800 is not a time",
            "wan.window[0].start",
        ),
        (
            w("days = \"all\"\nstart = \"02:00\"\nend = \"02:00\"\nrate = 1"),
            "line 7: wan.window[0].end \"02:00\" equals start",
            "wan.window[0].end",
        ),
        (
            w("days = \"all\"\nstart = \"01:00\"\nend = \"02:00\"\nrate = \"fast\""),
            "line 8: wan.window[0].rate \"fast\" is not a rate",
            "wan.window[0].rate",
        ),
    ];
    for (text, want, key) in cases {
        let e = parse_err(&text);
        let msg = e.to_string();
        assert!(msg.starts_with("policy.toml"), "{msg}");
        assert!(msg.contains(want), "message {msg:?} lacks {want:?}\n--- file:\n{text}");
        assert_eq!(e.key(), Some(key), "{msg}");
    }
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let e = parse_err("timezone = \"UTC\"\n[wan]\nrate = \"1MB/s\n");
    let msg = e.to_string();
    assert!(matches!(e, PolicyError::Syntax { line: Some(3), .. }), "{msg}");
    assert!(msg.starts_with("policy.toml line 3, column"), "{msg}");
    let e = parse_err("[wan]\nrate = 1\nrate = 2\n");
    assert_eq!(
        e.to_string(),
        "policy.toml line 3, column 1: not valid TOML: duplicate key (at `rate`)"
    );
}

// ---------------------------------------------------------------------------------------------
// WanBudget: unit behaviour
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn budget_waits_exactly_as_long_as_the_refill_takes() {
    let mut p = BandwidthPolicy::flat(1_000_000);
    p.burst = 1_000_000;
    let mut b = WanBudget::new(&p, Duration::ZERO, 0);
    let fg = TrafficClass::Foreground;
    assert_eq!(b.try_acquire(fg, 1_000_000, Duration::ZERO, 0), Decision::Admit);
    assert_eq!(b.try_acquire(fg, 500_000, Duration::ZERO, 0), Decision::Wait(ms(500)));
    assert_eq!(
        b.try_acquire(fg, 500_000, Duration::from_nanos(499_999_000), 0),
        Decision::Wait(Duration::from_micros(1))
    );
    assert_eq!(b.try_acquire(fg, 500_000, ms(500), 0), Decision::Admit);
    assert_eq!(b.tokens(), 0);
    assert_eq!(b.admitted_bytes(fg), 1_500_000);
    assert_eq!(b.current_rate(), Some(1_000_000));
}

#[test]
fn oversized_request_neither_stalls_nor_bypasses() {
    let mut p = BandwidthPolicy::flat(1_000_000);
    p.burst = 100_000;
    let mut b = WanBudget::new(&p, Duration::ZERO, 0);
    let fg = TrafficClass::Foreground;
    // Larger than the bucket: admitted when the bucket is full, leaving a debt.
    assert_eq!(b.try_acquire(fg, 300_000, Duration::ZERO, 0), Decision::Admit);
    assert_eq!(b.tokens(), -200_000);
    // The debt is repaid at the rate before anything else goes.
    assert_eq!(b.try_acquire(fg, 100_000, Duration::ZERO, 0), Decision::Wait(ms(300)));
    assert_eq!(b.try_acquire(fg, 100_000, ms(300), 0), Decision::Admit);
}

#[test]
fn background_yields_to_waiting_foreground_and_keeps_a_reserve() {
    let mut p = BandwidthPolicy::flat(1_000_000);
    p.burst = 1_000_000;
    let mut b = WanBudget::new(&p, Duration::ZERO, 0);
    let (fg, bg) = (TrafficClass::Foreground, TrafficClass::Background);
    // Background may take only down to the reserve (half the bucket).
    assert_eq!(b.try_acquire(bg, 400_000, Duration::ZERO, 0), Decision::Admit);
    assert_eq!(b.try_acquire(bg, 200_000, Duration::ZERO, 0), Decision::Wait(ms(100)));
    // Foreground may use the reserve at once.
    assert_eq!(b.try_acquire(fg, 600_000, Duration::ZERO, 0), Decision::Admit);
    assert_eq!(b.try_acquire(fg, 100_000, Duration::ZERO, 0), Decision::Wait(ms(100)));
    b.foreground_waiting(1);
    // With foreground waiting, background does not go even when tokens would allow it.
    assert!(matches!(b.try_acquire(bg, 1, ms(10_000), 10), Decision::Wait(_)));
    assert_eq!(b.try_acquire(fg, 100_000, ms(10_000), 10), Decision::Admit);
    b.foreground_waiting(-1);
    assert_eq!(b.try_acquire(bg, 1, ms(10_000), 10), Decision::Admit);
    b.foreground_waiting(-5); // never below zero
    assert_eq!(b.foreground_waiters(), 0);
}

#[test]
fn background_share_limits_prefetch_only() {
    let mut p = parse("[wan]\nrate = \"1MB/s\"\nburst = 100000\nbackground_share = 0.25");
    p.ensure_burst_covers(100_000);
    let mut b = WanBudget::new(&p, Duration::ZERO, 0);
    let bg = TrafficClass::Background;
    let mut t = 0.0;
    let mut sent = 0;
    while t < 20.0 {
        match b.try_acquire(bg, 10_000, secs(t), t as i64) {
            Decision::Admit => sent += 10_000,
            Decision::Wait(d) => t += d.as_secs_f64(),
        }
    }
    // 250 KB/s for 20 s plus at most the bucket.
    assert!((5_000_000..=5_100_000).contains(&sent), "{sent}");
    let off = parse("[wan]\nrate = \"1MB/s\"\nbackground_share = 0");
    let mut b = WanBudget::new(&off, Duration::ZERO, 0);
    assert!(matches!(b.try_acquire(bg, 1, Duration::ZERO, 0), Decision::Wait(_)));
    assert_eq!(b.try_acquire(TrafficClass::Foreground, 1, Duration::ZERO, 0), Decision::Admit);
}

#[test]
fn share_scales_rate_and_burst_but_not_below_the_largest_chunk() {
    let mut p = BandwidthPolicy::flat(8_000_000);
    p.burst = 4 * MIB;
    p.ensure_burst_covers(2 * MIB);
    let mut b = WanBudget::new(&p, Duration::ZERO, 0);
    b.set_share(0.25, Duration::ZERO, 0);
    assert_eq!(b.current_rate(), Some(2_000_000));
    assert_eq!(b.rate_at(0), Some(2_000_000));
    assert_eq!(b.burst_bytes(), 2 * MIB); // 1 MiB scaled, floored at the 2 MiB chunk
    b.set_share(f64::NAN, Duration::ZERO, 0);
    assert_eq!(b.current_rate(), Some(8_000_000));
    b.set_share(-3.0, Duration::ZERO, 0);
    assert_eq!(b.current_rate(), Some(1));
}

#[test]
fn reload_carries_tokens_over() {
    let p = BandwidthPolicy::flat(1_000_000);
    let mut b = WanBudget::new(&p, Duration::ZERO, 0);
    let fg = TrafficClass::Foreground;
    assert_eq!(b.try_acquire(fg, p.burst_bytes(), Duration::ZERO, 0), Decision::Admit);
    // Reloading does not hand out a fresh burst...
    b.set_policy(&BandwidthPolicy::flat(2_000_000), ms(1000), 1);
    assert_eq!(b.tokens(), 1_000_000);
    assert_eq!(b.try_acquire(fg, 2_000_000, ms(1000), 1), Decision::Wait(ms(500)));
    // ...and a smaller bucket clamps what is there.
    let mut small = BandwidthPolicy::flat(2_000_000);
    small.burst = 500_000;
    b.set_policy(&small, ms(1000), 1);
    assert_eq!(b.tokens(), 500_000);
    // Limited → unlimited → limited starts full (nothing was metered meanwhile).
    b.set_policy(&BandwidthPolicy::unlimited(), ms(1000), 1);
    assert_eq!(b.try_acquire(fg, u64::MAX / 2, ms(1000), 1), Decision::Admit);
    b.set_policy(&small, ms(1000), 1);
    assert_eq!(b.tokens(), 500_000);
}

#[test]
fn budget_switches_rate_at_window_edges_and_never_waits_past_one() {
    let p = parse(
        r#"
        timezone = "Europe/Berlin"
        [wan]
        rate = "1KB/s"
        burst = "64KiB"
        [[wan.window]]
        days = "all"
        start = "08:00"
        end = "09:00"
        rate = "unlimited"
        "#,
    );
    let start = ts("2025-06-02T07:59:00+02:00");
    let mut b = WanBudget::new(&p, Duration::ZERO, start);
    let fg = TrafficClass::Foreground;
    assert_eq!(b.current_rate(), Some(1000));
    assert_eq!(b.try_acquire(fg, 64 * KIB, Duration::ZERO, start), Decision::Admit);
    // 6 s of refill still missing at 1 KB/s, but the window opens within the second: come back
    // then at the latest.
    match b.try_acquire(fg, 64 * KIB, ms(59_500), start + 59) {
        Decision::Wait(d) => assert!(d <= ms(1000), "{d:?}"),
        Decision::Admit => panic!("admitted early"),
    }
    assert_eq!(b.try_acquire(fg, 64 * KIB, ms(60_000), start + 60), Decision::Admit);
    assert_eq!(b.current_rate(), None);
    // At 09:00 the limit is back, with a full bucket.
    assert_eq!(b.try_acquire(fg, 64 * KIB, ms(3_660_000), start + 3660), Decision::Admit);
    assert_eq!(b.current_rate(), Some(1000));
    assert!(matches!(b.try_acquire(fg, 64 * KIB, ms(3_660_000), start + 3660), Decision::Wait(_)));
}

// ---------------------------------------------------------------------------------------------
// WanBudget: property tests on a virtual clock
// ---------------------------------------------------------------------------------------------

/// An open-loop request: arrives at `arrive` (ns) whatever else happens.
#[derive(Clone, Debug)]
struct Req {
    class: TrafficClass,
    bytes: u64,
    arrive: u64,
}

/// A closed-loop client: issues a request, and the next one `think` ns after it is admitted.
#[derive(Clone, Debug)]
struct Client {
    class: TrafficClass,
    sizes: Vec<u64>,
    think: u64,
}

#[derive(Clone, Copy, Debug)]
struct Admission {
    at: u64,
    class: TrafficClass,
    bytes: u64,
    arrive: u64,
}

struct Pending {
    class: TrafficClass,
    bytes: u64,
    arrive: u64,
    next_poll: u64,
    registered: bool,
    client: Option<usize>,
}

/// Drives a budget the way `WanLimiter::acquire` does, on a virtual clock: each waiting
/// request re-polls after `min(wait, 100 ms)`, foreground waiters register, and an admitted
/// foreground waiter wakes everyone (the shell's notify). Pending requests are polled in
/// arrival order, so background that came first is asked first. Unix time = `unix0 + t`.
fn simulate(
    b: &mut WanBudget,
    unix0: i64,
    reqs: &[Req],
    clients: &[Client],
    until: u64,
) -> Vec<Admission> {
    let mut out = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut next_issue: Vec<Option<u64>> = clients.iter().map(|_| Some(0)).collect();
    let mut issued = vec![0usize; clients.len()];
    let mut open = reqs.to_vec();
    open.sort_by_key(|r| r.arrive);
    let mut open = open.into_iter().peekable();
    loop {
        let t = [
            open.peek().map(|r| r.arrive),
            pending.iter().map(|p| p.next_poll).min(),
            next_issue.iter().flatten().copied().min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(t) = t else { break };
        if t > until {
            break;
        }
        while open.peek().is_some_and(|r| r.arrive <= t) {
            let r = open.next().unwrap();
            pending.push(Pending {
                class: r.class,
                bytes: r.bytes,
                arrive: t,
                next_poll: t,
                registered: false,
                client: None,
            });
        }
        for (i, c) in clients.iter().enumerate() {
            if next_issue[i].is_some_and(|n| n <= t) {
                let bytes = c.sizes[issued[i] % c.sizes.len()];
                issued[i] += 1;
                next_issue[i] = None;
                pending.push(Pending {
                    class: c.class,
                    bytes,
                    arrive: t,
                    next_poll: t,
                    registered: false,
                    client: Some(i),
                });
            }
        }
        let now = Duration::from_nanos(t);
        let unix = unix0 + (t / NS) as i64;
        let mut i = 0;
        while i < pending.len() {
            if pending[i].next_poll > t {
                i += 1;
                continue;
            }
            let p = &mut pending[i];
            match b.try_acquire(p.class, p.bytes, now, unix) {
                Decision::Admit => {
                    let p = pending.remove(i);
                    out.push(Admission { at: t, class: p.class, bytes: p.bytes, arrive: p.arrive });
                    if let Some(c) = p.client {
                        next_issue[c] = Some(t + clients[c].think);
                    }
                    if p.registered {
                        b.foreground_waiting(-1);
                        for q in pending.iter_mut() {
                            q.next_poll = q.next_poll.min(t);
                        }
                        i = 0;
                    }
                }
                Decision::Wait(d) => {
                    assert!(d > Duration::ZERO, "Wait(0) would spin");
                    if p.class == TrafficClass::Foreground && !p.registered {
                        b.foreground_waiting(1);
                        p.registered = true;
                    }
                    p.next_poll = t + (d.min(Duration::from_millis(100)).as_nanos() as u64);
                    i += 1;
                }
            }
        }
    }
    out
}

/// Largest number of bytes admitted in any half-open window `[a, a + len)`; windows start at
/// admissions, where the maximum is always attained. Returns (start, bytes).
fn max_window(adm: &[Admission], len: u64) -> (u64, u64) {
    let mut best = (0, 0);
    let (mut j, mut sum) = (0, 0u64);
    for i in 0..adm.len() {
        while j < adm.len() && adm[j].at < adm[i].at + len {
            sum += adm[j].bytes;
            j += 1;
        }
        if sum > best.1 {
            best = (adm[i].at, sum);
        }
        sum -= adm[i].bytes;
    }
    best
}

fn class_strategy() -> impl Strategy<Value = TrafficClass> {
    prop_oneof![Just(TrafficClass::Foreground), Just(TrafficClass::Background)]
}

fn req_strategy(span_ns: u64) -> impl Strategy<Value = Req> {
    (class_strategy(), 1..=256 * KIB, 0..span_ns).prop_map(|(class, bytes, arrive)| Req {
        class,
        bytes,
        arrive,
    })
}

fn client_strategy() -> impl Strategy<Value = Client> {
    // Sizes from 16 KiB keep the number of simulated events bounded at 100 MB/s.
    (class_strategy(), prop::collection::vec(16 * KIB..=256 * KIB, 1..16), 0..5_000_000u64)
        .prop_map(|(class, sizes, think)| Client { class, sizes, think })
}

/// Clients that always have a request ready, so the link is the bottleneck.
fn busy_client_strategy() -> impl Strategy<Value = Client> {
    (class_strategy(), prop::collection::vec(64 * KIB..=256 * KIB, 1..16), 0..1_000_000u64)
        .prop_map(|(class, sizes, think)| Client { class, sizes, think })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The token-bucket guarantee: whatever arrives whenever, any interval of length T carries
    /// at most burst + rate·T (here T = 10 s), exactly.
    #[test]
    fn any_window_carries_at_most_burst_plus_rate(
        rate in 1_000u64..=100_000_000,
        burst in 1..=8 * MIB,
        reqs in prop::collection::vec(req_strategy(60 * NS), 1..300),
        clients in prop::collection::vec(client_strategy(), 0..3),
    ) {
        let mut p = BandwidthPolicy::flat(rate);
        p.burst = burst;
        p.ensure_burst_covers(256 * KIB);
        let cap = p.burst_bytes();
        let mut b = WanBudget::new(&p, Duration::ZERO, 1_700_000_000);
        let adm = simulate(&mut b, 1_700_000_000, &reqs, &clients, 90 * NS);
        let (at, most) = max_window(&adm, 10 * NS);
        prop_assert!(most <= cap + rate * 10, "{most} bytes in [{at}, +10 s) > {cap} + 10·{rate}");
        let total: u64 = adm.iter().map(|a| a.bytes).sum();
        let last = adm.last().map_or(0, |a| a.at);
        prop_assert!(u128::from(total) * u128::from(NS) <= u128::from(cap) * u128::from(NS) + u128::from(rate) * u128::from(last));
    }

    /// The criterion: measured over any 10 s window the WAN rate stays within 5% of the
    /// configured rate (burst ≤ half a second of rate), while saturated links are kept busy.
    #[test]
    fn ten_second_windows_within_five_percent(
        rate in 1_000_000u64..=50_000_000,
        burst_ms in 0u64..=500,
        clients in prop::collection::vec(busy_client_strategy(), 1..6),
        reqs in prop::collection::vec(req_strategy(30 * NS), 0..100),
    ) {
        let mut p = BandwidthPolicy::flat(rate);
        p.burst = (rate * burst_ms / 1000).max(1);
        p.ensure_burst_covers(256 * KIB);
        let mut b = WanBudget::new(&p, Duration::ZERO, 1_700_000_000);
        let adm = simulate(&mut b, 1_700_000_000, &reqs, &clients, 30 * NS);
        let (at, most) = max_window(&adm, 10 * NS);
        prop_assert!(most as f64 <= rate as f64 * 10.0 * 1.05, "{most} bytes in [{at}, +10 s) at {rate} B/s");
        // And nothing stalls: the closed-loop clients keep the link close to full.
        let total: u64 = adm.iter().map(|a| a.bytes).sum();
        prop_assert!(total as f64 >= rate as f64 * 30.0 * 0.9, "only {total} bytes in 30 s at {rate} B/s");
    }

    /// Rate changes at window edges hold the limit too: any 10 s window carries at most
    /// burst + ∫ rate(t) dt, with the rate taken from the schedule second by second.
    #[test]
    fn schedule_edges_hold_the_limit(
        rates in prop::collection::vec(1_000_000u64..=20_000_000, 7),
        start_offset in 0i64..60,
        clients in prop::collection::vec(busy_client_strategy(), 1..5),
    ) {
        // Minute-long windows from 00:01 to 00:07 UTC, default rate in between.
        let mut text = format!("timezone = \"UTC\"\n[wan]\nrate = {}\nburst = \"256KiB\"\n", rates[0]);
        for (m, r) in rates[1..].iter().enumerate() {
            text += &format!("[[wan.window]]\ndays = \"all\"\nstart = \"00:{:02}\"\nend = \"00:{:02}\"\nrate = {r}\n", m + 1, m + 2);
        }
        let p = parse(&text);
        let cap = p.burst_bytes();
        let unix0 = ts("2025-01-01T00:00:00Z") + start_offset;
        let mut b = WanBudget::new(&p, Duration::ZERO, unix0);
        let until = 420 * NS;
        let adm = simulate(&mut b, unix0, &[], &clients, until);
        // allowed(a, a+len) in byte·ns/s units: Σ rate(second) × overlap.
        let integral = |a: u64, e: u64| -> u128 {
            let mut acc = 0u128;
            let mut t = a;
            while t < e {
                let sec_end = (t / NS + 1) * NS;
                let seg = sec_end.min(e) - t;
                let r = p.rate_at(unix0 + (t / NS) as i64).unwrap();
                acc += u128::from(r) * u128::from(seg);
                t += seg;
            }
            acc
        };
        let (mut j, mut sum) = (0, 0u64);
        for i in 0..adm.len() {
            let a = adm[i].at;
            while j < adm.len() && adm[j].at < a + 10 * NS {
                sum += adm[j].bytes;
                j += 1;
            }
            let allowed = u128::from(cap) * u128::from(NS) + integral(a, a + 10 * NS);
            prop_assert!(u128::from(sum) * u128::from(NS) <= allowed, "{sum} bytes in [{a}, +10 s)");
            sum -= adm[i].bytes;
        }
        let total: u64 = adm.iter().map(|a| a.bytes).sum();
        let ideal = integral(0, until) / u128::from(NS);
        prop_assert!(total as f64 >= ideal as f64 * 0.9, "only {total} of {ideal} bytes");
    }

    /// When foreground and background both wait, foreground goes first — even though the
    /// background request arrived earlier and is polled first.
    #[test]
    fn foreground_is_admitted_before_waiting_background(
        rate in 100_000u64..=10_000_000,
        burst in 1..=4 * MIB,
        bg_first in prop::collection::vec(1..=256 * KIB, 1..5),
        fg_later in prop::collection::vec((1..=256 * KIB, 1u64..1_000_000), 1..5),
    ) {
        // Small buckets make the background threshold (bytes + half the bucket) lower than the
        // foreground request, so only the waiter registration keeps background back.
        let mut p = BandwidthPolicy::flat(rate);
        p.burst = burst;
        p.ensure_burst_covers(256 * KIB);
        let cap = p.burst_bytes();
        let mut b = WanBudget::new(&p, Duration::ZERO, 0);
        // Drain the bucket so everything that follows has to wait.
        prop_assert_eq!(b.try_acquire(TrafficClass::Foreground, cap, Duration::ZERO, 0), Decision::Admit);
        let mut reqs: Vec<Req> = bg_first.iter().map(|&bytes| Req { class: TrafficClass::Background, bytes, arrive: 0 }).collect();
        reqs.extend(fg_later.iter().map(|&(bytes, arrive)| Req { class: TrafficClass::Foreground, bytes, arrive }));
        let adm = simulate(&mut b, 0, &reqs, &[], 3600 * NS);
        prop_assert_eq!(adm.len(), reqs.len(), "every request is eventually admitted");
        let last_fg = adm.iter().filter(|a| a.class == TrafficClass::Foreground).map(|a| a.at).max().unwrap();
        let first_bg = adm.iter().filter(|a| a.class == TrafficClass::Background).map(|a| a.at).min().unwrap();
        prop_assert!(last_fg <= first_bg, "background admitted at {first_bg} before foreground at {last_fg}");
    }

    /// Foreground never queues behind prefetch: with background saturating the link, a
    /// foreground chunk (up to half the bucket) arriving after a quiet spell goes at once.
    #[test]
    fn foreground_does_not_wait_behind_saturating_prefetch(
        rate in 1_000_000u64..=50_000_000,
        bg_clients in prop::collection::vec(busy_client_strategy(), 1..6),
        fg in prop::collection::vec((1..=256 * KIB, 0u64..NS), 1..8),
    ) {
        let mut p = BandwidthPolicy::flat(rate);
        p.burst = 512 * KIB;
        p.ensure_burst_covers(256 * KIB);
        let cap = p.burst_bytes();
        let bg: Vec<Client> = bg_clients.into_iter().map(|c| Client { class: TrafficClass::Background, ..c }).collect();
        // One foreground request every few seconds (longer than a bucket refill).
        let gap = 2 * NS + cap * NS / rate;
        let reqs: Vec<Req> = fg.iter().enumerate()
            .map(|(i, &(bytes, jitter))| Req { class: TrafficClass::Foreground, bytes, arrive: NS + i as u64 * gap + jitter })
            .collect();
        let mut b = WanBudget::new(&p, Duration::ZERO, 0);
        let adm = simulate(&mut b, 0, &reqs, &bg, reqs.last().unwrap().arrive + NS);
        for a in adm.iter().filter(|a| a.class == TrafficClass::Foreground) {
            prop_assert_eq!(a.at, a.arrive, "foreground of {} bytes waited", a.bytes);
        }
        prop_assert_eq!(adm.iter().filter(|a| a.class == TrafficClass::Foreground).count(), reqs.len());
        let bg_bytes: u64 = adm.iter().filter(|a| a.class == TrafficClass::Background).map(|a| a.bytes).sum();
        let span = adm.last().unwrap().at as f64 / NS as f64;
        prop_assert!(bg_bytes as f64 >= rate as f64 * span * 0.5, "prefetch starved: {bg_bytes} in {span} s");
    }
}

// ---------------------------------------------------------------------------------------------
// Schedule property tests: random policies in zones with DST
// ---------------------------------------------------------------------------------------------

const ZONES: [&str; 6] =
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "+05:30", "-03:00"];

fn policy_strategy() -> impl Strategy<Value = String> {
    let window = (1u8..128, 0u32..1440, 1u32..1440, prop::option::of(1u64..100))
        .prop_map(|(days, start, len, rate)| {
            let names: Vec<String> =
                (0..7).filter(|d| days & (1 << d) != 0).map(|d| format!("\"{}\"", ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][d])).collect();
            let end = (start + len) % 1440;
            let rate = rate.map_or("\"unlimited\"".to_string(), |r| (r * 1000).to_string());
            format!(
                "[[wan.window]]\ndays = [{}]\nstart = \"{:02}:{:02}\"\nend = \"{:02}:{:02}\"\nrate = {rate}\n",
                names.join(", "), start / 60, start % 60, end / 60, end % 60
            )
        });
    (0..ZONES.len(), prop::collection::vec(window, 0..4)).prop_map(|(z, windows)| {
        format!("timezone = \"{}\"\n[wan]\nrate = \"5MB/s\"\n{}", ZONES[z], windows.concat())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// rate_at agrees with a direct reading of the local calendar (jiff's Zoned).
    #[test]
    fn rate_at_matches_local_calendar(text in policy_strategy(), t in 1_500_000_000i64..2_000_000_000) {
        let p = parse(&text);
        let z = jiff::Timestamp::from_second(t).unwrap().to_zoned(p.tz.tz.clone());
        let sod = z.hour() as u32 * 3600 + z.minute() as u32 * 60 + z.second() as u32;
        let today = z.weekday().to_monday_zero_offset() as u8;
        let yesterday = z.date().yesterday().unwrap().weekday().to_monday_zero_offset() as u8;
        let want = p.windows().iter().find(|w| {
            let (s, e) = (w.start_secs(), w.end_secs());
            if s < e {
                w.days().contains(today) && (s..e).contains(&sod)
            } else {
                (w.days().contains(today) && sod >= s) || (w.days().contains(yesterday) && sod < e)
            }
        }).map_or(p.default_rate(), |w| w.rate());
        prop_assert_eq!(p.rate_at(t), want, "at {}", z);
    }

    /// next_change_after returns the first instant at which the rate differs: constant before
    /// it, different at it; and None only if the rate is constant for the next 8 days.
    #[test]
    fn next_change_is_the_first_change(text in policy_strategy(), t in 1_500_000_000i64..2_000_000_000, probes in prop::collection::vec(0.0f64..1.0, 32)) {
        let p = parse(&text);
        let r = p.rate_at(t);
        match p.next_change_after(t) {
            Some(n) => {
                prop_assert!(n > t);
                prop_assert!(n - t <= 8 * 86_400, "next change {} s away", n - t);
                prop_assert_ne!(p.rate_at(n), r);
                prop_assert_eq!(p.rate_at(n - 1), r);
                for f in &probes {
                    let x = t + ((n - t) as f64 * f) as i64;
                    prop_assert_eq!(p.rate_at(x.min(n - 1)), r, "changed at {} before {}", x, n);
                }
            }
            None => {
                for f in &probes {
                    let x = t + (8.0 * 86_400.0 * f) as i64;
                    prop_assert_eq!(p.rate_at(x), r);
                }
            }
        }
    }
}
