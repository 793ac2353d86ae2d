//! The endpoint's configuration file: `STATE_DIR/endpoint.toml` by default, another with
//! `--config FILE`. Today it holds where layers come from (config/endpoint.example.toml):
//!
//! ```toml
//! # Reflectors of this site first, the seed last; HOST:PORT each.
//! sources = ["refl-1.lyon.example:7443", "10.20.0.6:7443", "seed.example:7443"]
//! ```
//!
//! `sources` is used when no `--from` is given; with `--from`, the command line's sources come
//! first and the file's follow (each address once). The endpoint probes them all and ranks them
//! (own site, own subnet, least loaded, the seed last), so their order only breaks ties.
//!
//! ```toml
//! # Other filesystems that device snapshots include (mount points, relative to the device
//! # root or absolute inside it). A snapshot otherwise stays on the root's filesystem.
//! snapshot_mounts = ["home", "/boot/efi"]
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// File name of the endpoint's configuration in its state directory.
pub const CONFIG_FILE: &str = "endpoint.toml";
/// Most sources one file may list.
pub const MAX_SOURCES: usize = 256;

/// A bad configuration file; the message names the file, the key and the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {problem}")]
    Read { path: PathBuf, problem: String },
    /// Not TOML, or values the config's types refuse; `problem` starts with where (" line L,
    /// column C: ...").
    #[error("config file {path}{problem}")]
    Toml { path: PathBuf, problem: String },
    #[error("config file {path} line {line}: {key} {problem}")]
    Key { path: PathBuf, line: usize, key: &'static str, problem: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    sources: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
    snapshot_mounts: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
}

/// Most mount points `snapshot_mounts` may list.
pub const MAX_SNAPSHOT_MOUNTS: usize = 64;

/// What the endpoint's configuration file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The file read (None: there was none).
    pub path: Option<PathBuf>,
    /// `sources`: HOST:PORT each, as written.
    pub sources: Vec<String>,
    /// `snapshot_mounts`: mount points (relative to the device root, '/'-separated, no '..')
    /// whose filesystems device snapshots include.
    pub snapshot_mounts: Vec<String>,
}

impl EndpointConfig {
    /// Reads `explicit` (which must exist), else `STATE_DIR/endpoint.toml` if it exists.
    pub fn load(state: &Path, explicit: Option<&Path>) -> Result<EndpointConfig, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => state.join(CONFIG_FILE),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                return Ok(EndpointConfig::default());
            }
            Err(e) => return Err(ConfigError::Read { path, problem: e.to_string() }),
        };
        Self::parse(&path, &text)
    }

    /// Parses the text of the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<EndpointConfig, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let p = oasis_core::file_errors::TomlProblem::of(text, &e);
            ConfigError::Toml { path: path.to_path_buf(), problem: p.describe("") }
        })?;
        let key_err = |key: &'static str, span: std::ops::Range<usize>, problem: String| {
            let line = oasis_core::file_errors::line_of(text, span.start);
            ConfigError::Key { path: path.to_path_buf(), line, key, problem }
        };
        let mut sources = Vec::new();
        if let Some(list) = file.sources {
            let span = list.span();
            let list = list.into_inner();
            if list.len() > MAX_SOURCES {
                return Err(key_err(
                    "sources",
                    span,
                    format!("lists {} sources; at most {MAX_SOURCES}", list.len()),
                ));
            }
            for s in list {
                let span = s.span();
                let s = s.into_inner();
                check_host_port(&s).map_err(|p| key_err("sources", span, p))?;
                if !sources.contains(&s) {
                    sources.push(s);
                }
            }
        }
        let mut snapshot_mounts = Vec::new();
        if let Some(list) = file.snapshot_mounts {
            let span = list.span();
            let list = list.into_inner();
            if list.len() > MAX_SNAPSHOT_MOUNTS {
                return Err(key_err(
                    "snapshot_mounts",
                    span,
                    format!("lists {} mount points; at most {MAX_SNAPSHOT_MOUNTS}", list.len()),
                ));
            }
            for m in list {
                let span = m.span();
                let m =
                    mount_point(m.get_ref()).map_err(|p| key_err("snapshot_mounts", span, p))?;
                if !snapshot_mounts.contains(&m) {
                    snapshot_mounts.push(m);
                }
            }
        }
        Ok(EndpointConfig { path: Some(path.to_path_buf()), sources, snapshot_mounts })
    }

    /// The sources to use: `from` (the command line) first, then the file's, each once.
    pub fn merged_sources(&self, from: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(from.len() + self.sources.len());
        for s in from.iter().chain(&self.sources) {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }
}

/// A mount point as a path relative to the device root: `/boot/efi` and `boot/efi` both give
/// `boot/efi`; empty, `.` and `..` components are refused.
fn mount_point(s: &str) -> Result<String, String> {
    let rel = s.trim_start_matches('/').trim_end_matches('/');
    let bad = rel.is_empty()
        || rel.contains('\0')
        || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(format!(
            "{s:?} is not a mount point inside the device root (e.g. \"home\" or \"/boot/efi\")"
        ));
    }
    Ok(rel.to_string())
}

/// `HOST:PORT` (an IP address, `[v6]:port`, or a DNS name) with a port from 1 to 65535.
fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("{s:?} is not HOST:PORT (e.g. \"refl-1.lyon.example:7443\")");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EndpointConfig, ConfigError> {
        EndpointConfig::parse(Path::new("/st/endpoint.toml"), text)
    }

    #[test]
    fn sources_are_read_and_merged_after_the_command_line() {
        let c = parse(
            "# mine\nsources = [\"10.0.0.5:7443\", \"seed.example:7443\", \"10.0.0.5:7443\"]\n",
        )
        .unwrap();
        assert_eq!(c.sources, vec!["10.0.0.5:7443", "seed.example:7443"]);
        let m = c.merged_sources(&["seed.example:7443".into(), "[fd00::1]:7443".into()]);
        assert_eq!(m, vec!["seed.example:7443", "[fd00::1]:7443", "10.0.0.5:7443"]);
        assert_eq!(parse("").unwrap().sources, Vec::<String>::new());
    }

    #[test]
    fn bad_input_names_file_key_and_line() {
        let e = parse("\nsources = [\n  \"10.0.0.5:7443\",\n  \"no-port\",\n]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file /st/endpoint.toml line 4: sources \"no-port\" is not HOST:PORT (e.g. \
             \"refl-1.lyon.example:7443\")"
        );
        let e = parse("sources = [\"h:0\"]").unwrap_err().to_string();
        assert!(e.contains("line 1: sources \"h:0\""), "{e}");
        let e = parse("sources = [\"bad host:1\"]").unwrap_err().to_string();
        assert!(e.contains("is not HOST:PORT"), "{e}");
        let e = parse("sources = \"10.0.0.5:7443\"").unwrap_err().to_string();
        assert!(e.starts_with("config file /st/endpoint.toml line 1, column 11: "), "{e}");
        assert!(e.contains("expected a sequence (at `sources = \"10.0.0.5:7443\"`)"), "{e}");
        let e = parse("source = []").unwrap_err().to_string();
        assert!(e.contains("source"), "{e}");
    }

    #[test]
    fn snapshot_mounts_are_relative_paths_inside_the_root() {
        let c = parse("snapshot_mounts = [\"/home\", \"boot/efi/\", \"home\"]\n").unwrap();
        assert_eq!(c.snapshot_mounts, vec!["home", "boot/efi"]);
        for bad in ["/", "../x", "a//b", "a/./b"] {
            let e = parse(&format!("\nsnapshot_mounts = [{bad:?}]")).unwrap_err().to_string();
            assert!(
                e.contains("line 2: snapshot_mounts") && e.contains("not a mount point"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../config/endpoint.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.sources.len(), 3);
    }

    #[test]
    fn a_missing_default_file_is_no_config_but_a_missing_explicit_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(EndpointConfig::load(dir.path(), None).unwrap(), EndpointConfig::default());
        let missing = dir.path().join("nope.toml");
        let e = EndpointConfig::load(dir.path(), Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("nope.toml"), "{e}");
        std::fs::write(dir.path().join(CONFIG_FILE), "sources = [\"127.0.0.1:9\"]\n").unwrap();
        let c = EndpointConfig::load(dir.path(), None).unwrap();
        assert_eq!(c.sources, vec!["127.0.0.1:9"]);
        assert_eq!(c.path, Some(dir.path().join(CONFIG_FILE)));
    }
}
