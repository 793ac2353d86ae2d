//! Reading and writing the PKI's PEM files: private modes for secrets, durable writes,
//! errors that name the file and say what to run.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FileKind {
    /// Mode 0600.
    Secret,
    /// Mode 0644.
    Public,
}

pub(super) fn exists(path: &Path) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, "checking whether it exists")(e)),
    }
}

pub(super) fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir, "creating directory"))
}

pub(super) fn read_text(path: &Path, hint: &'static str) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            IdentityError::Missing { path: path.to_path_buf(), hint }
        } else {
            io_err(path, "reading")(e)
        }
    })
}

/// Reads a PEM file and returns the contents of its first block, which must have tag `tag`.
pub(super) fn read_single_pem(
    path: &Path,
    tag: &str,
    hint: &'static str,
) -> Result<Vec<u8>, IdentityError> {
    let text = read_text(path, hint)?;
    let what = path.display();
    let blocks = pem::parse_many(&text).map_err(|e| invalid(&what, format!("bad PEM: {e}")))?;
    let first = blocks
        .into_iter()
        .next()
        .ok_or_else(|| invalid(&what, format!("no PEM block (expected {tag:?})")))?;
    if first.tag() != tag {
        return Err(invalid(&what, format!("PEM block is {:?}, expected {tag:?}", first.tag())));
    }
    Ok(first.into_contents())
}

/// Writes `data` to `path` durably ([`crate::durable`]: mode 0600 for secrets, 0644 otherwise),
/// so readers and crashes only ever see the old file or the complete new one. Without
/// `overwrite`, an existing `path` is never replaced.
pub(super) fn write_atomic(
    path: &Path,
    data: &[u8],
    kind: FileKind,
    overwrite: bool,
) -> Result<(), IdentityError> {
    let mode = match kind {
        FileKind::Secret => 0o600,
        FileKind::Public => 0o644,
    };
    crate::durable::write_with(path, data, crate::durable::Options { mode, overwrite }).map_err(
        |e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                IdentityError::AlreadyExists { path: path.to_path_buf(), hint: "" }
            }
            _ => io_err(path, "writing (via a temporary file)")(e),
        },
    )
}
