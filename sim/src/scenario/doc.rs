//! The scenario document: toml's spanned tree with the file's name, and typed readers of its
//! keys whose errors name the file, line, key path and problem.

use super::*;

pub(super) struct Doc<'a> {
    pub(super) origin: &'a str,
    pub(super) text: &'a str,
    pub(super) dir: PathBuf,
}

impl Doc<'_> {
    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        file_errors::line_of(self.text, span.start)
    }

    pub(super) fn err(
        &self,
        span: &Range<usize>,
        key: &str,
        problem: impl AsRef<str>,
    ) -> ScenarioError {
        ScenarioError(file_errors::at_line(self.origin, self.text, span, key, problem.as_ref()))
    }

    pub(super) fn raw(&self, v: &V<'_>) -> &str {
        self.text.get(v.span()).unwrap_or("").trim()
    }
}

pub(super) struct Tbl<'d, 'a> {
    pub(super) doc: &'d Doc<'a>,
    pub(super) path: String,
    pub(super) t: &'d DeTable<'a>,
    pub(super) span: Range<usize>,
}

impl<'d, 'a> Tbl<'d, 'a> {
    pub(super) fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    pub(super) fn check_keys(&self, known: &[&str]) -> Result<(), ScenarioError> {
        for (k, _) in self.t.iter() {
            let name: &str = k.get_ref().as_ref();
            if !known.contains(&name) {
                return Err(self.doc.err(
                    &k.span(),
                    &self.key(name),
                    format!("is not a known key (expected one of: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn get(&self, k: &str) -> Option<&'d V<'a>> {
        self.t.iter().find(|(key, _)| key.get_ref().as_ref() == k).map(|(_, v)| v)
    }

    pub(super) fn missing(&self, k: &str, what: &str) -> ScenarioError {
        self.doc.err(&self.span, &self.key(k), format!("is missing ({what})"))
    }

    pub(super) fn bad(&self, v: &V<'_>, k: &str, problem: impl AsRef<str>) -> ScenarioError {
        self.doc.err(&v.span(), &self.key(k), problem)
    }

    pub(super) fn string(&self, k: &str) -> Result<Option<String>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::String(s) => Ok(Some(s.to_string())),
            other => Err(self.bad(v, k, format!("must be a string, not {}", shown(other)))),
        }
    }

    /// The table's `name`, which none of `taken` (the names of the `what` before it) has;
    /// `example` shows one in the message when it is missing.
    pub(super) fn unique_name<'n>(
        &self,
        mut taken: impl Iterator<Item = &'n str>,
        example: &str,
        what: &str,
    ) -> Result<String, ScenarioError> {
        let example = format!("e.g. name = \"{example}\"");
        let name = self.string("name")?.ok_or_else(|| self.missing("name", &example))?;
        if taken.any(|n| n == name) {
            let v = self.get("name").expect("present");
            return Err(self.bad(v, "name", format!("\"{name}\" is used by two {what}")));
        }
        Ok(name)
    }

    pub(super) fn number(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let x = match v.get_ref() {
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => {
                i64::from_str_radix(i.as_str(), i.radix()).ok().map(|n| n as f64)
            }
            _ => None,
        };
        match x {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(self.bad(v, k, format!("{} must be a number", shown(v.get_ref())))),
        }
    }

    pub(super) fn fraction(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        match self.number(k)? {
            Some(x) if !(0.0..=1.0).contains(&x) => Err(self.bad(
                self.get(k).expect("present"),
                k,
                format!("{x} must be a fraction from 0 to 1"),
            )),
            x => Ok(x),
        }
    }

    pub(super) fn count(&self, k: &str, min: u64) -> Result<Option<u64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= min as i64 => Ok(Some(n as u64)),
            _ => Err(self.bad(
                v,
                k,
                format!("{} must be a whole number of at least {min}", shown(v.get_ref())),
            )),
        }
    }

    pub(super) fn boolean(&self, k: &str) -> Result<Option<bool>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(Some(*b)),
            other => Err(self.bad(v, k, format!("must be true or false, not {}", shown(other)))),
        }
    }

    /// A rate in the policy file's units; `f64::INFINITY` for "unlimited".
    pub(super) fn rate(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        if !matches!(v.get_ref(), DeValue::String(_) | DeValue::Integer(_) | DeValue::Float(_)) {
            return Err(self.bad(
                v,
                k,
                format!("must be a rate like \"100Mbit/s\", not {}", shown(v.get_ref())),
            ));
        }
        let text = format!("[wan]\nrate = {}\n", self.doc.raw(v));
        match BandwidthPolicy::from_toml_str(&text, "-") {
            Ok(p) => Ok(Some(p.default_rate().map_or(f64::INFINITY, |r| r as f64))),
            Err(e) => Err(self.bad(v, k, policy_problem(e))),
        }
    }

    /// A size in the policy file's units (`"4GiB"`); "unlimited" only when `unlimited_ok`.
    pub(super) fn size(&self, k: &str, unlimited_ok: bool) -> Result<Option<u64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        if let DeValue::String(s) = v.get_ref() {
            if unlimited_ok && s.trim().eq_ignore_ascii_case("unlimited") {
                return Ok(Some(u64::MAX));
            }
        }
        if !matches!(v.get_ref(), DeValue::String(_) | DeValue::Integer(_)) {
            return Err(self.bad(
                v,
                k,
                format!("must be a size like \"4GiB\", not {}", shown(v.get_ref())),
            ));
        }
        let text = format!("[wan]\nrate = 1\nburst = {}\n", self.doc.raw(v));
        match BandwidthPolicy::from_toml_str(&text, "-") {
            Ok(p) => Ok(Some(p.burst_bytes())),
            Err(e) => {
                let p =
                    policy_problem(e).replace("is the token bucket's size in bytes", "is a size");
                Err(self.bad(v, k, p))
            }
        }
    }

    /// A duration: seconds as a number, or "250ms", "30s", "5m", "2h", "1d", "1h30m".
    pub(super) fn duration(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let parsed = match v.get_ref() {
            DeValue::String(s) => {
                oasis_core::units::parse_duration(s).map(|d| d.as_secs_f64()).map_err(|_| ())
            }
            DeValue::Integer(_) | DeValue::Float(_) => {
                self.number(k)?.filter(|x| *x >= 0.0).ok_or(())
            }
            _ => Err(()),
        };
        parsed.map(Some).map_err(|()| {
            self.bad(
                v,
                k,
                format!(
                    "{} is not a duration (write e.g. \"30ms\", \"90s\", \"15m\", \"2h\", \"1d\")",
                    shown(v.get_ref())
                ),
            )
        })
    }

    pub(super) fn table(&self, k: &str) -> Result<Option<Tbl<'d, 'a>>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::Table(t) => {
                Ok(Some(Tbl { doc: self.doc, path: self.key(k), t, span: v.span() }))
            }
            other => Err(self.bad(v, k, format!("must be a table, not {}", shown(other)))),
        }
    }

    /// An array of tables (`[[k]]`).
    pub(super) fn tables(&self, k: &str) -> Result<Vec<Tbl<'d, 'a>>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(Vec::new()) };
        let DeValue::Array(items) = v.get_ref() else {
            return Err(self.bad(
                v,
                k,
                format!("must be an array of tables ([[{k}]]), not {}", shown(v.get_ref())),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.get_ref() {
                DeValue::Table(t) => Ok(Tbl {
                    doc: self.doc,
                    path: format!("{}[{i}]", self.key(k)),
                    t,
                    span: item.span(),
                }),
                other => Err(self.bad(
                    item,
                    &format!("{k}[{i}]"),
                    format!("must be a table, not {}", shown(other)),
                )),
            })
            .collect()
    }

    /// `"all"`, a site or group name, or an array of names.
    pub(super) fn site_sel(&self, k: &str) -> Result<Option<SiteSel>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::String(s) if s.as_ref() == "all" => Ok(Some(SiteSel::All)),
            DeValue::String(s) => Ok(Some(SiteSel::Names(vec![s.to_string()]))),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => {
                            return Err(self.bad(
                                item,
                                k,
                                format!("{} is not a site or group name", shown(other)),
                            ))
                        }
                    }
                }
                Ok(Some(SiteSel::Names(out)))
            }
            other => Err(self.bad(
                v,
                k,
                format!(
                    "must be \"all\", a site or group name, or an array of names, not {}",
                    shown(other)
                ),
            )),
        }
    }

    /// `policy = "file.toml"` (relative to the scenario) or an inline `[policy]` table.
    pub(super) fn policy(&self, k: &str) -> Result<Option<PolicySpec>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::String(p) => {
                let path = self.doc.dir.join(p.as_ref());
                let policy = oasis_core::policy::load(&path).map_err(|e| {
                    self.bad(v, k, format!("\"{p}\": {e}"))
                })?;
                Ok(Some(PolicySpec { policy, source: path.display().to_string() }))
            }
            DeValue::Table(t) => {
                let mut out = Emit::default();
                emit_table(self.doc, &mut out, "", t);
                let origin = format!("{} ({})", self.doc.origin, self.key(k));
                let policy = BandwidthPolicy::from_toml_str(&out.text, &origin).map_err(|e| {
                    // Map the generated text's line back to the scenario's line.
                    let line = e.line().and_then(|l| out.lines.get(l - 1).copied());
                    let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
                    match e {
                        PolicyError::Invalid { key, problem, .. } => ScenarioError(format!(
                            "{}{at}: {}.{key} {problem}",
                            self.doc.origin,
                            self.key(k)
                        )),
                        other => ScenarioError(format!("{}{at}: {}: {other}", self.doc.origin, self.key(k))),
                    }
                })?;
                Ok(Some(PolicySpec {
                    policy,
                    source: format!("inline [{}] in {}", self.key(k), self.doc.origin),
                }))
            }
            other => Err(self.bad(
                v,
                k,
                format!(
                    "must be a policy file path or a [policy] table in the policy file format, not {}",
                    shown(other)
                ),
            )),
        }
    }
}

pub(super) fn policy_problem(e: PolicyError) -> String {
    match e {
        PolicyError::Invalid { problem, .. } => problem,
        other => other.to_string(),
    }
}

/// Re-emits an inline table as a standalone TOML document, remembering for every emitted line
/// the scenario line it came from (values are copied verbatim from the scenario text).
#[derive(Default)]
pub(super) struct Emit {
    pub(super) text: String,
    pub(super) lines: Vec<usize>,
}

impl Emit {
    pub(super) fn line(&mut self, s: &str, src: usize) {
        self.text.push_str(s);
        self.text.push('\n');
        self.lines.push(src);
    }
}

pub(super) fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

pub(super) fn emit_table(doc: &Doc<'_>, out: &mut Emit, prefix: &str, t: &DeTable<'_>) {
    let is_table_array = |v: &DeValue<'_>| match v {
        DeValue::Array(a) => {
            !a.is_empty() && a.iter().all(|i| matches!(i.get_ref(), DeValue::Table(_)))
        }
        _ => false,
    };
    for (k, v) in t.iter() {
        if !matches!(v.get_ref(), DeValue::Table(_)) && !is_table_array(v.get_ref()) {
            let mut s = String::new();
            let _ = write!(s, "{} = {}", toml_key(k.get_ref()), doc.raw(v));
            out.line(&s, doc.line(&v.span()));
        }
    }
    for (k, v) in t.iter() {
        let name = if prefix.is_empty() {
            toml_key(k.get_ref())
        } else {
            format!("{prefix}.{}", toml_key(k.get_ref()))
        };
        match v.get_ref() {
            DeValue::Table(sub) => {
                out.line(&format!("[{name}]"), doc.line(&k.span()));
                emit_table(doc, out, &name, sub);
            }
            DeValue::Array(items) if is_table_array(v.get_ref()) => {
                for item in items.iter() {
                    if let DeValue::Table(sub) = item.get_ref() {
                        out.line(&format!("[[{name}]]"), doc.line(&item.span()));
                        emit_table(doc, out, &name, sub);
                    }
                }
            }
            _ => {}
        }
    }
}
