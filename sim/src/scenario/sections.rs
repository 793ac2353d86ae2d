//! The scenario's sections, each read and checked on its own: the root keys, `[model]`,
//! `[[layers]]`, `[[sites]]`, `[[assignments]]`, `[[failures]]` and `chart_sites`.

use super::*;

const ROOT_KEYS: &[&str] = &[
    "name",
    "start",
    "duration",
    "timezone",
    "seed_egress",
    "policy",
    "model",
    "layers",
    "sites",
    "assignments",
    "failures",
    "chart_sites",
];
const MODEL_KEYS: &[&str] =
    &["chunk_avg", "pull_bytes", "fetch_concurrency", "lookahead", "bin", "failover_delay"];
const LAYER_KEYS: &[&str] =
    &["name", "size", "shared_with_previous", "shared_with", "shared_fraction"];
const SITE_KEYS: &[&str] = &[
    "name",
    "count",
    "endpoints",
    "reflectors",
    "wan_rate",
    "wan_latency",
    "wan_loss",
    "lan_rate",
    "endpoint_rate",
    "cache",
    "timezone",
    "policy",
    "asleep",
    "wake_delay",
    "wake_jitter",
    "never_wakes",
    "wake_rate",
    "wake_online_timeout",
    "mesh_heartbeat",
    "wan_sharing",
];
const ASSIGN_KEYS: &[&str] = &["layer", "sites", "window", "prefetch"];
const FAILURE_KEYS: &[&str] = &["kind", "sites", "reflector", "at", "from", "to"];

/// The wake schedule of a site group, from the keys the reflector's config uses for it:
/// `wake_rate` (machines per minute, paced in batches as the reflector paces them) and
/// `wake_online_timeout`.
fn wake_schedule(t: &Tbl<'_, '_>) -> Result<ScheduleConfig, ScenarioError> {
    let mut cfg = match t.count("wake_rate", 1)? {
        Some(r) => ScheduleConfig::from_rate(u32::try_from(r).unwrap_or(u32::MAX)),
        None => ScheduleConfig::default(),
    };
    if let Some(s) = t.duration("wake_online_timeout")? {
        if s < 1.0 {
            return Err(t.bad(
                t.get("wake_online_timeout").expect("present"),
                "wake_online_timeout",
                format!("{s}s is too short (at least 1s)"),
            ));
        }
        cfg.online_timeout = Duration::from_secs_f64(s);
    }
    Ok(cfg)
}

pub(super) fn parse_root(root: &Tbl<'_, '_>) -> Result<Scenario, ScenarioError> {
    let doc = root.doc;
    root.check_keys(ROOT_KEYS)?;
    let name = root.string("name")?.unwrap_or_else(|| {
        Path::new(doc.origin).file_stem().map_or("scenario".into(), |s| s.to_string_lossy().into())
    });
    let start_unix = start(root)?;
    let duration_s = root.duration("duration")?.unwrap_or(7.0 * 86400.0);
    let timezone = root.string("timezone")?.unwrap_or_else(|| "UTC".into());
    if let Some(v) = root.get("timezone") {
        time_zone(&timezone).map_err(|p| root.bad(v, "timezone", p))?;
    }
    let seed_egress = root.rate("seed_egress")?.unwrap_or(f64::INFINITY);
    let policy = root.policy("policy")?.ok_or_else(|| {
        root.missing("policy", "a bandwidth policy file path, or an inline [policy] table")
    })?;
    let model = model(root)?;
    let layers = layers(root)?;
    let groups = groups(root, &timezone)?;
    let assignments = assignments(root, &layers, &groups)?;
    let failures = failures(root, &groups)?;
    let chart_sites = chart_sites(root, &groups)?;
    Ok(Scenario {
        name,
        origin: doc.origin.to_string(),
        start_unix,
        duration_s,
        seed_egress,
        timezone,
        policy,
        model,
        layers,
        groups,
        assignments,
        failures,
        chart_sites,
    })
}

/// `start`: when the simulated week begins (UTC).
fn start(root: &Tbl<'_, '_>) -> Result<i64, ScenarioError> {
    Ok(match root.get("start") {
        None => 1_748_808_000, // 2025-06-01T20:00:00Z
        Some(v) => {
            let text: Cow<'_, str> = match v.get_ref() {
                DeValue::String(s) => s.clone(),
                DeValue::Datetime(d) => Cow::Owned(d.to_string()),
                other => {
                    return Err(root.bad(
                        v,
                        "start",
                        format!("must be a date-time, not {}", shown(other)),
                    ))
                }
            };
            text.parse::<jiff::Timestamp>().map(|t| t.as_second()).map_err(|_| {
                root.bad(
                    v,
                    "start",
                    format!(
                        "\"{text}\" is not a UTC date-time (write e.g. \"2025-06-02T20:00:00Z\")"
                    ),
                )
            })?
        }
    })
}

/// `[model]`: the simulator's own knobs.
fn model(root: &Tbl<'_, '_>) -> Result<Model, ScenarioError> {
    Ok(match root.table("model")? {
        None => Model::default(),
        Some(m) => {
            m.check_keys(MODEL_KEYS)?;
            let d = Model::default();
            let chunk_avg = m.size("chunk_avg", false)?.unwrap_or(d.chunk_avg).max(64);
            Model {
                chunk_avg,
                pull_bytes: m.size("pull_bytes", false)?.unwrap_or(d.pull_bytes),
                fetch_concurrency: m
                    .count("fetch_concurrency", 1)?
                    .map_or(d.fetch_concurrency, |n| n as usize),
                lookahead: m.size("lookahead", false)?.unwrap_or(d.lookahead),
                bin_s: m.duration("bin")?.filter(|b| *b > 0.0).unwrap_or(d.bin_s),
                failover_s: m.duration("failover_delay")?.unwrap_or(d.failover_s),
            }
        }
    })
}

/// `[[layers]]`, with what each shares with the ones before it.
fn layers(root: &Tbl<'_, '_>) -> Result<Vec<LayerSpec>, ScenarioError> {
    let mut layers: Vec<LayerSpec> = Vec::new();
    let layer_tables = root.tables("layers")?;
    if layer_tables.is_empty() {
        return Err(root.missing("layers", "at least one [[layers]] table"));
    }
    let mut pending_shared = Vec::new();
    for t in &layer_tables {
        t.check_keys(LAYER_KEYS)?;
        let name = t.unique_name(layers.iter().map(|l| l.name.as_str()), "base", "layers")?;
        let size =
            t.size("size", false)?.ok_or_else(|| t.missing("size", "e.g. size = \"4GiB\""))?;
        let shared_with_previous = t.fraction("shared_with_previous")?.unwrap_or(0.0);
        let shared_fraction = t.fraction("shared_fraction")?;
        let shared_with = t.string("shared_with")?;
        match (&shared_with, shared_fraction) {
            (Some(_), None) => {
                return Err(t.missing(
                    "shared_fraction",
                    "the fraction of this layer found in `shared_with`",
                ))
            }
            (None, Some(_)) => {
                return Err(t.missing("shared_with", "the layer `shared_fraction` refers to"))
            }
            _ => {}
        }
        if let Some(f) = shared_fraction {
            if f + shared_with_previous > 1.0 {
                return Err(t.bad(
                    t.get("shared_fraction").expect("present"),
                    "shared_fraction",
                    format!("{f} plus shared_with_previous {shared_with_previous} exceeds 1"),
                ));
            }
        }
        pending_shared.push(shared_with.map(|w| (w, shared_fraction.unwrap_or(0.0))));
        layers.push(LayerSpec { name, size, shared_with_previous, shared_with: None });
    }
    for (i, p) in pending_shared.into_iter().enumerate() {
        if let Some((other, f)) = p {
            let t = &layer_tables[i];
            let v = t.get("shared_with").expect("present");
            let j = layers.iter().position(|l| l.name == other).ok_or_else(|| {
                t.bad(v, "shared_with", format!("\"{other}\" is not a layer of this scenario"))
            })?;
            if j >= i {
                return Err(t.bad(
                    v,
                    "shared_with",
                    format!("\"{other}\" must be listed before this layer"),
                ));
            }
            layers[i].shared_with = Some((j, f));
        }
    }
    Ok(layers)
}

/// `[[sites]]`: groups of alike sites; `timezone` is the scenario's, for groups without one.
fn groups(root: &Tbl<'_, '_>, timezone: &str) -> Result<Vec<GroupSpec>, ScenarioError> {
    let mut groups: Vec<GroupSpec> = Vec::new();
    let site_tables = root.tables("sites")?;
    if site_tables.is_empty() {
        return Err(root.missing("sites", "at least one [[sites]] table"));
    }
    for t in &site_tables {
        t.check_keys(SITE_KEYS)?;
        let name =
            t.unique_name(groups.iter().map(|g| g.name.as_str()), "branch", "site groups")?;
        let tz = t.string("timezone")?.unwrap_or_else(|| timezone.to_string());
        if let Some(v) = t.get("timezone") {
            time_zone(&tz).map_err(|p| t.bad(v, "timezone", p))?;
        }
        let wan_rate = t
            .rate("wan_rate")?
            .ok_or_else(|| t.missing("wan_rate", "the WAN link rate, e.g. \"100Mbit/s\""))?;
        let lan_rate = t.rate("lan_rate")?.unwrap_or(125_000_000.0);
        groups.push(GroupSpec {
            name,
            count: t.count("count", 1)?.unwrap_or(1) as usize,
            endpoints: t.count("endpoints", 0)?.unwrap_or(1) as usize,
            reflectors: t.count("reflectors", 1)?.unwrap_or(1) as usize,
            wan_rate,
            wan_latency_s: t.duration("wan_latency")?.unwrap_or(0.02),
            wan_loss: match t.fraction("wan_loss")? {
                Some(l) if l >= 1.0 => {
                    return Err(t.bad(
                        t.get("wan_loss").expect("present"),
                        "wan_loss",
                        "1 would lose every packet",
                    ))
                }
                l => l.unwrap_or(0.0),
            },
            lan_rate,
            endpoint_rate: t.rate("endpoint_rate")?.unwrap_or(f64::INFINITY),
            cache: t.size("cache", true)?.unwrap_or(u64::MAX),
            timezone: tz,
            policy: t.policy("policy")?,
            asleep: t.fraction("asleep")?.unwrap_or(0.0),
            wake_delay_s: t.duration("wake_delay")?.unwrap_or(0.0),
            wake_jitter_s: t.duration("wake_jitter")?.unwrap_or(0.0),
            never_wakes: t.fraction("never_wakes")?.unwrap_or(0.0),
            wake: wake_schedule(t)?,
            mesh_heartbeat_s: match t.duration("mesh_heartbeat")? {
                Some(h) if h < 0.01 => {
                    return Err(t.bad(
                        t.get("mesh_heartbeat").expect("present"),
                        "mesh_heartbeat",
                        format!("{h}s is too short (at least 10ms)"),
                    ))
                }
                h => h.unwrap_or(oasis_core::gossip::DEFAULT_HEARTBEAT.as_secs_f64()),
            },
            wan_sharing: match t.string("wan_sharing")? {
                None => WanSharing::default(),
                Some(m) => m.parse().map_err(|p: String| {
                    t.bad(t.get("wan_sharing").expect("present"), "wan_sharing", p)
                })?,
            },
        });
    }
    Ok(groups)
}

/// Is `n` a site or a site group of the scenario?
fn known_name(groups: &[GroupSpec], n: &str) -> bool {
    groups.iter().any(|g| g.name == n || (0..g.count).any(|i| g.site_name(i) == n))
}

/// Refuses a `sites` selection naming a site or group the scenario does not have.
fn check_sel(t: &Tbl<'_, '_>, sel: &SiteSel, groups: &[GroupSpec]) -> Result<(), ScenarioError> {
    if let SiteSel::Names(names) = sel {
        for n in names {
            if !known_name(groups, n) {
                return Err(t.bad(
                    t.get("sites").expect("present"),
                    "sites",
                    format!("\"{n}\" is neither a site nor a site group of this scenario"),
                ));
            }
        }
    }
    Ok(())
}

/// `[[assignments]]`: which layer goes to which sites, when.
fn assignments(
    root: &Tbl<'_, '_>,
    layers: &[LayerSpec],
    groups: &[GroupSpec],
) -> Result<Vec<AssignSpec>, ScenarioError> {
    let mut assignments = Vec::new();
    for t in root.tables("assignments")? {
        t.check_keys(ASSIGN_KEYS)?;
        let lname = t.string("layer")?.ok_or_else(|| t.missing("layer", "the layer's name"))?;
        let layer = layers.iter().position(|l| l.name == lname).ok_or_else(|| {
            t.bad(
                t.get("layer").expect("present"),
                "layer",
                format!("\"{lname}\" is not a layer of this scenario"),
            )
        })?;
        let sites = t.site_sel("sites")?.unwrap_or(SiteSel::All);
        check_sel(&t, &sites, groups)?;
        let window = t.string("window")?;
        if let (Some(w), Some(v)) = (&window, t.get("window")) {
            window_times(w).map_err(|p| t.bad(v, "window", format!("\"{w}\": {p}")))?;
        }
        assignments.push(AssignSpec {
            layer,
            sites,
            window,
            prefetch: t.boolean("prefetch")?.unwrap_or(true),
        });
    }
    if assignments.is_empty() {
        return Err(root.missing("assignments", "at least one [[assignments]] table"));
    }
    Ok(assignments)
}

/// `[[failures]]`: reflectors that die and WAN links that go down.
fn failures(root: &Tbl<'_, '_>, groups: &[GroupSpec]) -> Result<Vec<FailureSpec>, ScenarioError> {
    let mut failures = Vec::new();
    for t in root.tables("failures")? {
        t.check_keys(FAILURE_KEYS)?;
        let kind_v = t.get("kind");
        let kind_s = t
            .string("kind")?
            .ok_or_else(|| t.missing("kind", "\"reflector_down\" or \"wan_down\""))?;
        let sites =
            t.site_sel("sites")?.ok_or_else(|| t.missing("sites", "the site(s) it happens at"))?;
        check_sel(&t, &sites, groups)?;
        let kind = match kind_s.as_str() {
            "reflector_down" => {
                let at_s = t.duration("at")?.ok_or_else(|| t.missing("at", "when the reflector dies, e.g. \"10m\""))?;
                let reflector = t.count("reflector", 0)?.unwrap_or(0) as usize;
                FailureKind::ReflectorDown { reflector, at_s }
            }
            "wan_down" => {
                let from_s = t.duration("from")?.ok_or_else(|| t.missing("from", "when the link goes down"))?;
                let to_s = t.duration("to")?.ok_or_else(|| t.missing("to", "when the link comes back"))?;
                if to_s <= from_s {
                    return Err(t.bad(t.get("to").expect("present"), "to", "must be after `from`"));
                }
                FailureKind::WanDown { from_s, to_s }
            }
            other => {
                return Err(t.bad(
                    kind_v.expect("present"),
                    "kind",
                    format!("\"{other}\" is not a failure kind (expected \"reflector_down\" or \"wan_down\")"),
                ))
            }
        };
        failures.push(FailureSpec { sites, kind });
    }
    Ok(failures)
}

/// `chart_sites`: the sites drawn one by one in the charts.
fn chart_sites(root: &Tbl<'_, '_>, groups: &[GroupSpec]) -> Result<Vec<String>, ScenarioError> {
    let mut chart_sites = Vec::new();
    if let Some(v) = root.get("chart_sites") {
        let sel = root.site_sel("chart_sites")?;
        if let Some(SiteSel::Names(n)) = sel {
            for name in &n {
                if !known_name(groups, name) {
                    return Err(root.bad(
                        v,
                        "chart_sites",
                        format!("\"{name}\" is not a site of this scenario"),
                    ));
                }
            }
            chart_sites = n;
        }
    }
    Ok(chart_sites)
}
