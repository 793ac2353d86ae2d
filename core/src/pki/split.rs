//! Splitting the seed's private keys off its data directory: what runs the network-facing
//! `serve` then holds no CA key and no manifest key, and `oasis-seed signer` holds them in a
//! directory of their own.

use super::*;

/// What moves with the keys: the two private keys and the CA's records, which `enroll` and
/// `revoke` keep beside the CA key.
const MOVED: [&str; 4] = [CA_KEY_FILE, MANIFEST_KEY_FILE, ISSUED_FILE, REVOKED_FILE];
/// What both directories need: the public halves.
const COPIED: [&str; 2] = [TRUST_FILE, CA_CERT_FILE];

impl SeedAuthority {
    /// Moves the private keys and the CA's records from `data` into `keys` (created, mode
    /// 0700), which also gets copies of `trust.pem` and `ca.pem`; returns the files written
    /// there. Nothing is removed from `data` before `keys` holds a root of trust that loads:
    /// a failure part way leaves copies in both, never a key in neither.
    pub fn split_keys(data: &Path, keys: &Path) -> Result<Vec<PathBuf>, IdentityError> {
        let partly_moved =
            !exists(&data.join(CA_KEY_FILE))? || !exists(&data.join(MANIFEST_KEY_FILE))?;
        if partly_moved && exists(&data.join(TRUST_FILE))? {
            // A split cut off while removing from DATA: KEYS loads as this seed's root of
            // trust, so finishing the removal is all that is left.
            let trust = TrustRoot::load(&data.join(TRUST_FILE))?;
            if SeedAuthority::load(keys).is_ok_and(|moved| moved.trust == trust) {
                remove_moved(data)?;
                return Ok(Vec::new());
            }
        }
        if exists(&data.join(TRUST_FILE))? && !exists(&data.join(CA_KEY_FILE))? {
            return Err(invalid(
                data.display(),
                "holds no CA key to move (split off already? `oasis-seed signer` runs where it went)",
            ));
        }
        let auth = SeedAuthority::load(data)?;
        create_private_dir(keys)?;
        for file in MOVED.iter().chain(&COPIED) {
            let path = keys.join(file);
            if exists(&path)? {
                return Err(IdentityError::AlreadyExists {
                    path,
                    hint: " (the keys directory must be new or empty)",
                });
            }
        }
        let mut written = Vec::new();
        for file in MOVED.iter().chain(&COPIED) {
            let from = data.join(file);
            let bytes = match fs::read(&from) {
                Ok(b) => b,
                // The register and the list exist once something was issued or revoked.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !COPIED.contains(file) => {
                    if *file == CA_KEY_FILE || *file == MANIFEST_KEY_FILE {
                        return Err(io_err(&from, "reading")(e));
                    }
                    continue;
                }
                Err(e) => return Err(io_err(&from, "reading")(e)),
            };
            let kind = if COPIED.contains(file) { FileKind::Public } else { FileKind::Secret };
            let to = keys.join(file);
            write_atomic(&to, &bytes, kind, false)?;
            written.push(to);
        }
        let moved = SeedAuthority::load(keys)?;
        if moved.trust != auth.trust {
            return Err(invalid(
                keys.display(),
                "does not hold the same root of trust after the copy",
            ));
        }
        // KEYS' own entry in its parent must survive a power loss before DATA lets go.
        let parent = keys.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
        remove_moved(data)?;
        Ok(written)
    }
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "syncing the directory"))
}

/// Removes what moved from DATA (what is gone already is fine), then syncs DATA.
fn remove_moved(data: &Path) -> Result<(), IdentityError> {
    for file in MOVED {
        let path = data.join(file);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "removing after the copy")(e)),
        }
    }
    sync_dir(data)
}
