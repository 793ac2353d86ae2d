//! Reading and restoring the metadata a manifest entry carries: owner, the whole mode, mtime to
//! the nanosecond, and extended attributes. Publishing, snapshots and every tree writer use
//! these two functions, so what one side records the other restores the same way.
//!
//! Owners, setuid/setgid and `security.*`/`trusted.*` attributes need root to restore. As
//! another user they are left unapplied and counted in a [`MetaReport`], never dropped
//! silently: the caller reports what it could not apply.

use crate::manifest::{Meta, Xattr, MAX_XATTRS_PER_ENTRY, MAX_XATTR_VALUE_BYTES};
use serde::Serialize;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Reads owner, mtime and extended attributes of `path` (not following a symlink). `md` is the
/// `symlink_metadata` the caller already has. A filesystem without extended attributes gives
/// none; attributes beyond the manifest's limits are an error naming the path.
pub fn read_meta(path: &Path, md: &std::fs::Metadata) -> io::Result<Meta> {
    Ok(Meta {
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        xattrs: read_xattrs(path)?,
    })
}

/// Extended attributes of `path` (not following a symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: listing xattrs: {e}", path.display()),
            ))
        }
    };
    let mut out = Vec::new();
    for name in names {
        let Ok(name) = String::from_utf8(name.as_bytes().to_vec()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: an extended attribute name is not UTF-8", path.display()),
            ));
        };
        // Gone between list and get (another process removed it): skip it.
        let Some(value) = xattr::get(path, &name).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: reading xattr {name}: {e}", path.display()))
        })?
        else {
            continue;
        };
        if value.len() > MAX_XATTR_VALUE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: xattr {name} has {} bytes, more than {MAX_XATTR_VALUE_BYTES}",
                    path.display(),
                    value.len()
                ),
            ));
        }
        out.push(Xattr { name, value });
    }
    if out.len() > MAX_XATTRS_PER_ENTRY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {} xattrs, more than {MAX_XATTRS_PER_ENTRY}", path.display(), out.len()),
        ));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP) || e.kind() == io::ErrorKind::Unsupported
}

/// What a tree writer could not restore, by kind. Zero everywhere when running as root on a
/// filesystem with extended attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetaReport {
    /// Entries whose owner or group differ from the writer's and were not changed (not root).
    pub owners_not_applied: u64,
    /// Entries whose setuid or setgid bit was not set (not root).
    pub setid_not_applied: u64,
    /// `security.*` and `trusted.*` attributes not set (not root).
    pub xattrs_not_applied: u64,
    /// Attributes the target filesystem refused (for instance no `user.*` support).
    pub xattrs_failed: u64,
}

impl MetaReport {
    pub fn add(&mut self, o: &MetaReport) {
        self.owners_not_applied += o.owners_not_applied;
        self.setid_not_applied += o.setid_not_applied;
        self.xattrs_not_applied += o.xattrs_not_applied;
        self.xattrs_failed += o.xattrs_failed;
    }

    pub fn is_clean(&self) -> bool {
        *self == MetaReport::default()
    }

    /// One line for people, e.g. "not applied (not root): 12 owners, 3 setuid/setgid bits".
    pub fn summary(&self) -> Option<String> {
        if self.is_clean() {
            return None;
        }
        let mut parts = Vec::new();
        if self.owners_not_applied > 0 {
            parts.push(format!("{} owners", self.owners_not_applied));
        }
        if self.setid_not_applied > 0 {
            parts.push(format!("{} setuid/setgid bits", self.setid_not_applied));
        }
        if self.xattrs_not_applied > 0 {
            parts.push(format!("{} security/trusted xattrs", self.xattrs_not_applied));
        }
        let mut s = String::new();
        if !parts.is_empty() {
            s = format!("not applied (needs root): {}", parts.join(", "));
        }
        if self.xattrs_failed > 0 {
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(&format!("{} xattrs refused by the filesystem", self.xattrs_failed));
        }
        Some(s)
    }
}

/// Who the writer is: root restores everything, others what they may.
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    pub root: bool,
    pub uid: u32,
    pub gid: u32,
}

impl Writer {
    pub fn current() -> Writer {
        // SAFETY: geteuid and getegid cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Writer { root: uid == 0, uid, gid }
    }
}

/// Restores owner, mode, extended attributes and mtime on `path` (not following a symlink),
/// in the order that keeps each: chown first (it clears setuid bits and capabilities), then
/// the mode, then the attributes, then the time. A directory's time must be set after its
/// children are written; the caller orders that. `mode` is the entry's 0o7777 bits (ignored
/// for symlinks, which have none).
pub fn apply_meta(
    path: &Path,
    is_symlink: bool,
    mode: u32,
    meta: &Meta,
    who: Writer,
    report: &mut MetaReport,
) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
    };
    if who.root {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .map_err(|e| ctx("setting the owner", e))?;
    } else if meta.uid != who.uid || meta.gid != who.gid {
        report.owners_not_applied += 1;
    }
    if !is_symlink {
        let mut bits = mode & 0o7777;
        if !who.root && bits & 0o6000 != 0 {
            report.setid_not_applied += 1;
            bits &= !0o6000;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits))
            .map_err(|e| ctx("setting the mode", e))?;
    }
    for x in &meta.xattrs {
        let privileged = x.name.starts_with("security.") || x.name.starts_with("trusted.");
        if privileged && !who.root {
            report.xattrs_not_applied += 1;
            continue;
        }
        // Linux allows user.* attributes only on files and directories.
        if is_symlink && x.name.starts_with("user.") {
            report.xattrs_failed += 1;
            continue;
        }
        match xattr::set(path, &x.name, &x.value) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) || e.raw_os_error() == Some(libc::EPERM) => {
                report.xattrs_failed += 1;
            }
            Err(e) => return Err(ctx(&format!("setting xattr {}", x.name), e)),
        }
    }
    set_mtime(path, meta).map_err(|e| ctx("setting the mtime", e))
}

/// Sets `path`'s mtime (and atime, to the same instant) from `meta`, not following a symlink.
pub fn set_mtime(path: &Path, meta: &Meta) -> io::Result<()> {
    let t = filetime::FileTime::from_unix_time(meta.mtime, meta.mtime_nsec);
    filetime::set_symlink_file_times(path, t, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_roundtrips_through_a_file() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"x").unwrap();
        let who = Writer::current();
        let mut meta = Meta {
            uid: who.uid,
            gid: who.gid,
            mtime: 1_600_000_000,
            mtime_nsec: 123_456_789,
            xattrs: vec![],
        };
        // user.* attributes where the filesystem takes them (tmpfs before 6.6 does not).
        let user_xattrs = xattr::set(&a, "user.probe", b"1").is_ok();
        if user_xattrs {
            xattr::remove(&a, "user.probe").unwrap();
            meta.xattrs.push(Xattr { name: "user.oasis".into(), value: b"v".to_vec() });
        } else {
            eprintln!("SKIPPED part: {} takes no user.* xattrs", d.path().display());
        }
        let mut report = MetaReport::default();
        apply_meta(&b, false, 0o640, &meta, who, &mut report).unwrap();
        assert!(report.is_clean(), "{report:?}");
        let md = std::fs::symlink_metadata(&b).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(read_meta(&b, &md).unwrap(), meta);
    }

    #[test]
    fn setid_bits_are_reported_not_dropped_when_not_root() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("su");
        std::fs::write(&f, b"x").unwrap();
        let who = Writer { root: false, ..Writer::current() };
        let meta = Meta { uid: who.uid.wrapping_add(1), gid: who.gid, ..Meta::default() };
        let mut report = MetaReport::default();
        apply_meta(&f, false, 0o4755, &meta, who, &mut report).unwrap();
        assert_eq!(report.setid_not_applied, 1);
        assert_eq!(report.owners_not_applied, 1);
        assert!(report.summary().unwrap().contains("1 setuid/setgid bits"));
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o755);
    }
}
