//! Writing a small file so that readers and crashes see either the old content or all of the
//! new: a uniquely named temporary file beside it, fsync, rename over the path (or, for a file
//! that must not be replaced, a link that fails if the path exists), fsync of the directory.
//! Unique names let two writers of the same path run at once (the last rename wins, neither
//! fails). Device state, snapshots, journals, the reflector's wake files, node identities and
//! keys all go through here.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How [`write_with`] creates and places the file.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Permission bits of the new file (0600 for secrets and private state).
    pub mode: u32,
    /// Replace an existing file; without it an existing path is an `AlreadyExists` error and
    /// is left as it was.
    pub overwrite: bool,
}

/// Private to the owner, replacing what is there: what [`write_durably`] uses.
pub const PRIVATE: Options = Options { mode: 0o600, overwrite: true };

/// Writes `bytes` to `path` durably (see the module docs), mode 0600, replacing any old file.
/// The directory must exist.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, bytes, PRIVATE)
}

/// Writes `bytes` to `path` durably with the given mode, replacing an old file or not.
pub fn write_with(path: &Path, bytes: &[u8], opts: Options) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(opts.mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // On failure the temporary file is removed when the error's handle drops.
    if opts.overwrite {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_durably(&path, b"old").unwrap();
        write_durably(&path, b"new content").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn concurrent_writers_of_one_path_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for j in 0..20 {
                        write_durably(path, format!("{i}-{j}").as_bytes()).unwrap();
                    }
                });
            }
        });
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.ends_with("-19"), "{last}");
    }

    #[test]
    fn a_file_that_must_not_be_replaced_is_kept_and_modes_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let secret = Options { mode: 0o600, overwrite: false };
        write_with(&path, b"first", secret).unwrap();
        let err = write_with(&path, b"second", secret).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let public = dir.path().join("trust.pem");
        write_with(&public, b"cert", Options { mode: 0o644, overwrite: true }).unwrap();
        // The umask may take bits away, never add them; the owner keeps read and write.
        let mode = std::fs::metadata(&public).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode & !0o644, mode & 0o600), (0, 0o600), "{mode:o}");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_durably(&dir.path().join("gone/file"), b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
