//! Node roles, names and sites: what a node is in the distribution tree, and the names it goes
//! by. Certificates carry them (`oasis_core::pki` reads them from there); gossip, inventory
//! and backup messages check names with the same rule.

use std::fmt;
use std::str::FromStr;

/// Longest node name or site accepted by [`validate_node_name`].
pub const MAX_NAME_LEN: usize = 64;

/// Prefix of the URI SAN carrying role, name and site.
pub const NODE_URI_PREFIX: &str = "urn:oasis:node:";

/// A role, name, site or node URI that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A node name or site is not acceptable.
    #[error("invalid {kind} {name:?}: {problem}")]
    InvalidName { kind: String, name: String, problem: String },
    /// A role string is not one of seed, reflector, endpoint.
    #[error("unknown role {0:?} (expected seed, reflector or endpoint)")]
    UnknownRole(String),
    /// A URI with the node prefix that does not have the node URI's shape.
    #[error("node URI {0:?}: expected urn:oasis:node:<role>:<name>[:<site>]")]
    BadUri(String),
}

/// What a node is in the distribution tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Seed,
    Reflector,
    Endpoint,
}

impl Role {
    /// All roles, in tree order.
    pub const ALL: [Role; 3] = [Role::Seed, Role::Reflector, Role::Endpoint];

    /// Lowercase name, as used on the command line and in certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Seed => "seed",
            Role::Reflector => "reflector",
            Role::Endpoint => "endpoint",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seed" => Ok(Role::Seed),
            "reflector" => Ok(Role::Reflector),
            "endpoint" => Ok(Role::Endpoint),
            other => Err(NameError::UnknownRole(other.to_string())),
        }
    }
}

/// Who a peer is, as read from its (CA-verified) certificate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerInfo {
    pub role: Role,
    pub name: String,
    pub site: Option<String>,
}

impl PeerInfo {
    /// Builds a `PeerInfo` after validating name and site.
    pub fn new(role: Role, name: &str, site: Option<&str>) -> Result<PeerInfo, NameError> {
        validate_node_name("node name", name)?;
        if let Some(site) = site {
            validate_node_name("site", site)?;
        }
        Ok(PeerInfo { role, name: name.to_string(), site: site.map(str::to_string) })
    }

    /// The URI SAN encoding role, name and site: `urn:oasis:node:<role>:<name>[:<site>]`.
    pub fn to_uri(&self) -> String {
        match &self.site {
            Some(site) => format!("{NODE_URI_PREFIX}{}:{}:{site}", self.role, self.name),
            None => format!("{NODE_URI_PREFIX}{}:{}", self.role, self.name),
        }
    }

    /// Parses the URI produced by [`PeerInfo::to_uri`]; `None` if `uri` is not an Oasis node URI.
    pub fn from_uri(uri: &str) -> Option<Result<PeerInfo, NameError>> {
        let rest = uri.strip_prefix(NODE_URI_PREFIX)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let parsed = match parts.as_slice() {
            [role, name] => role.parse::<Role>().and_then(|role| PeerInfo::new(role, name, None)),
            [role, name, site] => {
                role.parse::<Role>().and_then(|role| PeerInfo::new(role, name, Some(site)))
            }
            _ => Err(NameError::BadUri(uri.to_string())),
        };
        Some(parsed)
    }
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)?;
        if let Some(site) = &self.site {
            write!(f, "@{site}")?;
        }
        Ok(())
    }
}

/// Names and sites: 1..=64 chars of `[A-Za-z0-9._-]`, not starting with '.'; clear error
/// otherwise. `kind` names what is being checked ("node name", "site") in the error.
pub fn validate_node_name(kind: &str, name: &str) -> Result<(), NameError> {
    let fail = |problem: String| {
        Err(NameError::InvalidName { kind: kind.to_string(), name: name.to_string(), problem })
    };
    if name.is_empty() {
        return fail("must not be empty".into());
    }
    if let Some(bad) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return fail(format!(
            "contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return fail(format!(
            "is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return fail("must not start with '.'".into());
    }
    Ok(())
}
