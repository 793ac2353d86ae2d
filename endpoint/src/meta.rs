//! What every tree writer of the endpoint shares on top of [`oasis_core::fsmeta`]: whether an
//! entry on disk already has the metadata a manifest or snapshot asks for (as far as this
//! writer can make it so), what a writer cannot apply to an entry it leaves alone, and
//! restoring the metadata of an entry that already existed (attributes it should not have are
//! removed first).
//!
//! Extended attributes removed from existing entries are those a tree writer manages:
//! `user.*`, `trusted.*` (root only) and POSIX ACLs (`system.posix_acl_*`). `security.*`
//! (SELinux labels, capabilities) is left to the system's policy; a capability that should not
//! be there falls anyway, since changing a file's owner clears it.

use oasis_core::fsmeta::{self, MetaReport, Writer};
use oasis_core::manifest::Meta;
use std::io;
use std::path::Path;

fn privileged(name: &str) -> bool {
    name.starts_with("security.") || name.starts_with("trusted.")
}

/// Whether `who` can set the attribute `name` on an entry (Linux takes `user.*` only on files
/// and directories).
fn settable(name: &str, is_symlink: bool, who: Writer) -> bool {
    (who.root || !privileged(name)) && !(is_symlink && name.starts_with("user."))
}

/// Whether a writer removes the attribute `name` from an existing entry that should not have it.
fn managed(name: &str, is_symlink: bool, who: Writer) -> bool {
    let ns = name.starts_with("user.")
        || name.starts_with("trusted.")
        || name.starts_with("system.posix_acl_");
    ns && settable(name, is_symlink, who)
}

/// The mode `who` can give an entry that asks for `mode` (set-id bits need root).
fn achievable_mode(mode: u32, who: Writer) -> u32 {
    if who.root {
        mode & 0o7777
    } else {
        mode & 0o1777
    }
}

/// True when an entry on disk with `have_mode` and `have` already has what `want_mode` and
/// `want` ask for, as far as `who` can change it: owner (root only), mode (not for symlinks),
/// mtime to the nanosecond, and the attributes `who` can set or remove.
pub fn matches(
    is_symlink: bool,
    have_mode: u32,
    have: &Meta,
    want_mode: u32,
    want: &Meta,
    who: Writer,
) -> bool {
    if who.root && (have.uid, have.gid) != (want.uid, want.gid) {
        return false;
    }
    if !is_symlink && have_mode & 0o7777 != achievable_mode(want_mode, who) {
        return false;
    }
    if (have.mtime, have.mtime_nsec) != (want.mtime, want.mtime_nsec) {
        return false;
    }
    let wanted = want.xattrs.iter().filter(|x| settable(&x.name, is_symlink, who));
    for x in wanted {
        if !have.xattrs.iter().any(|h| h.name == x.name && h.value == x.value) {
            return false;
        }
    }
    have.xattrs
        .iter()
        .filter(|h| managed(&h.name, is_symlink, who))
        .all(|h| want.xattrs.iter().any(|x| x.name == h.name))
}

/// What [`fsmeta::apply_meta`] would count as not applied for this entry: for entries a writer
/// leaves as they are, so that what `who` cannot restore is reported whether or not the entry
/// was written this time.
pub fn unachievable(is_symlink: bool, mode: u32, meta: &Meta, who: Writer) -> MetaReport {
    let mut r = MetaReport::default();
    if who.root {
        return r;
    }
    if (meta.uid, meta.gid) != (who.uid, who.gid) {
        r.owners_not_applied += 1;
    }
    if !is_symlink && mode & 0o6000 != 0 {
        r.setid_not_applied += 1;
    }
    for x in &meta.xattrs {
        if privileged(&x.name) {
            r.xattrs_not_applied += 1;
        } else if is_symlink && x.name.starts_with("user.") {
            r.xattrs_failed += 1;
        }
    }
    r
}

/// Restores the metadata of an entry that existed before this write (a directory kept, a file
/// whose content was right): removes the attributes it should not have, then
/// [`fsmeta::apply_meta`] (owner, mode, attributes, mtime; never through a symlink).
pub fn restore_existing(
    path: &Path,
    is_symlink: bool,
    mode: u32,
    meta: &Meta,
    who: Writer,
    report: &mut MetaReport,
) -> io::Result<()> {
    remove_unlisted_xattrs(path, is_symlink, meta, who)?;
    fsmeta::apply_meta(path, is_symlink, mode, meta, who, report)
}

/// Removes the attributes of `path` that a writer manages and `meta` does not list.
fn remove_unlisted_xattrs(
    path: &Path,
    is_symlink: bool,
    meta: &Meta,
    who: Writer,
) -> io::Result<()> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if ignorable(&e) => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: listing xattrs: {e}", path.display()),
            ))
        }
    };
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if !managed(name, is_symlink, who) || meta.xattrs.iter().any(|x| x.name == name) {
            continue;
        }
        match xattr::remove(path, name) {
            Ok(()) => {}
            Err(e) if ignorable(&e) || e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: removing xattr {name}: {e}", path.display()),
                ))
            }
        }
    }
    Ok(())
}

fn ignorable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
        || e.kind() == io::ErrorKind::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;
    use oasis_core::manifest::Xattr;

    fn meta(uid: u32, xattrs: &[(&str, &[u8])]) -> Meta {
        Meta {
            uid,
            gid: uid,
            mtime: 5,
            mtime_nsec: 7,
            xattrs: xattrs
                .iter()
                .map(|(n, v)| Xattr { name: n.to_string(), value: v.to_vec() })
                .collect(),
        }
    }

    #[test]
    fn comparison_follows_what_the_writer_can_change() {
        let root = Writer { root: true, uid: 0, gid: 0 };
        let user = Writer { root: false, uid: 1000, gid: 1000 };
        let want = meta(0, &[("security.capability", b"c"), ("user.a", b"1")]);
        // Not root: the owner, set-id bits and security.* cannot be restored, so they do not
        // make an entry differ (they are counted by `unachievable` instead).
        let have = meta(1000, &[("user.a", b"1")]);
        assert!(matches(false, 0o755, &have, 0o4755, &want, user));
        assert!(!matches(false, 0o755, &have, 0o4755, &want, root));
        let r = unachievable(false, 0o4755, &want, user);
        assert_eq!((r.owners_not_applied, r.setid_not_applied, r.xattrs_not_applied), (1, 1, 1));
        assert!(unachievable(false, 0o4755, &want, root).is_clean());
        // A user.* attribute the entry should not have makes it differ; a security label not.
        let extra = meta(
            0,
            &[
                ("security.capability", b"c"),
                ("security.selinux", b"l"),
                ("user.a", b"1"),
                ("user.b", b"2"),
            ],
        );
        assert!(!matches(false, 0o4755, &extra, 0o4755, &want, root));
        let label =
            meta(0, &[("security.capability", b"c"), ("security.selinux", b"l"), ("user.a", b"1")]);
        assert!(matches(false, 0o4755, &label, 0o4755, &want, root));
        let mut later = want.clone();
        later.mtime_nsec += 1;
        assert!(!matches(false, 0o4755, &later, 0o4755, &want, root));
    }
}
