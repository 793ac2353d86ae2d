//! From "what the root holds now" (a fresh snapshot) and "what it must hold" to the list of
//! journal operations and the files to stage. Pure: no I/O, so it is tested on its own.

use crate::journal::Op;
use crate::snapshot::Snapshot;
use oasis_core::manifest::{ChunkRef, Entry, Node};

/// One path the root must hold afterwards.
#[derive(Clone, Debug)]
pub struct Target {
    pub entry: Entry,
    /// Restore this modification time (revert, restore-file); None leaves it to the write.
    pub mtime_ns: Option<i64>,
}

/// A file or symlink to write into the staging directory as entry `n`.
#[derive(Clone, Debug)]
pub struct Staged {
    pub n: u32,
    pub path: String,
    pub mode: u32,
    pub node: Node,
    pub mtime_ns: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub staged: Vec<Staged>,
    /// Paths already right (content and mode).
    pub unchanged: u64,
    pub removed: u64,
    pub dirs_created: u64,
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

/// Builds the operations that turn `current` into one holding every `targets` entry (sorted by
/// path, parents first) and none of `remove` (paths as they are in `current`; directories are
/// only removed when empty afterwards).
pub fn plan(current: &Snapshot, targets: &[Target], remove: &[String]) -> Plan {
    let mut p = Plan::default();
    let mut first = Vec::new(); // removals that clear the way (type changes)
    let mut mkdirs = Vec::new();
    let mut places = Vec::new();
    let mut finals = Vec::new(); // modes and times, after everything is in place
    for t in targets {
        let e = &t.entry;
        let cur = current.get(&e.path);
        let mtime_differs =
            |c: &crate::snapshot::SnapEntry| t.mtime_ns.is_some_and(|m| m != c.mtime_ns);
        match &e.node {
            Node::Dir => {
                match cur.map(|c| &c.entry.node) {
                    Some(Node::Dir) => {
                        if cur.map(|c| c.entry.mode) != Some(e.mode) {
                            finals.push(Op::Chmod { path: e.path.clone(), mode: e.mode });
                        } else {
                            p.unchanged += 1;
                        }
                    }
                    other => {
                        if other.is_some() {
                            first.push(Op::RemoveIfNotDir(e.path.clone()));
                        }
                        mkdirs.push(Op::Mkdir(e.path.clone()));
                        p.dirs_created += 1;
                        finals.push(Op::Chmod { path: e.path.clone(), mode: e.mode });
                    }
                }
                // Directory times change as children are placed; set them last.
                if let (Some(m), Some(c)) = (t.mtime_ns, cur) {
                    if c.mtime_ns != m || !matches!(c.entry.node, Node::Dir) {
                        finals.push(Op::Touch { path: e.path.clone(), mtime_ns: m });
                    }
                }
            }
            node => {
                let same_content = cur.is_some_and(|c| match (&c.entry.node, node) {
                    (Node::File { .. }, Node::File { .. }) => {
                        chunks_of(&c.entry.node) == chunks_of(node)
                    }
                    (Node::Symlink { target: a }, Node::Symlink { target: b }) => a == b,
                    _ => false,
                });
                if same_content {
                    let c = cur.expect("checked");
                    let is_file = matches!(node, Node::File { .. });
                    let mut touched = false;
                    if is_file && c.entry.mode != e.mode {
                        finals.push(Op::Chmod { path: e.path.clone(), mode: e.mode });
                        touched = true;
                    }
                    if is_file && mtime_differs(c) {
                        finals.push(Op::Touch {
                            path: e.path.clone(),
                            mtime_ns: t.mtime_ns.expect("differs"),
                        });
                        touched = true;
                    }
                    if !touched {
                        p.unchanged += 1;
                    }
                    continue;
                }
                if cur.is_some_and(|c| matches!(c.entry.node, Node::Dir)) {
                    first.push(Op::RemoveIfDir(e.path.clone()));
                }
                let n = p.staged.len() as u32;
                p.staged.push(Staged {
                    n,
                    path: e.path.clone(),
                    mode: e.mode,
                    node: node.clone(),
                    mtime_ns: t.mtime_ns,
                });
                places.push(Op::Place {
                    staged: n,
                    path: e.path.clone(),
                    chunks: chunks_of(node).map(|c| c.to_vec()),
                });
            }
        }
    }
    let mut rm_files = Vec::new();
    let mut rm_dirs = Vec::new();
    for path in remove {
        match current.get(path).map(|c| &c.entry.node) {
            Some(Node::Dir) => rm_dirs.push(path.clone()),
            Some(_) => {
                rm_files.push(Op::RemoveIfNotDir(path.clone()));
                p.removed += 1;
            }
            None => {}
        }
    }
    // Deepest first, so a dropped directory is empty by the time it is tried.
    rm_dirs.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    p.removed += rm_dirs.len() as u64;
    p.ops.extend(first);
    p.ops.extend(mkdirs);
    p.ops.extend(places);
    p.ops.extend(rm_files);
    p.ops.extend(rm_dirs.into_iter().map(Op::RmdirIfEmpty));
    p.ops.extend(finals);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Owner, SnapEntry, SNAPSHOT_FORMAT};
    use crate::test_entries::{dir, file};
    use oasis_core::chunk::ChunkParams;

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
            .map(|entry| SnapEntry { entry, mtime_ns: 0, ino: 0, owner: Owner::User })
            .collect(),
        }
    }
    fn t(e: Entry) -> Target {
        Target { entry: e, mtime_ns: None }
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
            t(dir("a")),
            t(file("a/old", b"y")),
            t(file("a/same", b"1")),
            t(dir("b")),
            t(file("c", b"now a file")),
        ];
        let p = plan(&cur, &targets, &[]);
        assert_eq!(p.staged.len(), 2);
        assert_eq!(p.unchanged, 2);
        assert_eq!(p.ops[0], Op::RemoveIfNotDir("b".into()));
        assert_eq!(p.ops[1], Op::RemoveIfDir("c".into()));
        assert_eq!(p.ops[2], Op::Mkdir("b".into()));
        assert!(matches!(p.ops[3], Op::Place { .. }));
    }

    #[test]
    fn removals_run_files_then_dirs_deepest_first() {
        let cur = snap(vec![dir("d"), dir("d/e"), file("d/e/f", b"1")]);
        let p = plan(&cur, &[], &["d".into(), "d/e".into(), "d/e/f".into(), "gone".into()]);
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
