//! Stacking layers into the IT tree of a device: the base first, app layers on top. An app
//! layer may replace a base entry; two app layers naming the same path differently is a
//! conflict, reported (with both layers and the path) before anything changes.

use oasis_core::manifest::{Entry, LayerKind, LayerManifest, Node};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComposeError {
    #[error("app layers {a} and {b} conflict at {path:?}: {detail}; nothing was changed")]
    AppConflict { a: String, b: String, path: String, detail: String },
    #[error("layer {upper} puts {what} at {path:?}, where layer {lower} needs a directory (for {child:?}); nothing was changed")]
    NotADirectory { upper: String, lower: String, path: String, what: String, child: String },
    #[error("{label} is a {kind} layer; --base takes a base layer and --app app layers")]
    WrongKind { label: String, kind: LayerKind },
    #[error("layer {0} is given twice")]
    Duplicate(String),
    #[error("layer {layer} has a hard link {path:?} to {target:?}, where layer {upper} puts {what}; nothing was changed")]
    HardlinkCovered { layer: String, path: String, target: String, upper: String, what: String },
}

/// The composed IT tree: path -> (entry, index of the layer that provides it).
pub struct Composed {
    pub entries: BTreeMap<String, (Entry, u16)>,
}

impl Composed {
    /// Path -> owning layer index, for snapshots.
    pub fn owners(&self) -> std::collections::HashMap<String, u16> {
        self.entries.iter().map(|(p, (_, l))| (p.clone(), *l)).collect()
    }

    /// Entries in path order (parents before children).
    pub fn sorted(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().map(|(e, _)| e).collect();
        v.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        v
    }
}

fn describe(n: &Node) -> &'static str {
    match n {
        Node::Dir => "a directory",
        Node::File { .. } => "a file",
        Node::Symlink { .. } => "a symlink",
        Node::Hardlink { .. } => "a hard link",
    }
}

/// Stacks `layers` (base first). `check_kinds`: the first must be a base layer and the rest
/// app layers (true for apply; false when recomposing whatever was applied before).
pub fn compose(layers: &[&LayerManifest], check_kinds: bool) -> Result<Composed, ComposeError> {
    let mut seen = std::collections::HashSet::new();
    for (i, m) in layers.iter().enumerate() {
        if !seen.insert(m.name.clone()) {
            return Err(ComposeError::Duplicate(m.name.clone()));
        }
        let want = if i == 0 { LayerKind::Base } else { LayerKind::App };
        if check_kinds && m.kind != want && !(i > 0 && m.kind == LayerKind::Driver) {
            return Err(ComposeError::WrongKind { label: m.label(), kind: m.kind });
        }
    }
    let mut entries: BTreeMap<String, (Entry, u16)> = BTreeMap::new();
    for (i, m) in layers.iter().enumerate() {
        for e in &m.entries {
            if let Some((old, owner)) = entries.get(&e.path) {
                let same = old.node == e.node && old.mode == e.mode;
                let both_dirs = matches!((&old.node, &e.node), (Node::Dir, Node::Dir));
                if *owner != 0 && !same && !both_dirs {
                    return Err(ComposeError::AppConflict {
                        a: layers[*owner as usize].label(),
                        b: m.label(),
                        path: e.path.clone(),
                        detail: format!(
                            "{} in one, {} in the other",
                            describe(&old.node),
                            describe(&e.node)
                        )
                        .replace("a file in one, a file in the other", "different files"),
                    });
                }
                // A directory shared by several layers keeps the lowest layer's mode and owner.
                if both_dirs {
                    continue;
                }
            }
            entries.insert(e.path.clone(), (e.clone(), i as u16));
        }
    }
    // An upper layer's file or symlink where a lower layer has children: the tree would be
    // impossible (a child below a non-directory).
    for (path, (e, owner)) in &entries {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if let Some((pe, powner)) = entries.get(parent) {
                if !matches!(pe.node, Node::Dir) {
                    return Err(ComposeError::NotADirectory {
                        upper: layers[*powner as usize].label(),
                        lower: layers[*owner as usize].label(),
                        path: parent.to_string(),
                        what: describe(&pe.node).to_string(),
                        child: e.path.clone(),
                    });
                }
            }
        }
    }
    // A hard link is another name of a file; an upper layer may replace that file (the link
    // then names the upper one, as a hard link does), but not with something else.
    for (path, (e, owner)) in &entries {
        let Node::Hardlink { target } = &e.node else { continue };
        match entries.get(target) {
            Some((t, _)) if matches!(t.node, Node::File { .. }) => {}
            other => {
                let (upper, what) = match other {
                    Some((t, towner)) => {
                        (layers[*towner as usize].label(), describe(&t.node).to_string())
                    }
                    None => (layers[*owner as usize].label(), "nothing".to_string()),
                };
                return Err(ComposeError::HardlinkCovered {
                    layer: layers[*owner as usize].label(),
                    path: path.clone(),
                    target: target.clone(),
                    upper,
                    what,
                });
            }
        }
    }
    Ok(Composed { entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_entries::{dir, file};
    use oasis_core::chunk::ChunkParams;
    use oasis_core::manifest::MANIFEST_FORMAT;

    fn m(name: &str, kind: LayerKind, entries: Vec<Entry>) -> LayerManifest {
        LayerManifest {
            format: MANIFEST_FORMAT,
            name: name.into(),
            version: "1".into(),
            kind,
            chunking: ChunkParams::default(),
            created: 0,
            entries,
        }
    }

    #[test]
    fn apps_stack_on_base_and_conflicts_are_named() {
        let base = m("base", LayerKind::Base, vec![dir("etc"), file("etc/a", b"1")]);
        let app1 = m("app1", LayerKind::App, vec![dir("etc"), file("etc/a", b"2")]);
        let app2 = m("app2", LayerKind::App, vec![dir("etc"), file("etc/b", b"3")]);
        let c = compose(&[&base, &app1, &app2], true).unwrap();
        assert_eq!(c.entries["etc/a"].1, 1, "app replaces base");
        assert_eq!(c.entries["etc"].1, 0, "shared dir stays the base's");
        let app3 = m("app3", LayerKind::App, vec![dir("etc"), file("etc/b", b"4")]);
        let err = compose(&[&base, &app2, &app3], true).err().unwrap().to_string();
        assert!(err.contains("app2@1") && err.contains("app3@1") && err.contains("etc/b"), "{err}");
        // Identical entries in two apps are no conflict.
        let app4 = m("app4", LayerKind::App, vec![dir("etc"), file("etc/b", b"3")]);
        compose(&[&base, &app2, &app4], true).unwrap();
        assert!(matches!(compose(&[&app1], true), Err(ComposeError::WrongKind { .. })));
    }

    #[test]
    fn a_hard_link_whose_file_another_layer_replaces_by_a_non_file_is_refused() {
        let link = Entry::new("etc/b", 0o644, Node::Hardlink { target: "etc/a".into() });
        let base = m("base", LayerKind::Base, vec![dir("etc"), file("etc/a", b"1"), link]);
        compose(&[&base], true).unwrap();
        let app = m("app", LayerKind::App, vec![dir("etc"), file("etc/a", b"2")]);
        compose(&[&base, &app], true).unwrap();
        let app = m(
            "app",
            LayerKind::App,
            vec![dir("etc"), Entry::new("etc/a", 0o777, Node::Symlink { target: "x".into() })],
        );
        let err = compose(&[&base, &app], true).err().unwrap().to_string();
        assert!(err.contains("hard link") && err.contains("app@1"), "{err}");
    }

    #[test]
    fn file_over_a_lower_directory_is_refused() {
        let base = m("base", LayerKind::Base, vec![dir("etc"), file("etc/a", b"1")]);
        let app = m("app", LayerKind::App, vec![file("etc", b"x")]);
        let err = compose(&[&base, &app], true).err().unwrap();
        assert!(matches!(err, ComposeError::NotADirectory { .. }), "{err}");
    }
}
