//! From "what the root holds now" (a fresh snapshot) and "what it must hold" to the list of
//! journal operations and the files to stage. Pure: no I/O, so it is tested on its own.
//!
//! Every target gets its whole metadata (owner, mode, extended attributes, mtime): written
//! entries when staged, entries whose content is right but whose metadata is not through a
//! [`Op::SetMeta`], and directories after everything below them changed (creating or removing
//! an entry moves a directory's mtime). Hard links are staged as links to the staged file, or
//! to the file in place when its content stays.
//!
//! Mount points of other filesystems are never replaced or removed, and nothing is written
//! below those the snapshot did not descend into.

use crate::journal::Op;
use crate::meta;
use crate::snapshot::Snapshot;
use oasis_core::fsmeta::{MetaReport, Writer};
use oasis_core::manifest::{ChunkRef, Entry, Meta, Node};
use std::collections::{HashMap, HashSet};

/// Where a staged hard link gets its inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkFrom {
    /// The staged file with this number (its content changes too).
    Staged(u32),
    /// The file at this path in the root (its content stays).
    Root(String),
}

/// A file, symlink or hard link to write into the staging directory as entry `n`.
#[derive(Clone, Debug)]
pub struct Staged {
    pub n: u32,
    pub path: String,
    pub mode: u32,
    pub meta: Meta,
    pub node: Node,
    /// For hard links: the inode to link to.
    pub link: Option<LinkFrom>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub staged: Vec<Staged>,
    /// Paths already right (content and metadata).
    pub unchanged: u64,
    /// Paths whose content is right and whose metadata is set.
    pub metadata_set: u64,
    pub removed: u64,
    pub dirs_created: u64,
    /// Targets left alone, with the reason (below or at a mount point of another filesystem).
    pub skipped: Vec<String>,
    /// What the writer cannot apply to the targets it leaves as they are (the writes count
    /// their own).
    pub not_applied: MetaReport,
}

impl Plan {
    pub fn staged_bytes(&self) -> u64 {
        self.staged
            .iter()
            .map(|s| match &s.node {
                Node::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

fn chunks_of(n: &Node) -> Option<&[ChunkRef]> {
    match n {
        Node::File { chunks, .. } => Some(chunks),
        _ => None,
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// The mount point of another filesystem that `path` lies strictly below, if any.
fn below<'a>(mounts: &'a HashSet<&str>, path: &str) -> Option<&'a str> {
    let mut p = path;
    while let Some((up, _)) = p.rsplit_once('/') {
        if let Some(m) = mounts.get(up) {
            return Some(m);
        }
        p = up;
    }
    None
}

/// Builds the operations that turn `current` into one holding every `targets` entry (sorted by
/// path, parents first) and none of `remove` (paths as they are in `current`; directories are
/// only removed when empty afterwards), as `who` can make it.
pub fn plan(current: &Snapshot, targets: &[Entry], remove: &[String], who: Writer) -> Plan {
    let mut p = Plan::default();
    let other: HashSet<&str> = current.other_filesystems.iter().map(String::as_str).collect();
    let mounts: HashSet<&str> = current
        .other_filesystems
        .iter()
        .chain(&current.included_filesystems)
        .map(String::as_str)
        .collect();
    let mut first = Vec::new(); // removals that clear the way (type changes)
    let mut mkdirs = Vec::new();
    let mut places = Vec::new();
    let mut links = Vec::new();
    let mut file_meta = Vec::new(); // after everything is in place
                                    // Directories of the targets, and whether their own metadata differs.
    let mut dirs: Vec<(&Entry, bool)> = Vec::new();
    // Parents of every path created, replaced or removed: their mtime moves.
    let mut touched: HashSet<String> = HashSet::new();
    let mut staged_at: HashMap<&str, u32> = HashMap::new();
    let mut files: HashSet<&str> = HashSet::new();
    for e in targets {
        let path = e.path.as_str();
        if let Some(m) = below(&other, path) {
            p.skipped.push(format!("{path}: below {m}, where another filesystem is mounted"));
            continue;
        }
        let cur = current.get(path).map(|c| &c.entry);
        if mounts.contains(path) {
            if e.node == Node::Dir {
                // A mount point keeps the mounted filesystem's metadata.
                p.unchanged += 1;
            } else {
                p.skipped.push(format!("{path}: another filesystem is mounted there"));
            }
            continue;
        }
        let is_symlink = matches!(e.node, Node::Symlink { .. });
        let meta_ok = |c: &Entry| meta::matches(is_symlink, c.mode, &c.meta, e.mode, &e.meta, who);
        match &e.node {
            Node::Dir => match cur.map(|c| &c.node) {
                Some(Node::Dir) => {
                    let differs = !cur.is_some_and(meta_ok);
                    dirs.push((e, differs));
                }
                other_node => {
                    if other_node.is_some() {
                        first.push(Op::RemoveIfNotDir(e.path.clone()));
                    }
                    mkdirs.push(Op::Mkdir(e.path.clone()));
                    touched.insert(parent(path).to_string());
                    p.dirs_created += 1;
                    dirs.push((e, true));
                }
            },
            Node::Hardlink { target } => {
                if !files.contains(target.as_str()) {
                    p.skipped.push(format!(
                        "{path}: a hard link to {target}, which is not written with it"
                    ));
                    continue;
                }
                let from = staged_at.get(target.as_str()).copied();
                let same = from.is_none()
                    && cur.is_some_and(|c| c.node == Node::Hardlink { target: target.clone() });
                if same {
                    p.unchanged += 1;
                    continue;
                }
                if cur.is_some_and(|c| c.node == Node::Dir) {
                    first.push(Op::RemoveIfDir(e.path.clone()));
                }
                let n = p.staged.len() as u32;
                p.staged.push(Staged {
                    n,
                    path: e.path.clone(),
                    mode: e.mode,
                    meta: e.meta.clone(),
                    node: e.node.clone(),
                    link: Some(match from {
                        Some(t) => LinkFrom::Staged(t),
                        None => LinkFrom::Root(target.clone()),
                    }),
                });
                links.push(Op::Place { staged: n, path: e.path.clone(), chunks: None });
                touched.insert(parent(path).to_string());
            }
            node => {
                if matches!(node, Node::File { .. }) {
                    files.insert(path);
                }
                let same_content = cur.is_some_and(|c| match (&c.node, node) {
                    (Node::File { .. }, Node::File { .. }) => chunks_of(&c.node) == chunks_of(node),
                    (Node::Symlink { target: a }, Node::Symlink { target: b }) => a == b,
                    _ => false,
                });
                if same_content {
                    let c = cur.expect("checked");
                    if meta_ok(c) {
                        p.unchanged += 1;
                        p.not_applied.add(&meta::unachievable(is_symlink, e.mode, &e.meta, who));
                    } else {
                        p.metadata_set += 1;
                        file_meta.push(Op::SetMeta {
                            path: e.path.clone(),
                            mode: e.mode,
                            meta: e.meta.clone(),
                            chunks: chunks_of(node).map(|c| c.to_vec()),
                        });
                    }
                    continue;
                }
                if cur.is_some_and(|c| c.node == Node::Dir) {
                    first.push(Op::RemoveIfDir(e.path.clone()));
                }
                let n = p.staged.len() as u32;
                staged_at.insert(path, n);
                p.staged.push(Staged {
                    n,
                    path: e.path.clone(),
                    mode: e.mode,
                    meta: e.meta.clone(),
                    node: node.clone(),
                    link: None,
                });
                places.push(Op::Place {
                    staged: n,
                    path: e.path.clone(),
                    chunks: chunks_of(node).map(|c| c.to_vec()),
                });
                touched.insert(parent(path).to_string());
            }
        }
    }
    let mut rm_files = Vec::new();
    let mut rm_dirs = Vec::new();
    for path in remove {
        if mounts.contains(path.as_str()) || below(&other, path).is_some() {
            continue;
        }
        match current.get(path).map(|c| &c.entry.node) {
            Some(Node::Dir) => rm_dirs.push(path.clone()),
            Some(_) => {
                rm_files.push(Op::RemoveIfNotDir(path.clone()));
                p.removed += 1;
            }
            None => continue,
        }
        touched.insert(parent(path).to_string());
    }
    // Deepest first, so a dropped directory is empty by the time it is tried.
    rm_dirs.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    p.removed += rm_dirs.len() as u64;
    // Directories last and deepest first: their times are right only once nothing below them
    // changes any more.
    let mut dir_meta = Vec::new();
    for (e, differs) in dirs.iter().rev() {
        if *differs || touched.contains(&e.path) {
            dir_meta.push(Op::SetMeta {
                path: e.path.clone(),
                mode: e.mode,
                meta: e.meta.clone(),
                chunks: None,
            });
        }
        if !*differs {
            p.unchanged += 1;
            if !touched.contains(&e.path) {
                p.not_applied.add(&meta::unachievable(false, e.mode, &e.meta, who));
            }
        }
    }
    p.ops.extend(first);
    p.ops.extend(mkdirs);
    p.ops.extend(places);
    p.ops.extend(links);
    p.ops.extend(rm_files);
    p.ops.extend(rm_dirs.into_iter().map(Op::RmdirIfEmpty));
    p.ops.extend(file_meta);
    p.ops.extend(dir_meta);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Owner, SnapEntry, SNAPSHOT_FORMAT};
    use crate::test_entries::{dir, file};
    use oasis_core::chunk::ChunkParams;

    const ROOT: Writer = Writer { root: true, uid: 0, gid: 0 };

    fn snap(entries: Vec<Entry>) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            id: 1,
            created: 0,
            reason: String::new(),
            device: String::new(),
            chunking: ChunkParams::default(),
            layers: vec![],
            // Sorted like a real snapshot (lookups binary-search).
            entries: {
                let mut e = entries;
                e.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
                e
            }
            .into_iter()
            .map(|entry| SnapEntry { entry, ino: 0, owner: Owner::User })
            .collect(),
            other_filesystems: vec![],
            included_filesystems: vec![],
        }
    }

    fn set_meta_paths(p: &Plan) -> Vec<&str> {
        p.ops
            .iter()
            .filter_map(|o| match o {
                Op::SetMeta { path, .. } => Some(path.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_differences_are_written_and_type_changes_clear_the_way() {
        let cur = snap(vec![
            dir("a"),
            file("a/same", b"1"),
            file("a/old", b"x"),
            file("b", b"f"),
            dir("c"),
            file("c/u", b"u"),
        ]);
        let targets = vec![
            dir("a"),
            file("a/old", b"y"),
            file("a/same", b"1"),
            dir("b"),
            file("c", b"now a file"),
        ];
        let p = plan(&cur, &targets, &[], ROOT);
        assert_eq!(p.staged.len(), 2);
        assert_eq!(p.unchanged, 2, "a/same, and a (only its time is set back after a/old)");
        assert_eq!(p.ops[0], Op::RemoveIfNotDir("b".into()));
        assert_eq!(p.ops[1], Op::RemoveIfDir("c".into()));
        assert_eq!(p.ops[2], Op::Mkdir("b".into()));
        assert!(matches!(p.ops[3], Op::Place { .. }));
        // Directories whose entries changed get their metadata back last, deepest first.
        assert_eq!(set_meta_paths(&p), vec!["b", "a"]);
    }

    #[test]
    fn metadata_alone_is_set_without_rewriting() {
        let mut f = file("f", b"1");
        let cur = snap(vec![f.clone()]);
        f.meta.mtime = 99;
        f.mode = 0o4755;
        let p = plan(&cur, &[f.clone()], &[], ROOT);
        assert!(p.staged.is_empty());
        assert_eq!(p.metadata_set, 1);
        assert_eq!(set_meta_paths(&p), vec!["f"]);
        // Not root: the set-uid bit cannot be given back, so only the time differs.
        let user = Writer { root: false, uid: 0, gid: 0 };
        let mut cur2 = cur.clone();
        cur2.entries[0].entry.meta.mtime = 99;
        cur2.entries[0].entry.mode = 0o755;
        let p = plan(&cur2, &[f], &[], user);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(p.not_applied.setid_not_applied, 1, "what cannot be applied is counted");
    }

    #[test]
    fn hard_links_follow_their_file() {
        let link = |p: &str, t: &str| Entry::new(p, 0o644, Node::Hardlink { target: t.into() });
        let cur = snap(vec![file("a", b"1"), link("b", "a"), file("c", b"2")]);
        // Same file, same link: nothing to do.
        let p = plan(&cur, &[file("a", b"1"), link("b", "a")], &[], ROOT);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        // The file changes: the link is staged as a link to the staged file.
        let p = plan(&cur, &[file("a", b"new"), link("b", "a")], &[], ROOT);
        assert_eq!(p.staged[1].link, Some(LinkFrom::Staged(0)));
        // A new link to a file that stays links to the file in place.
        let p = plan(&cur, &[file("c", b"2"), link("d", "c")], &[], ROOT);
        assert_eq!(p.staged.len(), 1);
        assert_eq!(p.staged[0].link, Some(LinkFrom::Root("c".into())));
        // A link whose file is not written with it is left alone, and said so.
        let p = plan(&cur, &[link("d", "c")], &[], ROOT);
        assert!(p.staged.is_empty() && p.skipped[0].contains("hard link"), "{:?}", p.skipped);
    }

    #[test]
    fn mount_points_are_never_replaced_removed_or_written_below() {
        let mut cur = snap(vec![dir("proc"), dir("home"), file("home/x", b"1")]);
        cur.other_filesystems = vec!["proc".into()];
        cur.included_filesystems = vec!["home".into()];
        let p = plan(
            &cur,
            &[file("home", b"not a dir"), dir("proc"), dir("proc/sys"), file("proc/x", b"1")],
            &["home".into(), "proc".into()],
            ROOT,
        );
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(p.skipped.len(), 3, "{:?}", p.skipped);
    }

    #[test]
    fn removals_run_files_then_dirs_deepest_first() {
        let cur = snap(vec![dir("d"), dir("d/e"), file("d/e/f", b"1")]);
        let p = plan(&cur, &[], &["d".into(), "d/e".into(), "d/e/f".into(), "gone".into()], ROOT);
        assert_eq!(
            p.ops,
            vec![
                Op::RemoveIfNotDir("d/e/f".into()),
                Op::RmdirIfEmpty("d/e".into()),
                Op::RmdirIfEmpty("d".into())
            ]
        );
    }
}
