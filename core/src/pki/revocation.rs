//! Revocation: the seed's register of every certificate it issued (`issued.jsonl`), the CA-signed
//! X.509 revocation list (`revoked.crl`), and [`Revocations`], the one current list a server
//! checks its peers against.
//!
//! The register and the list live in the seed's data directory, next to the CA key that signs
//! the list: `enroll` and `revoke` are CA steps that work on files, whether or not `serve` runs,
//! and `serve` picks the new list up from the file. A list is a standard CRL (RFC 5280) so that
//! any X.509 tool reads it; its CRL number orders lists, and a node only ever moves to a higher
//! one, so an old list replayed by a peer changes nothing.

use super::*;
use std::collections::HashSet;
use std::io::Write;

/// The register of issued certificates in the seed's data directory (JSON lines, append-only).
pub const ISSUED_FILE: &str = "issued.jsonl";
/// The current revocation list (PEM `X509 CRL`), in the seed's data directory and in the state
/// directory of a reflector, which keeps the last list it adopted across restarts.
pub const REVOKED_FILE: &str = "revoked.crl";
/// Largest revocation list a node accepts (about 40 bytes per revoked certificate: some 50,000).
pub use oasis_proto::wire::MAX_REVOCATION_LIST_BYTES;
/// How long a list says it stays current (`nextUpdate`). Nodes do not refuse an older list
/// (the seed may be unreachable for longer); they only prefer a higher number.
const CRL_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
const CRL_PEM_TAG: &str = "X509 CRL";

/// One certificate the seed issued, with its revocation if any.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IssuedCert {
    /// The serial number, hex of its DER integer bytes.
    pub serial: String,
    pub role: Role,
    pub name: String,
    pub site: Option<String>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// Unix seconds; None while valid.
    pub revoked_at: Option<u64>,
}

/// Which issued certificates `revoke` applies to.
#[derive(Clone, Debug)]
pub enum RevokeTarget {
    /// Every unrevoked certificate of this node name (of this role only, when given).
    Name { name: String, role: Option<Role> },
    /// The certificate with this serial (hex).
    Serial(String),
    /// This certificate (DER), issued by this seed's CA, recorded in the register or not (a
    /// certificate issued before the register existed is recorded from itself).
    Cert(Vec<u8>),
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum RegisterLine {
    Issued {
        serial: String,
        role: String,
        name: String,
        site: Option<String>,
        at: u64,
        not_after: u64,
    },
    Revoked {
        serial: String,
        at: u64,
    },
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The serial number of a certificate (hex of its DER integer bytes).
pub fn cert_serial(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| invalid("certificate", format!("cannot parse X.509: {e}")))?;
    Ok(hex::encode(x509.raw_serial()))
}

/// The register file, opened for appending and locked for the caller's whole step: `enroll`
/// and `revoke` in two processes at once then never interleave their reads and writes.
struct Register {
    path: PathBuf,
    file: fs::File,
}

impl Register {
    fn open(data: &Path) -> Result<Register, IdentityError> {
        let path = data.join(ISSUED_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err(&path, "opening the register of issued certificates"))?;
        file.lock().map_err(io_err(&path, "locking the register of issued certificates"))?;
        Ok(Register { path, file })
    }

    fn append(&mut self, line: &RegisterLine) -> Result<(), IdentityError> {
        let mut text = serde_json::to_string(line)
            .map_err(|e| invalid(self.path.display(), format!("cannot encode a line: {e}")))?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(&self.path, "appending to the register of issued certificates"))
    }

    fn read(&self) -> Result<Vec<IssuedCert>, IdentityError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(&self.path, "reading")(e)),
        };
        read_register(&text, &self.path)
    }
}

fn read_register(text: &str, path: &Path) -> Result<Vec<IssuedCert>, IdentityError> {
    let mut certs: Vec<IssuedCert> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let what = || format!("{} line {}", path.display(), n + 1);
        let parsed: RegisterLine =
            serde_json::from_str(line).map_err(|e| invalid(what(), e.to_string()))?;
        match parsed {
            RegisterLine::Issued { serial, role, name, site, at, not_after } => {
                let role = role.parse::<Role>().map_err(|e| invalid(what(), e))?;
                certs.push(IssuedCert {
                    serial,
                    role,
                    name,
                    site,
                    issued_at: at,
                    not_after,
                    revoked_at: None,
                });
            }
            RegisterLine::Revoked { serial, at } => {
                for c in certs.iter_mut().filter(|c| c.serial == serial) {
                    c.revoked_at.get_or_insert(at);
                }
            }
        }
    }
    Ok(certs)
}

impl SeedAuthority {
    /// Every certificate this seed issued, oldest first, with its revocation.
    pub fn issued(&self) -> Result<Vec<IssuedCert>, IdentityError> {
        Register::open(&self.data)?.read()
    }

    /// Records a certificate just issued and, when `replaces` is set, revokes the earlier
    /// unrevoked certificates of the same role and name (a node enrolled again).
    pub(super) fn record_issued(
        &self,
        node: &NodeIdentity,
        replaces: bool,
    ) -> Result<Vec<IssuedCert>, IdentityError> {
        let (_, x509) = x509_parser::parse_x509_certificate(node.cert.as_ref())
            .map_err(|e| invalid("issued certificate", format!("cannot parse X.509: {e}")))?;
        let serial = hex::encode(x509.raw_serial());
        let not_after = x509.validity().not_after.timestamp().max(0) as u64;
        let mut register = Register::open(&self.data)?;
        register.append(&RegisterLine::Issued {
            serial: serial.clone(),
            role: node.info.role.to_string(),
            name: node.info.name.clone(),
            site: node.info.site.clone(),
            at: unix_now(),
            not_after,
        })?;
        if !replaces {
            return Ok(Vec::new());
        }
        let target =
            RevokeTarget::Name { name: node.info.name.clone(), role: Some(node.info.role) };
        self.revoke_locked(&mut register, &target, Some(&serial))
    }

    /// Revokes the certificates `target` names and signs a new revocation list
    /// (`revoked.crl`). Returns what was revoked; an error when nothing matched, naming why.
    pub fn revoke(&self, target: &RevokeTarget) -> Result<Vec<IssuedCert>, IdentityError> {
        let mut register = Register::open(&self.data)?;
        if let RevokeTarget::Cert(der) = target {
            return self.revoke_cert(&mut register, der);
        }
        let revoked = self.revoke_locked(&mut register, target, None)?;
        if revoked.is_empty() {
            let what = match target {
                RevokeTarget::Name { name, role: Some(r) } => format!("{r} {name:?}"),
                RevokeTarget::Name { name, role: None } => format!("node {name:?}"),
                RevokeTarget::Serial(s) => format!("serial {s}"),
                RevokeTarget::Cert(_) => unreachable!("handled above"),
            };
            return Err(invalid(
                what,
                "no unrevoked certificate in this seed's register matches (see `oasis-seed \
                 certs`; a certificate issued before the register existed is revoked with \
                 --cert NODE.PEM)",
            ));
        }
        Ok(revoked)
    }

    fn revoke_locked(
        &self,
        register: &mut Register,
        target: &RevokeTarget,
        keep: Option<&str>,
    ) -> Result<Vec<IssuedCert>, IdentityError> {
        let certs = register.read()?;
        let hit = |c: &IssuedCert| match target {
            RevokeTarget::Name { name, role } => {
                c.name == *name && role.is_none_or(|r| r == c.role)
            }
            RevokeTarget::Serial(s) => c.serial.eq_ignore_ascii_case(s.trim()),
            RevokeTarget::Cert(_) => false,
        };
        let now = unix_now();
        let mut revoked = Vec::new();
        for c in certs.iter().filter(|c| c.revoked_at.is_none() && hit(c)) {
            if Some(c.serial.as_str()) == keep || c.role == Role::Seed {
                continue;
            }
            register.append(&RegisterLine::Revoked { serial: c.serial.clone(), at: now })?;
            revoked.push(IssuedCert { revoked_at: Some(now), ..c.clone() });
        }
        if !revoked.is_empty() {
            self.sign_revocation_list(&register.read()?)?;
        }
        Ok(revoked)
    }

    /// Revokes one certificate given whole: it must verify against this CA (expired or not);
    /// recorded from itself when the register does not know it.
    fn revoke_cert(
        &self,
        register: &mut Register,
        der: &[u8],
    ) -> Result<Vec<IssuedCert>, IdentityError> {
        let what = "certificate to revoke";
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| invalid(what, format!("cannot parse X.509: {e}")))?;
        let (_, ca) = x509_parser::parse_x509_certificate(self.trust.ca.as_ref())
            .map_err(|e| invalid("trust root CA", format!("cannot parse X.509: {e}")))?;
        x509.verify_signature(Some(ca.public_key()))
            .map_err(|_| invalid(what, "not issued by this seed's CA"))?;
        let info = peer_info_from_cert(&CertificateDer::from(der.to_vec()))?;
        if info.role == Role::Seed {
            return Err(invalid(what, "the seed's own certificate is not revoked this way"));
        }
        let serial = hex::encode(x509.raw_serial());
        let known = register.read()?.into_iter().find(|c| c.serial == serial);
        if known.as_ref().is_some_and(|c| c.revoked_at.is_some()) {
            return Err(invalid(what, format!("serial {serial} is revoked already")));
        }
        if known.is_none() {
            register.append(&RegisterLine::Issued {
                serial: serial.clone(),
                role: info.role.to_string(),
                name: info.name.clone(),
                site: info.site.clone(),
                at: x509.validity().not_before.timestamp().max(0) as u64,
                not_after: x509.validity().not_after.timestamp().max(0) as u64,
            })?;
        }
        self.revoke_locked(register, &RevokeTarget::Serial(serial), None)
    }

    /// Signs the list of every revoked certificate not yet expired, numbered one past the
    /// list in `revoked.crl`, and writes it there.
    fn sign_revocation_list(&self, certs: &[IssuedCert]) -> Result<RevocationList, IdentityError> {
        let path = self.data.join(REVOKED_FILE);
        let previous = load_revocation_file(&path, &self.trust)?.map_or(0, |l| l.number);
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
        let mut revoked_certs = Vec::new();
        for c in certs {
            let Some(at) = c.revoked_at else { continue };
            if c.not_after < since_epoch.as_secs() {
                continue;
            }
            let serial = hex::decode(&c.serial)
                .map_err(|e| invalid(format!("serial {}", c.serial), e.to_string()))?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial),
                revocation_time: rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(at),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: rcgen::SerialNumber::from_slice(&(previous + 1).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let what = "signing the revocation list";
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.trust.ca, &self.ca_key)
            .map_err(rcgen_err(what))?;
        let crl = params.signed_by(&issuer).map_err(rcgen_err(what))?;
        let list = RevocationList::from_der(crl.der().as_ref(), &self.trust)?;
        let text = pem::encode(&pem::Pem::new(CRL_PEM_TAG, list.der.clone()));
        write_atomic(&path, text.as_bytes(), FileKind::Public, true)?;
        Ok(list)
    }
}

/// A revocation list whose signature verified against the CA: its number and the serials it
/// revokes.
#[derive(Clone, Debug)]
pub struct RevocationList {
    number: u64,
    der: Vec<u8>,
    serials: HashSet<Vec<u8>>,
}

impl RevocationList {
    /// Parses a DER CRL and checks it: signed by the CA of `trust`, issued by it, carrying a
    /// CRL number, within [`MAX_REVOCATION_LIST_BYTES`]. Errors say which check failed.
    pub fn from_der(der: &[u8], trust: &TrustRoot) -> Result<RevocationList, IdentityError> {
        let what = "revocation list";
        if der.len() > MAX_REVOCATION_LIST_BYTES {
            return Err(invalid(
                what,
                format!("{} bytes, over the limit of {MAX_REVOCATION_LIST_BYTES}", der.len()),
            ));
        }
        let (rest, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| invalid(what, format!("not a DER X.509 CRL: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(what, format!("{} bytes after the CRL", rest.len())));
        }
        let (_, ca) = x509_parser::parse_x509_certificate(trust.ca.as_ref())
            .map_err(|e| invalid("trust root CA", format!("cannot parse X.509: {e}")))?;
        if crl.issuer() != ca.subject() {
            return Err(invalid(what, "not issued by the CA in trust.pem"));
        }
        crl.verify_signature(ca.public_key())
            .map_err(|e| invalid(what, format!("signature does not verify with the CA: {e}")))?;
        let number =
            crl.crl_number().ok_or_else(|| invalid(what, "carries no CRL number"))?.to_u64_digits();
        let number = match number.as_slice() {
            [] => 0,
            [n] => *n,
            _ => return Err(invalid(what, "CRL number over 64 bits")),
        };
        let serials = crl.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()).collect();
        Ok(RevocationList { number, der: der.to_vec(), serials })
    }

    /// The CRL number: a higher number is a newer list.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The list as DER, as it travels.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// How many certificates it revokes.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    /// Does the list revoke this certificate? (Every node certificate has the one CA as issuer,
    /// so the serial alone names it.) A certificate that does not parse counts as revoked.
    pub fn revokes(&self, cert: &[u8]) -> bool {
        match x509_parser::parse_x509_certificate(cert) {
            Ok((_, x509)) => self.serials.contains(x509.raw_serial()),
            Err(_) => true,
        }
    }

    /// The list as the PEM text of `revoked.crl`.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new(CRL_PEM_TAG, self.der.clone()))
    }
}

/// Reads a `revoked.crl` (PEM) and checks it against `trust`; None when the file is absent.
pub fn load_revocation_file(
    path: &Path,
    trust: &TrustRoot,
) -> Result<Option<RevocationList>, IdentityError> {
    if !exists(path)? {
        return Ok(None);
    }
    let der = read_single_pem(path, CRL_PEM_TAG, "")?;
    RevocationList::from_der(&der, trust)
        .map(Some)
        .map_err(|e| invalid(path.display(), e.to_string()))
}

/// The revocation list a node currently holds, shared by everything that checks peers: the
/// QUIC server, the mesh, the task that fetches newer lists. One `watch` channel owns it; a
/// list replaces the held one only when its number is higher.
#[derive(Clone, Debug)]
pub struct Revocations {
    tx: Arc<tokio::sync::watch::Sender<Option<Arc<RevocationList>>>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations { tx: Arc::new(tokio::sync::watch::Sender::new(None)) }
    }
}

impl Revocations {
    /// Offers a checked list: adopted (true) when it is newer than the one held.
    pub fn offer(&self, list: RevocationList) -> bool {
        let list = Arc::new(list);
        self.tx.send_if_modified(|held| {
            if held.as_ref().is_some_and(|h| h.number >= list.number) {
                return false;
            }
            *held = Some(list.clone());
            true
        })
    }

    /// Checks `der` against `trust` and offers it: Ok(true) when adopted.
    pub fn offer_der(&self, der: &[u8], trust: &TrustRoot) -> Result<bool, IdentityError> {
        Ok(self.offer(RevocationList::from_der(der, trust)?))
    }

    /// The list held now.
    pub fn current(&self) -> Option<Arc<RevocationList>> {
        self.tx.borrow().clone()
    }

    /// The number of the list held (0: none).
    pub fn number(&self) -> u64 {
        self.tx.borrow().as_ref().map_or(0, |l| l.number)
    }

    /// Is this certificate (DER) revoked by the list held now?
    pub fn revokes(&self, cert: &[u8]) -> bool {
        self.tx.borrow().as_ref().is_some_and(|l| l.revokes(cert))
    }

    /// Woken at every newer list.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<RevocationList>>> {
        self.tx.subscribe()
    }
}
