//! Simulator scenario files (`config/sim/*.toml`): parsing and validation.
//!
//! The file is walked by hand over toml's spanned document tree (as the bandwidth policy parser
//! does), so every error names the file, the line, the full key path and the problem, e.g.
//! `branch-50.toml line 12: sites[0].wan_rate "fast" is not a rate (...)`, and unknown keys
//! are refused. Rates and sizes are read by the bandwidth policy's own parser (same units, same
//! messages); the `policy` is either a path to a policy file or an inline `[policy]` table in
//! the same format, handed to [`BandwidthPolicy::from_toml_str`] unchanged.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use oasis_core::file_errors;
use oasis_core::policy::shown_toml_value as shown;
use oasis_core::policy::{time_zone, BandwidthPolicy, PolicyError};
use oasis_core::site_wan::WanSharing;
use oasis_core::wake::schedule::{window_times, ScheduleConfig};
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

mod doc;
mod sections;

use doc::{Doc, Tbl};
use sections::parse_root;

type V<'a> = Spanned<DeValue<'a>>;

/// A scenario that cannot be used: the message names file, line, key and problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

/// A bandwidth policy and where it came from.
#[derive(Clone, Debug)]
pub struct PolicySpec {
    pub policy: BandwidthPolicy,
    /// `file.toml` or `inline [policy] in scenario.toml`.
    pub source: String,
}

/// Simulation granularity knobs (`[model]`).
#[derive(Clone, Debug)]
pub struct Model {
    pub chunk_avg: u64,
    pub pull_bytes: u64,
    pub fetch_concurrency: usize,
    pub lookahead: u64,
    pub bin_s: f64,
    pub failover_s: f64,
}

#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub size: u64,
    pub shared_with_previous: f64,
    /// (index of another layer, fraction of this layer's bytes identical to chunks of it)
    pub shared_with: Option<(usize, f64)>,
}

#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub name: String,
    pub count: usize,
    pub endpoints: usize,
    pub reflectors: usize,
    pub wan_rate: f64,
    pub wan_latency_s: f64,
    pub wan_loss: f64,
    pub lan_rate: f64,
    pub endpoint_rate: f64,
    pub cache: u64,
    pub timezone: String,
    pub policy: Option<PolicySpec>,
    pub asleep: f64,
    pub wake_delay_s: f64,
    pub wake_jitter_s: f64,
    /// Probability that a sleeping endpoint never comes online, however often it is woken.
    pub never_wakes: f64,
    /// How the site's reflector paces scheduled wakes (`wake_rate`, `wake_online_timeout`;
    /// rewakes and the delivery timeout at the reflector's defaults).
    pub wake: ScheduleConfig,
    /// Gossip heartbeat between the site's reflectors (`mesh_heartbeat`), seconds.
    pub mesh_heartbeat_s: f64,
    /// How the site's reflectors share the WAN (`wan_sharing`).
    pub wan_sharing: WanSharing,
}

impl GroupSpec {
    /// Name of the `i`-th site (0-based) of the group.
    pub fn site_name(&self, i: usize) -> String {
        if self.count == 1 {
            self.name.clone()
        } else {
            format!("{}-{:04}", self.name, i + 1)
        }
    }
}

#[derive(Clone, Debug)]
pub enum SiteSel {
    All,
    Names(Vec<String>),
}

impl SiteSel {
    pub fn matches(&self, group: &str, site: &str) -> bool {
        match self {
            SiteSel::All => true,
            SiteSel::Names(n) => n.iter().any(|x| x == group || x == site),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AssignSpec {
    pub layer: usize,
    pub sites: SiteSel,
    /// "HH:MM-HH:MM" in the site's time zone, as `oasis-seed assign --window` takes it.
    pub window: Option<String>,
    pub prefetch: bool,
}

#[derive(Clone, Debug)]
pub enum FailureKind {
    ReflectorDown { reflector: usize, at_s: f64 },
    WanDown { from_s: f64, to_s: f64 },
}

#[derive(Clone, Debug)]
pub struct FailureSpec {
    pub sites: SiteSel,
    pub kind: FailureKind,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub origin: String,
    pub start_unix: i64,
    pub duration_s: f64,
    pub seed_egress: f64,
    pub timezone: String,
    pub policy: PolicySpec,
    pub model: Model,
    pub layers: Vec<LayerSpec>,
    pub groups: Vec<GroupSpec>,
    pub assignments: Vec<AssignSpec>,
    pub failures: Vec<FailureSpec>,
    pub chart_sites: Vec<String>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError(format!("cannot read scenario {}: {e}", path.display())))?;
        Scenario::from_toml_str(&text, &path.display().to_string(), path.parent())
    }

    /// Parses scenario text; `origin` names the file in messages, `dir` resolves policy paths.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        dir: Option<&Path>,
    ) -> Result<Scenario, ScenarioError> {
        let doc = Doc { origin, text, dir: dir.map(Path::to_path_buf).unwrap_or_default() };
        let root = DeTable::parse(text).map_err(|e| {
            ScenarioError(oasis_proto::file_errors::TomlProblem::of(text, &e).describe(origin))
        })?;
        let span = root.span();
        let root = Tbl { doc: &doc, path: String::new(), t: root.get_ref(), span };
        parse_root(&root)
    }

    pub fn total_sites(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Replaces the scenario-wide policy and every per-group override (for `compare`).
    pub fn with_policy(&self, p: PolicySpec) -> Scenario {
        let mut s = self.clone();
        s.policy = p;
        for g in &mut s.groups {
            g.policy = None;
        }
        s
    }
}

/// Loads a policy file for `compare` (the same parser the reflector uses).
pub fn load_policy(path: &Path) -> Result<PolicySpec, ScenarioError> {
    let policy = oasis_core::policy::load(path).map_err(|e| ScenarioError(e.to_string()))?;
    Ok(PolicySpec { policy, source: path.display().to_string() })
}

impl Default for Model {
    fn default() -> Model {
        Model {
            chunk_avg: 64 << 10,
            pull_bytes: 4 << 20,
            fetch_concurrency: 4,
            lookahead: 16 << 20,
            bin_s: 10.0,
            failover_s: 5.0,
        }
    }
}
