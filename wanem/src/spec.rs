//! What a link does, per direction, and its string form.
//!
//! A [`WanSpec`] holds one [`LinkSpec`] per direction: `up` carries what the client sends
//! towards the upstream server (an endpoint's requests, a reflector's WAN pulls), `down`
//! carries the server's answers (the bulk of the bytes). The string form is the one the demo
//! and the benchmarks take on their command lines:
//!
//! ```text
//! 80ms,0.5%,100Mbit                      RTT (split half each way), random loss, rate
//! 80ms,0.5%,100Mbit,jitter=5ms,queue=256KiB,reorder=1%,ge=p:0.01/r:0.3/bad:50%,seed=7
//! 40ms,0%,100Mbit,up.rate=10Mbit         asymmetric: any key may be prefixed `up.` or `down.`
//! ```
//!
//! The first three items are positional (RTT, loss, rate; trailing ones may be left out);
//! `key=value` items follow and are applied in order, later ones overriding earlier ones.
//! Keys: `rtt`, `delay` (one-way), `loss`, `rate` (`unlimited` to lift it), `jitter`,
//! `queue` (bytes, or `auto`), `reorder`, `reorder_delay`, `ge` (`p:../r:../bad:../good:..`
//! or `off`), `overhead` (bytes per packet counted against the rate), `seed`. The loss in each
//! direction is the positional loss: a `0.5%` link loses 0.5% of the packets each way,
//! independently. Losses need a `%`: a bare `0.5` is refused rather than read as 50%.
//!
//! Numbers keep their exact value (probabilities in parts per billion, durations in
//! nanoseconds, rates in bit/s, sizes in bytes), so `Display` round-trips: parsing what a spec
//! prints gives the same spec back.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A probability, stored exactly as parts per billion so that the string form round-trips
/// and loss decisions compare integers (no float rounding differs between machines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probability(u32);

impl Probability {
    /// Parts per billion of certainty.
    pub const SCALE: u32 = 1_000_000_000;
    /// Never.
    pub const ZERO: Probability = Probability(0);
    /// Always.
    pub const ONE: Probability = Probability(Self::SCALE);

    /// From parts per billion (clamped to 1).
    pub const fn from_ppb(ppb: u32) -> Self {
        Probability(if ppb > Self::SCALE { Self::SCALE } else { ppb })
    }

    /// From a percentage, rounded to the nearest part per billion and clamped to [0, 100].
    pub fn percent(pct: f64) -> Self {
        let ppb = (pct * 1e7).round();
        Probability(if ppb.is_nan() || ppb <= 0.0 { 0 } else { ppb.min(Self::SCALE as f64) as u32 })
    }

    /// From a fraction in [0, 1], rounded to the nearest part per billion.
    pub fn fraction(p: f64) -> Self {
        Self::percent(p * 100.0)
    }

    /// Parts per billion.
    pub const fn ppb(self) -> u32 {
        self.0
    }

    /// As a fraction in [0, 1].
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }

    /// True if this is 0.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The fraction form, `0.01` for 1%.
    pub fn display_fraction(self) -> String {
        fmt_scaled(self.0 as u128, 9)
    }

    /// Parses `0.5%` (percent, up to 7 decimals) or `0.005` (fraction, up to 9 decimals).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, scale) = match s.strip_suffix('%') {
            Some(n) => (n.trim(), 10_000_000u128),
            None => (s, 1_000_000_000u128),
        };
        let v = parse_exact(num, scale).map_err(|e| {
            format!("`{s}` is not a probability ({e}); write a percentage like `0.5%` or a fraction like `0.005`")
        })?;
        if v > Self::SCALE as u128 {
            return Err(format!("`{s}` is more than 100%"));
        }
        Ok(Probability(v as u32))
    }
}

/// Percent form, `0.5%`.
impl Probability {
    /// Parses a percentage only (`0.5%`): a bare `0.5` is refused rather than read as 50%,
    /// because on a command line it almost always means 0.5%.
    pub fn parse_percent(s: &str) -> Result<Self, String> {
        if !s.trim().ends_with('%') {
            return Err(format!("`{}` needs a `%` (write `{}%` for percent)", s.trim(), s.trim()));
        }
        Self::parse(s)
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", fmt_scaled(self.0 as u128, 7))
    }
}

impl FromStr for Probability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Probability::parse(s)
    }
}

/// Gilbert–Elliott bursty loss: a two-state Markov chain stepped once per packet.
///
/// Real WAN loss comes in bursts (a congested router, a fading radio link), which hurts a
/// transport differently from the same average rate of independent losses: a burst costs one
/// congestion event but many retransmissions, and leaves holes in a receive buffer. The mean
/// burst length in the bad state is `1 / r` packets (with `loss_bad` = 100%), the fraction of
/// time in the bad state is `p / (p + r)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per packet.
    pub p: Probability,
    /// Probability of moving from the bad back to the good state, per packet.
    pub r: Probability,
    /// Loss probability while in the bad state (usually high).
    pub loss_bad: Probability,
    /// Loss probability while in the good state (usually 0).
    pub loss_good: Probability,
}

impl GilbertElliott {
    /// The classic Gilbert model: the bad state loses everything, the good state nothing.
    pub fn new(p: Probability, r: Probability) -> Self {
        GilbertElliott { p, r, loss_bad: Probability::ONE, loss_good: Probability::ZERO }
    }

    /// Long-run loss rate, `P(bad)·loss_bad + P(good)·loss_good`.
    pub fn mean_loss(&self) -> f64 {
        let (p, r) = (self.p.as_f64(), self.r.as_f64());
        if p + r == 0.0 {
            return self.loss_good.as_f64();
        }
        let bad = p / (p + r);
        bad * self.loss_bad.as_f64() + (1.0 - bad) * self.loss_good.as_f64()
    }

    /// Parses `p:0.01/r:0.3/bad:50%/good:0%` (`bad` defaults to 100%, `good` to 0%).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ge = GilbertElliott::new(Probability::ZERO, Probability::ZERO);
        let (mut have_p, mut have_r) = (false, false);
        for part in s.split('/') {
            let (k, v) = part.split_once(':').ok_or_else(|| {
                format!("`{part}` is not `name:value` (expected `p:0.01/r:0.3/bad:100%/good:0%`)")
            })?;
            let v = Probability::parse(v)?;
            match k.trim() {
                "p" => (ge.p, have_p) = (v, true),
                "r" => (ge.r, have_r) = (v, true),
                "bad" => ge.loss_bad = v,
                "good" => ge.loss_good = v,
                other => {
                    return Err(format!(
                        "unknown Gilbert-Elliott parameter `{other}` (expected p, r, bad, good)"
                    ))
                }
            }
        }
        if !have_p || !have_r {
            return Err("Gilbert-Elliott needs both `p:` (good->bad) and `r:` (bad->good)".into());
        }
        Ok(ge)
    }
}

impl fmt::Display for GilbertElliott {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p:{}/r:{}", self.p.display_fraction(), self.r.display_fraction())?;
        if self.loss_bad != Probability::ONE {
            write!(f, "/bad:{}", self.loss_bad)?;
        }
        if !self.loss_good.is_zero() {
            write!(f, "/good:{}", self.loss_good)?;
        }
        Ok(())
    }
}

/// Default per-packet overhead counted against the bottleneck rate: an IPv4 header (20 bytes)
/// and a UDP header (8 bytes). A router's rate limit sees IP packets, not UDP payloads, so a
/// "100 Mbit/s" link carries a little less than 100 Mbit/s of payload, as a real one would.
pub const DEFAULT_OVERHEAD: u32 = 28;

/// Default extra hold-back delay of a reordered packet.
pub const DEFAULT_REORDER_DELAY: Duration = Duration::from_millis(5);

/// How the link behaves in one direction. Stages, in the order a packet meets them: loss
/// (Bernoulli, then Gilbert–Elliott), the bottleneck queue and rate, propagation delay and
/// jitter, reordering. See the crate documentation for the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// The delay wanders within `delay ± jitter` (never below 0) along a random
    /// piecewise-linear path, so consecutive packets see similar delays and the mean stays
    /// `delay`. Jitter alone never reorders: a packet is never delivered before the one that
    /// entered the link before it.
    pub jitter: Duration,
    /// Independent (Bernoulli) loss probability per packet.
    pub loss: Probability,
    /// Bursty loss, applied in addition to `loss`.
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Probability that a packet is held back by `reorder_delay`, letting later packets pass.
    pub reorder: Probability,
    /// Extra delay of a reordered packet.
    pub reorder_delay: Duration,
    /// Bottleneck rate in bit/s (`None`: unlimited). Packets are serialized one after the
    /// other at this rate, so a burst queues up and its last packet waits for the others.
    pub rate: Option<u64>,
    /// Bottleneck queue limit in bytes (wire bytes, see `overhead`); a packet that does not
    /// fit is dropped (tail drop). `None` (`queue=auto`): 50 ms worth of `rate`, at least
    /// 64 KiB. Ignored without a rate.
    pub queue: Option<u64>,
    /// Bytes added to each UDP payload when counting against `rate` and `queue`.
    pub overhead: u32,
    /// Seed of this direction's random decisions; the same seed gives the same loss, jitter
    /// and reorder decisions for the n-th packet, run after run.
    pub seed: u64,
}

impl Default for LinkSpec {
    /// A perfect link: no delay, no loss, unlimited rate.
    fn default() -> Self {
        LinkSpec {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Probability::ZERO,
            gilbert_elliott: None,
            reorder: Probability::ZERO,
            reorder_delay: DEFAULT_REORDER_DELAY,
            rate: None,
            queue: None,
            overhead: DEFAULT_OVERHEAD,
            seed: 0,
        }
    }
}

impl LinkSpec {
    /// A perfect link (same as `default()`).
    pub fn perfect() -> Self {
        Self::default()
    }
    /// Sets the one-way delay.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Sets the jitter.
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    /// Sets the random loss.
    pub fn loss(mut self, p: Probability) -> Self {
        self.loss = p;
        self
    }
    /// Sets the bursty loss.
    pub fn gilbert_elliott(mut self, ge: GilbertElliott) -> Self {
        self.gilbert_elliott = Some(ge);
        self
    }
    /// Sets the reordering probability and hold-back delay.
    pub fn reorder(mut self, p: Probability, hold: Duration) -> Self {
        self.reorder = p;
        self.reorder_delay = hold;
        self
    }
    /// Sets the bottleneck rate in bit/s.
    pub fn rate(mut self, bits_per_sec: u64) -> Self {
        self.rate = Some(bits_per_sec);
        self
    }
    /// Sets the bottleneck queue in bytes.
    pub fn queue(mut self, bytes: u64) -> Self {
        self.queue = Some(bytes);
        self
    }
    /// Sets the per-packet overhead counted against the rate.
    pub fn overhead(mut self, bytes: u32) -> Self {
        self.overhead = bytes;
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The queue limit in force: `queue`, or 50 ms of the rate (at least 64 KiB).
    pub fn effective_queue(&self) -> u64 {
        match (self.queue, self.rate) {
            (Some(q), _) => q,
            (None, Some(rate)) => (rate / 8 / 20).max(64 * 1024),
            (None, None) => u64::MAX,
        }
    }

    /// Long-run loss rate of the loss stages (not counting queue drops).
    pub fn mean_random_loss(&self) -> f64 {
        let ge = self.gilbert_elliott.map(|g| g.mean_loss()).unwrap_or(0.0);
        1.0 - (1.0 - self.loss.as_f64()) * (1.0 - ge)
    }

    fn validate(&self) -> Result<(), String> {
        if self.rate == Some(0) {
            return Err(
                "rate 0 would carry nothing (leave the rate out, or write `unlimited`)".into()
            );
        }
        if self.queue == Some(0) {
            return Err("queue 0 would hold nothing; give at least one packet's worth".into());
        }
        Ok(())
    }
}

/// Both directions of an emulated path. `up`: client -> upstream server; `down`: back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct WanSpec {
    /// Client -> upstream server.
    pub up: LinkSpec,
    /// Upstream server -> client.
    pub down: LinkSpec,
}

impl WanSpec {
    /// The same link both ways.
    pub fn both(link: LinkSpec) -> Self {
        WanSpec { up: link.clone(), down: link }
    }

    /// A symmetric path: `rtt` split half each way, `loss` each way, `rate` each way.
    pub fn symmetric(rtt: Duration, loss: Probability, rate: Option<u64>) -> Self {
        let (up, down) = split_rtt(rtt);
        WanSpec {
            up: LinkSpec { delay: up, loss, rate, ..LinkSpec::default() },
            down: LinkSpec { delay: down, loss, rate, ..LinkSpec::default() },
        }
    }

    /// Round-trip propagation delay (without queueing or jitter).
    pub fn rtt(&self) -> Duration {
        self.up.delay + self.down.delay
    }

    /// Applies `f` to both directions.
    pub fn map(mut self, mut f: impl FnMut(LinkSpec) -> LinkSpec) -> Self {
        self.up = f(self.up);
        self.down = f(self.down);
        self
    }

    /// Parses the string form (see the module documentation).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let mut spec = WanSpec::default();
        if s.trim().is_empty() {
            return Err(SpecError { item: s.to_string(), reason: "empty link spec".into() });
        }
        let mut positional = 0usize;
        let mut seen_key = false;
        for raw in s.split(',') {
            let item = raw.trim();
            let err = |reason: String| SpecError { item: item.to_string(), reason };
            if let Some((key, value)) = item.split_once('=') {
                seen_key = true;
                let (dirs, key): (&[bool], &str) = match key.trim() {
                    k if k.starts_with("up.") => (&[true], &k[3..]),
                    k if k.starts_with("down.") => (&[false], &k[5..]),
                    k => (&[true, false], k),
                };
                let value = value.trim();
                if key == "rtt" {
                    if dirs.len() != 2 {
                        return Err(err(
                            "`rtt` covers both directions; use `up.delay`/`down.delay` for one"
                                .into(),
                        ));
                    }
                    let rtt = parse_duration(value).map_err(err)?;
                    (spec.up.delay, spec.down.delay) = split_rtt(rtt);
                    continue;
                }
                for &up in dirs {
                    let link = if up { &mut spec.up } else { &mut spec.down };
                    apply_key(link, key, value).map_err(err)?;
                }
            } else {
                if seen_key {
                    return Err(err(
                        "positional items (RTT, loss, rate) must come before key=value items"
                            .into(),
                    ));
                }
                match positional {
                    0 => {
                        let rtt = parse_duration(item).map_err(|e| {
                            err(format!("the first item is the round-trip time: {e}"))
                        })?;
                        (spec.up.delay, spec.down.delay) = split_rtt(rtt);
                    }
                    1 => {
                        let loss = Probability::parse_percent(item).map_err(|e| {
                            err(format!("the second item is the random loss: {e}"))
                        })?;
                        spec.up.loss = loss;
                        spec.down.loss = loss;
                    }
                    2 => {
                        let rate = parse_rate(item)
                            .map_err(|e| err(format!("the third item is the rate: {e}")))?;
                        spec.up.rate = rate;
                        spec.down.rate = rate;
                    }
                    _ => {
                        return Err(err(
                            "only three positional items (RTT, loss, rate); name the others as key=value".into(),
                        ))
                    }
                }
                positional += 1;
            }
        }
        for (name, link) in [("up", &spec.up), ("down", &spec.down)] {
            link.validate().map_err(|reason| SpecError { item: format!("({name})"), reason })?;
        }
        Ok(spec)
    }
}

fn apply_key(link: &mut LinkSpec, key: &str, value: &str) -> Result<(), String> {
    match key {
        "delay" => link.delay = parse_duration(value)?,
        "jitter" => link.jitter = parse_duration(value)?,
        "loss" => link.loss = Probability::parse_percent(value)?,
        "rate" => link.rate = parse_rate(value)?,
        "queue" => link.queue = if value == "auto" { None } else { Some(parse_size(value)?) },
        "reorder" => link.reorder = Probability::parse_percent(value)?,
        "reorder_delay" => link.reorder_delay = parse_duration(value)?,
        "ge" => {
            link.gilbert_elliott = match value {
                "off" | "none" => None,
                v => Some(GilbertElliott::parse(v)?),
            }
        }
        "overhead" => {
            let v = parse_size(value)?;
            link.overhead = u32::try_from(v).map_err(|_| format!("overhead `{value}` is too large"))?
        }
        "seed" => link.seed = value.parse().map_err(|_| format!("seed `{value}` is not an unsigned integer"))?,
        other => {
            return Err(format!(
                "unknown key `{other}` (known: rtt, delay, loss, rate, jitter, queue, reorder, reorder_delay, ge, overhead, seed; prefix with `up.` or `down.` for one direction)"
            ))
        }
    }
    Ok(())
}

/// Splits a round-trip time half each way (the odd nanosecond goes downstream).
pub fn split_rtt(rtt: Duration) -> (Duration, Duration) {
    let ns = rtt.as_nanos();
    let up = ns / 2;
    (Duration::from_nanos(up as u64), Duration::from_nanos((ns - up) as u64))
}

impl FromStr for WanSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        WanSpec::parse(s)
    }
}

/// The canonical string form; parsing it gives the same spec back.
impl fmt::Display for WanSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (u, d) = (&self.up, &self.down);
        let mut items = vec![fmt_duration(u.delay * 2)];
        if !u.loss.is_zero() || u.rate.is_some() {
            items.push(u.loss.to_string());
        }
        if let Some(rate) = u.rate {
            items.push(fmt_rate(rate));
        }
        if d.delay != u.delay {
            items.push(format!("down.delay={}", fmt_duration(d.delay)));
        }
        if d.loss != u.loss {
            items.push(format!("down.loss={}", d.loss));
        }
        if d.rate != u.rate {
            items.push(format!("down.rate={}", d.rate.map(fmt_rate).unwrap_or("unlimited".into())));
        }
        let def = LinkSpec::default();
        let mut keyed = |key: &str, get: &dyn Fn(&LinkSpec) -> Option<String>| {
            let (gu, gd, gdef) = (get(u), get(d), get(&def));
            if gu == gd {
                if gu != gdef {
                    items.push(format!("{key}={}", gu.unwrap_or_else(|| "off".into())));
                }
            } else {
                items.push(format!("up.{key}={}", gu.unwrap_or_else(|| "off".into())));
                items.push(format!("down.{key}={}", gd.unwrap_or_else(|| "off".into())));
            }
        };
        keyed("jitter", &|l| Some(fmt_duration(l.jitter)));
        keyed("queue", &|l| Some(l.queue.map(fmt_size).unwrap_or_else(|| "auto".into())));
        keyed("reorder", &|l| Some(l.reorder.to_string()));
        keyed("reorder_delay", &|l| Some(fmt_duration(l.reorder_delay)));
        keyed("ge", &|l| l.gilbert_elliott.map(|g| g.to_string()));
        keyed("overhead", &|l| Some(fmt_size(l.overhead as u64)));
        keyed("seed", &|l| Some(l.seed.to_string()));
        f.write_str(&items.join(","))
    }
}

/// A link spec string that does not parse; names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link spec item `{item}`: {reason}")]
pub struct SpecError {
    /// The comma-separated item at fault.
    pub item: String,
    /// What is wrong with it.
    pub reason: String,
}

// ---- numbers with units, kept exact ----

/// `num` (decimal, no sign or exponent) times `mult`, which must come out whole.
fn parse_exact(num: &str, mult: u128) -> Result<u128, String> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err("no number".into());
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{num}` is not a decimal number"));
    }
    if int.len() + frac.len() > 30 {
        return Err(format!("`{num}` has too many digits"));
    }
    let digits: u128 =
        format!("{int}{frac}").parse().map_err(|_| format!("`{num}` is not a number"))?;
    let div = 10u128.pow(frac.len() as u32);
    let v = digits.checked_mul(mult).ok_or_else(|| format!("`{num}` is too large"))?;
    if v % div != 0 {
        return Err(format!("`{num}` has more decimals than the unit allows"));
    }
    Ok(v / div)
}

fn split_unit(s: &str) -> (&str, &str) {
    let at = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    (s[..at].trim(), s[at..].trim())
}

/// Parses `80ms`, `1.5s`, `250us`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_unit(s.trim());
    let mult: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" if num.chars().all(|c| c == '0' || c == '.') && !num.is_empty() => 1,
        "" => return Err(format!("`{s}` has no unit (write e.g. `80ms`)")),
        u => return Err(format!("unknown duration unit `{u}` in `{s}` (use ns, us, ms or s)")),
    };
    let ns = parse_exact(num, mult).map_err(|e| format!("`{s}`: {e}"))?;
    u64::try_from(ns).map(Duration::from_nanos).map_err(|_| format!("`{s}` is too long"))
}

/// The shortest exact form: `80ms`, `1s`, `250us`, `7ns`, `0ms`.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0ms".into();
    }
    for (unit, mult) in [("s", 1_000_000_000u128), ("ms", 1_000_000), ("us", 1_000)] {
        if ns.is_multiple_of(mult) {
            return format!("{}{unit}", ns / mult);
        }
    }
    format!("{ns}ns")
}

/// Parses `100Mbit`, `1.5Gbit/s`, `10mbps` (bits, not bytes), `unlimited`.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if matches!(t.to_ascii_lowercase().as_str(), "unlimited" | "inf" | "none" | "off") {
        return Ok(None);
    }
    let (num, unit) = split_unit(t);
    let unit_l = unit.to_ascii_lowercase();
    let base = unit_l.strip_suffix("/s").unwrap_or(&unit_l);
    let mult: u128 = match base {
        "bit" | "bps" => 1,
        "kbit" | "kbps" => 1_000,
        "mbit" | "mbps" => 1_000_000,
        "gbit" | "gbps" => 1_000_000_000,
        "tbit" | "tbps" => 1_000_000_000_000,
        "" => return Err(format!("`{s}` has no unit (write e.g. `100Mbit`)")),
        _ => {
            return Err(format!(
                "unknown rate unit `{unit}` in `{s}` (use bit, Kbit, Mbit, Gbit; `Mbps` means megabits)"
            ))
        }
    };
    let v = parse_exact(num, mult).map_err(|e| format!("`{s}`: {e}"))?;
    if v == 0 {
        return Err(format!("rate `{s}` is 0 (leave it out, or write `unlimited`)"));
    }
    u64::try_from(v).map(Some).map_err(|_| format!("rate `{s}` is too large"))
}

/// The shortest exact form: `100Mbit`, `1500Kbit`.
pub fn fmt_rate(bps: u64) -> String {
    for (unit, mult) in [("Gbit", 1_000_000_000u64), ("Mbit", 1_000_000), ("Kbit", 1_000)] {
        if bps.is_multiple_of(mult) {
            return format!("{}{unit}", bps / mult);
        }
    }
    format!("{bps}bit")
}

/// Parses `256KiB`, `1MB`, `1500B`, `1500`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_unit(s.trim());
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit `{unit}` in `{s}` (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    let v = parse_exact(num, mult).map_err(|e| format!("`{s}`: {e}"))?;
    u64::try_from(v).map_err(|_| format!("size `{s}` is too large"))
}

/// The shortest exact form: `256KiB`, `1MB`, `1500B`.
pub fn fmt_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0B".into();
    }
    for (unit, mult) in [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ] {
        if bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// `v / 10^decimals` with trailing zeros trimmed: `fmt_scaled(5_000_000, 7)` is `0.5`.
fn fmt_scaled(v: u128, decimals: u32) -> String {
    let div = 10u128.pow(decimals);
    let (int, frac) = (v / div, v % div);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = decimals as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn the_short_form() {
        let s: WanSpec = "80ms,0.5%,100Mbit".parse().unwrap();
        assert_eq!(s.up.delay, ms(40));
        assert_eq!(s.down.delay, ms(40));
        assert_eq!(s.up.loss, Probability::from_ppb(5_000_000));
        assert_eq!(s.down.loss, s.up.loss);
        assert_eq!(s.up.rate, Some(100_000_000));
        assert_eq!(s.rtt(), ms(80));
        assert_eq!(s, WanSpec::symmetric(ms(80), Probability::percent(0.5), Some(100_000_000)));
        assert_eq!(s.to_string(), "80ms,0.5%,100Mbit");
        assert_eq!("80ms".parse::<WanSpec>().unwrap().to_string(), "80ms");
        assert_eq!("80ms,1%".parse::<WanSpec>().unwrap().to_string(), "80ms,1%");
        assert_eq!("0,0%,1Gbit".parse::<WanSpec>().unwrap().to_string(), "0ms,0%,1Gbit");
    }

    #[test]
    fn keys_and_round_trip() {
        let text =
            "80ms,0.5%,100Mbit,jitter=5ms,queue=256KiB,reorder=1%,ge=p:0.01/r:0.3/bad:50%,seed=7";
        let s: WanSpec = text.parse().unwrap();
        assert_eq!(s.up.jitter, ms(5));
        assert_eq!(s.down.queue, Some(256 * 1024));
        assert_eq!(s.up.reorder, Probability::percent(1.0));
        let ge = s.down.gilbert_elliott.unwrap();
        assert_eq!(ge.p, Probability::percent(1.0));
        assert_eq!(ge.r, Probability::percent(30.0));
        assert_eq!(ge.loss_bad, Probability::percent(50.0));
        assert_eq!(ge.loss_good, Probability::ZERO);
        assert_eq!(s.up.seed, 7);
        assert_eq!(s.to_string(), text);
        assert_eq!(s.to_string().parse::<WanSpec>().unwrap(), s);
    }

    #[test]
    fn per_direction_keys() {
        let s: WanSpec = "40ms,0%,100Mbit,up.rate=10Mbit,down.loss=2%,up.delay=5ms,down.jitter=1ms"
            .parse()
            .unwrap();
        assert_eq!(s.up.rate, Some(10_000_000));
        assert_eq!(s.down.rate, Some(100_000_000));
        assert_eq!(s.up.loss, Probability::ZERO);
        assert_eq!(s.down.loss, Probability::percent(2.0));
        assert_eq!(s.up.delay, ms(5));
        assert_eq!(s.down.delay, ms(20));
        assert_eq!(s.up.jitter, Duration::ZERO);
        assert_eq!(s.down.jitter, ms(1));
        let again: WanSpec = s.to_string().parse().unwrap();
        assert_eq!(again, s, "{s}");
        // an odd RTT splits to the nanosecond and still round-trips
        let odd: WanSpec = "81ns".parse().unwrap();
        assert_eq!(odd.rtt(), Duration::from_nanos(81));
        assert_eq!(odd.to_string().parse::<WanSpec>().unwrap(), odd);
    }

    #[test]
    fn many_values_round_trip() {
        for text in [
            "0ms",
            "150ms,1%,100Mbit",
            "1s,0.0000001%,1bit",
            "80ms,0.5%,1500Kbit,queue=1500B,overhead=0B",
            "80ms,0%,100Mbit,down.rate=unlimited",
            "10ms,up.jitter=250us,down.jitter=3ms,reorder=12.5%,reorder_delay=2ms",
            "80ms,ge=p:0.001/r:0.25/good:0.01%,up.seed=1,down.seed=2",
            "20ms,0.25%,1Gbit,queue=1MB,up.ge=p:0.1/r:0.5,down.ge=off",
        ] {
            let s: WanSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let printed = s.to_string();
            assert_eq!(printed.parse::<WanSpec>().unwrap(), s, "{text} -> {printed}");
        }
        let s: WanSpec = "80ms,0.5%,100Mbit".parse().unwrap();
        let asym = WanSpec {
            up: s.up.clone().rate(3_333_333).loss(Probability::from_ppb(1)),
            down: s.down.clone().delay(Duration::from_nanos(12345)).queue(777),
        };
        assert_eq!(asym.to_string().parse::<WanSpec>().unwrap(), asym, "{asym}");
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("1.5s").unwrap(), ms(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_rate("1.5Gbit/s").unwrap(), Some(1_500_000_000));
        assert_eq!(parse_rate("10mbps").unwrap(), Some(10_000_000));
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        assert_eq!(parse_size("256KiB").unwrap(), 262_144);
        assert_eq!(parse_size("1.5MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("1500").unwrap(), 1500);
        assert_eq!(fmt_size(256_000), "250KiB");
        assert_eq!(Probability::parse("0.5%").unwrap(), Probability::parse("0.005").unwrap());
        assert_eq!(Probability::percent(0.5).to_string(), "0.5%");
        assert_eq!(Probability::fraction(0.3).display_fraction(), "0.3");
    }

    #[test]
    fn errors_name_the_item() {
        let cases = [
            ("80xs,1%", "80xs", "unknown duration unit `xs`"),
            ("80ms,0.5,100Mbit", "0.5", "needs a `%`"),
            ("80ms,abc", "abc", "second item is the random loss"),
            ("80ms,1%,100MB", "100MB", "unknown rate unit"),
            ("80ms,1%,100Mbit,jitter=5", "jitter=5", "no unit"),
            ("80ms,1%,100Mbit,color=red", "color=red", "unknown key `color`"),
            ("80ms,1%,100Mbit,5ms", "5ms", "only three positional"),
            ("80ms,jitter=1ms,1%", "1%", "must come before"),
            ("80ms,ge=p:0.1", "ge=p:0.1", "needs both"),
            ("80ms,loss=101%", "loss=101%", "more than 100%"),
            ("80ms,1%,0Mbit", "0Mbit", "is 0"),
            ("80ms,up.rtt=5ms", "up.rtt=5ms", "covers both directions"),
            ("80ms,queue=0", "(up)", "queue 0"),
            ("80ms,seed=-1", "seed=-1", "unsigned integer"),
            ("", "", "empty"),
        ];
        for (text, item, reason) in cases {
            match text.parse::<WanSpec>() {
                Ok(s) => panic!("{text} parsed as {s}"),
                Err(e) => {
                    assert_eq!(e.item, item, "{text}: {e}");
                    assert!(e.to_string().contains(reason), "{text}: {e}");
                    assert!(e.to_string().contains(&format!("`{item}`")), "{e}");
                }
            }
        }
    }

    #[test]
    fn gilbert_elliott_mean_loss() {
        let ge = GilbertElliott::new(Probability::fraction(0.01), Probability::fraction(0.3));
        assert!((ge.mean_loss() - 0.01 / 0.31).abs() < 1e-12);
        assert_eq!(ge.to_string(), "p:0.01/r:0.3");
    }
}
